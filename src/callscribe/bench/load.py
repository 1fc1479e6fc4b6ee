"""The benchmark's load side: simulated Twilio calls, subscribers, the fake Deepgram and the clock.

Everything here runs in the load process (one trio run per benchmark step), pinned to the core the
server does not have. Parts:

- :class:`Audio` and :class:`SimCall`: one simulated Twilio stream, both tracks, whose messages are
  exactly those of :mod:`callscribe.testing.simulator` (``connected``, ``start``, ``media``..., ``stop``), built
  from a template per frame and written without a task per call.
- :class:`Pacer`: one task sends every call's frames in real time, 100 per second per call (both
  tracks every 20 ms). Calls are spread over twenty 1 ms phases, so the server sees a steady stream
  rather than a burst every 20 ms. If the pacer falls behind it catches up (and says by how much);
  it never skips a frame.
- :class:`SimSubscriber`: one ``/client`` subscriber; every message it receives is matched with the
  moment the fake Deepgram sent it.
- :class:`Tracker`: the fake Deepgram's hooks. It tells which call an audio stream belongs to (the
  first 6 bytes of every call's caller audio carry a tag with the call's number), counts the audio,
  and turns each audio message into the latency of every Twilio frame it completes.

All times are ``time.monotonic()`` (CLOCK_MONOTONIC), read in this one process.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

import trio

from callscribe.bench import ws as bench_ws
from callscribe.bench.ws import OP_CLOSE, OP_TEXT, ClientConnection
from callscribe.core import audio as mulaw
from callscribe.testing.fake_deepgram import FakeDeepgramSession
from callscribe.testing.simulator import CallSpec, connected_message, start_message, stop_message

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * 8
TICK_S = FRAME_MS / 1000
PHASES = 20
"""The pacer's 20 ms period is cut into this many phases (1 ms each)."""
COALESCE_TRACKS = False
"""Write a tick's two frames (caller, other party) with one ``send``, so they usually arrive in one
TCP segment; by default each frame is its own ``send`` (and segment), the costlier case."""
TAG = b"\xa5\x5a"
"""Start of the first caller frame of every simulated call; 4 bytes of call number follow."""

_MEDIA = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"%s","chunk":"%d","timestamp":"%d",'
    '"payload":"%s"},"streamSid":"%s"}'
)
"""`simulator.media_message`, as a template (the test checks they agree)."""


class Audio:
    """One second of each track, pre-encoded in base64 per 20 ms frame, shared by every call."""

    def __init__(self) -> None:
        import base64

        inbound = mulaw.generate_tone(1.0, 440.0)
        outbound = mulaw.generate_tone(1.0, 660.0)
        self.frames_per_loop = len(inbound) // FRAME_BYTES
        self._raw_inbound = inbound
        self.inbound = [
            base64.b64encode(inbound[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]).decode()
            for i in range(self.frames_per_loop)
        ]
        self.outbound = [
            base64.b64encode(outbound[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]).decode()
            for i in range(self.frames_per_loop)
        ]

    def tagged_first_frame(self, index: int) -> str:
        """The caller's first frame of call ``index``: the tag and the number, then the tone."""
        import base64

        payload = TAG + index.to_bytes(4, "big") + self._raw_inbound[6:FRAME_BYTES]
        return base64.b64encode(payload).decode()


def tag_index(channel0: bytes) -> int | None:
    """The call number in the first bytes of a call's channel 0, or None if they carry no tag."""
    if len(channel0) >= 6 and channel0[:2] == TAG:
        return int.from_bytes(channel0[2:6], "big")
    return None


def media_text(seq: int, track: str, chunk: int, timestamp_ms: int, payload_b64: str, stream_sid: str) -> str:
    return _MEDIA % (seq, track, chunk, timestamp_ms, payload_b64, stream_sid)


