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
                              the last ~`HISTORY` (XADD MAXLEN ~), kept `RESUME_WINDOW_S` after the
                              last write. Entry ids are the ids subscribers see and resume after.
- `{prefix}:notice:{sid}`     the call's sticky notice ("id text").
- `{prefix}:fanout:{sid}`     pub/sub channel of the call: every message as it is written, in the
                              wire format of `callscribe.core.fanout` (kind, origin, id, text).
                              Older versions used `{prefix}:messages:{sid}` without ids: processes of
                              both kinds see neither each other's messages nor ends.

A kept message is one script: XADD to the history and PUBLISH with the id it got, so pub/sub
order is history order. A subscriber joins by reading the history after its resume point (the
last id now, or its `after`), and gets live messages from pub/sub with duplicates dropped by id
(`callscribe.core.fanout.Resume`); after a pub/sub reconnection every subscriber fed through it
is caught up from the history the same way.

A call never waits for Redis (redis_outbox.py). A process serves its own plain subscribers of its
own calls directly; subscribers that asked for ids get every message through Redis, in history
order. During an outage (redis_link.py) calls go on, plain subscribers of this process's calls are
served to the end, and new subscribers are refused (`HubUnavailable`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Unpack, cast

import coredis
import trio

from callscribe.core.fanout import (
    DROPPABLE,
    END,
    MALFORMED,
    MESSAGE,
    WireMessage,
    end_text,
    id_key,
    parse_end,
    parse_wire,
    wire,
)
from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN_LATER,
    DEFAULT_QUEUE_SIZE,
    HISTORY,
    RESUME_WINDOW_S,
    HubUnavailable,
    Subscription,
    UnknownCall,
    gap_notice,
)
from callscribe.server.redis_deaths import DEAD_REASON, bury_dead, dead_notice
from callscribe.server.redis_link import (
    COMMAND_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    PROBE_INTERVAL_S,
    REDIS_ERRORS,
    LinkOptions,
    RedisLink,
    Sparse,
)
from callscribe.server.redis_outbox import OUTBOX_SIZE, Outbox, Pipeline, Write
from callscribe.server.redis_pubsub import PUBSUB_BACKLOG, PubSubListener
from callscribe.server.redis_scripts import BURY, END_STREAM, JOIN, KEEP

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
        self._listener = PubSubListener(
            self.link,
            dispatch=self._on_message,
            channels=self._channels,
            shed=self._shed,
            reopened=self._catch_up_all,
            backlog_limit=pubsub_backlog,
        )
        self.listener = self._listener
        """The pub/sub connection, which the Redis games share."""
        self._local_streams: dict[str, int] = {}
        self._unkept: dict[str, int] = {}
        """Per call: kept messages whose write never reached Redis (an outage, a full outbox)."""
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._listening: dict[str, trio.Event] = {}
        """Per followed call: set once the pub/sub connection is subscribed to its channel."""
        self._channel_prefix = self.link.key("fanout", "")
        self.extra_channels: list[str] = []
        self.on_channel_message: dict[str, Callable[[object], None]] = {}
        """Channels other than the calls' that the pub/sub connection is to carry, and who gets them."""
        self._malformed = Sparse("skipped %d malformed pub/sub message(s), the last on call %s: %.60r")

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
                self._end_here(call_sid, code, reason, direct_only=True)

        self._outbox.put(Write(stage, done, lambda: self._end_here(call_sid, code, reason)))

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        if self._unkept and self._writing():
            await self._tell_unkept(call_sid)  # before what comes after the gap
        for subscription in list(self._subscriptions.get(call_sid, ())):
            if not subscription.ids:
                self._deliver(subscription, message, droppable)
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
            followed = [
                sid
                for sid, subs in self._subscriptions.items()
                if sid not in self._local_streams and any(not s.ended for s in subs)
            ]
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

    @asynccontextmanager
    async def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> AsyncIterator[Subscription]:
        if self.link.down:
            raise HubUnavailable("Redis is unavailable")
        subscription = Subscription(call_sid, queue_size, ids=ids, after=after)
        subscription.hold()  # live messages wait while the history is read
        local = self._subscriptions.setdefault(call_sid, set())
        local.add(subscription)
        listening: trio.Event | None = None
        try:
            try:
                listening = await self._listen(call_sid)
                with self.link.deadline():
                    joined = await self.link.client.evalsha(
                        self.link.script(JOIN),
                        [self._key("notice", call_sid), self._key("history", call_sid), self._key("calls")],
                        [call_sid],
                    )
                notice, last, trimmed, oldest, vouched = (str(x) for x in cast(list[Any], joined))
                live = call_sid in self._local_streams or (vouched != "" and float(vouched) >= self.link.stale_before())
                if not live and (after is None or not last):
                    raise UnknownCall(call_sid)
                before: list[tuple[str, str, str]] = []  # (id, kind, text)
                if after is None:
                    if notice:
                        notice_id, _, text = notice.partition(" ")
                        before.append((notice_id, MESSAGE, text))
                elif trimmed and oldest and id_key(after) < id_key(oldest):
                    before.append(("", MESSAGE, gap_notice(call_sid, after, oldest)))
                start = after if after is not None else (last or "0-0")
                before += await self._history(call_sid, start, subscription)
                if not live and not any(kind == END for _, kind, _ in before):
                    # Its processes died before anyone buried it: say so after what is kept.
                    before += [("", MESSAGE, dead_notice(call_sid))]
                    before += [("", END, end_text(CLOSE_INTERNAL_ERROR, DEAD_REASON))]
            except REDIS_ERRORS as error:
                raise self.link.unavailable(f"subscribing to call {call_sid}", error) from error
            subscription.release(before)
            if after is None and not subscription.resume.last:
                subscription.resume.skip_to(last or "0-0")
            yield subscription
        finally:
            local.discard(subscription)
            if not local and self._subscriptions.get(call_sid) is local:
                del self._subscriptions[call_sid]
                if listening is not None and self._listening.get(call_sid) is listening:
                    del self._listening[call_sid]
                await self._listener.unsubscribe(self._channel_prefix + call_sid)

    async def _listen(self, call_sid: str) -> trio.Event:
        """Make sure this process is subscribed to the call's channel: the first of its subscribers
        subscribes, the others wait for it, and take over if it failed or was cancelled."""
        for _ in range(3):
            listening = self._listening.get(call_sid)
            if listening is None:
                listening = self._listening[call_sid] = trio.Event()
                try:
                    await self._listener.subscribe(self._channel_prefix + call_sid)
                except BaseException:
                    if self._listening.get(call_sid) is listening:
                        del self._listening[call_sid]  # (those waiting on it see that it did not)
                    raise
                finally:
                    listening.set()
                return listening
            with trio.move_on_after(self.link.timeout):
                await listening.wait()
            if not listening.is_set():
                break
            if self._listening.get(call_sid) is listening:
                return listening
        raise ConnectionError("the call's channel could not be subscribed to in time")

    async def _history(self, call_sid: str, after: str, subscription: Subscription) -> list[tuple[str, str, str]]:
        """The kept messages after `after` that `subscription` is to get from the history."""
        with self.link.deadline():
            entries = await self.link.client.xrange(self._key("history", call_sid), "(" + after, "+")
        kept = []
        for entry in entries:
            fields = entry.field_values
            kind, origin, text = (str(fields.get(name, "")) for name in ("k", "o", "t"))
            if kind not in (MESSAGE, END) or (kind == END and parse_end(text) is None):
                continue
            if origin == self.link.origin and not subscription.ids and call_sid in self._local_streams:
                continue  # it has (or will have) this process's own messages directly
            kept.append((str(entry.identifier), kind, text))
        return kept

    async def _catch_up_all(self) -> None:
        """The pub/sub connection was reopened: what its subscribers missed meanwhile, from the history."""
        for call_sid, subscriptions in list(self._subscriptions.items()):
            for subscription in list(subscriptions):
                if subscription.ended or not subscription.resume.last:
                    continue
                subscription.hold()
                try:
                    missed = await self._history(call_sid, subscription.resume.last, subscription)
                except REDIS_ERRORS as error:
                    self.link.failed("catching up", error)
                    missed = []
                subscription.release(missed)

    def stats(self) -> dict[str, int]:
        """This process's share: its calls' streams and its subscribers."""
        return {"calls": len(self._local_streams), "subscribers": sum(map(len, self._subscriptions.values()))}

    async def shutdown(self, reason: str = "server shutting down", *, grace_s: float = 0.0) -> None:
        """Give this process's subscribers of calls on other processes up to `grace_s` to get their
        calls' ends (those processes may be draining too), end every other subscription with 1001,
        then give the outbox (the calls' ends) a moment to reach Redis."""
        with trio.move_on_after(grace_s):
            while any(sid not in self._local_streams for sid in self._subscriptions):
                await trio.sleep(0.05)
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.end(CLOSE_GOING_AWAY, reason)
        with trio.move_on_after(2 * self.link.timeout):
            await self._outbox.empty.wait()

    # -- pub/sub ------------------------------------------------------------------------------------

    def _channels(self) -> list[str]:
        calls = [self._channel_prefix + s for s, subs in self._subscriptions.items() if any(not x.ended for x in subs)]
        return calls + self.extra_channels

    def _on_message(self, channel: str, data: object) -> None:
        if not channel.startswith(self._channel_prefix):
            handler = self.on_channel_message.get(channel)
            if handler is not None:
                handler(data)
            return
        call_sid = channel[len(self._channel_prefix) :]
        message = parse_wire(data)
        if message is MALFORMED:
            self._malformed(call_sid, data)
            return
        own = message.origin == self.link.origin
        for subscription in list(self._subscriptions.get(call_sid, ())):
            if own and not subscription.ids:
                continue  # this process's own: its plain subscribers had it directly
            self._take(subscription, message)

    def _take(self, subscription: Subscription, message: WireMessage) -> None:
        if message.kind == END:
            end = parse_end(message.text)
            assert end is not None  # parse_wire checked it
            subscription.finish(*end, message.message_id)
        else:
            self._deliver(subscription, message.text, message.kind == DROPPABLE, message.message_id)

    def _deliver(self, subscription: Subscription, text: str, droppable: bool, message_id: str = "") -> None:
        if not subscription.offer(text, droppable, message_id):
            log.warning("call %s: dropping a subscriber: %s", subscription.call_sid, subscription.close_reason)

    def _shed(self) -> None:
        """The pub/sub connection was dropped with its backlog: end the subscribers who missed messages."""
        ended = 0
        for call_sid, subscriptions in self._subscriptions.items():
            for subscription in subscriptions:
                if (call_sid not in self._local_streams or subscription.ids) and not subscription.ended:
                    subscription.end(CLOSE_TRY_AGAIN_LATER, "server overloaded, try again later")
                    ended += 1
        log.warning("ended %d subscribers fed through Redis pub/sub: they missed messages", ended)

    def _end_here(self, call_sid: str, code: int, reason: str, *, direct_only: bool = False) -> None:
        for subscription in list(self._subscriptions.get(call_sid, ())):
            if not (direct_only and subscription.ids):
                subscription.end(code, reason)
