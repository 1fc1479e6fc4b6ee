"""The front door's edges: a WebSocket upgrade to a path without a WebSocket route, and frames
that come with the upgrade request."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

import rawws
from callscribe.core.game_messages import NOT_PATCHED
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, call_messages
from conftest import RunningServer, local_tls, noise, start_server, stop_servers


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


@pytest.mark.parametrize("route", ["/twilio", "/client"])
@pytest.mark.parametrize("target", ["?a=\x1b[31m", "?a=\rX", "?a=\x00", "?\x7f"])
async def test_an_upgrade_whose_target_holds_control_characters_gets_400(
    server: RunningServer, route: str, target: str
) -> None:
    # RFC 9112 (3.2): a request target is printable ASCII; Hypercorn (h11) answers 400 to the others,
    # and callscribe's own routes must too, rather than carry them into the call and the logs.
    port = port_of(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(rawws.upgrade_request(route + target, f"127.0.0.1:{port}"))
    with trio.fail_after(5):
        status, _, _ = await rawws.read_response_head(stream)
    await stream.aclose()
    assert status == 400


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


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_request_body_over_the_limit_is_refused_with_413_before_it_is_parsed(
    server: RunningServer, chunked: bool
) -> None:
    # README: "a request body over 64 KiB | HTTP | 413". Quart's default limit was 16 MiB, and
    # /twiml parses its form before the signature can be checked: one POST of "a=&" * 5.6 million
    # held the event loop (every call) for 5 s and grew the process by 800 MB, at anyone's will.
    limit = 64 * 1024

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for at in range(0, len(body), 16384):
            yield body[at : at + 16384]

    def content(body: bytes) -> bytes | AsyncIterator[bytes]:
        return chunks(body) if chunked else body

    form = {"content-type": "application/x-www-form-urlencoded"}
    fits = b"CallSid=CA1&x=" + b"y" * (limit - 14)
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.post(server.http_url + "/twiml", content=content(fits), headers=form)).status_code == 200
        too_big = b"a=&" * (limit // 3 + 1)
        answer = await http.post(server.http_url + "/twiml", content=content(too_big), headers=form)
    assert answer.status_code == 413


async def answer_and_end(server: RunningServer, stream: trio.abc.Stream, data: bytes) -> tuple[bytes, str]:
    """Send `data` in one write, then read the whole answer: (the answer, how it ended: "EOF", or
    the error, also when a RST came after the server's FIN: Linux then reads the FIN, and keeps
    the RST as the socket's error, EPIPE, where Windows would have dropped the unread answer)."""
    await stream.send_all(data)
    answer = b""
    with trio.fail_after(5):
        try:
            while chunk := await stream.receive_some(65536):
                answer += chunk
        except trio.BrokenResourceError as error:
            return answer, repr(error.__cause__)
    async with httpx.AsyncClient(verify=server.ssl_context or True) as http:  # the server is done with it
        assert (await http.get(server.http_url + "/healthz")).status_code == 200
    tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    assert isinstance(tcp, trio.SocketStream)
    error = tcp.socket.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_ERROR)
    return answer, os.strerror(error) if error else "EOF"


NO_KEY = b"GET /game HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize(
    "path,status",
    [("/twilio", 403), ("/client?token=wrong", 401), ("/game", 400)],
)
async def test_a_refused_upgrade_with_a_frame_behind_it_ends_in_eof_not_a_reset(
    nursery: trio.Nursery,
    fake_deepgram: FakeDeepgram,
    tmp_path: Path,
    tls: bool,
    path: str,
    status: int,
) -> None:
    # Closing with the frame unread made the kernel send RST: Windows and some proxies then drop
    # the answer already received and report "connection reset" instead of the refusal.
    local = local_tls()
    files: dict[str, str] = {}
    if tls:
        cert = local.ca.issue_cert("127.0.0.1")
        files = {"certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "key.pem")}
        cert.private_key_and_cert_chain_pem.write_to_path(files["certfile"])
        cert.private_key_pem.write_to_path(files["keyfile"])
    server = await start_server(
        nursery,
        fake_deepgram,
        twilio_auth_token="1" * 32,
        tokens=frozenset({"s3cret"}),
        client_ssl=local.client if tls else None,
        **files,
    )
    port = port_of(server)
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if tls:
        stream = trio.SSLStream(stream, local.client, server_hostname="127.0.0.1", https_compatible=True)
    # More than the listener reads to route the connection (16 KiB; TLS takes in more meanwhile)
    # before callscribe's own code or Hypercorn answers, and less than that and LINGER_BYTES.
    frame = rawws.frame(rawws.OP_TEXT, b"x" * (100_000 if tls else 60_000))
    # /game: Hypercorn's own refusal (no Sec-WebSocket-Key), which it answers before the app runs.
    request = NO_KEY if path == "/game" else rawws.upgrade_request(path, f"127.0.0.1:{port}")
    answer, end = await answer_and_end(server, stream, request + frame)
    await trio.aclose_forcefully(stream)
    assert (answer[: len(b"HTTP/1.1 400")], end) == (b"HTTP/1.1 %d" % status, "EOF")
    await stop_servers(server)


async def test_a_game_upgrade_with_a_frame_behind_it_is_accepted_and_the_frame_is_its_first_message(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Not RFC 6455's way, but some clients send their first frame in the same write as the
    # upgrade; callscribe's own routes take it. Hypercorn answered 400 ("data before handshake")
    # while Quart answered too, and h11's LocalProtocolError was logged with a traceback.
    port = port_of(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    say = json.dumps({"type": "Say", "text": "hello"}).encode()
    await stream.send_all(rawws.upgrade_request("/game", f"127.0.0.1:{port}") + rawws.frame(rawws.OP_TEXT, say))
    status, _, rest = await rawws.read_response_head(stream)
    assert status == 101
    # The phone number, the code, then the answer to the frame: not patched to a call yet.
    frames = await rawws.read_frames(stream, 3, already=rest)
    assert [json.loads(payload)["message"] for _, payload in frames[2:3]] == [NOT_PATCHED]
    await stream.send_all(rawws.close_frame(1000))
    with trio.fail_after(5):
        await rawws.read_frames(stream, 4, already=rest)
    await stream.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    "path,status,reason",
    [("/game", 401, b"token"), ("/nope", 404, b"")],
    ids=["no-token", "unknown-path"],
)
async def test_a_refused_hypercorn_upgrade_with_a_frame_behind_it_gets_its_own_answer_not_a_400(
    nursery: trio.Nursery,
    fake_deepgram: FakeDeepgram,
    caplog: pytest.LogCaptureFixture,
    path: str,
    status: int,
    reason: bytes,
) -> None:
    # Hypercorn answered the frame with 400 ("data before handshake") while Quart answered the
    # upgrade: the client got 400 and the log two LocalProtocolError tracebacks, at anyone's will.
    server = await start_server(nursery, fake_deepgram, tokens=frozenset({"s3cret"}))
    port = port_of(server)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = rawws.upgrade_request(path, f"127.0.0.1:{port}") + rawws.frame(rawws.OP_TEXT, b"{}")
    answer, end = await answer_and_end(server, stream, request)
    await stream.aclose()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert (head[: len(b"HTTP/1.1 400")], end) == (b"HTTP/1.1 %d" % status, "EOF")
    assert reason in body.lower()
    await stop_servers(server)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
