"""The `/client` subscriber protocol, once the connection is admitted (app.py): the live callSids
are sent, the subscriber names one (`?wait=SECONDS` lets it name a call not started yet), then gets
the call's finals so far (`?history=0`: not) or resumes from message ids (`?ids`, `?after`), then
the call's messages live until the call, the hub or a stall ends them."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from urllib.parse import parse_qs

import trio

from callscribe.core.access import Verdict
from callscribe.core.catch_up import CatchUp
from callscribe.core.fanout import MAX_WAIT_S, ResumeRequest, resume_request
from callscribe.server.call import Call
from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Hub,
    HubUnavailable,
    UnknownCall,
)
from callscribe.server.store import StoreUnavailable
from callscribe.server.subscriber_socket import ReaderSocket, StallWatch
from callscribe.server.supervisor import Supervisor

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 30.0
"""A subscriber has this long to name its call."""
HISTORY_TIMEOUT_S = 5.0
"""A late subscriber waits at most this long for the call's finals so far; then it gets live messages only."""


class Subscribers:
    """Serves `/client` subscribers from the hub, the call store's history and the live calls."""

    def __init__(
        self, hub: Hub, supervisor: Supervisor, live_call: Callable[[str], Call | None], stall: StallWatch
    ) -> None:
        self.hub = hub
        self.supervisor = supervisor
        self.live_call = live_call
        """The call of a callSid if it streams into this process, else None."""
        self.stall = stall

    async def serve(self, ws: ReaderSocket, verdict: Verdict) -> None:
        """One admitted subscriber (`verdict` says whether its token is for one call only)."""
        peer = ws.peer
        with_history = parse_qs(ws.query).get("history", ["1"])[0] != "0"
        wait_s = _wait_seconds(ws.query)
        if isinstance(wait_s, str):
            log.info("subscriber %s refused: %s", peer, wait_s)
            await ws.send(_error_json(wait_s))
            await ws.close(CLOSE_POLICY, "bad wait parameter")
            return
        with self.supervisor.connection() as scope:
            try:
                calls = await self.hub.active_calls()
            except HubUnavailable as error:
                await _hub_unavailable(ws, peer, error)
                return
            if verdict.call_sid is not None:  # a token for one call sees only that call
                calls = [sid for sid in calls if sid == verdict.call_sid]
            await ws.send(json.dumps(calls))
            reply: str | bytes | None = None
            with trio.move_on_after(SUBSCRIBE_TIMEOUT_S) as waiting:
                try:
                    reply = await ws.receive()
                except trio.EndOfChannel:
                    log.info("subscriber %s left before naming a call", peer)
                    return
            if waiting.cancelled_caught:
                reason = f"no callSid received within {SUBSCRIBE_TIMEOUT_S:g} s"
                log.info("subscriber %s closed: %s", peer, reason)
                await ws.send(_error_json(f"{reason}; send one of the listed callSids after connecting"))
                await ws.close(CLOSE_POLICY, reason)
                return
            call_sid = _text(reply).strip()
            if verdict.call_sid is not None and call_sid != verdict.call_sid:
                log.warning("subscriber %s: token is for call %s, not %r", peer, verdict.call_sid, call_sid[:64])
                await ws.send(
                    json.dumps(
                        {"type": "Error", "source": "callscribe", "message": "this token is not valid for that call"}
                    )
                )
                await ws.close(CLOSE_POLICY, "token not valid for this call")
                return
            resume = resume_request(ws.query)
            if resume.error:
                await _refuse_resume(ws, peer, resume.error)
                return
            # A resume (after=) names a call that has begun: it may have ended since, and the hub
            # still resumes it for a while, so there is nothing to wait for.
            waited = wait_s > 0 and resume.after is None
            if waited and not await self._wait_for_call(ws, peer, call_sid, wait_s):
                return
            # A subscriber with ids resumes from the hub's history of the call (?after=0-0 for all
            # of it), whose messages carry the ids; the store's history is for the others. (A call
            # waited for is live now; the list was read at connect time: no Redis round trip here,
            # which would leave a subscriber unregistered while a shutdown ends the others.)
            listed = call_sid in calls or waited
            await self._subscribe(ws, peer, call_sid, resume, with_history and not resume.ids, listed)
        if scope.cancelled_caught:
            await ws.close(CLOSE_GOING_AWAY, "server shutting down")

    async def _subscribe(
        self, ws: ReaderSocket, peer: str, call_sid: str, resume: ResumeRequest, with_history: bool, listed: bool
    ) -> None:
        try:
            # A live call on another process: its finals published since its store last committed
            # are in no store yet, so the hub's history from the start fills that in (core/catch_up.py).
            catch_up = with_history and not resume.ids and listed and self.live_call(call_sid) is None
            ids, after = (True, "0-0") if catch_up else (resume.ids, resume.after)
            async with self.hub.subscribe(call_sid, ids=ids, after=after) as subscription:
                log.info("call %s: subscriber %s joined", call_sid, peer)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_drain_then_stop, ws, nursery.cancel_scope)
                        with subscription.cancel_scope:
                            # Subscribed first, so the live messages queue while the history is read;
                            # finals in both are sent once (the history's copy, in its place).
                            history = await self._history(call_sid, peer) if with_history else []
                            for message in history:
                                await self.stall.send(ws, subscription, message)
                            follow = CatchUp(history)
                            async for message in subscription:
                                text = follow.offer(message) if catch_up else message
                                if text is None or (not catch_up and follow.sent_already(text)):
                                    continue
                                await self.stall.send(ws, subscription, text)
                        nursery.cancel_scope.cancel()
                finally:
                    self.stall.check_cut_off(ws, subscription)
                    if subscription.close_code == CLOSE_POLICY and (subscription.close_reason or "").startswith(
                        ("subscriber too slow", "subscriber stalled")
                    ):  # (not the call's own 1008, e.g. Twilio's invalid frames, passed on)
                        self.supervisor.metrics.dropped.inc()
                    log.info(
                        "call %s: subscriber %s left after %d messages (%s)",
                        call_sid,
                        peer,
                        subscription.delivered,
                        # Not ended by the call, the hub or a drop: the peer went away.
                        subscription.close_reason if subscription.ended else "subscriber disconnected",
                    )
        except UnknownCall:
            log.info("subscriber %s asked for unknown call %r", peer, call_sid[:64])
            await ws.send(_error_json(f"unknown callSid: {call_sid[:64]!r}"))
            await ws.close(CLOSE_POLICY, "unknown callSid")
            return
        except HubUnavailable as error:
            await _hub_unavailable(ws, peer, error)
            return
        await ws.close(subscription.close_code, subscription.close_reason)

    async def _history(self, call_sid: str, peer: str) -> list[str]:
        """The call's finals so far, for a subscriber who joins it now ([] when nothing is kept)."""
        with trio.move_on_after(HISTORY_TIMEOUT_S) as waiting:
            try:
                return await self.supervisor.recorder.history(call_sid)
            except StoreUnavailable as error:
                log.warning(
                    "call %s: subscriber %s gets live messages only: the store cannot answer: %s", call_sid, peer, error
                )
                return []
        if waiting.cancelled_caught:
            log.warning(
                "call %s: subscriber %s gets live messages only: the store did not answer in time", call_sid, peer
            )
        return []

    # -- /client?wait=SECONDS: naming a call before it starts -------------------------------------

    async def _wait_for_call(self, ws: ReaderSocket, peer: str, call_sid: str, wait_s: float) -> bool:
        """Wait until `call_sid` is live (True), or up to `wait_s` seconds: then tell the subscriber
        and close (False). An app learns a CallSid from Twilio's voice webhook before the stream
        starts, so it may subscribe first. The process's waiters share one poll of the hub
        (call_waiters.py); meanwhile the socket is read (pings answered), and a subscriber that
        leaves ends the wait (False); the supervisor cancels it at shutdown."""
        started = left = False
        hub_error: HubUnavailable | None = None

        def waiting() -> None:
            log.info("subscriber %s waits up to %g s for call %r to start", peer, wait_s, call_sid[:64])

        async def poll() -> None:
            nonlocal started, hub_error
            try:
                started = await self.supervisor.waiters.wait(call_sid, wait_s, waiting)
            except HubUnavailable as error:
                hub_error = error
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            nonlocal left
            await ws.drain()
            left = True
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            nursery.start_soon(watch)
        if started:
            return True
        if left:
            log.info("subscriber %s left while waiting for call %r", peer, call_sid[:64])
            return False
        if hub_error is not None:
            await _hub_unavailable(ws, peer, hub_error)
            return False
        log.info("subscriber %s waited %g s for call %r, which did not start", peer, wait_s, call_sid[:64])
        await ws.send(_error_json(f"call {call_sid[:64]!r} did not start within {wait_s:g} s"))
        await ws.close(CLOSE_POLICY, "unknown callSid")
        return False