class SimCall:
    """One simulated Twilio stream (both tracks)."""

    def __init__(self, index: int, audio: Audio, *, stop_after_ticks: int | None = None) -> None:
        self.index = index
        self.audio = audio
        self.spec = CallSpec(inbound=b"\xff" * FRAME_BYTES, outbound=b"\xff" * FRAME_BYTES)
        self.call_sid = self.spec.call_sid
        self.stream_sid = self.spec.stream_sid
        self._first = audio.tagged_first_frame(index)
        self.conn: ClientConnection | None = None
        self.ticks = 0
        self.tick_times = array("d")
        """``time.monotonic()`` as frame pair ``k`` (caller, then other party) started leaving."""
        self.stop_after_ticks = stop_after_ticks
        self.stop_requested = False
        self.stop_sent = False
        self.started = trio.Event()
        self.finished = trio.Event()
        self.failure: str | None = None

    @property
    def frames_sent(self) -> int:
        return 2 * self.ticks

    def opening(self) -> bytes:
        assert self.conn is not None
        frame = self.conn.frame
        return frame(OP_TEXT, connected_message().encode()) + frame(OP_TEXT, start_message(self.spec, 1).encode())

    def tick(self) -> bool:
        """Send the next 20 ms of both tracks (or ``stop``); False once the call has no more to send."""
        conn = self.conn
        assert conn is not None
        if conn.closed:
            return False
        k = self.ticks
        if self.stop_requested or (self.stop_after_ticks is not None and k >= self.stop_after_ticks):
            conn.send_now(conn.frame(OP_TEXT, stop_message(self.spec, 2 + 2 * k).encode()))
            self.stop_sent = True
            return False
        audio = self.audio
        loop = k % audio.frames_per_loop
        timestamp = k * FRAME_MS
        sid = self.stream_sid
        inbound = media_text(
            2 + 2 * k, "inbound", k + 1, timestamp, self._first if k == 0 else audio.inbound[loop], sid
        )
        outbound = media_text(3 + 2 * k, "outbound", k + 1, timestamp, audio.outbound[loop], sid)
        inbound_frame = conn.frame(OP_TEXT, inbound.encode())
        outbound_frame = conn.frame(OP_TEXT, outbound.encode())
        now = time.monotonic()
        if COALESCE_TRACKS:
            conn.send_now(inbound_frame + outbound_frame)
        else:
            conn.send_now(inbound_frame)
            conn.send_now(outbound_frame)
        self.tick_times.append(now)
        self.ticks = k + 1
        return True


class Pacer:
    """Sends every registered call's frames in real time from one task."""

    def __init__(self) -> None:
        self._phases: list[list[SimCall]] = [[] for _ in range(PHASES)]
        self._next_phase = 0
        self.frames_sent = 0
        self.lag = array("d")
        """How late each phase with calls ran, seconds."""
        self._closing = False
        self.active = 0

    def add(self, call: SimCall) -> None:
        self._phases[self._next_phase].append(call)
        self._next_phase = (self._next_phase + 7) % PHASES  # 7 is coprime with 20: spreads in any order
        self.active += 1

    def close(self) -> None:
        """Return from `run` once every call has sent its stop."""
        self._closing = True

    async def run(self) -> None:
        slot = TICK_S / PHASES
        phases = self._phases
        origin = time.monotonic()
        step = 0
        while not (self._closing and self.active <= 0):
            for ahead in range(PHASES):
                if phases[(step + ahead) % PHASES]:
                    step += ahead
                    break
            else:  # nobody to serve this period
                step += PHASES
                await trio.sleep(max(0.0, origin + step * slot - time.monotonic()))
                continue
            target = origin + step * slot
            delay = target - time.monotonic()
            if delay > 0:
                await trio.sleep(delay)
            else:
                await trio.lowlevel.checkpoint()  # behind: catch up, but let the rest of the load run
            self.lag.append(max(0.0, time.monotonic() - target))
            phase = step % PHASES
            calls = phases[phase]
            kept: list[SimCall] | None = None
            sent = 0
            for i, call in enumerate(calls):
                before = call.ticks
                alive = call.tick()
                sent += call.ticks - before
                if not alive:
                    if kept is None:
                        kept = calls[:i]
                    self.active -= 1
                elif kept is not None:
                    kept.append(call)
            if kept is not None:
                phases[phase] = kept
            self.frames_sent += 2 * sent
            step += 1


@dataclass
class _SessionTrack:
    call: SimCall
    channels: int
    samples: int = 0
    completed_ticks: int = 0


