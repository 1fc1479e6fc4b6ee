"""The socket of a reader of our messages (a `/client` subscriber, a `/game` game), whichever
server carries it: callscribe's own (`ServedWebSocket`, websocket.py: a subscriber's first request
on a connection) or Quart's (`QuartSocket`: games, and subscribers that reach Hypercorn, e.g. over
HTTP/2 or after another request on the same connection). Also the stall watch that drops a peer
that stopped reading."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import trio
from quart import Websocket

from callscribe.server.hub import CLOSE_POLICY, Subscription
from callscribe.server.hypercorn_fixes import connection_fate
from callscribe.server.websocket import CLOSE_TIMEOUT_S, close_reason

log = logging.getLogger(__name__)


class ReaderSocket(Protocol):
    """What the `/client` and `/game` protocols need of their WebSocket."""

    peer: str
    query: str

    async def send(self, text: str) -> None: ...

    async def receive(self) -> str | bytes:
        """The peer's next message; `trio.EndOfChannel` once it is gone (Quart cancels instead)."""
        ...

    async def drain(self) -> None:
        """Read and drop what the peer sends; returns once it is gone (Quart cancels instead)."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason` (cut to fit), bounded by CLOSE_TIMEOUT_S."""
        ...

    @property
    def stalled(self) -> bool:
        """The connection was cut off because the peer took no data (by us or by the kernel)."""
        ...


class QuartSocket:
    """A Quart WebSocket as a `ReaderSocket`."""

    def __init__(self, ws: Websocket) -> None:
        self.ws = ws
        client = ws.scope.get("client")
        self.peer = f"{client[0]}:{client[1]}" if client else "unknown"
        self.query = ws.query_string.decode("latin-1")

    async def send(self, text: str) -> None:
        await self.ws.send(text)

    async def receive(self) -> str | bytes:
        message = await self.ws.receive()
        return b"" if message is None else message  # Quart gives an empty binary message as None

    async def drain(self) -> None:
        while True:
            await self.ws.receive()

    async def close(self, code: int, reason: str) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await self.ws.close(code, close_reason(reason))

    @property
    def stalled(self) -> bool:
        # The kernel may abort a peer that stopped reading while no send was waiting (our writes
        # still fit its send buffer); the connection's fate tells.
        fate = connection_fate(self.ws.scope)
        return fate is not None and fate.timed_out


@dataclass(frozen=True)
class StallWatch:
    """Drops the subscription of a peer whose socket has not taken our data for `timeout_s`."""

    timeout_s: float

    async def send(self, sock: ReaderSocket, subscription: Subscription, message: str) -> None:
        """Send one message. Hypercorn's writes cannot be interrupted (they are shielded); a peer that
        stops reading is cut off by the kernel (TCP_USER_TIMEOUT, see serve.py), and a send that took
        that long is recorded here as the reason, even if Quart cancels us as the socket dies.
        (callscribe's own sockets give up on such a peer themselves: `stalled`.)"""
        started = trio.current_time()
        try:
            await sock.send(message)
        finally:
            took = trio.current_time() - started
            if took >= self.timeout_s / 2:  # the kernel's clock may have started a little earlier
                _drop_stalled(subscription, sock.peer, f"subscriber stalled: a send took {took:.0f} s")
            elif sock.stalled:
                self.check_cut_off(sock, subscription)

    def check_cut_off(self, sock: ReaderSocket, subscription: Subscription) -> None:
        """A peer cut off for stalling while no send was waiting is dropped as stalled too."""
        if sock.stalled and subscription.close_code != CLOSE_POLICY:
            _drop_stalled(subscription, sock.peer, f"subscriber stalled: took no data for {self.timeout_s:g} s")


def _drop_stalled(subscription: Subscription, peer: str, reason: str) -> None:
    subscription.drop(reason)
    if subscription.call_sid:
        log.warning("call %s: dropping subscriber %s: %s", subscription.call_sid, peer, reason)
    else:
        log.warning("dropping game %s: %s", peer, reason)
