"""One WebSocket served straight on ASGI, without Quart: what the `/twilio` route runs on.

Twilio sends a both-track call's frames 100 times a second, so the per-frame cost of the receive
path is what limits calls per core. Under Quart-Trio every received frame takes an extra task
switch, a memory-channel hop and a `websocket_received` signal before the handler sees it; here the
call's reader awaits Hypercorn's per-connection queue directly. The benchmark measured the
difference (docs/performance.md). Every other route stays on Quart.

The ASGI WebSocket protocol, as Hypercorn speaks it (https://asgi.readthedocs.io/en/latest/specs/www.html):
- the server sends `websocket.connect` first; the app answers `websocket.accept`, or refuses the
  upgrade with an HTTP response (`websocket.http.response.start` + `.body`, where the server offers
  that extension) or with `websocket.close` (a bare 403);
- then `websocket.receive` events (`text` or `bytes`) until `websocket.disconnect`;
- the app sends `websocket.send` and, to end it, `websocket.close` with a code and reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from werkzeug.datastructures import Headers

ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

HTTP_RESPONSE_EXTENSION = "websocket.http.response"
MAX_CLOSE_REASON = 120
"""Close reasons must fit a control frame (125 bytes, 2 of them the code)."""


class AsgiWebSocket:
    """A server-side WebSocket on an ASGI scope, with the methods the call needs.

    `receive()` returns each message's text or bytes and raises `trio.EndOfChannel` once the peer
    has gone, which is how a `Call` learns that its input ended.
    """

    def __init__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.headers = Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())])
        self.scheme: str = scope.get("scheme", "ws")
        self.path: str = scope.get("path", "/")
        self.query_string: str = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        self.peer = f"{client[0]}:{client[1]}" if client else "unknown"
        self.gone = False
        """The peer has disconnected (or never completed the handshake)."""

    async def connected(self) -> bool:
        """Wait for the upgrade request; False if the peer left first."""
        event = await self._receive()
        if event["type"] == "websocket.connect":
            return True
        self.gone = True
        return False

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})

    async def refuse(self, status: int, reason: str) -> None:
        """Refuse the upgrade: an HTTP response with the reason as its body where the server can
        send one, else a bare 403."""
        if HTTP_RESPONSE_EXTENSION not in self.scope.get("extensions", {}):
            await self._send({"type": "websocket.close", "code": 1008})
            return
        body = (reason + "\n").encode()
        await self._send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await self._send({"type": "websocket.http.response.body", "body": body})

    async def receive(self) -> str | bytes:
        while not self.gone:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.receive":
                text = event.get("text")
                return text if text is not None else (event.get("bytes") or b"")
            if kind == "websocket.disconnect":
                self.gone = True
        raise trio.EndOfChannel

    async def send(self, message: str | bytes) -> None:
        """Send one message. Once the peer has gone it is dropped, with a checkpoint: Hypercorn
        would drop it too but return without one, and a sending loop would spin."""
        if self.gone:
            await trio.lowlevel.checkpoint()
            return
        if isinstance(message, str):
            await self._send({"type": "websocket.send", "text": message})
        else:
            await self._send({"type": "websocket.send", "bytes": message})

    async def close(self, code: int, reason: str, timeout_s: float) -> None:
        """Send a close frame and wait (bounded) for the peer's answer, reading and discarding
        what it still sends meanwhile: Hypercorn's reader hands every event to this connection's
        queue, so nobody reading it would leave the closing handshake unfinished."""
        if self.gone:
            return
        with trio.move_on_after(timeout_s):
            await self._send(
                {
                    "type": "websocket.close",
                    "code": code,
                    "reason": reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore"),
                }
            )
            while (await self._receive())["type"] != "websocket.disconnect":
                pass
            self.gone = True
