"""The simulated traffic of one benchmark step: calls that connect and stream, their subscribers,
soak calls replaced as they end, and the check that the fake Deepgram got every frame of every call.

All of it runs in the load process's trio run, in the nursery :meth:`Traffic.start_call` is given;
outcomes go to :attr:`Traffic.counts` and (the first few) :attr:`Traffic.failures`.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from callscribe.bench import ws as bench_ws
from callscribe.bench.calls import FRAME_BYTES, Audio, SimCall
from callscribe.bench.options import Options, StepPlan
from callscribe.bench.sender import RealTimeSender
from callscribe.bench.subscribers import SimSubscriber
from callscribe.bench.tracker import Tracker
from callscribe.bench.ws_frames import WebSocketError
from callscribe.testing.fake_deepgram import FakeDeepgram

MAX_FAILURES = 5
"""Failures of single calls and subscribers kept for the report (the counts have them all)."""


@dataclass
class TrafficCounts:
    """What happened to the step's calls and subscribers."""

    calls_started: int = 0
    calls_failed: int = 0
    calls_exact: int = 0
    """Calls whose every frame reached the fake Deepgram, byte for byte, on both channels."""
    calls_inexact: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    subscribers_failed: int = 0
    subscribers_ok: int = 0


class Traffic:
    """Starts and follows the calls and subscribers of one step against the server at ``port``."""

    def __init__(
        self,
        opts: Options,
        plan: StepPlan,
        port: int,
        *,
        fake: FakeDeepgram,
        tracker: Tracker,
        sender: RealTimeSender,
        audio_checked: bool,
        subscriber_port: int | None = None,
    ) -> None:
        self._opts = opts
        self._plan = plan
        self._port = port
        self._subscriber_port = port if subscriber_port is None else subscriber_port
        self._fake = fake
        self._tracker = tracker
        self._sender = sender
        self._audio_checked = audio_checked
        self._audio = Audio()
        self._limiter = trio.CapacityLimiter(opts.connect_concurrency)
        self._next_index = 0
        self.counts = TrafficCounts()
        self.failures: list[str] = []
        self.calls: list[SimCall] = []
        self.subscribers: list[SimSubscriber] = []
        self.replacing = True
        """Soak: start a new call when one ends (until the window is over)."""

    def _note(self, failure: str) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(failure)

    @property
    def subscribers_done(self) -> bool:
        """Every subscriber started so far has finished, one way or the other."""
        return self.counts.subscribers_ok + self.counts.subscribers_failed >= len(self.subscribers)

    def start_call(self, nursery: trio.Nursery, seconds: float | None) -> SimCall:
        """Start a call (lasting ``seconds``, or until stopped) and, once it streams, its subscribers."""
        ticks = None if seconds is None else max(1, round(seconds / 0.02))
        call = SimCall(
            self._next_index, self._audio, stop_after_ticks=ticks, coalesce_tracks=self._opts.coalesce_tracks
        )
        self._tracker.calls[self._next_index] = call
        self._next_index += 1
        self.calls.append(call)
        nursery.start_soon(self._run_call, call, nursery)
        return call

    def stop_all(self) -> None:
        """Every call sends ``stop`` at its next tick; none is replaced any more."""
        self.replacing = False
        for call in self.calls:
            call.stop_requested = True

    async def _run_call(self, call: SimCall, nursery: trio.Nursery) -> None:
        conn = None
        try:
            async with self._limiter:
                conn = call.conn = await bench_ws.connect(self._opts.host, self._port, "/twilio", nursery, timeout=15.0)
            conn.send_now(call.opening())
            self._sender.add(call)
            self.counts.calls_started += 1
            call.started.set()
            await trio.sleep(0.05)
            for _ in range(self._plan.subscribers):
                subscriber = SimSubscriber(call)
                self.subscribers.append(subscriber)
                nursery.start_soon(self._run_subscriber, subscriber, nursery)
            while conn.close_code is None:
                try:
                    await conn.receive()
                except EOFError:
                    break
            if conn.close_code != 1000:
                self._note(f"call {call.index}: closed with {conn.close_code} {conn.close_reason}".strip())
        except (OSError, EOFError, WebSocketError, trio.TooSlowError) as error:
            call.failure = f"{type(error).__name__}: {error}"
            self.counts.calls_failed += 1
            self._note(f"call {call.index}: {call.failure}")
        finally:
            call.started.set()
            call.finished.set()
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose(timeout=1.0)
            if call.conn is not None:
                with trio.CancelScope(shield=True):
                    await self._account(call)
        if self.replacing and self._plan.call_seconds is not None:
            self.start_call(nursery, self._plan.call_seconds)

    async def _run_subscriber(self, subscriber: SimSubscriber, nursery: trio.Nursery) -> None:
        await subscriber.run(self._opts.host, self._subscriber_port, self._tracker, nursery, self._limiter)
        if subscriber.failure:
            self.counts.subscribers_failed += 1
            call = subscriber.call
            self._note(f"subscriber of call {call.index} ({call.call_sid}): {subscriber.failure}")
        else:
            self.counts.subscribers_ok += 1

    async def _account(self, call: SimCall) -> None:
        """Count the call's frames, and check that the fake Deepgram got all of them on both channels."""
        counts = self.counts
        counts.frames_sent += call.frames_sent
        if not self._audio_checked:
            return
        tracker = self._tracker
        session = tracker.session_of_call.get(call.index)
        if session is None and call.ticks == 0:
            counts.calls_exact += 1  # stopped before its first frame: nothing to deliver
            return
        if session is None:
            counts.calls_inexact += 1
            self._note(f"call {call.index} ({call.call_sid}, {call.ticks} frame pairs): no Deepgram session seen")
            return
        with trio.move_on_after(10):
            await session.closed.wait()
        received = [len(channel) for channel in session.audio_by_channel]
        counts.frames_received += sum(received) // FRAME_BYTES
        if len(received) == 2 and all(r == call.ticks * FRAME_BYTES for r in received):
            counts.calls_exact += 1
        else:
            counts.calls_inexact += 1
        tracker.sessions.pop(session.request_id, None)
        if self._plan.call_seconds is not None:  # long runs: keep memory flat on our side too
            for channel in session.audio_by_channel:
                channel.clear()
            self._fake.sessions[:] = [other for other in self._fake.sessions if other is not session]
            tracker.session_of_call.pop(call.index, None)