@dataclass
class Tracker:
    """The fake Deepgram's hooks and everything measured from them."""

    calls: dict[int, SimCall] = field(default_factory=dict)
    window: tuple[float, float] = (float("inf"), float("-inf"))
    """Only frames sent, and results sent, within this interval are measured."""
    audio_latency: list[float] = field(default_factory=list)
    """Per Twilio frame pair: from leaving the simulator to its last byte reaching the fake."""
    added_latency: list[float] = field(default_factory=list)
    """Per Deepgram audio message: from the last frame it completes leaving the simulator to its arrival."""
    sessions: dict[str, _SessionTrack] = field(default_factory=dict)
    """By the fake's request id (unique per connection)."""
    session_of_call: dict[int, FakeDeepgramSession] = field(default_factory=dict)
    unidentified_sessions: int = 0
    sent_at: dict[bytes, float] = field(default_factory=dict)
    fanout_latency: list[float] = field(default_factory=list)
    fanout_worst: dict[bytes, float] = field(default_factory=dict)
    fanout_count: Counter[bytes] = field(default_factory=Counter)
    deliveries: int = 0
    unmatched_deliveries: int = 0
    results_sent_in_window: int = 0

    def on_audio(self, session: FakeDeepgramSession, data: bytes) -> None:
        now = time.monotonic()
        track = self.sessions.get(session.request_id)
        if track is None:
            channels = max(1, session.channels)
            index = tag_index(bytes(data[0::channels][:6]))
            call = self.calls.get(index) if index is not None else None
            if call is None:
                self.unidentified_sessions += 1
                return
            track = self.sessions[session.request_id] = _SessionTrack(call, channels)
            self.session_of_call[index] = session  # type: ignore[index]
        track.samples += len(data) // track.channels
        done = track.samples // FRAME_BYTES
        first = track.completed_ticks
        if done <= first:
            return
        sent = track.call.tick_times
        last = min(done, len(sent))
        start, end = self.window
        append = self.audio_latency.append
        for k in range(first, last):
            t = sent[k]
            if start <= t <= end:
                append(now - t)
        if last > first:
            t = sent[last - 1]
            if start <= t <= end:
                self.added_latency.append(now - t)
        track.completed_ticks = done

    def on_send(self, session: FakeDeepgramSession, text: str) -> None:
        now = time.monotonic()
        self.sent_at[text.encode()] = now
        start, end = self.window
        if start <= now <= end:
            self.results_sent_in_window += 1

    def delivered(self, payload: bytes, now: float) -> None:
        sent = self.sent_at.get(payload)
        if sent is None:
            self.unmatched_deliveries += 1
            return
        self.deliveries += 1
        start, end = self.window
        if start <= sent <= end:
            latency = now - sent
            self.fanout_latency.append(latency)
            self.fanout_count[payload] += 1
            if latency > self.fanout_worst.get(payload, -1.0):
                self.fanout_worst[payload] = latency

    def forget_before(self, moment: float) -> None:
        """Drop send times older than ``moment`` (long runs)."""
        old = [key for key, at in self.sent_at.items() if at < moment]
        for key in old:
            del self.sent_at[key]
            self.fanout_count.pop(key, None)


class SimSubscriber:
    """One ``/client`` subscriber of one call."""

    def __init__(self, call: SimCall) -> None:
        self.call = call
        self.subscribed = trio.Event()
        self.failure: str | None = None
        self.skipped = False
        """The call ended before it could be subscribed to (a call started as the step ended)."""
        self.messages = 0
        self.close_code: int | None = None

    async def run(
        self,
        host: str,
        port: int,
        tracker: Tracker,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        *,
        give_up_s: float = 20.0,
    ) -> None:
        conn: ClientConnection | None = None
        try:
            deadline = trio.current_time() + give_up_s
            while True:
                async with limiter:
                    conn = await bench_ws.connect(host, port, "/client", nursery)
                listed = json.loads(await conn.receive_text(10.0))
                if self.call.call_sid in listed:
                    break
                await conn.aclose()
                conn = None
                if self.call.finished.is_set() or self.call.stop_sent:
                    self.skipped = True
                    return
                if trio.current_time() > deadline:
                    self.failure = "call never listed"
                    return
                await trio.sleep(0.05)
            conn.send_text(self.call.call_sid)
            self.subscribed.set()
            while conn.close_code is None:
                try:
                    now, frames = await conn.receive()
                except EOFError:
                    break
                for opcode, payload in frames:
                    if opcode == OP_TEXT:
                        self.messages += 1
                        tracker.delivered(payload, now)
                    elif opcode == OP_CLOSE:
                        break
            self.close_code = conn.close_code
        except (OSError, EOFError, bench_ws.WebSocketError, trio.TooSlowError, ValueError) as error:
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self.subscribed.set()
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose(timeout=1.0)


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)
