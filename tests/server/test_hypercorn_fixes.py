"""The fixes to Hypercorn and the Hypercorn behaviour they rely on (these fail when a Hypercorn
release changes it)."""

from __future__ import annotations

import errno
import inspect
import struct
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Data, Request, Response
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import wrap_app
from wsproto.events import BytesMessage, TextMessage

from callscribe.server import hypercorn_fixes as fixes
from callscribe.server.linger import LINGER_BYTES, LINGER_S
from rawws import OP_PING, OP_PONG, OP_TEXT, close_frame, frame, server_frames


def test_hypercorn_still_keeps_its_buffer_after_an_oversized_message() -> None:
    # The bug the workaround is for. If this fails, Hypercorn fixed it: drop OverflowSafeBuffer
    # and docs/upstream/hypercorn.md.
    stock = fixes.OverflowSafeBuffer.__mro__[1]
    assert stock.__module__ == "hypercorn.protocol.ws_stream"
    buffer = stock(max_length=10)
    with pytest.raises(ws_stream.FrameTooLargeError):
        buffer.extend(BytesMessage(data=b"x" * 11, message_finished=True))
    with pytest.raises(TypeError):
        buffer.extend(TextMessage(data="y", message_finished=True))


def test_hypercorn_builds_each_connections_buffer_from_the_module_name() -> None:
    # How the workaround is installed: WSStream looks `WebsocketBuffer` up when it is created.
    stream = ws_stream.WSStream(None, Config(), None, None, False, None, None, None, 1)  # type: ignore[arg-type]
    assert isinstance(stream.buffer, fixes.OverflowSafeBuffer)


@pytest.mark.parametrize("first,second", [(BytesMessage, TextMessage), (TextMessage, BytesMessage)])
def test_after_an_oversized_message_every_later_one_is_refused_and_nothing_is_kept(first: type, second: type) -> None:
    buffer = fixes.OverflowSafeBuffer(max_length=10)
    big = b"x" * 11 if first is BytesMessage else "x" * 11
    with pytest.raises(ws_stream.FrameTooLargeError):
        buffer.extend(first(data=big, message_finished=False))
    assert buffer.value is None and buffer.length == 0
    small = b"y" if second is BytesMessage else "y"
    for _ in range(3):
        with pytest.raises(ws_stream.FrameTooLargeError):
            buffer.extend(second(data=small, message_finished=True))
    assert buffer.value is None and buffer.length == 0


def test_messages_within_the_limit_pass_as_before() -> None:
    buffer = fixes.OverflowSafeBuffer(max_length=10)
    buffer.extend(TextMessage(data="hello", message_finished=False))
    buffer.extend(TextMessage(data="world", message_finished=True))
    assert buffer.to_message() == {"type": "websocket.receive", "bytes": None, "text": "helloworld"}


def test_hypercorns_tcp_server_still_has_the_parts_the_guarded_one_uses() -> None:
    assert list(inspect.signature(TCPServer).parameters) == ["app", "config", "context", "state", "stream"]
    _, stream = trio.testing.memory_stream_pair()
    server = fixes.GuardedTCPServer(None, Config(), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    assert isinstance(server.send_lock, trio.Lock)
    assert isinstance(server.state[fixes.CONNECTION_KEY], fixes.ConnectionFate)
    assert callable(TCPServer._close) and callable(TCPServer.protocol_send)


def broken_by(code: int) -> trio.BrokenResourceError:
    """A BrokenResourceError raised from an OSError with `code`, as trio's socket streams raise it."""
    try:
        try:
            raise OSError(code, errno.errorcode[code])
        except OSError as error:
            raise trio.BrokenResourceError from error
    except trio.BrokenResourceError as broken:
        return broken


def test_a_timed_out_connection_is_told_from_one_that_was_reset() -> None:
    fate = fixes.ConnectionFate()
    fate.note(broken_by(errno.ECONNRESET))
    assert not fate.timed_out
    fate.note(broken_by(errno.ETIMEDOUT))
    assert fate.timed_out
    assert fixes.connection_fate({"state": {fixes.CONNECTION_KEY: fate}}) is fate
    assert fixes.connection_fate({}) is None


# -- the closing handshake: TCP ends after the peer's answer -------------------------------------

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def closing_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts a WebSocket and closes it at once with 1000, as the app does when a call ends."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": 1000, "reason": "call ended"})


async def read_until(stream: trio.abc.Stream, marker: bytes, data: bytes = b"") -> bytes:
    with trio.fail_after(5):
        while marker not in data:
            chunk = await stream.receive_some()
            assert chunk, f"the connection ended before {marker!r}: {data!r}"
            data += chunk
    return data


