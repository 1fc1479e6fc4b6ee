"""A hub shared by several callscribe processes (on one machine or many) through Redis.

Same interface and delivery rules as `InMemoryHub`: a call streaming into one process can be
followed by subscribers connected to any other. Redis holds the registry, each process fans out
to its own subscribers:

- `{prefix}:calls`           sorted set: callSid -> time its owning process last vouched for it.
                             A process refreshes its live calls every `lease_s / 3`; a call not
                             refreshed for `lease_s` (its process died) drops out of the list.
- `{prefix}:streams`         hash: callSid -> streams of that call (Twilio may fork a call twice).
- `{prefix}:notice:{sid}`    the call's sticky notice (e.g. "transcription failed").
- `{prefix}:messages:{sid}`  pub/sub channel of the call. A message is a kind letter, the id of the
                             publishing process (8 characters) and the text: `m` a message, `i` a
                             droppable (interim) one, `e` the end of the call, its close code and
                             reason as JSON. Anything else is skipped (logged at most once a
                             minute). Versions without the process id used `{prefix}:call:{sid}`:
                             processes of both kinds see neither each other's messages nor ends.

A call never waits for Redis. A process serves its own subscribers of its own calls directly (its
own messages coming back through Redis are skipped); `publish`, `register_call` and
`unregister_call` queue their Redis writes in a bounded outbox, which the writer task sends in
order, a pipeline per batch. A write that finds the outbox full, or Redis down, is dropped and
counted: other processes' subscribers miss that message.

Every Redis command has a deadline (`command_timeout_s`); a Redis that fails or hangs is down. The
outage is logged once, Redis is PINGed every `PROBE_INTERVAL_S`, and its return is logged as soon
as it answers; then the pub/sub connection is reopened and this process's calls are vouched for.
Meanwhile calls go on, this process's subscribers of its calls are served to the end, and new
subscribers are refused (`HubUnavailable`). coredis's own log lines are lowered to DEBUG.

One pub/sub connection per process is subscribed to the channels of calls that have a subscriber
here; the dispatcher hands each message to their bounded queues without blocking. coredis reads
ahead into unbounded buffers of its own, so past `pubsub_backlog` unread messages (this process
cannot keep up) the connection is dropped with its backlog, the subscribers of other processes'
calls, who would miss messages, are ended with 1013, and it reconnects.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NamedTuple, cast

import anyio
import coredis
import coredis.retry
import trio

from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN_LATER,
    DEFAULT_QUEUE_SIZE,
    HubUnavailable,
    Subscription,
    UnknownCall,
)

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 1.0
"""Deadline of a Redis command (or a pipeline of them); past it, Redis is down."""
PROBE_INTERVAL_S = 1.0
"""During an outage Redis is PINGed this often."""
CONNECT_TIMEOUT_S = 2.0
"""Deadline to connect when serve.py checks Redis at start-up."""
OUTBOX_SIZE = 1000
"""Writes that may wait for Redis; beyond that they are dropped."""
BATCH_SIZE = 100
PUBSUB_BACKLOG = 10_000
"""Pub/sub messages coredis may hold unread before the connection is dropped."""
SUBSCRIBE_WAIT_S = 5.0
"""A new subscriber waits this long for a reconnecting pub/sub connection."""
NOTICE_TTL_S = 24 * 3600
ORIGIN_LENGTH = 8
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError)
"""What a failed or unanswered command raises (TimeoutError is an OSError)."""
PUBSUB_ERRORS = (*REDIS_ERRORS, anyio.ClosedResourceError, anyio.BrokenResourceError)
"""Also what coredis's pub/sub raises when its connection goes while it is being closed."""

END_STREAM = """
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('DEL', KEYS[3])
    redis.call('PUBLISH', KEYS[4], ARGV[2])
end
return left
"""
"""A stream ended: if it was the call's last anywhere, drop the call and publish its end. KEYS:
streams, calls, notice, channel; ARGV: callSid, end message. Returns the streams left."""


