"""The hub: which calls are live, who listens to each, and fan-out of their messages.

`Hub` is the interface the call pipeline and the `/client` route use; `InMemoryHub` serves one
process. A Redis-backed hub for several processes implements the same methods, delivering to its
local subscribers through the same `Subscription` objects.

Fan-out never waits for a subscriber: `publish` offers the message (one `str`, shared by all) to
every subscription's bounded queue without blocking. A subscriber whose queue is full is too slow
to follow the call; it is ended with close code 1008 and a reason instead of silently losing
messages or slowing anyone else down. Interim results are droppable: once a subscriber's queue is
half full it is lagging, and interims are skipped for it (counted) so that the finals still fit; a
final is never dropped silently. No lock exists, so none is held across an await.

Resuming: a call's kept messages (everything but interim results, and its end) have ids and are
kept in its history (the last `HISTORY` of them; and for `RESUME_WINDOW_S` after the call ended, if a
subscriber was given ids: the one-process hub keeps no more than `ENDED_CALLS_KEPT` ended calls). A
subscriber that asks for ids gets them (`callscribe.core.fanout.with_id`); one that subscribes
`after` the id of the last message it saw gets the history after it, then the live messages, each
kept message once. A plain subscriber gets the text alone, as it came from Deepgram.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

import trio

from callscribe.core.fanout import END, GAP_NOTICE, MESSAGE, IdClock, Resume, end_text, id_key, parse_end, with_id

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013

CLOSE_INTERNAL_ERROR = 1011

DEFAULT_QUEUE_SIZE = 1000
"""Messages a subscriber may lag behind: with interim results a call produces a few per second."""
HISTORY = 1000
"""Kept messages (finals, notices) of a call a subscriber can resume from."""
RESUME_WINDOW_S = 300.0
"""How long after its end a call can still be resumed."""
ENDED_CALLS_KEPT = 100
"""Ended calls whose history one process keeps (the oldest go first)."""


class UnknownCall(LookupError):
    """No live call has this callSid."""


class HubUnavailable(RuntimeError):
    """The hub cannot answer now (its Redis is unreachable); the subscriber may try again later."""


class Subscription:
    """One listener's bounded queue of a call's messages, and how it is to be closed."""

    def __init__(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> None:
        self.call_sid = call_sid
        self.ids = ids or after is not None
        """Kept messages are given with their ids."""
        self.resume = Resume(after or "")
        self._queue_size = queue_size
        self._held: list[tuple[str, bool, str, tuple[int, str] | None]] | None = None
        # Bounded by `offer`: `queue_size` live messages, besides the history read back (`release`),
        # which may be longer than that and is not the subscriber lagging.
        self._send, self._receive = trio.open_memory_channel[str](math.inf)
        self._queued = 0
        self._replaying = False
        self._replayed, self._replay_end = 0, 0
        """Messages read back from the history, and `_queued` after the last of them."""
        self.close_code = CLOSE_NORMAL
        self.close_reason = "call ended"
        self.delivered = 0
        self.skipped = 0
        """Droppable (interim) messages not queued because the subscriber was lagging."""
        self.ended = False
        self._lagging_at = max(1, queue_size // 2)
        self.cancel_scope = trio.CancelScope()
        """The subscriber's sending loop runs in here, so an overflow can stop a send stuck on a
        stalled peer."""

    def offer(self, message: str, droppable: bool = False, message_id: str = "") -> bool:
        """Queue `message` without waiting. False if the queue was full: the subscription is ended.

        A kept message comes with its `message_id`: one the subscriber already has is skipped."""
        if self.ended:
            return True
        if self._held is not None:
            return self._hold((message, droppable, message_id, None))
        if message_id:
            if not self.resume.admit(message_id):
                return True
            if self.ids:
                message = with_id(message, message_id)
        unread = self._send.statistics().current_buffer_used
        live = unread - min(self._replayed, max(0, self._replay_end - self.delivered))
        if not self._replaying:
            if droppable and live >= self._lagging_at:
                self.skipped += 1
                return True
            if live >= self._queue_size:
                self.end(CLOSE_POLICY, f"subscriber too slow: {unread} messages unread")
                self.cancel_scope.cancel()
                return False
        self._send.send_nowait(message)
        self._queued += 1
        if self._replaying:
            self._replayed, self._replay_end = self._replayed + 1, self._queued
        return True

    def finish(self, code: int, reason: str, message_id: str = "") -> None:
        """The call ended (kept message `message_id`): after the messages before it, the end."""
        if self._held is not None:
            self._hold(("", False, message_id, (code, reason)))
        elif not message_id or self.resume.admit(message_id):
            self.end(code, reason)

    def hold(self) -> None:
        """Keep what is offered from now on until `release` (while the history is read back)."""
        self._held = []

    def release(self, before: Iterable[tuple[str, str, str]] = ()) -> None:
        """Offer `before` (kept messages read back: id, kind, text), then what was held, in order;
        each kept message once."""
        held, self._held = self._held or [], None
        self._replayed = min(self._replayed, max(0, self._replay_end - self.delivered))  # still unread
        self._replaying = True  # (bounded by the history: not the subscriber lagging)
        try:
            for message_id, kind, text in before:
                if kind == END:
                    self.finish(*(parse_end(text) or (CLOSE_NORMAL, "call ended")), message_id)
                else:
                    self.offer(text, False, message_id)
        finally:
            self._replaying = False
        for message, droppable, message_id, end in held:
            if end is not None:
                self.finish(*end, message_id)
            elif not self.offer(message, droppable, message_id):
                return

    def _hold(self, item: tuple[str, bool, str, tuple[int, str] | None]) -> bool:
        assert self._held is not None
        if len(self._held) >= self._queue_size:
            self._held = None
            self.end(CLOSE_POLICY, "subscriber too slow: too many messages while resuming")
            self.cancel_scope.cancel()
            return False
        self._held.append(item)
        return True

    def end(self, code: int, reason: str) -> None:
        """No more messages: the listener gets what is queued, then the end with `code` and `reason`."""
        if not self.ended:
            self.ended = True
            self.close_code, self.close_reason = code, reason
            self._send.close()

    def drop(self, reason: str) -> None:
        """The listener stopped taking messages: it is ended with 1008 and `reason`, even if the
        call had already ended normally, and its sending loop is cancelled."""
        self.end(CLOSE_POLICY, reason)
        self.close_code, self.close_reason = CLOSE_POLICY, reason
        self.cancel_scope.cancel()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str]:
        async for message in self._receive:
            self.delivered += 1
            yield message


def gap_notice(call_sid: str, after: str, first_kept: str) -> str:
    """What a subscriber resuming from an id older than the history is told first."""
    return json.dumps(
        {
            "type": "Error",
            "source": "callscribe",
            "callSid": call_sid,
            "message": f"{GAP_NOTICE} {after}: the call's messages before {first_kept} are no longer"
            f" kept (about the last {HISTORY} are); some may be missing",
        }
    )


class Hub(Protocol):
    """`register_call`, `unregister_call` and `publish` are awaited on a call's media path: they
    return at once, waiting neither for a subscriber nor for anything the hub is built on."""

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The hub's own tasks (connections, dispatch); started before any call, cancelled after the last."""

    async def register_call(self, call_sid: str) -> None:
        """A stream of this call starts. A call may have several streams (Twilio can fork twice)."""

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        """A stream of this call ends; when its last stream ends every subscriber is ended."""

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        """Deliver `message` to every subscriber of the call, never blocking on any of them.

        A droppable message (an interim result) may be skipped for a subscriber that lags behind;
        it is not kept in the call's history and has no id.

        A sticky message (a notice such as "transcription failed") is also kept, the latest one
        per call, and given first to anyone who subscribes later."""

    async def active_calls(self) -> list[str]:
        """callSids of the live calls; raises `HubUnavailable` if the hub cannot tell now."""

    def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """A subscription to a live call, for the block's duration; raises `UnknownCall` if there is
        none, `HubUnavailable` if the hub cannot tell now. With `ids`, kept messages carry their ids.
        With `after` (an id), the call's kept messages after it come first (also for a call that
        ended within `RESUME_WINDOW_S`), then the live ones; no sticky notice is given first."""

    def stats(self) -> dict[str, int]:
        """Counts for health checks and metrics: {"calls": ..., "subscribers": ..., "up": 1 while
        the hub takes subscribers (0 during a Redis outage)}."""

    async def shutdown(self, reason: str = "server shutting down", *, grace_s: float = 0.0) -> None:
        """End every subscription with 1001; subscribers of calls streaming into other processes
        first get up to `grace_s` to receive their calls' ends."""


