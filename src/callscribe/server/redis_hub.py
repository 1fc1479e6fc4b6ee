"""A hub shared by several callscribe processes (on one machine or many) through Redis.

Same interface and same delivery rules as `InMemoryHub`: a call streaming into one process can be
followed by subscribers connected to any other. Redis holds the registry, each process fans out
to its own subscribers:

- `{prefix}:calls`        sorted set: callSid -> time its owning process last vouched for it. A
                          process refreshes its live calls every `lease_s / 3`; a call not
                          refreshed for `lease_s` (its process died) drops out of the list.
- `{prefix}:streams`      hash: callSid -> streams of that call (Twilio may fork a call twice).
- `{prefix}:notice:{sid}` the call's sticky notice (e.g. "transcription failed").
- `{prefix}:call:{sid}`   pub/sub channel of the call. A message is one kind letter and the text:
                          `m` a message, `i` a droppable (interim) one, `e` the end of the call
                          with its close code and reason as JSON.

When Redis is unreachable the calls go on: each operation's failure is logged (once per outage)
and swallowed, and this process's own subscribers of this process's calls are served directly,
ended included, until Redis answers again; coredis reconnects (and resubscribes) by itself. What
cannot work meanwhile is everything across processes: other processes' subscribers miss those
messages, and new subscribers cannot join.

Each process keeps one pub/sub connection, subscribed to the channels of calls that have a local
subscriber; a dispatcher task hands every message to those subscribers' bounded queues without
blocking (coredis buffers the connection's messages in an unbounded stream; the dispatcher drains
it as fast as messages arrive). Messages of one call are published one after another, each
awaited, so Redis delivers them, and the end of the call, in order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import coredis.retry
import trio

from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    DEFAULT_QUEUE_SIZE,
    HubUnavailable,
    Subscription,
    UnknownCall,
)

log = logging.getLogger(__name__)

NOTICE_TTL_S = 24 * 3600
CONNECT_TIMEOUT_S = 2.0
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError)
PUBSUB_RETRY = coredis.retry.ExponentialBackoffRetryPolicy(
    (coredis.exceptions.ConnectionError,), retries=None, base_delay=0.1, max_delay=2.0, jitter=True
)
"""The pub/sub connection reconnects (and resubscribes) by itself, retrying at most every 2 s."""
SUBSCRIBE_WAIT_S = 5.0
"""A new subscriber waits this long for a reconnecting pub/sub connection before giving up."""


class RedisHub:
    def __init__(self, url: str, *, prefix: str = "callscribe", lease_s: float = 30.0) -> None:
        self._client = coredis.Redis.from_url(url, decode_responses=True, connect_timeout=CONNECT_TIMEOUT_S)
        self.url = url
        self.prefix = prefix
        self.lease_s = lease_s
        self._local_streams: dict[str, int] = {}
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._pubsub: coredis.patterns.pubsub.PubSub[str] | None = None  # type: ignore[name-defined]
        self.down = False
        """Redis failed the last operation; local subscribers are served directly."""

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then dispatch pub/sub messages and keep this process's calls listed until cancelled."""
        async with self._client:
            await self._client.ping()
            async with self._client.pubsub(ignore_subscribe_messages=True, retry_policy=PUBSUB_RETRY) as pubsub:
                self._pubsub = pubsub
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._dispatch, pubsub)
                        nursery.start_soon(self._vouch)
                        task_status.started()
                finally:
                    self._pubsub = None

    async def register_call(self, call_sid: str) -> None:
        self._local_streams[call_sid] = self._local_streams.get(call_sid, 0) + 1
        try:
            await self._client.hincrby(self._key("streams"), call_sid, 1)
            await self._client.zadd(self._key("calls"), {call_sid: time.time()})
        except REDIS_ERRORS as error:
            self._failed(f"registering call {call_sid}", error)
        else:
            self._answered()

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        left = self._local_streams.get(call_sid, 0) - 1
        if left > 0:
            self._local_streams[call_sid] = left
        else:
            self._local_streams.pop(call_sid, None)
        end = "e" + json.dumps({"code": code, "reason": reason})
        try:
            if await self._client.hincrby(self._key("streams"), call_sid, -1) > 0:
                return
            await self._client.hdel(self._key("streams"), [call_sid])
            await self._client.zrem(self._key("calls"), [call_sid])
            await self._client.delete([self._key("notice", call_sid)])
            await self._client.publish(self._key("call", call_sid), end)
        except REDIS_ERRORS as error:
            self._failed(f"ending call {call_sid}", error)
            if left <= 0:
                self._deliver(call_sid, end)  # (its Redis entry drops out after the lease)
        else:
            self._answered()

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        data = ("i" if droppable else "m") + message
        try:
            if sticky:
                await self._client.set(self._key("notice", call_sid), message, ex=NOTICE_TTL_S)
            await self._client.publish(self._key("call", call_sid), data)
        except REDIS_ERRORS as error:
            self._failed(f"publishing for call {call_sid}", error)
            self._deliver(call_sid, data)
        else:
            self._answered()

    def _failed(self, what: str, error: Exception) -> None:
        if not self.down:
            self.down = True
            log.error(
                "Redis is unavailable (%s: %s); calls go on, this process's subscribers are served directly",
                what,
                error,
            )

    def _answered(self) -> None:
        if self.down:
            self.down = False
            log.warning("Redis is back")

    async def active_calls(self) -> list[str]:
        try:
            listed = await self._client.zrange(
                self._key("calls"), time.time() - self.lease_s, "+inf", sortby=coredis.PureToken.BYSCORE
            )
        except REDIS_ERRORS as error:
            self._failed("listing calls", error)
            raise HubUnavailable(f"Redis is unavailable: {error}") from error
        self._answered()
        return list(listed)

    @asynccontextmanager
    async def subscribe(self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE) -> AsyncIterator[Subscription]:
        try:
            vouched = await self._client.zscore(self._key("calls"), call_sid)
        except REDIS_ERRORS as error:
            self._failed(f"looking up call {call_sid}", error)
            raise HubUnavailable(f"Redis is unavailable: {error}") from error
        if vouched is None or vouched < time.time() - self.lease_s or self._pubsub is None:
            raise UnknownCall(call_sid)
        subscription = Subscription(call_sid, queue_size)
        local = self._subscriptions.setdefault(call_sid, set())
        local.add(subscription)
        try:
            try:
                if len(local) == 1:
                    await self._listen_to(call_sid)
                notice = await self._client.get(self._key("notice", call_sid))
                ended = await self._client.zscore(self._key("calls"), call_sid) is None
            except REDIS_ERRORS as error:
                self._failed(f"subscribing to call {call_sid}", error)
                raise HubUnavailable(f"Redis is unavailable: {error}") from error
            if notice is not None:
                subscription.offer(notice)
            if ended:
                subscription.end(CLOSE_NORMAL, "call ended")  # it ended while we were subscribing
            yield subscription
        finally:
            local.discard(subscription)
            if not local:
                del self._subscriptions[call_sid]
                if self._pubsub is not None:
                    with trio.move_on_after(2, shield=True):
                        try:
                            await self._pubsub.unsubscribe(self._key("call", call_sid))
                        except REDIS_ERRORS as error:  # a reconnection subscribes afresh anyway
                            log.info("call %s: could not unsubscribe from Redis: %s", call_sid, error)

    async def _listen_to(self, call_sid: str) -> None:
        """Subscribe the pub/sub connection to the call's channel, waiting (bounded) while it reconnects."""
        deadline = trio.current_time() + SUBSCRIBE_WAIT_S
        while True:
            pubsub = self._pubsub
            if pubsub is None:
                raise UnknownCall(call_sid)  # shutting down
            try:
                await pubsub.subscribe(self._key("call", call_sid))
                return
            except coredis.exceptions.ConnectionError:
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)

    def stats(self) -> dict[str, int]:
        """This process's share: its calls' streams and its subscribers."""
        return {"calls": len(self._local_streams), "subscribers": sum(map(len, self._subscriptions.values()))}

    async def shutdown(self, reason: str = "server shutting down") -> None:
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.end(CLOSE_GOING_AWAY, reason)

    async def _dispatch(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> None:  # type: ignore[name-defined]
        prefix = self._key("call", "")
        while True:
            message = await pubsub.get_message(timeout=None)  # type: ignore[arg-type]
            if message is None or message.get("type") != "message":
                await trio.lowlevel.checkpoint()
                continue
            self._deliver(str(message["channel"])[len(prefix) :], str(message["data"]))

    def _deliver(self, call_sid: str, data: str) -> None:
        """Hand one message (kind letter + text) to this process's subscribers of the call."""
        kind, text = data[:1], data[1:]
        for subscription in list(self._subscriptions.get(call_sid, ())):
            if kind == "e":
                end = json.loads(text)
                subscription.end(int(end["code"]), str(end["reason"]))
            elif not subscription.offer(text, kind == "i"):
                log.warning("call %s: dropping a subscriber: %s", call_sid, subscription.close_reason)

    async def _vouch(self) -> None:
        """Keep this process's live calls listed (a crashed process's calls drop out after the lease)."""
        while True:
            await trio.sleep(self.lease_s / 3)
            if self._local_streams:
                now = time.time()
                try:
                    await self._client.zadd(self._key("calls"), {sid: now for sid in self._local_streams})
                except REDIS_ERRORS as error:
                    self._failed("renewing the call list", error)
                else:
                    self._answered()