class _DemoteToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("coredis").addFilter(_DemoteToDebug())


class _Overloaded(Exception):
    """The dispatcher is too far behind the pub/sub connection."""


class _Write(NamedTuple):
    """A Redis write in the outbox: `op` "register", "publish" (`data`, and `notice` if sticky) or
    "end" (`data`; `end` is the close code and reason when this process has no stream of it left)."""

    op: str
    call_sid: str
    data: str = ""
    notice: str | None = None
    end: tuple[int, str] | None = None


class _Sparse:
    """A warning logged at most once a minute, with the count of occurrences since the last one."""

    def __init__(self, message: str) -> None:
        self.message, self.count, self.next_at = message, 0, -math.inf

    def __call__(self, *args: object) -> None:
        self.count += 1
        if (now := trio.current_time()) >= self.next_at:
            log.warning(self.message, self.count, *args)
            self.count, self.next_at = 0, now + 60.0


class RedisHub:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "callscribe",
        lease_s: float = 30.0,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        outbox_size: int = OUTBOX_SIZE,
        pubsub_backlog: int = PUBSUB_BACKLOG,
    ) -> None:
        self._client = coredis.Redis.from_url(
            url,
            decode_responses=True,
            connect_timeout=command_timeout_s,
            stream_timeout=command_timeout_s,
            retry_policy=coredis.retry.NoRetryPolicy(),
        )
        self._where, self._prefix, self._lease_s = url.rsplit("@", 1)[-1], prefix, lease_s
        self._timeout, self._backlog_limit = command_timeout_s, pubsub_backlog
        self._origin = secrets.token_hex(ORIGIN_LENGTH // 2)
        self._local_streams: dict[str, int] = {}
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._pubsub: coredis.patterns.pubsub.PubSub[str] | None = None
        self._listening = trio.Event()
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[_Write](outbox_size)
        self._queued, self._outbox_empty, self._congested, self._unwritten = 0, trio.Event(), False, 0
        self._outbox_empty.set()
        self._down, self._outage_began, self._outage, self._back = False, 0.0, trio.Event(), trio.Event()
        self._back.set()
        self._malformed = _Sparse("skipped %d malformed pub/sub message(s), the last on call %s: %.60r")
        self._refused = _Sparse("Redis refused %d write batch(es), the last: %s")

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        """The Redis commands in the block get `command_timeout_s` together, then TimeoutError."""
        with trio.move_on_after(self._timeout) as scope:
            yield
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer within {self._timeout:g} s")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, then run the pub/sub listener, the writer, the vouching and the outage probe until
        cancelled. Raises `HubUnavailable` if Redis does not answer at start-up."""
        async with self._client:
            try:
                with self._deadline():
                    await self._client.ping()
            except REDIS_ERRORS as error:
                raise HubUnavailable(f"Redis at {self._where} does not answer: {error}") from error
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listen)
                nursery.start_soon(self._write)
                nursery.start_soon(self._vouch)
                nursery.start_soon(self._probe)
                task_status.started()

    # -- the calls' side: acts here at once, queues the Redis writes -------------------------------

    async def register_call(self, call_sid: str) -> None:
        self._local_streams[call_sid] = self._local_streams.get(call_sid, 0) + 1
        self._enqueue(_Write("register", call_sid))

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        left = self._local_streams.get(call_sid, 0) - 1
        if left > 0:
            self._local_streams[call_sid] = left
        else:
            self._local_streams.pop(call_sid, None)
        data = "e" + self._origin + json.dumps({"code": code, "reason": reason})
        self._enqueue(_Write("end", call_sid, data, end=(code, reason) if left <= 0 else None))

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        self._offer(call_sid, message, droppable)
        data = ("i" if droppable else "m") + self._origin + message
        self._enqueue(_Write("publish", call_sid, data, notice=message if sticky else None))

    def _enqueue(self, write: _Write) -> None:
        if self._down:
            self._not_written(write)
            return
        try:
            self._outbox_send.send_nowait(write)
        except trio.WouldBlock:
            if not self._congested:
                self._congested = True
                log.warning("Redis is not keeping up: %d writes wait; dropping more until it catches up", self._queued)
            self._not_written(write)
            return
        self._queued += 1
        if self._outbox_empty.is_set():
            self._outbox_empty = trio.Event()

    def _not_written(self, write: _Write) -> None:
        self._unwritten += 1
        if write.end is not None:
            self._end_here(write.call_sid, *write.end)  # (its Redis entry drops out after the lease)

    async def _write(self) -> None:
        """Send the outbox to Redis in order, a pipeline per batch (dropped while Redis is down)."""
        async for first in self._outbox_receive:
            batch = [first]
            while len(batch) < BATCH_SIZE:
                try:
                    batch.append(self._outbox_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._send(batch)
            self._queued -= len(batch)
            if self._queued == 0:
                self._outbox_empty.set()
                if self._congested and not self._down:
                    self._congested = False
                    log.warning("Redis caught up; %d writes were dropped", self._unwritten)
                    self._unwritten = 0

    async def _send(self, batch: list[_Write]) -> None:
        calls, streams, ends = self._key("calls"), self._key("streams"), []
        try:
            if self._down:
                raise ConnectionError("Redis is down")  # (already logged)
            with self._deadline():
                async with self._client.pipeline(transaction=False) as pipe:
                    for write in batch:
                        sid, channel = write.call_sid, self._key("messages", write.call_sid)
                        if write.op == "register":
                            pipe.hincrby(streams, sid, 1)
                            pipe.zadd(calls, {sid: time.time()})
                            continue
                        if write.op == "end":
                            keys = [streams, calls, self._key("notice", sid), channel]
                            ends.append((write, pipe.eval(END_STREAM, keys, [sid, write.data])))
                            continue
                        if write.notice is not None:
                            pipe.set(self._key("notice", sid), write.notice, ex=NOTICE_TTL_S)
                        pipe.publish(channel, write.data)
                lefts = [cast(int, await left) for _, left in ends]
        except REDIS_ERRORS as error:
            if isinstance(error, coredis.exceptions.ResponseError):
                self._refused(error)  # Redis answered: not an outage
            else:
                self._failed("writing", error)
            for write in batch:
                self._not_written(write)
            return
        for (write, _), left in zip(ends, lefts, strict=True):
            if left <= 0 and write.end is not None:
                self._end_here(write.call_sid, *write.end)

    # -- outages ------------------------------------------------------------------------------------

    def _failed(self, what: str, error: BaseException) -> None:
        if not self._down:
            self._down, self._outage_began, self._back = True, trio.current_time(), trio.Event()
            self._outage.set()
            log.error(
                "Redis is unavailable (%s: %s); calls go on, this process's subscribers are served directly",
                what,
                str(error) or type(error).__name__,
            )

    def _unavailable(self, what: str, error: BaseException) -> HubUnavailable:
        self._failed(what, error)
        return HubUnavailable(f"Redis is unavailable: {error}")

    async def _probe(self) -> None:
        """During an outage, PING Redis every PROBE_INTERVAL_S; once it answers, resume."""
        while True:
            await self._outage.wait()
            while True:
                await trio.sleep(PROBE_INTERVAL_S)
                try:
                    with self._deadline():
                        await self._client.ping()
                    break
                except REDIS_ERRORS as error:
                    log.debug("Redis is still unavailable: %s", error)
            self._outage, self._down = trio.Event(), False
            self._back.set()
            log.warning(
                "Redis is back after %.1f s; %d writes were dropped meanwhile (other processes' subscribers missed them)",
                trio.current_time() - self._outage_began,
                self._unwritten,
            )
            self._unwritten = 0
            await self._vouch_now()

    async def _vouch(self) -> None:
        """Keep this process's live calls listed (a crashed process's calls drop out after the lease)."""
        while True:
            await trio.sleep(self._lease_s / 3)
            await self._vouch_now()

    async def _vouch_now(self) -> None:
        if self._local_streams and not self._down:
            now = time.time()
            try:
                with self._deadline():
                    await self._client.zadd(self._key("calls"), {sid: now for sid in self._local_streams})
            except REDIS_ERRORS as error:
                self._failed("renewing the call list", error)

    # -- subscribers --------------------------------------------------------------------------------

    async def active_calls(self) -> list[str]:
        if self._down:
            raise HubUnavailable("Redis is unavailable")
        try:
            with self._deadline():
                listed = await self._client.zrange(
                    self._key("calls"), time.time() - self._lease_s, "+inf", sortby=coredis.PureToken.BYSCORE
                )
        except REDIS_ERRORS as error:
            raise self._unavailable("listing calls", error) from error
        return list(listed)

    @asynccontextmanager
    async def subscribe(self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE) -> AsyncIterator[Subscription]:
        if self._down:
            raise HubUnavailable("Redis is unavailable")
        here = call_sid in self._local_streams  # (its registration may still be in the outbox)
        try:
            with self._deadline():
                vouched = None if here else await self._client.zscore(self._key("calls"), call_sid)
        except REDIS_ERRORS as error:
            raise self._unavailable(f"looking up call {call_sid}", error) from error
        if not here and (vouched is None or vouched < time.time() - self._lease_s):
            raise UnknownCall(call_sid)
        subscription = Subscription(call_sid, queue_size)
        local = self._subscriptions.setdefault(call_sid, set())
        local.add(subscription)
        try:
            try:
                if len(local) == 1:
                    await self._listen_to(call_sid)
                with self._deadline():
                    notice = await self._client.get(self._key("notice", call_sid))
                    ended = not here and await self._client.zscore(self._key("calls"), call_sid) is None
            except REDIS_ERRORS as error:
                raise self._unavailable(f"subscribing to call {call_sid}", error) from error
            if notice is not None:
                subscription.offer(notice)
            if ended:
                subscription.end(CLOSE_NORMAL, "call ended")  # it ended while we were subscribing
            yield subscription
        finally:
            local.discard(subscription)
            if not local and self._subscriptions.get(call_sid) is local:
                del self._subscriptions[call_sid]
                await self._unlisten(call_sid)

    async def _listen_to(self, call_sid: str) -> None:
        """Subscribe the pub/sub connection to the call's channel, waiting (bounded) while it reconnects."""
        with trio.move_on_after(SUBSCRIBE_WAIT_S):
            await self._listening.wait()
        if (pubsub := self._pubsub) is None:
            raise TimeoutError("the pub/sub connection is not back")
        with self._deadline():
            await pubsub.subscribe(self._key("messages", call_sid))

    async def _unlisten(self, call_sid: str) -> None:
        if (pubsub := self._pubsub) is None or self._down:
            return  # a reconnection subscribes afresh anyway
        with trio.move_on_after(self._timeout, shield=True):
            try:
                await pubsub.unsubscribe(self._key("messages", call_sid))
            except REDIS_ERRORS as error:
                log.debug("call %s: could not unsubscribe from Redis: %s", call_sid, error)

    def stats(self) -> dict[str, int]:
        """This process's share: its calls' streams and its subscribers."""
        return {"calls": len(self._local_streams), "subscribers": sum(map(len, self._subscriptions.values()))}

    async def shutdown(self, reason: str = "server shutting down") -> None:
        """End every subscription with 1001, then give the outbox (the calls' ends) a moment to reach Redis."""
        for subscriptions in self._subscriptions.values():
            for subscription in subscriptions:
                subscription.end(CLOSE_GOING_AWAY, reason)
        with trio.move_on_after(2 * self._timeout):
            await self._outbox_empty.wait()

    # -- pub/sub ------------------------------------------------------------------------------------

    async def _listen(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the pub/sub connection open and dispatch its messages. After a drop it is reopened,
        once Redis answers again, on the channels of the calls still followed here."""
        started = False
        while True:
            error: BaseException = TimeoutError(f"no answer within {self._timeout:g} s")
            overloaded = False
            channels = [
                self._key("messages", s) for s, subs in self._subscriptions.items() if any(not x.ended for x in subs)
            ]
            try:
                with trio.CancelScope(deadline=trio.current_time() + self._timeout) as connecting:
                    async with self._client.pubsub(
                        ignore_subscribe_messages=True, retry_policy=None, channels=channels
                    ) as pubsub:
                        connecting.deadline = math.inf
                        self._pubsub = pubsub
                        self._listening.set()
                        if not started:
                            started = True
                            task_status.started()
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
                raise HubUnavailable(f"Redis at {self._where}: cannot subscribe: {error}") from error
            if overloaded:
                self._shed()
            else:
                self._failed("listening", error)
                await self._back.wait()

    async def _dispatch(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> None:
        prefix = self._key("messages", "")
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is not None and message["type"] == "message":
                self._on_message(str(message["channel"])[len(prefix) :], message["data"])
            if _backlog(pubsub) > self._backlog_limit:
                raise _Overloaded

    def _on_message(self, call_sid: str, data: object) -> None:
        if not isinstance(data, str) or len(data) <= ORIGIN_LENGTH or data[0] not in "mie":
            self._malformed(call_sid, data)
            return
        kind, origin, text = data[0], data[1 : 1 + ORIGIN_LENGTH], data[1 + ORIGIN_LENGTH :]
        if origin == self._origin:
            return  # this process's own: its subscribers had it directly
        if kind != "e":
            self._offer(call_sid, text, kind == "i")
            return
        try:
            end = json.loads(text)
            code, reason = end["code"], end["reason"]
        except (ValueError, TypeError, KeyError):
            code = reason = None
        if isinstance(code, int) and isinstance(reason, str):
            self._end_here(call_sid, code, reason)
        else:
            self._malformed(call_sid, data)

    def _shed(self) -> None:
        """The pub/sub connection was dropped with its backlog: end the subscribers who missed messages."""
        ended = 0
        for call_sid, subscriptions in self._subscriptions.items():
            for subscription in subscriptions:
                if call_sid not in self._local_streams and not subscription.ended:
                    subscription.end(CLOSE_TRY_AGAIN_LATER, "server overloaded, try again later")
                    ended += 1
        log.warning(
            "this process cannot keep up with Redis pub/sub (over %d messages unread): dropped them and "
            "%d subscribers of other processes' calls, reconnecting",
            self._backlog_limit,
            ended,
        )

    def _offer(self, call_sid: str, text: str, droppable: bool) -> None:
        for subscription in list(self._subscriptions.get(call_sid, ())):
            if not subscription.offer(text, droppable):
                log.warning("call %s: dropping a subscriber: %s", call_sid, subscription.close_reason)

    def _end_here(self, call_sid: str, code: int, reason: str) -> None:
        for subscription in list(self._subscriptions.get(call_sid, ())):
            subscription.end(code, reason)


def _backlog(pubsub: Any) -> int:
    """Messages coredis has read for `pubsub` that the dispatcher has not taken yet. coredis keeps
    them in two unbounded internal streams and offers no count; 0 if its internals change (the
    backlog test in tests/server/test_redis_hub.py then fails)."""
    streams = (getattr(pubsub, "_receive_stream", None), getattr(pubsub._connection, "_push_message_buffer_out", None))
    return sum(stream.statistics().current_buffer_used for stream in streams if stream is not None)
