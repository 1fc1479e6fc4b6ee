"""The supervisor: the nursery that owns every call, and the server's orderly shutdown.

Quart-Trio cancels a WebSocket handler the moment its peer disconnects. A call must outlive that
(Twilio hanging up is the normal end of a call, and the last audio still has to be flushed and
transcribed), so calls do not run in their handler: they run in the supervisor's nursery, which
lives as long as the app. The `/twilio` handler starts the call here and waits for it; when the
handler ends it tells the call that its input ended, and the call finishes on its own.

The hub's own tasks, the call store's and the poll for subscribers waiting for their calls to start
(call_waiters.py) run in an outer nursery: they outlive the calls, which
unregister from the hub and hand their end to the store as they end. Subscriber and game connections register a cancel scope (`connection()`) that
shutdown cancels once the calls are done.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import trio

from callscribe.server.call import Call, Connector
from callscribe.server.call_settings import CallSettings
from callscribe.server.call_waiters import CallWaiters
from callscribe.server.games import GameRegistry
from callscribe.server.hub import CLOSE_GOING_AWAY, Hub
from callscribe.server.metrics import Metrics
from callscribe.server.store import NO_RECORDER, Recorder, call_end_of

log = logging.getLogger(__name__)

STORE_FLUSH_S = 5.0
"""At shutdown, how long the store gets to write what the calls handed it."""
CUT_OFF_S = 5.0
"""At shutdown, how long the calls still live after the grace get, once cancelled, to hand their
end to the store: their shielded clean-ups (closing Deepgram, leaving the hub) take up to 2 s each."""


class Supervisor:
    """Owns the hub's tasks, the waiters' poll and every call's; `run` lives as long as the app."""

    def __init__(
        self,
        settings: CallSettings,
        hub: Hub,
        games: GameRegistry,
        connect: Connector | None = None,
        recorder: Recorder = NO_RECORDER,
        waiters: CallWaiters | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.waiters = waiters if waiters is not None else CallWaiters(hub)
        """Subscribers waiting for their calls to start (`/client?wait=`)."""
        self.recorder = recorder
        self.games = games
        self.connect = connect
        self.calls: set[Call] = set()
        self.closing = False
        self.metrics = Metrics(self.live_counts)
        self._nursery: trio.Nursery | None = None
        self._connection_scopes: set[trio.CancelScope] = set()
        self._call_scopes: dict[Call, trio.CancelScope] = {}
        self._idle = trio.Event()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as hub_nursery:
            await hub_nursery.start(self.hub.run)
            await hub_nursery.start(self.recorder.run)
            await hub_nursery.start(self.waiters.run)
            async with trio.open_nursery() as calls:
                self._nursery = calls
                task_status.started()
                await trio.sleep_forever()
            hub_nursery.cancel_scope.cancel()

    @property
    def accepting(self) -> bool:
        """New calls and connections are welcome (running, not shutting down)."""
        return self._nursery is not None and not self.closing

    def start_call(
        self,
        receive: Callable[[float], Awaitable[Sequence[str | bytes | None]]],
        send: Callable[[str], Awaitable[None]] | None,
        wake_after: Callable[[int, int, float], None] | None = None,
    ) -> Call:
        """Start a call reading Twilio frames from `receive` (each call: the frames of one read, made
        no earlier than the time it is given; or, with `wake_after`, once the bytes it last asked
        for can be there) and talking back with `send`; the caller waits for `call.finished` and
        calls `call.end_input()` when its socket is gone."""
        if self._nursery is None:
            raise RuntimeError("the supervisor is not running")
        call = Call(
            receive,
            settings=self.settings,
            hub=self.hub,
            connect=self.connect,
            send=send,
            games=self.games,
            recorder=self.recorder,
            wake_after=wake_after,
        )
        # Live from now, not from when its task first runs: a shutdown in between must see it
        # (and end it with 1001) rather than cut it off when the calls' nursery is cancelled.
        self.calls.add(call)
        self._nursery.start_soon(self._run_call, call)
        return call

    async def _run_call(self, call: Call) -> None:
        outcome = "failed"
        cut_off = False
        try:
            with trio.CancelScope() as scope:
                self._call_scopes[call] = scope
                await call.run()
                outcome = "transcription_failed" if call.deepgram_error else ("ok" if call.call_sid else "no_start")
            cut_off = scope.cancelled_caught  # by shutdown, after the grace: not a crash
        except Exception:
            log.exception("call %s failed", call.call_sid or "(before start)")
        finally:
            self._call_scopes.pop(call, None)
            if call.call_sid:
                crashed = outcome == "failed" and not cut_off
                self.recorder.call_ended(call.call_sid, call_end_of(call, crashed=crashed))
            self.metrics.call_ended(call, outcome)
            self.calls.discard(call)
            if not self.calls:
                self._idle.set()

    async def shutdown(self, grace_s: float) -> None:
        """Refuse new work, let live calls finish (flush, final results, 1001 to subscribers), then stop."""
        self.closing = True
        deadline = trio.current_time() + grace_s
        for call in list(self.calls):
            call.end_input(CLOSE_GOING_AWAY, "server shutting down")
        if self.calls:
            self._idle = trio.Event()
            with trio.move_on_after(grace_s):
                await self._idle.wait()
        if self.calls:  # the grace is over: cut them off, and let them hand their end to the store
            log.warning("shutting down: %d calls did not finish within the grace; cutting them off", len(self.calls))
            for scope in list(self._call_scopes.values()):
                scope.cancel()
            with trio.move_on_after(CUT_OFF_S):
                await self._idle.wait()
        with trio.move_on_after(STORE_FLUSH_S):
            await self.recorder.flush()
        await self.hub.shutdown(grace_s=max(0.0, deadline - trio.current_time()))
        self.games.shutdown()
        for scope in list(self._connection_scopes):
            scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @contextmanager
    def connection(self) -> Iterator[trio.CancelScope]:
        """A scope around a subscriber or game connection that shutdown cancels."""
        with trio.CancelScope() as scope:
            self._connection_scopes.add(scope)
            try:
                yield scope
            finally:
                self._connection_scopes.discard(scope)

    def live_counts(self) -> dict[str, int]:
        stats = self.hub.stats()
        return {
            "active_calls": stats["calls"],
            "subscribers": stats["subscribers"],
            "games": len(self.games.games),
            "hub_up": stats["up"],
        }

    def health(self) -> dict[str, object]:
        counts = self.live_counts()
        del counts["hub_up"]  # (a process whose Redis is down still serves its calls: healthy)
        return {"status": "closing" if self.closing else "ok", **counts}
