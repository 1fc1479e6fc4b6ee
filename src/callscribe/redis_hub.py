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
import trio

from callscribe.hub import CLOSE_GOING_AWAY, CLOSE_NORMAL, DEFAULT_QUEUE_SIZE, Subscription, UnknownCall

log = logging.getLogger("callscribe.redis_hub")

NOTICE_TTL_S = 24 * 3600


class RedisHub:
    def __init__(self, url: str, *, prefix: str = "callscribe", lease_s: float = 30.0) -> None:
        self._client = coredis.Redis.from_url(url, decode_responses=True)
        self.url = url
        self.prefix = prefix
        self.lease_s = lease_s
        self._local_streams: dict[str, int] = {}
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._pubsub: coredis.patterns.pubsub.PubSub[str] | None = None  # type: ignore[name-defined]

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then dispatch pub/sub messages and keep this process's calls listed until cancelled."""
        async with self._client:
            await self._client.ping()
            async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
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
        await self._client.hincrby(self._key("streams"), call_sid, 1)
        await self._client.zadd(self._key("calls"), {call_sid: time.time()})

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        left = self._local_streams.get(call_sid, 0) - 1
        if left > 0:
            self._local_streams[call_sid] = left
        else:
            self._local_streams.pop(call_sid, None)
        if await self._client.hincrby(self._key("streams"), call_sid, -1) > 0:
            return
        await self._client.hdel(self._key("streams"), [call_sid])
        await self._client.zrem(self._key("calls"), [call_sid])
        await self._client.delete([self._key("notice", call_sid)])
        await self._client.publish(self._key("call", call_sid), "e" + json.dumps({"code": code, "reason": reason}))

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        if sticky:
            await self._client.set(self._key("notice", call_sid), message, ex=NOTICE_TTL_S)
        await self._client.publish(self._key("call", call_sid), ("i" if droppable else "m") + message)

    async def active_calls(self) -> list[str]:
        listed = await self._client.zrange(
            self._key("calls"), time.time() - self.lease_s, "+inf", sortby=coredis.PureToken.BYSCORE
        )
        return list(listed)

    @asynccontextmanager
    async def subscribe(self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE) -> AsyncIterator[Subscription]:
        vouched = await self._client.zscore(self._key("calls"), call_sid)
        if vouched is None or vouched < time.time() - self.lease_s or self._pubsub is None:
            raise UnknownCall(call_sid)
        subscription = Subscription(call_sid, queue_size)
        local = self._subscriptions.setdefault(call_sid, set())
        local.add(subscription)
        try:
            if len(local) == 1:
                await self._pubsub.subscribe(self._key("call", call_sid))
            notice = await self._client.get(self._key("notice", call_sid))
            if notice is not None:
                subscription.offer(notice)
            if await self._client.zscore(self._key("calls"), call_sid) is None:
                subscription.end(CLOSE_NORMAL, "call ended")  # it ended while we were subscribing
            yield subscription
        finally:
            local.discard(subscription)
            if not local:
                del self._subscriptions[call_sid]
                if self._pubsub is not None:
                    with trio.move_on_after(2, shield=True):
                        await self._pubsub.unsubscribe(self._key("call", call_sid))

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
            call_sid = str(message["channel"])[len(prefix):]
            data = str(message["data"])
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
                await self._client.zadd(self._key("calls"), {sid: now for sid in self._local_streams})
