"""Hostile WebSocket input against the real server: whatever one connection sends, only that
connection ends; the server, a good call beside it and every other client go on."""

from __future__ import annotations

import logging
import os

import httpx
import pytest
import trio
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

import rawws
from callscribe.server.games import GameSettings
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour
from callscribe.testing.simulator import CallSpec, call_messages, run_call
from conftest import API_KEY, RunningServer, noise, start_server, wait_until_live


def port_of(server: RunningServer) -> int:
    return int(server.http_url.rsplit(":", 1)[1])


async def assert_alive_and_empty(server: RunningServer) -> None:
    async with httpx.AsyncClient() as http:
        with trio.fail_after(5):
            while True:
                health = (await http.get(server.http_url + "/healthz")).json()
                if health["active_calls"] == 0 and health["subscribers"] == 0:
                    break
                await trio.sleep(0.02)
    assert health["status"] == "ok"


@pytest.mark.parametrize("path", ["/client", "/twilio", "/game"])
@pytest.mark.parametrize("first,second", [(rawws.OP_BINARY, rawws.OP_TEXT), (rawws.OP_TEXT, rawws.OP_BINARY)])
async def test_an_oversized_message_then_one_of_the_other_type_ends_only_that_connection(
    server: RunningServer,
    fake_deepgram: FakeDeepgram,
    caplog: pytest.LogCaptureFixture,
    path: str,
    first: int,
    second: int,
) -> None:
    # Hypercorn 0.18 raised TypeError out of the connection here, which ended the whole server.
    good = CallSpec(inbound=noise(2.0, 1), outbound=noise(2.0, 2))
    async with trio.open_nursery() as nursery:
        reports = []

        async def good_call() -> None:
            reports.append(await run_call(server.url("/twilio"), good, speed=2.0))

        nursery.start_soon(good_call)
        hostile = await rawws.connect(port_of(server), path)
        assert hostile.status == 101
        try:
            await hostile.send(rawws.frame(first, b"x" * (70 * 1024)))
            await hostile.send(rawws.frame(second, b"{}"))
            await hostile.send(rawws.frame(first, b"y" * 100_000))
        except trio.BrokenResourceError:
            pass  # /twilio closes the connection at once after the 1009 (callscribe's own code does)
        await hostile.read_until_closed()
        assert hostile.close_code() == 1009
        await hostile.aclose()
    (report,) = reports
    assert report.close_code == 1000
    (session,) = fake_deepgram.sessions
    assert bytes(session.audio_by_channel[0]) == good.inbound
    assert bytes(session.audio_by_channel[1]) == good.outbound
    await assert_alive_and_empty(server)
    # Refused where the bug starts (the buffer), not caught later by the connection barrier.
    assert not [r for r in caplog.records if r.name == "callscribe.server.listener"]


# -- fuzzing --------------------------------------------------------------------------------------
# Each example: a fresh server, one good call, and a dozen connections sending random sequences
# of frames (valid or broken framing, any opcode, oversized, fragmented, invalid UTF-8, control
# frames with bad lengths, Twilio JSON and junk), each possibly ended by an abrupt TCP close, plus
# junk HTTP requests. Seeded and bounded: a failure reproduces with the same seed (no shrinking:
# each example runs a real server, and the failing example is printed as it is). To explore
# further: CALLSCRIBE_FUZZ_SEED=<n> CALLSCRIBE_FUZZ_EXAMPLES=<n> scripts/test tests/test_hostile_websocket.py

MAX_MESSAGE = 64 * 1024
SOME_TWILIO = [m.encode() for _, m in call_messages(CallSpec(inbound=noise(0.1, 99), call_sid="CA" + "9" * 32))]

