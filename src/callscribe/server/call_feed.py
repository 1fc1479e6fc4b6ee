"""The call feed: live calls, their Deepgram state and the games, pushed to dashboard viewers.

What calls do reaches the feed through the hub: `ObservedHub` wraps the server's hub (in memory or
Redis) and, besides passing every call on unchanged, tells the feed when a call of this process
registers (its `start` arrived), unregisters (it ended) and publishes one of callscribe's notices
(Deepgram reconnecting, resumed, given up). Those are the moments the dashboard shows, so the feed
learns them as they happen, at no cost to the call but a dictionary update. The call's details
(From, To, tracks) and how it ended are read from the call itself (`CallLookup`).

Once a `REFRESH_S`, the feed's own task also asks the hub which calls are live (a shared hub lists
other processes' calls too) and the game registry which codes are in use and patched: those show
within that time. What each fact means for viewers is decided by the core (`CallBoard`).

Each viewer has a bounded queue (`Subscription`): publishing never waits for one, and a viewer too
slow to take its events is disconnected like a lagging `/client` subscriber.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import trio

from callscribe.core.call_board import CallBoard, Event, for_call
from callscribe.core.call_record import CallStart, Outcome, call_start, outcome_of
from callscribe.core.twilio import TwilioState
from callscribe.server.call import Call
from callscribe.server.games import GameRegistry
from callscribe.server.hub import CLOSE_NORMAL, DEFAULT_QUEUE_SIZE, Hub, HubUnavailable, Subscription

log = logging.getLogger(__name__)

REFRESH_S = 1.0
"""How often the hub's list of live calls and the games are looked at."""
VIEWER_QUEUE = 500
"""Events a viewer may lag behind before it is disconnected (a busy server makes a few a second)."""

CallLookup = Callable[[str], Call | None]
"""A live call of this process by its callSid (the supervisor's)."""


def call_start_of(call: Call) -> CallStart | None:
    """What the board is told of a call whose `start` arrived."""
    start = call.stream.start
    if start is None:
        return None
    return call_start(
        call_sid=start.call_sid,
        stream_sid=start.stream_sid,
        account_sid=start.account_sid,
        tracks=call.stream.tracks,
        parameters=start.custom_parameters,
        now=time.time(),
    )


def outcome_so_far(call: Call) -> Outcome:
    """How a call that is unregistering ended (a crash is only known later: the store records it)."""
    return outcome_of(
        stop_received=call.stream.state is TwilioState.STOPPED,
        close_code=call.close_code,
        deepgram_failed=bool(call.deepgram_error),
    )


class CallFeed:
    def __init__(self, lookup: CallLookup, games: GameRegistry) -> None:
        self.board = CallBoard()
        self._lookup = lookup
        self._games = games
        self._viewers: dict[Subscription, str | None] = {}

    # -- facts, from ObservedHub and the refresh --------------------------------------------------

    def registered(self, call_sid: str) -> None:
        call = self._lookup(call_sid)
        start = call_start_of(call) if call is not None else None
        if start is None:  # registered by something other than a call of the supervisor's
            start = call_start(
                call_sid=call_sid, stream_sid="", account_sid="", tracks=(), parameters={}, now=time.time()
            )
        self._publish(self.board.started(start))

    def unregistered(self, call_sid: str) -> None:
        call = self._lookup(call_sid)
        outcome = outcome_so_far(call) if call is not None else None
        self._publish(self.board.ended(call_sid, outcome, time.time()))

    def noticed(self, call_sid: str, message: str) -> None:
        self._publish(self.board.notice(call_sid, message))

    async def run(self, hub: Hub, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look at the hub's live calls and the games every REFRESH_S, until cancelled."""
        task_status.started()
        unavailable = False
        while True:
            self._publish(self.board.games(self.patches()))
            try:
                listed = await hub.active_calls()
            except HubUnavailable as error:
                if not unavailable:
                    log.warning("call feed: the hub cannot list live calls now: %s", error)
                unavailable = True
            else:
                if unavailable:
                    log.info("call feed: the hub lists live calls again")
                unavailable = False
                self._publish(self.board.listed(listed, time.time()))
            await trio.sleep(REFRESH_S)

    def patches(self) -> dict[str, str | None]:
        """Game code -> the callSid patched to it, for the games of this process."""
        return {
            code: (game.patch.call_sid if game.patch is not None else None) for code, game in self._games.games.items()
        }

    # -- viewers ----------------------------------------------------------------------------------

    @contextmanager
    def watch(self, call_sid: str | None) -> Iterator[Subscription]:
        """A viewer's queue for the block's duration: the snapshot first, then every event; only
        those of `call_sid` when the viewer's token is for that call."""
        viewer = Subscription(call_sid or "", VIEWER_QUEUE)
        snapshot = for_call(self.board.snapshot(time.time()), call_sid)
        viewer.offer(json.dumps(snapshot))
        self._viewers[viewer] = call_sid
        try:
            yield viewer
        finally:
            del self._viewers[viewer]

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def shutdown(self, reason: str = "server shutting down") -> None:
        for viewer in self._viewers:
            viewer.end(1001, reason)

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            text = json.dumps(event)
            for viewer, scope in list(self._viewers.items()):
                if scope is None:
                    shown = text
                else:
                    limited = for_call(event, scope)
                    if limited is None:
                        continue
                    shown = json.dumps(limited)
                if not viewer.offer(shown):
                    log.warning("call feed: dropping a viewer: %s", viewer.close_reason)


class ObservedHub:
    """A hub that tells the call feed what calls of this process do, and otherwise is `hub`;
    `registered` also hears of each call that registers (the waiting subscribers: call_waiters.py)."""

    def __init__(self, hub: Hub, feed: CallFeed, registered: Callable[[str], None] | None = None) -> None:
        self.inner = hub
        self.feed = feed
        self.registered = registered

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.inner.run)
            await nursery.start(self.feed.run, self.inner)
            task_status.started()

    async def register_call(self, call_sid: str) -> None:
        await self.inner.register_call(call_sid)
        self.feed.registered(call_sid)
        if self.registered is not None:
            self.registered(call_sid)

    async def unregister_call(self, call_sid: str, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        try:
            await self.inner.unregister_call(call_sid, code, reason)
        finally:
            self.feed.unregistered(call_sid)

    async def publish(self, call_sid: str, message: str, *, sticky: bool = False, droppable: bool = False) -> None:
        await self.inner.publish(call_sid, message, sticky=sticky, droppable=droppable)
        if sticky:
            self.feed.noticed(call_sid, message)

    async def active_calls(self) -> list[str]:
        return await self.inner.active_calls()

    def subscribe(
        self, call_sid: str, queue_size: int = DEFAULT_QUEUE_SIZE, *, ids: bool = False, after: str | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        return self.inner.subscribe(call_sid, queue_size, ids=ids, after=after)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    async def shutdown(self, reason: str = "server shutting down", *, grace_s: float = 0.0) -> None:
        self.feed.shutdown(reason)
        await self.inner.shutdown(reason, grace_s=grace_s)
