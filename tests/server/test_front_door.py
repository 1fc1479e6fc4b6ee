"""The front door's edges: a WebSocket upgrade to a path without a WebSocket route, and frames
that come with the upgrade request."""

from __future__ import annotations

import httpx
import pytest
import trio

import rawws
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, call_messages
from conftest import RunningServer, noise, start_server, stop_servers


def port_of(server: RunningServer) -> int:
    return int(server.http_url.rsplit(":", 1)[1])


async def test_a_websocket_upgrade_to_an_unknown_path_gets_404_not_a_logged_500(server: RunningServer) -> None:
    # README: "an unknown path or method | HTTP | 404 or 405". An upgrade that reaches Quart for
    # a path it has no WebSocket route for ran the 404 handler (json_for_api), which read `request`
    # in a WebSocket context: a 500 and two tracebacks logged, at anyone's will.
    port = port_of(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(rawws.upgrade_request("/nope", f"127.0.0.1:{port}"))
    with trio.fail_after(5):
        status, _, _ = await rawws.read_response_head(stream)
    await stream.aclose()
    assert status == 404


async def test_a_ping_sent_with_the_upgrade_is_not_answered_before_the_101(server: RunningServer) -> None:
    port = port_of(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(rawws.upgrade_request("/twilio", f"127.0.0.1:{port}") + rawws.frame(rawws.OP_PING, b"hi"))
    data = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(65536)
    await stream.aclose()
    assert data.startswith(b"HTTP/1.1 101"), data[:20]


async def test_twilio_messages_that_arrive_with_the_upgrade_are_not_lost(server: RunningServer) -> None:
    port = port_of(server)
    spec = CallSpec(inbound=noise(0.2, 1), call_sid="CA" + "1" * 32)
    connected_and_start = b"".join(rawws.frame(rawws.OP_TEXT, m.encode()) for _, m in list(call_messages(spec))[:2])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(rawws.upgrade_request("/twilio", f"127.0.0.1:{port}") + connected_and_start)
    status, _, _ = await rawws.read_response_head(stream)
    assert status == 101
    async with httpx.AsyncClient() as http:
        with trio.fail_after(3):  # the call starts at once when the start frame is sent after the 101
            while (await http.get(server.http_url + "/healthz")).json()["active_calls"] != 1:
                await trio.sleep(0.05)
    await stream.aclose()


@pytest.mark.parametrize("host", ["127.0.0.1:abc", "127.0.0.1:99999", "[::1"])
async def test_a_signed_twilio_request_whose_host_makes_no_url_gets_403_not_a_logged_exception(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, host: str
) -> None:
    # With TWILIO_AUTH_TOKEN the signature is checked over a URL rebuilt from Host; Twilio's
    # validator reads that URL's port, which raised ValueError for such a Host: the upgrade got no
    # HTTP answer at all (the barrier logged a traceback and dropped the connection), /twiml a 500.
    server = await start_server(nursery, fake_deepgram, twilio_auth_token="1" * 32)
    port = port_of(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(rawws.upgrade_request("/twilio", host, {"X-Twilio-Signature": "c2lnbmF0dXJl"}))
    with trio.fail_after(5):
        status, _, _ = await rawws.read_response_head(stream)
    await stream.aclose()
    assert status == 403
    body = b"CallSid=CA1"
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST /twiml HTTP/1.1\r\nHost: %s\r\nX-Twilio-Signature: c2lnbmF0dXJl\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), len(body), body)
    )
    with trio.fail_after(5):
        status, _, _ = await rawws.read_response_head(stream)
    await stream.aclose()
    assert status == 403
    await stop_servers(server)
