"""This process's subscribers of calls streaming anywhere, fed through Redis (see redis_hub.py).

A subscriber joins in one script (`JOIN`: the call's sticky notice, its last history id, the last
id trimmed from the history, and whether a live process vouches for the call), then reads the history
after its resume point and gets live messages from the call's pub/sub channel, with duplicates
dropped by id (`callscribe.core.fanout.Resume`). The first subscriber of a call on this process
subscribes the pub/sub connection to the call's channel; the others wait for it. After the pub/sub
connection reopens, every subscriber is caught up from the history; when it was dropped with its
backlog (this process fell behind), those who missed messages are ended (1013, try again later).

A process's own plain subscribers of its own calls are fed directly by the hub (`deliver_direct`),
and skip that process's messages in the history and on pub/sub; subscribers that asked for ids get
every message through Redis, in history order.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast

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
)
from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    DEFAULT_QUEUE_SIZE,
    HubUnavailable,
    Subscription,
    UnknownCall,
    gap_notice,
)
from callscribe.server.redis_deaths import DEAD_REASON, dead_notice
from callscribe.server.redis_link import REDIS_ERRORS, RedisLink, Sparse
from callscribe.server.redis_pubsub import PUBSUB_BACKLOG, PubSubListener
from callscribe.server.redis_scripts import JOIN

log = logging.getLogger(__name__)

Entry = tuple[str, str, str]
"""(history id, kind, text): a message read back for a subscriber."""


class RedisSubscribers:
    """The subscriptions of this process, by call, and the pub/sub connection that feeds them.

    `local_streams` is the hub's count of this process's streams per call (read, never written).
    """

    def __init__(self, link: RedisLink, local_streams: Mapping[str, int], pubsub_backlog: int = PUBSUB_BACKLOG) -> None:
        self.link = link
        self._local_streams = local_streams
        self.by_call: dict[str, set[Subscription]] = {}
        self._listening: dict[str, trio.Event] = {}
        """Per followed call: set once the pub/sub connection is subscribed to its channel."""
        self.channel_prefix = link.key("fanout", "")
        self.extra_channels: list[str] = []
        self.on_channel_message: dict[str, Callable[[object], None]] = {}
        """Channels other than the calls' that the pub/sub connection is to carry, and who gets them."""
        self._malformed = Sparse("skipped %d malformed pub/sub message(s), the last on call %s: %.60r")
        self.listener = PubSubListener(
            link,
            dispatch=self._on_message,
            channels=self._channels,
            shed=self._shed,
            reopened=self._catch_up_all,
            backlog_limit=pubsub_backlog,
        )

    @asynccontextmanager
    async def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> AsyncIterator[Subscription]:
        if self.link.down:
            raise HubUnavailable("Redis is unavailable")
        subscription = Subscription(call_sid, queue_size, ids=ids, after=after)
        subscription.hold()  # live messages wait while the history is read
        local = self.by_call.setdefault(call_sid, set())
        local.add(subscription)
        listening: trio.Event | None = None
        try:
            try:
                listening = await self._listen(call_sid)
                with self.link.deadline():
                    joined = await self.link.client.evalsha(
                        self.link.script(JOIN),
                        [self.link.key("notice", call_sid), self.link.key("history", call_sid), self.link.key("calls")],
                        [call_sid],
                    )
                notice, last, missing, oldest, vouched = (str(x) for x in cast(list[Any], joined))
                live = call_sid in self._local_streams or (vouched != "" and float(vouched) >= self.link.stale_before())
                if not live and (after is None or not last):
                    raise UnknownCall(call_sid)
                before: list[Entry] = []
                if after is None:
                    if notice:
                        notice_id, _, text = notice.partition(" ")
                        before.append((notice_id, MESSAGE, text))
                elif missing and id_key(after) < id_key(missing):
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
            if not local and self.by_call.get(call_sid) is local:
                del self.by_call[call_sid]
                if listening is not None and self._listening.get(call_sid) is listening:
                    del self._listening[call_sid]
                await self.listener.unsubscribe(self.channel_prefix + call_sid)

    async def _listen(self, call_sid: str) -> trio.Event:
        """Make sure this process is subscribed to the call's channel: the first of its subscribers
        subscribes, the others wait for it, and take over if it failed or was cancelled."""
        for _ in range(3):
            listening = self._listening.get(call_sid)
            if listening is None:
                listening = self._listening[call_sid] = trio.Event()
                try:
                    await self.listener.subscribe(self.channel_prefix + call_sid)
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

    async def _history(self, call_sid: str, after: str, subscription: Subscription) -> list[Entry]:
        """The kept messages after `after` that `subscription` is to get from the history."""
        with self.link.deadline():
            entries = await self.link.client.xrange(self.link.key("history", call_sid), "(" + after, "+")
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
        for call_sid, subscriptions in list(self.by_call.items()):
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

    # -- what the hub asks ------------------------------------------------------------------------

    def deliver_direct(self, call_sid: str, message: str, droppable: bool) -> None:
        """A message of this process's own call, to its plain subscribers here (no Redis round trip)."""
        for subscription in list(self.by_call.get(call_sid, ())):
            if not subscription.ids:
                self._deliver(subscription, message, droppable)

    def end(self, call_sid: str, code: int, reason: str, *, direct_only: bool = False) -> None:
        """End the call's subscriptions here (`direct_only`: only its plain subscribers)."""
        for subscription in list(self.by_call.get(call_sid, ())):
            if not (direct_only and subscription.ids):
                subscription.end(code, reason)

    def end_all(self, reason: str) -> None:
        for subscriptions in self.by_call.values():
            for subscription in subscriptions:
                subscription.end(CLOSE_GOING_AWAY, reason)

    def followed(self) -> list[str]:
        """The calls of other processes that subscribers here still follow."""
        return [
            sid
            for sid, subs in self.by_call.items()
            if sid not in self._local_streams and any(not s.ended for s in subs)
        ]

    def count(self) -> int:
        return sum(map(len, self.by_call.values()))

    # -- pub/sub ------------------------------------------------------------------------------------

    def _channels(self) -> list[str]:
        calls = [self.channel_prefix + s for s, subs in self.by_call.items() if any(not x.ended for x in subs)]
        return calls + self.extra_channels

    def _on_message(self, channel: str, data: object) -> None:
        if not channel.startswith(self.channel_prefix):
            handler = self.on_channel_message.get(channel)
            if handler is not None:
                handler(data)
            return
        call_sid = channel[len(self.channel_prefix) :]
        message = parse_wire(data)
        if message is MALFORMED:
            self._malformed(call_sid, data)
            return
        own = message.origin == self.link.origin
        for subscription in list(self.by_call.get(call_sid, ())):
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
        for call_sid, subscriptions in self.by_call.items():
            for subscription in subscriptions:
                if (call_sid not in self._local_streams or subscription.ids) and not subscription.ended:
                    subscription.end(CLOSE_TRY_AGAIN_LATER, "server overloaded, try again later")
                    ended += 1
        log.warning("ended %d subscribers fed through Redis pub/sub: they missed messages", ended)
