"""One process's Redis pub/sub connection: the listener, its dispatcher, and the bound on its backlog.

One connection per process is subscribed to the channels this process wants (the calls it has
subscribers of, its games' inbox); the dispatcher hands each message to `dispatch` without
blocking. After a drop the connection is reopened, once Redis answers again, on the channels wanted
then, and `reopened` runs (the hub catches its subscribers up from the calls' histories).

coredis reads ahead into unbounded buffers of its own, so past `backlog_limit` unread messages
(this process cannot keep up) the connection is dropped with its backlog, `shed` runs (the hub
ends the subscribers who missed messages), and it reconnects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import coredis
import trio

from callscribe.server.hub import HubUnavailable
from callscribe.server.redis_link import PUBSUB_ERRORS, RedisLink

log = logging.getLogger(__name__)

PUBSUB_BACKLOG = 10_000
"""Pub/sub messages coredis may hold unread before the connection is dropped."""
SUBSCRIBE_WAIT_S = 5.0
"""A new subscription waits this long for a reconnecting pub/sub connection."""


class _Overloaded(Exception):
    """The dispatcher is too far behind the pub/sub connection."""


class PubSubListener:
    def __init__(
        self,
        link: RedisLink,
        *,
        dispatch: Callable[[str, object], None],
        channels: Callable[[], list[str]],
        shed: Callable[[], None],
        reopened: Callable[[], Awaitable[None]],
        backlog_limit: int = PUBSUB_BACKLOG,
    ) -> None:
        self._link = link
        self._dispatch_message, self._channels, self._shed, self._reopened = dispatch, channels, shed, reopened
        self.backlog_limit = backlog_limit
        self._pubsub: coredis.patterns.pubsub.PubSub[str] | None = None
        self._listening = trio.Event()

    async def subscribe(self, channel: str) -> None:
        """Subscribe to `channel`, waiting (bounded) while the connection reconnects."""
        with trio.move_on_after(SUBSCRIBE_WAIT_S):
            await self._listening.wait()
        if (pubsub := self._pubsub) is None:
            raise TimeoutError("the pub/sub connection is not back")
        with self._link.deadline():
            try:
                await pubsub.subscribe(channel)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError) as error:  # closing under us
                raise ConnectionError(f"the pub/sub connection closed ({error!r})") from error

    async def unsubscribe(self, channel: str) -> None:
        if (pubsub := self._pubsub) is None or self._link.down:
            return  # a reconnection subscribes afresh anyway
        with trio.move_on_after(self._link.timeout, shield=True):
            try:
                await pubsub.unsubscribe(channel)
            except PUBSUB_ERRORS as error:
                log.debug("could not unsubscribe from %s: %r", channel, error)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection open and dispatch its messages until cancelled. Raises
        `HubUnavailable` if it cannot subscribe at start-up."""
        link, started = self._link, False
        while True:
            error: BaseException = TimeoutError(f"no answer within {link.timeout:g} s")
            overloaded = False
            try:
                with trio.CancelScope(deadline=trio.current_time() + link.timeout) as connecting:
                    async with link.client.pubsub(
                        ignore_subscribe_messages=True, retry_policy=None, channels=self._channels()
                    ) as pubsub:
                        connecting.deadline = math.inf
                        self._pubsub = pubsub
                        self._listening.set()
                        if not started:
                            started = True
                            task_status.started()
                        else:
                            await self._reopened()
                        await self._dispatch(pubsub)
            except* _Overloaded:
                overloaded = True
            except* PUBSUB_ERRORS as group:
                error = group.exceptions[0]
            finally:
                self._pubsub = None
                if self._listening.is_set():
                    self._listening = trio.Event()
            if not started:
                raise HubUnavailable(f"Redis at {link.where}: cannot subscribe: {error}") from error
            if overloaded:
                log.warning(
                    "this process cannot keep up with Redis pub/sub (over %d messages unread): dropping them, reconnecting",
                    self.backlog_limit,
                )
                self._shed()
            else:
                link.failed("listening", error)
                await link.back.wait()

    async def _dispatch(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None and message["type"] == "message":
                self._dispatch_message(str(message["channel"]), message["data"])
            if _backlog(pubsub) > self.backlog_limit:
                raise _Overloaded


def _backlog(pubsub: Any) -> int:
    """Messages coredis has read for `pubsub` that the dispatcher has not taken yet. coredis keeps
    them in two unbounded internal streams and offers no count; 0 if its internals change (the
    backlog test in tests/server/test_redis_hub.py then fails)."""
    streams = (getattr(pubsub, "_receive_stream", None), getattr(pubsub._connection, "_push_message_buffer_out", None))
    return sum(stream.statistics().current_buffer_used for stream in streams if stream is not None)
