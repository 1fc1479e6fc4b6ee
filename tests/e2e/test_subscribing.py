"""`/client` from a subscriber's side: naming a call before it starts (`?wait=SECONDS`), what a
subscriber that names nothing is told, what the log says when one leaves; and `/game`'s first frame."""

from __future__ import annotations

import json
import logging
import os
import struct

import httpx
import pytest
import trio
import trio_websocket

import rawws
from callscribe.core import audio
from callscribe.server import subscribers
from callscribe.server.games import NO_PHONE_NUMBER
from callscribe.testing.call_plan import CallSpec
from callscribe.testing.call_runner import run_call
from callscribe.testing.fake_deepgram import FakeDeepgram
from conftest import RunningServer, Subscriber, start_server, subscribe, wait_until_live


async def named_before_the_start(server: RunningServer, query: str, call_sid: str, into: Subscriber) -> Subscriber:
    async with trio_websocket.open_websocket_url(server.url(f"/client{query}")) as ws:
        into.calls_listed = json.loads(await ws.get_message())
        await ws.send_message(call_sid)
        try:
            while True:
                into.messages.append(str(await ws.get_message()))
        except trio_websocket.ConnectionClosed as closed:
            into.close_code, into.close_reason = closed.reason.code, closed.reason.reason
    return into


async def test_a_subscriber_may_name_a_call_before_it_starts_and_misses_nothing(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "callscribe")
    spec = CallSpec(inbound=audio.generate_tone(2.0), call_sid="CAlater")
    early = Subscriber()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(named_before_the_start, server, "?wait=10", "CAlater", early)
        with trio.fail_after(10):
            while "waits up to 10 s for call 'CAlater' to start" not in caplog.text:
                await trio.sleep(0.01)
        await run_call(server.url("/twilio"), spec, speed=2)
    assert early.calls_listed == []
    assert early.types == ["Results", "Results", "Results", "Metadata"]  # the first result too, and CloseStream's
    assert (early.close_code, early.close_reason) == (1000, "call ended")


async def test_a_call_that_does_not_start_within_the_wait_is_an_error(server: RunningServer) -> None:
    with trio.fail_after(10):
        subscriber = await named_before_the_start(server, "?wait=0.3", "CAnever", Subscriber())
    (error,) = [json.loads(m) for m in subscriber.messages]
    assert error == {"type": "Error", "source": "callscribe", "message": "call 'CAnever' did not start within 0.3 s"}
    assert (subscriber.close_code, subscriber.close_reason) == (1008, "unknown callSid")


async def test_without_wait_a_call_not_yet_started_is_unknown_at_once(server: RunningServer) -> None:
    with trio.fail_after(5):
        subscriber = await named_before_the_start(server, "?wait=0", "CAnotyet", Subscriber())
    assert (subscriber.close_code, subscriber.close_reason) == (1008, "unknown callSid")


@pytest.mark.parametrize("value", ["soon", "-1", "3601", "nan", "inf"])
async def test_a_bad_wait_is_an_error_and_1008(server: RunningServer, value: str) -> None:
    async with trio_websocket.open_websocket_url(server.url(f"/client?wait={value}")) as ws:
        error = json.loads(await ws.get_message())
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
    assert error["type"] == "Error" and error["message"].startswith("wait must be a number of seconds from 0 to 3600")
    assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "bad wait parameter")


async def test_a_subscriber_that_names_no_call_is_told_why_before_the_close(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscribers, "SUBSCRIBE_TIMEOUT_S", 0.2)
    async with trio_websocket.open_websocket_url(server.url("/client")) as ws:
        assert json.loads(await ws.get_message()) == []
        with trio.fail_after(5):
            error = json.loads(await ws.get_message())
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert error == {
        "type": "Error",
        "source": "callscribe",
        "message": "no callSid received within 0.2 s; send one of the listed callSids after connecting",
    }
    assert (closed.value.reason.code, closed.value.reason.reason) == (1008, "no callSid received within 0.2 s")


async def test_a_subscriber_that_goes_away_is_logged_as_such(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "callscribe")
    spec = CallSpec(inbound=audio.generate_tone(3.0), call_sid="CAleft")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_call, server.url("/twilio"), spec)
        await wait_until_live(server, "CAleft")
        async with trio_websocket.open_websocket_url(server.url("/client")) as ws:
            await ws.get_message()
            await ws.send_message("CAleft")
            await ws.get_message()  # the first result: subscribed
        with trio.fail_after(5):
            while "left after" not in caplog.text:
                await trio.sleep(0.01)
        assert "call CAleft: subscriber 127.0.0.1:" in caplog.text
        assert "left after 1 messages (subscriber disconnected)" in caplog.text
        stayed = await subscribe(server, "CAleft", Subscriber())
    assert (stayed.close_code, stayed.close_reason) == (1000, "call ended")
    assert "(call ended)" in caplog.text


async def test_a_game_is_never_sent_an_empty_phone_number(server: RunningServer) -> None:
    async with trio_websocket.open_websocket_url(server.url("/game")) as ws:
        assert await ws.get_message() == NO_PHONE_NUMBER == "(no TWILIO_PHONE_NUMBER set)"
        assert (await ws.get_message()).isdigit()


BOTH = pytest.mark.parametrize("after_a_request", [False, True], ids=["callscribe's own", "Quart's after a request"])
"""A subscriber's first request on a connection is served by callscribe's own code; after another
request on the same connection (or over HTTP/2) it reaches Hypercorn and Quart. Both must behave alike."""