class _Streamed(Protocol):
    streams: int


_Call = TypeVar("_Call", bound=_Streamed)


def last_stream_ended(calls: dict[str, _Call], call_sid: str) -> _Call | None:
    """A stream of `call_sid` ended (Twilio can fork a call's media twice): the call's entry, taken
    out of `calls`, if that was its last stream; None while another streams, or for a call not there."""
    entry = calls.get(call_sid)
    if entry is None:
        return None
    entry.streams -= 1
    if entry.streams > 0:
        return None
    del calls[call_sid]
    return entry


class _CallEntry:
    __slots__ = ("clock", "ended_at", "evicted", "history", "notice", "resumable", "streams", "subscriptions")

    def __init__(self) -> None:
        self.streams = 0
        self.subscriptions: set[Subscription] = set()
        self.notice: tuple[str, str] | None = None
        """The sticky notice and its id."""
        self.history: deque[tuple[str, str, str]] = deque()
        """Kept messages: (id, kind, text), the end's text being its code and reason."""
        self.evicted = ""
        """The id of the last kept message that no longer fits the history."""
        self.clock = IdClock()
        self.ended_at = 0.0
        self.resumable = False
        """A subscriber was given ids: the history is kept after the call ends."""

    def keep(self, kind: str, text: str) -> str:
        message_id = self.clock.next(int(time.time() * 1000))
        if len(self.history) >= HISTORY:
            self.evicted = self.history.popleft()[0]
        self.history.append((message_id, kind, text))
        return message_id