async def _drain_then_stop(ws: ReaderSocket, subscription_loop: trio.CancelScope) -> None:
    """Subscribers have nothing more to say: what they send is read (so that no inbox fills up)
    and dropped. Once the peer is gone, its subscription loop stops."""
    await ws.drain()
    subscription_loop.cancel()


async def _refuse_resume(ws: ReaderSocket, peer: str, reason: str) -> None:
    """A subscriber's `ids`/`after` do not parse (see callscribe.core.fanout.resume_request)."""
    log.info("subscriber %s refused: %s", peer, reason)
    await ws.send(json.dumps({"type": "Error", "source": "callscribe", "message": reason}))
    await ws.close(CLOSE_POLICY, "bad ids or after")


async def _hub_unavailable(ws: ReaderSocket, peer: str, error: HubUnavailable) -> None:
    log.warning("subscriber %s turned away: %s", peer, error)
    await ws.send(_error_json(f"subscriptions are unavailable: {error}"))
    await ws.close(CLOSE_TRY_AGAIN_LATER, "hub unavailable, try again later")


def _error_json(message: str) -> str:
    return json.dumps({"type": "Error", "source": "callscribe", "message": message})


def _wait_seconds(query: str) -> float | str:
    """`?wait=SECONDS` of a /client URL: 0 when absent, else the seconds, or what is wrong with it."""
    values = parse_qs(query).get("wait")
    if not values:
        return 0.0
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_S:  # also false for nan
        return f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}, not {values[-1][:32]!r}"
    return seconds


def _text(message: str | bytes | None) -> str:
    if message is None:
        return ""
    if isinstance(message, bytes):
        return message.decode("utf-8", "replace")
    return message