opcodes = st.sampled_from(
    [rawws.OP_CONTINUATION, rawws.OP_TEXT, rawws.OP_BINARY, rawws.OP_CLOSE, rawws.OP_PING, rawws.OP_PONG, 0x3, 0xB]
)
payloads = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(SOME_TWILIO),
    st.builds(lambda n: b"z" * n, st.integers(MAX_MESSAGE - 10, MAX_MESSAGE + 3000)),
    st.just(b'{"event":"media","media":{"track":"inbound","timestamp":"20","payload":"\xff\xfe"}}'),
    st.just("é".encode("utf-16")),
    st.builds(lambda code, reason: code.to_bytes(2, "big") + reason, st.integers(0, 5000), st.binary(max_size=130)),
)
messages = st.builds(
    lambda op, payload: rawws.frame(op, payload), st.sampled_from([rawws.OP_TEXT, rawws.OP_BINARY]), payloads
)
valid_frames = st.builds(lambda op, payload, fin: rawws.frame(op, payload, fin=fin), opcodes, payloads, st.booleans())
broken_frames = st.builds(
    lambda op, payload, fin, rsv, mask, lie: rawws.frame(op, payload, fin=fin, rsv=rsv, mask=mask, length=lie),
    opcodes,
    payloads,
    st.booleans(),
    st.sampled_from([0, 4, 1]),
    st.booleans(),
    st.one_of(st.none(), st.integers(0, 1 << 20)),
)
oversized = st.builds(
    lambda op, size: rawws.frame(op, b"o" * size),
    st.sampled_from([rawws.OP_TEXT, rawws.OP_BINARY]),
    st.integers(MAX_MESSAGE + 1, MAX_MESSAGE + 5000),
)
actions = st.one_of(
    messages,
    messages,
    messages,
    oversized,
    valid_frames,
    broken_frames,
    st.just(b"PAUSE"),
    st.just(b"ABORT"),
    st.binary(min_size=1, max_size=40),
)
scripts = st.tuples(st.sampled_from(["/twilio", "/client", "/game"]), st.booleans(), st.lists(actions, max_size=12))
http_junk = st.one_of(
    st.binary(max_size=200),
    st.just(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
    st.just(b"POST /twiml HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\nshort"),
    st.just(b"GET /client HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    st.just(b"GET /twilio HTTP/1.0\r\n\r\n"),
    st.builds(lambda b: b"GET /" + b + b" HTTP/1.1\r\nHost: x\r\n\r\n", st.binary(max_size=50)),
)


async def hostile_connection(port: int, path: str, subscribe_to: str, prelude: bool, script: list[bytes]) -> None:
    with trio.move_on_after(4):
        try:
            ws = await rawws.connect(port, path)
        except OSError:
            return
        try:
            if prelude and path == "/twilio":
                for message in SOME_TWILIO[:2]:
                    await ws.send(rawws.frame(rawws.OP_TEXT, message))
            elif prelude and path == "/client":
                await ws.send(rawws.frame(rawws.OP_TEXT, subscribe_to.encode()))
            for action in script:
                if action == b"PAUSE":
                    await trio.sleep(0.01)
                elif action == b"ABORT":
                    return
                else:
                    await ws.send(action)
            await ws.read_until_closed(timeout_s=1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await ws.aclose()


async def junk_http(port: int, request: bytes) -> None:
    with trio.move_on_after(5):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return
        try:
            await stream.send_all(request)
            with trio.move_on_after(1):
                while await stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


@seed(int(os.environ.get("CALLSCRIBE_FUZZ_SEED", "20261129")))
@settings(
    max_examples=int(os.environ.get("CALLSCRIBE_FUZZ_EXAMPLES", "6")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    phases=[Phase.generate],
)
@given(connections=st.lists(scripts, min_size=8, max_size=14), requests=st.lists(http_junk, max_size=4))
async def test_fuzzed_frames_on_every_route_never_reach_past_their_connection(
    connections: list[tuple[str, bool, list[bytes]]], requests: list[bytes]
) -> None:
    errors: list[logging.LogRecord] = []
    handler = _Collect(errors)
    logging.getLogger().addHandler(handler)
    try:
        async with trio.open_nursery() as nursery:
            fake = FakeDeepgram(FakeDeepgramBehaviour(api_key=API_KEY))
            await nursery.start(fake.serve)
            server = await start_server(nursery, fake, games=GameSettings(phone_number="+15550100"))
            port = port_of(server)
            good = CallSpec(inbound=noise(3.0, 7), outbound=noise(3.0, 8))
            reports = []
            async with trio.open_nursery() as inner:

                async def good_call() -> None:
                    reports.append(await run_call(server.url("/twilio"), good, speed=2.0))

                inner.start_soon(good_call)
                for path, prelude, script in connections:
                    inner.start_soon(hostile_connection, port, path, good.call_sid, prelude, script)
                for request in requests:
                    inner.start_soon(junk_http, port, request)
            (report,) = reports
            assert report.close_code == 1000
            (session,) = [s for s in fake.sessions if bytes(s.audio_by_channel[0]) == good.inbound]
            assert bytes(session.audio_by_channel[1]) == good.outbound
            await assert_alive_and_empty(server)
            server.stop.set()
            with trio.fail_after(10):
                await server.done.wait()
            nursery.cancel_scope.cancel()
    finally:
        logging.getLogger().removeHandler(handler)
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]


class _Collect(logging.Handler):
    """Errors logged anywhere: a connection the barrier had to catch, an app or call exception."""

    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


async def test_a_subscriber_cut_off_by_the_kernel_timeout_is_reported_as_stalled(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A subscriber that stops reading with the default socket buffers: the server's sends go into
    # its own send buffer for a while, so when the kernel aborts the connection (TCP_USER_TIMEOUT)
    # no single send had taken long. It was logged "left ... (call ended)" and not counted.
    fake = FakeDeepgram(FakeDeepgramBehaviour(api_key=API_KEY, result_every_s=0.25))
    await nursery.start(fake.serve)
    server = await start_server(nursery, fake, stall_timeout_s=1.0)
    spec = CallSpec(inbound=noise(12.0, 4))
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=1.0))
        await wait_until_live(server, spec.call_sid)
        stalled = await rawws.connect(port_of(server), "/client", rcvbuf=4096)
        await stalled.send(rawws.frame(rawws.OP_TEXT, spec.call_sid.encode()))
        with trio.fail_after(10):
            while not any("dropping subscriber" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.05)
        inner.cancel_scope.cancel()
    await stalled.aclose()
    (dropped,) = [r.getMessage() for r in caplog.records if "dropping subscriber" in r.getMessage()]
    assert "stalled" in dropped
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(server.http_url + "/metrics")).text
    assert "callscribe_subscribers_dropped_total 1.0" in metrics
    server.stop.set()


@pytest.mark.parametrize(
    "frame,code",
    [
        (rawws.frame(rawws.OP_TEXT, b"{}", mask=False), 1002),
        (rawws.frame(rawws.OP_TEXT, b"{}", rsv=4), 1002),
        (rawws.frame(0x3, b"{}"), 1002),
        (rawws.frame(rawws.OP_PING, b"p" * 126), 1002),
        (rawws.frame(rawws.OP_PING, b"p", fin=False), 1002),
        (rawws.frame(rawws.OP_CONTINUATION, b"more"), 1002),
        (rawws.frame(rawws.OP_TEXT, b"\xff\xfe"), 1007),
    ],
    # Named, not shown: the frames carry random masks, and test ids must not change between
    # collections (pytest-xdist's workers each collect).
    ids=[
        "unmasked",
        "reserved bits",
        "unknown opcode",
        "long ping",
        "fragmented ping",
        "stray continuation",
        "bad UTF-8",
    ],
)
async def test_broken_framing_closes_the_connection_at_once(server: RunningServer, frame: bytes, code: int) -> None:
    for path in ("/twilio", "/client", "/game"):
        ws = await rawws.connect(port_of(server), path)
        await ws.send(frame)
        with trio.fail_after(5):
            await ws.read_until_closed()
        await ws.aclose()
        # /twilio and /client (callscribe's own code) say why in a close frame; Hypercorn just hangs up.
        assert ws.close_code() == (code if path in ("/twilio", "/client") else None), path
    await assert_alive_and_empty(server)


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n", 431),
        (b"GET /twilio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
    ],
)
async def test_malformed_http_gets_a_status_and_a_closed_connection(
    server: RunningServer, request_bytes: bytes, status: int
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await stream.send_all(request_bytes)
    response = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            response += chunk
    await stream.aclose()
    assert response.startswith(b"HTTP/1.1 %d " % status), response[:80]
    await assert_alive_and_empty(server)


@pytest.mark.parametrize("path", ["/twilio", "/client"])
@pytest.mark.parametrize(
    "first,more,code",
    # Unread after the failure: less than the server reads on before it closes (64 KiB).
    [
        (rawws.frame(rawws.OP_BINARY, b"x" * (64 * 1024 + 100)), 100, 1009),
        (rawws.frame(rawws.OP_TEXT, b"\xff\xfe"), 30_000, 1007),
    ],
    ids=["oversized", "bad UTF-8"],
)
async def test_a_connection_failed_while_the_peer_still_sends_ends_in_eof_not_a_reset(
    server: RunningServer, path: str, first: bytes, more: int, code: int
) -> None:
    # The connection failed at the first frame, with the rest of what the peer sent unread: closed
    # then, the kernel sent RST after the close frame and the FIN, and a client that had not read
    # them yet (Windows discards them) could lose the close frame that says why. (Linux reads the
    # FIN first and keeps the RST as the socket's error.)
    ws = await rawws.connect(port_of(server), path)
    await ws.send(first + rawws.frame(rawws.OP_BINARY, b"y" * more))
    with trio.fail_after(5):
        while chunk := await ws.stream.receive_some(65536):
            ws.received += chunk
    await assert_alive_and_empty(server)  # the server is done with the connection
    error = ws.stream.socket.getsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_ERROR)
    await ws.aclose()
    assert (ws.close_code(), os.strerror(error)) == (code, os.strerror(0))
