"""The Quart WebSocket of a reader of our messages (a `/client` subscriber, a `/game` game): its
peer's name, closing it within a bound, and the stall watch that drops a peer that stopped reading."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from quart import Websocket

from callscribe.server.hub import CLOSE_POLICY, Subscription
from callscribe.server.hypercorn_fixes import connection_fate

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0
"""Sending a close frame to a peer that stopped reading gives up after this."""
MAX_CLOSE_REASON = 120
"""Close reasons must fit a control frame (125 bytes, 2 of them the code)."""


@dataclass(frozen=True)
class StallWatch:
    """Drops the subscription of a peer whose socket has not taken our data for `timeout_s`."""

    timeout_s: float

    async def send(self, ws: Websocket, subscription: Subscription, message: str, peer: str) -> None:
        """Send one message. Hypercorn's writes cannot be interrupted (they are shielded); a peer that
        stops reading is cut off by the kernel (TCP_USER_TIMEOUT, see serve.py), and a send that took
        that long is recorded here as the reason, even if Quart cancels us as the socket dies."""
        started = trio.current_time()
        try:
            await ws.send(message)
        finally:
            took = trio.current_time() - started
            if took >= self.timeout_s / 2:  # the kernel's clock may have started a little earlier
                _drop_stalled(subscription, peer, f"subscriber stalled: a send took {took:.0f} s")

    def check_cut_off(self, ws: Websocket, subscription: Subscription, peer: str) -> None:
        """The kernel may abort a peer that stopped reading while no send was waiting (our writes
        still fit its send buffer); the connection's fate tells."""
        fate = connection_fate(ws.scope)
        if fate is not None and fate.timed_out and subscription.close_code != CLOSE_POLICY:
            _drop_stalled(subscription, peer, f"subscriber stalled: took no data for {self.timeout_s:g} s")


def _drop_stalled(subscription: Subscription, peer: str, reason: str) -> None:
    subscription.drop(reason)
    if subscription.call_sid:
        log.warning("call %s: dropping subscriber %s: %s", subscription.call_sid, peer, reason)
    else:
        log.warning("dropping game %s: %s", peer, reason)


async def close(ws: Websocket, code: int, reason: str) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        await ws.close(code, reason.encode(errors="replace")[:MAX_CLOSE_REASON].decode(errors="ignore"))


def peer_of(ws: Websocket) -> str:
    client = ws.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"