@pytest.fixture
async def closed_by_server(nursery: trio.Nursery) -> trio.SocketStream:
    """A client whose WebSocket the server (GuardedTCPServer) has just closed: the close frame is read."""
    client, server = (trio.SocketStream(s) for s in trio.socket.socketpair())
    config = Config()
    app = wrap_app(closing_app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    served = fixes.GuardedTCPServer(app, config, WorkerContext(None), {}, server)
    nursery.start_soon(served.run)
    await client.send_all(UPGRADE)
    data = await read_until(client, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 101")
    await read_until(client, struct.pack("!BBH", 0x88, 12, 1000) + b"call ended", data)
    return client


async def test_a_websocket_closed_by_the_app_ends_its_connection_once_the_peer_answers(
    closed_by_server: trio.SocketStream, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.move_on_after(fixes.CLOSE_LINGER_S / 2):
        assert await closed_by_server.receive_some() == b"", "nothing after the close frame"
        pytest.fail("the connection ended before the peer answered the close frame")
    await closed_by_server.send_all(close_frame(1000))
    with trio.fail_after(fixes.CLOSE_LINGER_S / 4):
        assert await closed_by_server.receive_some() == b""


async def test_a_peer_that_never_answers_the_close_is_let_go_after_the_linger(
    closed_by_server: trio.SocketStream, autojump_clock: trio.testing.MockClock
) -> None:
    began = trio.current_time()
    with trio.fail_after(fixes.CLOSE_LINGER_S * 2):
        assert await closed_by_server.receive_some() == b""
    assert trio.current_time() - began >= fixes.CLOSE_LINGER_S / 2


def test_hypercorn_still_ends_the_connection_right_after_its_close_frame() -> None:
    # The defect the linger is for. If this fails, Hypercorn waits itself: drop the linger.
    source = inspect.getsource(TCPServer.protocol_send)
    assert "elif isinstance(event, Closed):\n            await self._close()" in source


# -- frames before the handshake is answered -----------------------------------------------------


class _AppTasks:
    """Hypercorn's task group for one WebSocket app that never runs (what reaches it is kept)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def spawn_app(self, *_: Any) -> Any:
        async def put(message: dict[str, Any]) -> None:
            self.received.append(message)

        return put


async def test_hypercorn_still_answers_a_frame_before_the_handshake_with_400() -> None:
    # The defect GuardedWSStream holds frames back for: the app is answering too. If this fails,
    # Hypercorn waits itself: drop the hold and its entry in docs/upstream/hypercorn.md.
    sent: list[Any] = []

    async def send(event: Any) -> None:
        sent.append(event)

    head, _, _ = UPGRADE.partition(b"\r\n\r\n")
    headers = [tuple(line.lower().split(b": ", 1)) for line in head.split(b"\r\n")[1:]]
    stream = ws_stream.WSStream(None, Config(), None, _AppTasks(), False, None, None, send, 1)  # type: ignore[arg-type]
    request = Request(stream_id=1, headers=headers, http_version="1.1", method="GET", raw_path=b"/ws", state={})  # type: ignore[arg-type]
    await stream.handle(request)
    assert sent == []
    await stream.handle(Data(stream_id=1, data=frame(OP_TEXT, b"early")))
    assert [e.status_code for e in sent if isinstance(e, Response)] == [400]
    assert h11_protocol.WSStream is fixes.GuardedWSStream  # how the hold is installed


def gated_app(gate: trio.Event, *, refuse: bool) -> Any:
    """Answers the upgrade once `gate` is set: refuses it with 401, or accepts it, echoes the first
    message and waits for the peer's close."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await gate.wait()
        if refuse:
            await send({"type": "websocket.http.response.start", "status": 401, "headers": [(b"content-length", b"8")]})
            await send({"type": "websocket.http.response.body", "body": b"no token"})
            return
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"]})
        assert (await receive())["type"] == "websocket.disconnect"

    return app


@pytest.mark.parametrize("refuse", [False, True], ids=["accepted", "refused"])
async def test_frames_sent_before_the_app_answers_the_upgrade_wait_for_its_answer(
    nursery: trio.Nursery, refuse: bool
) -> None:
    client, server = (trio.SocketStream(s) for s in trio.socket.socketpair())
    config = Config()
    gate = trio.Event()
    app = wrap_app(gated_app(gate, refuse=refuse), config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    nursery.start_soon(fixes.GuardedTCPServer(app, config, WorkerContext(None), {}, server).run)
    await client.send_all(UPGRADE + frame(OP_TEXT, b"early"))  # one read: the head and a frame
    await trio.testing.wait_all_tasks_blocked()
    await client.send_all(frame(OP_PING, b"hi"))  # a later read, still before the answer
    await trio.testing.wait_all_tasks_blocked()
    gate.set()
    data = b""
    with trio.fail_after(5):
        while chunk := await client.receive_some():
            data += chunk
            if not refuse and len(server_frames(data.partition(b"\r\n\r\n")[2])) == 2:
                await client.send_all(close_frame(1000))
    head, _, rest = data.partition(b"\r\n\r\n")
    if refuse:
        assert (head[:12], rest) == (b"HTTP/1.1 401", b"no token")
    else:
        assert head[:12] == b"HTTP/1.1 101"
        frames = server_frames(rest)  # the pong and the echo race; then the answer to our close
        assert sorted(frames[:2]) == [(OP_TEXT, b"early"), (OP_PONG, b"hi")]
        assert frames[2:] == [(0x8, struct.pack("!H", 1000))]


async def test_a_peer_that_goes_on_sending_after_the_close_is_read_no_further_than_the_linger_bound(
    closed_by_server: trio.SocketStream, autojump_clock: trio.testing.MockClock
) -> None:
    # It answers the close, then floods: the connection's reading task reads on to the peer's end
    # (lingering), but no more than LINGER_BYTES, then the connection is closed under the peer.
    await closed_by_server.send_all(close_frame(1000))
    chunk, sent = b"\x00" * 65536, 0
    with trio.fail_after(LINGER_S * 4):
        try:
            while sent < 256 * LINGER_BYTES:
                await closed_by_server.send_all(chunk)
                sent += len(chunk)
        except trio.BrokenResourceError:
            pass
    assert sent < 256 * LINGER_BYTES, "the server read on without a bound"