class InMemoryHub:
    """The hub of one process."""

    def __init__(self) -> None:
        self._calls: dict[str, _CallEntry] = {}
        self._ended: OrderedDict[str, _CallEntry] = OrderedDict()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def register_call(self, call_sid: str) -> None:
        entry = self._calls.get(call_sid) or self._ended.pop(call_sid, None) or _CallEntry()
        self._calls[call_sid] = entry
        entry.streams += 1

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        entry = last_stream_ended(self._calls, call_sid)
        if entry is None:
            return
        message_id = entry.keep(END, end_text(code, reason))
        for subscription in entry.subscriptions:
            subscription.finish(code, reason, message_id)
        if entry.resumable:  # nobody else has an id to resume from
            entry.ended_at = time.monotonic()
            self._ended[call_sid] = entry
            self._forget_ended()

    def _forget_ended(self) -> None:
        too_old = time.monotonic() - RESUME_WINDOW_S
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if len(self._ended) <= ENDED_CALLS_KEPT and oldest.ended_at > too_old:
                break
            self._ended.popitem(last=False)

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        entry = self._calls.get(call_sid)
        if entry is None:
            return
        message_id = "" if droppable else entry.keep(MESSAGE, message)
        if sticky:
            entry.notice = (message, message_id)
        for subscription in entry.subscriptions:
            if not subscription.offer(message, droppable, message_id):
                log.warning("call %s: dropping a subscriber: %s", call_sid, subscription.close_reason)

    async def active_calls(self) -> list[str]:
        return list(self._calls)

    @asynccontextmanager
    async def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> AsyncIterator[Subscription]:
        self._forget_ended()
        entry = self._calls.get(call_sid) or (self._ended.get(call_sid) if after is not None else None)
        if entry is None:
            raise UnknownCall(call_sid)
        subscription = Subscription(call_sid, queue_size, ids=ids, after=after)
        entry.resumable = entry.resumable or subscription.ids
        subscription.hold()
        if after is None:
            before = [] if entry.notice is None else [(entry.notice[1], MESSAGE, entry.notice[0])]
        else:
            gap = entry.evicted and id_key(after) < id_key(entry.evicted) and entry.history
            before = [("", MESSAGE, gap_notice(call_sid, after, entry.history[0][0]))] if gap else []
            before += entry.history
        subscription.release(before)
        entry.subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            entry.subscriptions.discard(subscription)

    def stats(self) -> dict[str, int]:
        return {
            "calls": len(self._calls),
            "subscribers": sum(len(entry.subscriptions) for entry in self._calls.values()),
            "up": 1,
        }

    async def shutdown(self, reason: str = "server shutting down", *, grace_s: float = 0.0) -> None:
        for entry in (*self._calls.values(), *self._ended.values()):
            for subscription in entry.subscriptions:
                subscription.end(CLOSE_GOING_AWAY, reason)
