"""Accepting a WebSocket on callscribe's own routes: the upgrade request's answer (websockets'
sans-IO handshake), refused with the route's status and reason or accepted as a `ServedWebSocket`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from callscribe.server.websocket import ReadTick, ServedWebSocket

log = logging.getLogger(__name__)
_protocol_log = logging.getLogger(__name__ + ".websockets")
"""websockets' own log lines ("connection open" at every call) stay below the server's info level;
what matters is logged by callscribe with the call's context."""
_protocol_log.setLevel(logging.WARNING)


class _ServerProtocol(ServerProtocol):
    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        """Subprotocols are the route's business (`Admission.subprotocol`): websockets would refuse
        an offer that is not an RFC 7230 token, such as a bearer token with `/` or `=` in it."""
        return None


class FirstValues:
    """Request headers as the access policy reads them: a header given on several lines is their
    values joined with ", " (as RFC 9110 allows), where websockets' `get` would raise."""

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def get(self, key: str, /) -> str | None:
        values = self._headers.get_all(key)
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class Admission:
    """The answer to an upgrade request: refused with an HTTP status and a reason, or accepted
    (with the subprotocol to echo, if any)."""

    status: int = 101
    reason: str = ""
    subprotocol: str | None = None


INVALID_TARGET = Admission(400, "the request target must be printable ASCII (RFC 9112, 3.2)")


def _valid_target(target: str) -> bool:
    """Visible ASCII only, as h11 (Hypercorn's routes) requires: no space, control character or DEL."""
    return target.isascii() and all("!" <= c <= "~" for c in target)


async def accept_websocket(
    stream: trio.abc.Stream,
    head: bytes,
    peer: str,
    *,
    check: Callable[[Request], Admission],
    max_message: int,
    stall_timeout_s: float,
    read_tick: ReadTick | None = None,
    what: str = "Twilio socket",
) -> ServedWebSocket | None:
    """Answer the upgrade request in `head` (read by the listener, up to its blank line): refuse it
    with `check`'s status and reason, or accept it. None when the connection is refused or is not
    a valid WebSocket upgrade (it has then been answered, e.g. 400, and should be closed)."""
    protocol = _ServerProtocol(max_size=max_message, logger=_protocol_log)
    # Frames sent with the request (not RFC 6455's way, but seen) are read once the 101 is sent:
    # given to the protocol now, a ping's pong would go out before the 101 and messages be lost.
    end = head.find(b"\r\n\r\n")
    early = b""
    if end >= 0:
        head, early = head[: end + 4], head[end + 4 :]
    protocol.receive_data(head)
    events = protocol.events_received()
    request = events[0] if events and isinstance(events[0], Request) else None
    if request is not None:
        admission = check(request) if _valid_target(request.path) else INVALID_TARGET
        if admission.status != 101:
            response = protocol.reject(admission.status, admission.reason + "\n")
        else:
            response = protocol.accept(request)
            if admission.subprotocol and response.status_code == 101:
                response.headers["Sec-WebSocket-Protocol"] = admission.subprotocol
        protocol.send_response(response)
        if response.status_code != 101:
            log.warning(
                "refused %s from %s: %s %s",
                "a subscriber" if what == "subscriber" else "a WebSocket upgrade",
                peer,
                response.status_code,
                response.body.decode(errors="replace").strip(),
            )
    with trio.move_on_after(stall_timeout_s):
        try:
            for data in protocol.data_to_send():
                if data:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
    if request is None or protocol.state is not State.OPEN:
        return None
    return ServedWebSocket(
        stream,
        protocol,
        peer,
        stall_timeout_s=stall_timeout_s,
        read_tick=read_tick,
        query=request.path.partition("?")[2],
        what=what,
        early=early,
    )