async def open_client(
    server: RunningServer, after_a_request: bool, path: str = "/client", extra: tuple[str, ...] = ()
) -> tuple[trio.SocketStream, int, bytes]:
    """A raw /client connection (after a `GET /healthz` on it if asked): (stream, status, bytes after the head)."""
    port = int(server.http_url.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    if after_a_request:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                response += await stream.receive_some(65536)
    headers = dict(line.split(": ", 1) for line in extra)
    await stream.send_all(rawws.upgrade_request(path, f"127.0.0.1:{port}", headers))
    status, _head, rest = await rawws.read_response_head(stream)
    return stream, status, rest


async def logged(caplog: pytest.LogCaptureFixture, text: str, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not any(text in record.getMessage() for record in caplog.records):
            await trio.sleep(0.01)


@BOTH
async def test_a_subscriber_gets_the_same_answers_from_either_server(
    server: RunningServer, after_a_request: bool
) -> None:
    stream, status, rest = await open_client(server, after_a_request)
    try:
        assert status == 101
        await stream.send_all(rawws.frame(rawws.OP_TEXT, b"CAnone"))
        frames = await rawws.read_frames(stream, 3, already=rest, timeout_s=5)
    finally:
        await stream.aclose()
    assert frames[0] == (rawws.OP_TEXT, b"[]")
    assert json.loads(frames[1][1]) == {"type": "Error", "source": "callscribe", "message": "unknown callSid: 'CAnone'"}
    assert frames[2] == (rawws.OP_CLOSE, struct.pack("!H", 1008) + b"unknown callSid")


@BOTH
async def test_a_ping_is_answered_while_waiting_for_a_call(
    server: RunningServer, after_a_request: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "callscribe")
    stream, status, rest = await open_client(server, after_a_request, "/client?wait=30")
    try:
        assert status == 101
        await stream.send_all(rawws.frame(rawws.OP_TEXT, b"CAlater"))
        await logged(caplog, "waits up to 30 s for call 'CAlater'")
        await stream.send_all(rawws.frame(rawws.OP_PING, b"alive?"))
        frames = await rawws.read_frames(stream, 2, already=rest, timeout_s=5)
        assert frames == [(rawws.OP_TEXT, b"[]"), (rawws.OP_PONG, b"alive?")]
    finally:
        await stream.aclose()


async def test_a_subscriber_leaving_while_waiting_is_let_go_at_once(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "callscribe")
    stream, status, rest = await open_client(server, False, "/client?wait=30")
    assert status == 101
    await rawws.read_frames(stream, 1, already=rest, timeout_s=5)
    await stream.send_all(rawws.frame(rawws.OP_TEXT, b"CAgone"))
    await logged(caplog, "waits up to 30 s for call 'CAgone'")
    await stream.aclose()
    await logged(caplog, "left while waiting for call 'CAgone'")


@BOTH
async def test_a_header_on_two_lines_gets_an_answer(server: RunningServer, after_a_request: bool) -> None:
    # RFC 6455 allows Sec-WebSocket-Protocol on several lines; websockets' `get` raised on it.
    port = int(server.http_url.rsplit(":", 1)[1])
    request = rawws.upgrade_request("/client", f"127.0.0.1:{port}", {"Sec-WebSocket-Protocol": "chat"})
    request = request.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: superchat\r\n\r\n")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        if after_a_request:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while data.count(b"\r\n\r\n") < (2 if after_a_request else 1):
                data += await stream.receive_some(65536)
    finally:
        await stream.aclose()
    assert data.rsplit(b"HTTP/1.1 ", 1)[1].startswith(b"101")


@BOTH
async def test_a_static_token_that_is_no_http_token_works_as_subprotocol(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, after_a_request: bool
) -> None:
    server = await start_server(nursery, fake_deepgram, tokens=frozenset({"c2VjcmV0/dG9rZW4="}))
    try:
        stream, status, _ = await open_client(
            server, after_a_request, extra=("Sec-WebSocket-Protocol: bearer, c2VjcmV0/dG9rZW4=",)
        )
        await stream.aclose()
        assert status == 101
    finally:
        server.stop.set()
        with trio.fail_after(10):
            await server.done.wait()


@BOTH
async def test_a_subscriber_closed_while_it_still_sends_sees_the_close_and_eof_not_a_reset(
    server: RunningServer, after_a_request: bool
) -> None:
    # Hypercorn's connection closed at the first bytes after its close frame (GuardedTCPServer
    # waited for the peer's answer, and took any bytes for it): the rest of what the peer had on
    # its way, and its close frame, then met a closed socket and the peer got RST.
    stream, status, rest = await open_client(server, after_a_request, "/client?wait=soon")
    assert status == 101
    ws = rawws.RawWebSocket(stream, status, b"", rest)
    await ws.read_until_closed()
    assert ws.close_code() == 1008
    # More than Hypercorn reads at a time (64 KiB), less than that and what it reads on (LINGER_BYTES).
    await ws.send(b"".join(rawws.frame(rawws.OP_TEXT, b"x" * 30_000) for _ in range(3)) + rawws.close_frame(1008))
    with trio.fail_after(5):
        while await stream.receive_some(65536):
            pass
    async with httpx.AsyncClient() as http:  # the server is done with the connection
        assert (await http.get(server.http_url + "/healthz")).status_code == 200
    error = stream.socket.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_ERROR)
    await ws.aclose()
    assert os.strerror(error) == os.strerror(0)  # a RST after the FIN: EPIPE
