"""A hub shared by several callscribe processes (on one machine or many) through Redis.

Same interface and delivery rules as `InMemoryHub`: a call streaming into one process can be
followed, and resumed, by subscribers connected to any other. Redis holds the registry and each
call's history; each process fans out to its own subscribers:

- `{prefix}:calls`            sorted set: callSid -> time a process streaming it last vouched for it
                              (every `lease_s / 3`). A call not vouched for within the lease (its
                              processes died) drops out of the list, and is *buried*: the first
                              process that follows it and notices writes an `Error` notice and its
                              end (1011) to its history, so every subscriber anywhere is told.
- `{prefix}:owners:{sid}`     hash: origin -> streams of the call on that process (Twilio may fork a
                              call twice, onto two processes). A stream's end ends the call when no
                              live process streams it any more.
- `{prefix}:history:{sid}`    Redis Stream: the call's kept messages (finals, notices) and its end,
                              the last `HISTORY`, kept `RESUME_WINDOW_S` after the last write. Entry
                              ids are the ids subscribers see and resume after; the last one trimmed
                              is the stream's max-deleted-entry-id (redis_scripts.py), and a resume
                              from before it is told that messages may be missing.
- `{prefix}:notice:{sid}`     the call's sticky notice ("id text").
- `{prefix}:fanout:{sid}`     pub/sub channel of the call: every message as it is written, in the
                              wire format of `callscribe.core.fanout` (kind, origin, id, text).
                              Older versions used `{prefix}:messages:{sid}` without ids: processes of
                              both kinds see neither each other's messages nor ends.

A kept message is one script: XADD to the history and PUBLISH with the id it got, so pub/sub
order is history order. A subscriber joins by reading the history after its resume point (the
last id now, or its `after`), and gets live messages from pub/sub with duplicates dropped by id
(`callscribe.core.fanout.Resume`); after a pub/sub reconnection every subscriber fed through it
is caught up from the history the same way (redis_subscribers.py).

A call never waits for Redis (redis_outbox.py). A process serves its own plain subscribers of its
own calls directly; subscribers that asked for ids get every message through Redis, in history
order. During an outage (redis_link.py) calls go on, plain subscribers of this process's calls are
served to the end, and new subscribers are refused (`HubUnavailable`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Unpack

import coredis
import trio

from callscribe.core.fanout import DROPPABLE, MESSAGE, end_text, wire
from callscribe.server.hub import (
    CLOSE_NORMAL,
    DEFAULT_QUEUE_SIZE,
    HISTORY,
    RESUME_WINDOW_S,
    HubUnavailable,
    Subscription,
)
from callscribe.server.redis_deaths import bury_dead
from callscribe.server.redis_link import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    PROBE_INTERVAL_S,
    REDIS_ERRORS,
    LinkOptions,
    RedisLink,
)
from callscribe.server.redis_outbox import OUTBOX_SIZE, Outbox, Pipeline, Write
from callscribe.server.redis_pubsub import PUBSUB_BACKLOG
from callscribe.server.redis_scripts import BURY, END_STREAM, JOIN, KEEP
from callscribe.server.redis_subscribers import RedisSubscribers

__all__ = ["COMMAND_TIMEOUT_S", "CONNECT_TIMEOUT_S", "PROBE_INTERVAL_S", "REDIS_ERRORS", "RedisHub"]

log = logging.getLogger(__name__)

NOTICE_TTL_S = 24 * 3600


def unkept_notice(call_sid: str, count: int) -> str:
    return json.dumps(
        {
            "type": "Error",
            "source": "callscribe",
            "callSid": call_sid,
            "message": f"{count} message(s) of the call did not reach Redis while it was unavailable:"
            " subscribers on other servers, and resumed subscriptions, miss them",
        }
    )


class RedisHub:
    def __init__(
        self,
        url: str,
        *,
        outbox_size: int = OUTBOX_SIZE,
        pubsub_backlog: int = PUBSUB_BACKLOG,
        link: RedisLink | None = None,
        **link_options: Unpack[LinkOptions],
    ) -> None:
        """`link_options` go to the `RedisLink` made for `url`; with a `link` given there is none to make."""
        if link is not None and link_options:
            raise TypeError(f"RedisHub: {', '.join(sorted(link_options))} would not be used: a link is given")
        self.link = link or RedisLink(url, **link_options)
        for script in (KEEP, END_STREAM, BURY, JOIN):
            self.link.register_script(script)
        self.link.renewals.append(self._renew)
        self._outbox = self.outbox = Outbox(self.link, outbox_size)
        self.services: list[Callable[[], Awaitable[None]]] = []
        """More tasks to run beside the hub's (the Redis games')."""
        self._local_streams: dict[str, int] = {}
        self._subscribers = RedisSubscribers(self.link, self._local_streams, pubsub_backlog)
        self._listener = self.listener = self._subscribers.listener
        """The pub/sub connection, which the Redis games share."""
        self.extra_channels = self._subscribers.extra_channels
        self.on_channel_message = self._subscribers.on_channel_message
        """Channels other than the calls' that the pub/sub connection is to carry, and who gets them."""
        self._unkept: dict[str, int] = {}
        """Per call: kept messages whose write never reached Redis (an outage, a full outbox)."""
        self._channel_prefix = self._subscribers.channel_prefix

    def _key(self, *parts: str) -> str:
        return self.link.key(*parts)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then run the link, the pub/sub listener, the writer and the watch until cancelled.
        Raises `HubUnavailable` if Redis does not answer at start-up."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.link.run)
            await nursery.start(self._listener.run)
            nursery.start_soon(self._outbox.run)
            nursery.start_soon(self._watch)
            for service in self.services:
                nursery.start_soon(service)
            task_status.started()

    # -- the calls' side: acts here at once, queues the Redis writes -------------------------------

    async def register_call(self, call_sid: str) -> None:
        self._local_streams[call_sid] = self._local_streams.get(call_sid, 0) + 1
        owners, origin = self._key("owners", call_sid), self.link.origin

        def stage(pipe: Pipeline) -> None:
            pipe.hincrby(owners, origin, 1)
            pipe.expire(owners, NOTICE_TTL_S)
            pipe.zadd(self._key("calls"), {call_sid: time.time()})

        self._outbox.put(Write(stage))

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        if self._unkept and self._writing():
            await self._tell_unkept(call_sid)  # before the end
        left = self._local_streams.get(call_sid, 0) - 1
        if left > 0:
            self._local_streams[call_sid] = left
        else:
            self._local_streams.pop(call_sid, None)
        keys = [
            self._key("owners", call_sid),
            self._key("calls"),
            self._key("notice", call_sid),
            self._key("history", call_sid),
            self._channel_prefix + call_sid,
            self._key("processes"),
        ]

        def stage(pipe: Pipeline) -> Any:
            args = [call_sid, self.link.origin, end_text(code, reason), HISTORY]
            return pipe.evalsha(self.link.script(END_STREAM), keys, [*args, self.link.stale_before(), RESUME_WINDOW_S])

        def done(going_on: Any) -> None:
            if not going_on:
                self._subscribers.end(call_sid, code, reason, direct_only=True)

        self._outbox.put(Write(stage, done, lambda: self._subscribers.end(call_sid, code, reason)))

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        if self._unkept and self._writing():
            await self._tell_unkept(call_sid)  # before what comes after the gap
        self._subscribers.deliver_direct(call_sid, message, droppable)
        channel, origin = self._channel_prefix + call_sid, self.link.origin
        if droppable:
            data = wire(DROPPABLE, origin, message)

            def stage_droppable(pipe: Pipeline) -> None:
                pipe.publish(channel, data)

            self._outbox.put(Write(stage_droppable))
            return
        keys = [self._key("history", call_sid), channel, self._key("notice", call_sid)]
        args = [HISTORY, MESSAGE, origin, message, "1" if sticky else "0", RESUME_WINDOW_S, NOTICE_TTL_S]

        def stage_kept(pipe: Pipeline) -> None:
            pipe.evalsha(self.link.script(KEEP), keys, args)

        def dropped() -> None:
            self._unkept[call_sid] = self._unkept.get(call_sid, 0) + 1

        self._outbox.put(Write(stage_kept, None, dropped))

    async def written(self) -> None:
        """Wait until every write queued so far has been sent to Redis (or dropped)."""
        await self._outbox.empty.wait()

    def _writing(self) -> bool:
        """Redis takes this process's writes again (not down, the outbox not dropping them)."""
        return not self.link.down and not self._outbox.congested

    async def _tell_unkept(self, call_sid: str) -> None:
        """The call's subscribers learn how many of its messages never reached Redis (once; a
        notice dropped in turn is counted and told again)."""
        count = self._unkept.pop(call_sid, 0)
        if count:
            await self.publish(call_sid, unkept_notice(call_sid, count))

    async def _renew(self) -> None:
        """Keep this process's live calls listed, and their histories; tell the calls' subscribers
        of the messages that never reached Redis (an outage): those elsewhere, and resumes, lack them."""
        for call_sid in list(self._unkept) if self._writing() else ():  # calls with nothing new since
            await self._tell_unkept(call_sid)
        if not self._local_streams:
            return
        now = time.time()
        try:
            with self.link.deadline():
                async with self.link.client.pipeline(transaction=False) as pipe:
                    pipe.zadd(self._key("calls"), {sid: now for sid in self._local_streams})
                    for sid in self._local_streams:
                        pipe.expire(self._key("history", sid), int(RESUME_WINDOW_S))
                        pipe.expire(self._key("owners", sid), NOTICE_TTL_S)
        except REDIS_ERRORS as error:
            self.link.failed("renewing the call list", error)

    # -- process death ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Every watch interval: bury the followed calls whose processes stopped vouching for them."""
        while True:
            await trio.sleep(self.link.watch_interval_s)
            followed = self._subscribers.followed()
            if followed and not self.link.down:
                await self._bury_dead(followed)

    async def _bury_dead(self, call_sids: list[str]) -> None:
        try:
            await bury_dead(self.link, call_sids, self._channel_prefix)
        except REDIS_ERRORS as error:
            self.link.failed("watching calls", error)

    # -- subscribers --------------------------------------------------------------------------------

    async def active_calls(self) -> list[str]:
        if self.link.down:
            raise HubUnavailable("Redis is unavailable")
        try:
            with self.link.deadline():
                listed = await self.link.client.zrange(
                    self._key("calls"), self.link.stale_before(), "+inf", sortby=coredis.PureToken.BYSCORE
                )
        except REDIS_ERRORS as error:
            raise self.link.unavailable("listing calls", error) from error
        return list(listed)

    def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        return self._subscribers.subscribe(call_sid, queue_size, ids=ids, after=after)

    def stats(self) -> dict[str, int]:
        """This process's share: its calls' streams and its subscribers."""
        return {
            "calls": len(self._local_streams),
            "subscribers": self._subscribers.count(),
            "up": int(not self.link.down),
        }

    async def shutdown(self, reason: str = "server shutting down", *, grace_s: float = 0.0) -> None:
        """Give this process's subscribers of calls on other processes up to `grace_s` to get their
        calls' ends (those processes may be draining too), end every other subscription with 1001,
        then give the outbox (the calls' ends) a moment to reach Redis."""
        with trio.move_on_after(grace_s):
            while any(sid not in self._local_streams for sid in self._subscribers.by_call):
                await trio.sleep(0.05)
        self._subscribers.end_all(reason)
        with trio.move_on_after(2 * self.link.timeout):
            await self._outbox.empty.wait()
