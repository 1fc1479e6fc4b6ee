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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import trio

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013

DEFAULT_QUEUE_SIZE = 1000
"""Messages a subscriber may lag behind: with interim results a call produces a few per second."""


class UnknownCall(LookupError):
    """No live call has this callSid."""


class HubUnavailable(RuntimeError):
    """The hub cannot answer now (its Redis is unreachable); the subscriber may try again later."""


class Subscription:
    """One listener's bounded queue of a call's messages, and how it is to be closed."""

    def __init__(self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.call_sid = call_sid
        self._send, self._receive = trio.open_memory_channel[str](queue_size)
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

    def offer(self, message: str, droppable: bool = False) -> bool:
        """Queue `message` without waiting. False if the queue was full: the subscription is ended."""
        if self.ended:
            return True
        if droppable and self._send.statistics().current_buffer_used >= self._lagging_at:
            self.skipped += 1
            return True
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            unread = self._send.statistics().current_buffer_used
            self.end(CLOSE_POLICY, f"subscriber too slow: {unread} messages unread")
            self.cancel_scope.cancel()
            return False
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

        A droppable message (an interim result) may be skipped for a subscriber that lags behind.

        A sticky message (a notice such as "transcription failed") is also kept, the latest one
        per call, and given first to anyone who subscribes later."""

    async def active_calls(self) -> list[str]:
        """callSids of the live calls; raises `HubUnavailable` if the hub cannot tell now."""

    def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> AbstractAsyncContextManager[Subscription]:
        """A subscription to a live call, for the block's duration; raises `UnknownCall` if there is
        none, `HubUnavailable` if the hub cannot tell now."""

    def stats(self) -> dict[str, int]:
        """Counts for health checks: {"calls": ..., "subscribers": ...}."""

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """End every subscription with 1001."""


class _CallEntry:
    __slots__ = ("notice", "streams", "subscriptions")

    def __init__(self) -> None:
        self.streams = 0
        self.subscriptions: set[Subscription] = set()
        self.notice: str | None = None


class InMemoryHub:
    """The hub of one process."""

    def __init__(self) -> None:
        self._calls: dict[str, _CallEntry] = {}

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def register_call(self, call_sid: str) -> None:
        self._calls.setdefault(call_sid, _CallEntry()).streams += 1

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        entry = self._calls.get(call_sid)
        if entry is None:
            return
        entry.streams -= 1
        if entry.streams > 0:
            return
        del self._calls[call_sid]
        for subscription in entry.subscriptions:
            subscription.end(code, reason)

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        entry = self._calls.get(call_sid)
        if entry is None:
            return
        if sticky:
            entry.notice = message
        for subscription in entry.subscriptions:
            if not subscription.offer(message, droppable):
                log.warning("call %s: dropping a subscriber: %s", call_sid, subscription.close_reason)

    async def active_calls(self) -> list[str]:
        return list(self._calls)

    @asynccontextmanager
    async def subscribe(self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE) -> AsyncIterator[Subscription]:
        entry = self._calls.get(call_sid)
        if entry is None:
            raise UnknownCall(call_sid)
        subscription = Subscription(call_sid, queue_size)
        if entry.notice is not None:
            subscription.offer(entry.notice)
        entry.subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            entry.subscriptions.discard(subscription)

    def stats(self) -> dict[str, int]:
        return {
            "calls": len(self._calls),
            "subscribers": sum(len(entry.subscriptions) for entry in self._calls.values()),
        }

    async def shutdown(self, reason: str = "server shutting down") -> None:
        for entry in self._calls.values():
            for subscription in entry.subscriptions:
                subscription.end(CLOSE_GOING_AWAY, reason)
