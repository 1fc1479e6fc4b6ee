"""The fixes to Hypercorn and the Hypercorn behaviour they rely on (these fail when a Hypercorn
release changes it)."""

from __future__ import annotations

import errno
import inspect

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.protocol import ws_stream
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from wsproto.events import BytesMessage, TextMessage

from callscribe.server import hypercorn_fixes as fixes


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
