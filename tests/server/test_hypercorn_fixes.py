"""The accept loop in front of Hypercorn: the connection barrier, the buffer fix, and the
Hypercorn behaviour both rely on (these fail when a Hypercorn release changes it)."""

from __future__ import annotations

import errno
import inspect
import logging

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from wsproto.events import BytesMessage, TextMessage

from callscribe.server import listener


def test_hypercorn_still_keeps_its_buffer_after_an_oversized_message() -> None:
    # The bug the workaround is for. If this fails, Hypercorn fixed it: drop OverflowSafeBuffer
    # and docs/upstream/hypercorn-websocket-buffer.md.
    stock = listener.OverflowSafeBuffer.__mro__[1]
    assert stock.__module__ == "hypercorn.protocol.ws_stream"
    buffer = stock(max_length=10)
    with pytest.raises(ws_stream.FrameTooLargeError):
        buffer.extend(BytesMessage(data=b"x" * 11, message_finished=True))
    with pytest.raises(TypeError):
        buffer.extend(TextMessage(data="y", message_finished=True))


def test_hypercorn_builds_each_connections_buffer_from_the_module_name() -> None:
    # How the workaround is installed: WSStream looks `WebsocketBuffer` up when it is created.
    stream = ws_stream.WSStream(None, Config(), None, None, False, None, None, None, 1)  # type: ignore[arg-type]
    assert isinstance(stream.buffer, listener.OverflowSafeBuffer)


@pytest.mark.parametrize("first,second", [(BytesMessage, TextMessage), (TextMessage, BytesMessage)])
def test_after_an_oversized_message_every_later_one_is_refused_and_nothing_is_kept(first: type, second: type) -> None:
    buffer = listener.OverflowSafeBuffer(max_length=10)
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
    buffer = listener.OverflowSafeBuffer(max_length=10)
    buffer.extend(TextMessage(data="hello", message_finished=False))
    buffer.extend(TextMessage(data="world", message_finished=True))
    assert buffer.to_message() == {"type": "websocket.receive", "bytes": None, "text": "helloworld"}


def test_hypercorns_tcp_server_still_has_the_parts_the_guarded_one_uses() -> None:
    assert list(inspect.signature(TCPServer).parameters) == ["app", "config", "context", "state", "stream"]
    _, stream = trio.testing.memory_stream_pair()
    server = listener.GuardedTCPServer(None, Config(), WorkerContext(None), {}, stream)  # type: ignore[arg-type]
    assert isinstance(server.send_lock, trio.Lock)
    assert isinstance(server.state[listener.CONNECTION_KEY], listener.ConnectionFate)
    assert callable(TCPServer._close) and callable(TCPServer.protocol_send)


async def test_a_connection_whose_handler_raises_is_logged_closed_and_kept_to_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def broken(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"hello")
        raise TypeError("a bug in the protocol code")

    await listener.guarded_connection(broken, server)
    assert await client.receive_some(10) == b"hello"
    assert await client.receive_some(10) == b""  # closed
    (record,) = [r for r in caplog.records if r.name == "callscribe.server.listener"]
    assert record.levelno == logging.ERROR and "failed and was closed" in record.getMessage()
    assert isinstance(record.exc_info[1], TypeError)  # type: ignore[index]


async def test_cancellation_is_not_swallowed_by_the_barrier() -> None:
    _, server = trio.testing.memory_stream_pair()

    async def waits(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await listener.guarded_connection(waits, server)
    assert scope.cancelled_caught


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
    fate = listener.ConnectionFate()
    fate.note(broken_by(errno.ECONNRESET))
    assert not fate.timed_out
    fate.note(broken_by(errno.ETIMEDOUT))
    assert fate.timed_out
    assert listener.connection_fate({"state": {listener.CONNECTION_KEY: fate}}) is fate
    assert listener.connection_fate({}) is None
