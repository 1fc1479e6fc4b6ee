"""AsgiWebSocket against a scripted ASGI server: the events it sends and how it reads."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from callscribe.server.twilio_socket import MAX_CLOSE_REASON, AsgiWebSocket

SCOPE: dict[str, Any] = {
    "type": "websocket",
    "scheme": "wss",
    "path": "/twilio",
    "query_string": b"a=1&b=2",
    "headers": [(b"x-twilio-signature", b"sig"), (b"host", b"example.com")],
    "client": ("10.0.0.7", 4242),
    "extensions": {"websocket.http.response": {}},
}


class ScriptedServer:
    """Feeds the given events to `receive` (then blocks forever, like a quiet peer) and records sends."""

    def __init__(self, *events: dict[str, Any]) -> None:
        self.events = list(events)
        self.sent: list[dict[str, Any]] = []
        self.received = 0

    async def receive(self) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if not self.events:
            await trio.sleep_forever()
        self.received += 1
        return self.events.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(message)


def socket(server: ScriptedServer, **scope: Any) -> AsgiWebSocket:
    return AsgiWebSocket({**SCOPE, **scope}, server.receive, server.send)


def test_scope_is_read_into_request_fields() -> None:
    ws = socket(ScriptedServer())
    assert ws.headers.get("X-Twilio-Signature") == "sig"  # case-insensitive, as Quart's
    assert (ws.scheme, ws.path, ws.query_string, ws.peer) == ("wss", "/twilio", "a=1&b=2", "10.0.0.7:4242")
    assert socket(ScriptedServer(), client=None).peer == "unknown"


async def test_receive_returns_text_bytes_and_empty_binary_then_ends() -> None:
    server = ScriptedServer(
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": '{"event":"connected"}'},
        {"type": "websocket.receive", "bytes": b"\x01\x02"},
        {"type": "websocket.receive", "bytes": None, "text": None},
        {"type": "websocket.disconnect", "code": 1000},
    )
    ws = socket(server)
    assert await ws.connected()
    assert await ws.receive() == '{"event":"connected"}'
    assert await ws.receive() == b"\x01\x02"
    assert await ws.receive() == b""  # not None: an empty binary frame is still a (bad) frame
    with pytest.raises(trio.EndOfChannel):
        await ws.receive()
    assert ws.gone
    with pytest.raises(trio.EndOfChannel):  # and again, without reading the queue
        await ws.receive()
    assert server.received == 5


async def test_peer_leaving_before_the_handshake() -> None:
    ws = socket(ScriptedServer({"type": "websocket.disconnect", "code": 1006}))
    assert not await ws.connected()
    assert ws.gone


async def test_refuse_sends_the_reason_as_an_http_response() -> None:
    server = ScriptedServer()
    await socket(server).refuse(403, "missing X-Twilio-Signature")
    start, body = server.sent
    assert start["type"] == "websocket.http.response.start" and start["status"] == 403
    assert dict(start["headers"])[b"content-length"] == b"27"
    assert body == {"type": "websocket.http.response.body", "body": b"missing X-Twilio-Signature\n"}


async def test_refuse_without_the_http_response_extension_closes() -> None:
    server = ScriptedServer()
    await socket(server, extensions={}).refuse(403, "no")
    assert server.sent == [{"type": "websocket.close", "code": 1008}]


async def test_send_text_and_bytes() -> None:
    server = ScriptedServer()
    ws = socket(server)
    await ws.send("hi")
    await ws.send(b"\xff")
    assert server.sent == [{"type": "websocket.send", "text": "hi"}, {"type": "websocket.send", "bytes": b"\xff"}]


async def test_send_after_the_peer_left_is_dropped_but_still_yields() -> None:
    server = ScriptedServer({"type": "websocket.disconnect", "code": 1001})
    ws = socket(server)
    with pytest.raises(trio.EndOfChannel):
        await ws.receive()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):  # a checkpoint: a loop of sends can be cancelled
            await ws.send("talk-back audio")
    assert server.sent == []


async def test_close_reads_on_until_the_peer_answers() -> None:
    server = ScriptedServer(
        {"type": "websocket.receive", "text": "late frame"},
        {"type": "websocket.receive", "text": "another"},
        {"type": "websocket.disconnect", "code": 1000},
    )
    ws = socket(server)
    await ws.close(1000, "call ended", timeout_s=5)
    assert server.sent == [{"type": "websocket.close", "code": 1000, "reason": "call ended"}]
    assert server.received == 3 and ws.gone
    await ws.close(1000, "again", timeout_s=5)  # already closed: nothing more is sent
    assert len(server.sent) == 1


async def test_close_gives_up_on_a_silent_peer(autojump_clock: trio.abc.Clock) -> None:
    ws = socket(ScriptedServer())
    with trio.fail_after(10):
        started = trio.current_time()
        await ws.close(1011, "x" * 200 + "é", timeout_s=2)
    assert trio.current_time() - started == pytest.approx(2)
    assert not ws.gone


async def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    server = ScriptedServer({"type": "websocket.disconnect", "code": 1000})
    await socket(server).close(1003, "é" * 100, timeout_s=5)
    reason = server.sent[0]["reason"]
    assert len(reason.encode()) <= MAX_CLOSE_REASON and reason == "é" * (MAX_CLOSE_REASON // 2)
