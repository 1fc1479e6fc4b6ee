"""Hypercorn's per-connection server as callscribe runs it, with fixes for its known defects.

callscribe runs Hypercorn's own `TCPServer` for each connection that is not a `/twilio` media
stream (see listener.py). Defects of Hypercorn 0.18 found by fuzzing are worked around here, each
where it starts (reports for upstream: docs/upstream/hypercorn.md):
- after refusing an oversized WebSocket message with 1009 it keeps the half-filled message buffer,
  and the next frame of the other type raises `TypeError` out of the connection (`OverflowSafeBuffer`);
- closing a connection races a write in progress (`GuardedTCPServer._close`);
- closing a WebSocket it closes the TCP connection right after its close frame, without waiting for
  the peer's: a client still parsing that frame sees the connection drop first, and Node's
  WebSocket (undici) then reports 1006 instead of the code sent, on 5-50% of closes under load
  (`GuardedTCPServer._close` waits, bounded, for the peer's answer first);
- it closes a connection with what the peer still sent unread (a refused request's body, frames on
  their way after a close frame), so the kernel sends RST and the peer may lose the answer
  (`GuardedTCPServer._close` closes lingering, linger.py);
- a refused WebSocket handshake leaves the connection open (`GuardedWSStream`);
- it answers a frame sent before the app answered the upgrade with 400, colliding with the app's own
  answer (`GuardedWSStream` holds such frames until the app has answered).

The connection's fate (did the kernel cut it off for taking no data?) reaches the app through the
ASGI scope's state (`connection_fate`). All of this relies on Hypercorn internals, so pyproject pins
Hypercorn's minor version and tests/server/test_hypercorn_fixes.py fails if their shape changes.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Body, Data, Event, StreamClosed
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ASGISendEvent, ConnectionState
from wsproto.events import Message

from callscribe.server.linger import LINGER_BYTES, LINGER_S, linger_close, shut_write

log = logging.getLogger(__name__)


class OverflowSafeBuffer(ws_stream.WebsocketBuffer):
    """Hypercorn's WebSocket message buffer, made safe after an oversized message.

    Hypercorn answers an oversized message with a 1009 close frame but neither clears the buffer
    nor stops filling it: more data of the same type grows it without bound, and data of the other
    type raises `TypeError` (str written to BytesIO or bytes to StringIO), which escapes the
    connection. Once a message is too large, this buffer keeps nothing: every later message is
    refused the same way (Hypercorn's second close attempt is a no-op, the closing handshake goes
    on), so nothing reaches the app after the 1009.
    """

    def __init__(self, max_length: int) -> None:
        super().__init__(max_length)
        self.overflowed = False

    def extend(self, event: Message[Any]) -> None:
        if self.overflowed:
            raise ws_stream.FrameTooLargeError()
        try:
            super().extend(event)
        except ws_stream.FrameTooLargeError:
            self.overflowed = True
            self.clear()
            raise


CONNECTION_KEY = "callscribe.connection"
"""Where an app finds the `ConnectionFate` of its connection: `scope["state"][CONNECTION_KEY]`."""


class ConnectionFate:
    """How the transport under one connection ended, for the app to report.

    Hypercorn turns every socket failure into a quiet close, so an app cannot tell a peer that
    left from one the kernel cut off because it stopped taking data (TCP_USER_TIMEOUT expired:
    the socket fails with ETIMEDOUT, possibly while no write was waiting at all)."""

    def __init__(self) -> None:
        self.timed_out = False

    def note(self, error: BaseException) -> None:
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, OSError) and cause.errno == errno.ETIMEDOUT:
                self.timed_out = True
                return
            cause = cause.__cause__ or cause.__context__


def connection_fate(scope: Mapping[str, Any]) -> ConnectionFate | None:
    """The `ConnectionFate` in an ASGI scope served by this module (None elsewhere, e.g. in tests
    that run the app on Hypercorn's own server)."""
    fate = scope.get("state", {}).get(CONNECTION_KEY)
    return fate if isinstance(fate, ConnectionFate) else None


CLOSE_LINGER_S = 1.0
"""After closing a WebSocket, how long the connection waits for the peer's answer before it ends."""
CLOSE_FRAME_START = b"\x88"
"""The first byte of a server's WebSocket close frame (FIN, opcode 8, RFC 6455 section 5.2)."""


class _WatchedStream:
    """A connection's stream that records in its `ConnectionFate` why a read or write failed, and
    after it sent a WebSocket close frame, whether the peer has answered (sent anything, or left)."""

    def __init__(self, stream: trio.abc.Stream, fate: ConnectionFate) -> None:
        self._stream = stream
        self._fate = fate
        self._upgraded = False
        self.answered: trio.Event | None = None
        """From the close frame on: set once a read ends (with data, the peer's EOF or an error)."""
        self.read_budget: int | None = None
        """Bytes still read once closing (lingering): past them, reads end as if the peer had."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._upgraded:
            self._upgraded = bytes(data[:12]) == b"HTTP/1.1 101"
        elif data[:1] == CLOSE_FRAME_START and self.answered is None:  # Hypercorn writes a frame at a time
            self.answered = trio.Event()
        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as error:
            self._fate.note(error)
            raise

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.read_budget is not None and self.read_budget <= 0:
            return b""
        try:
            data = await self._stream.receive_some(max_bytes)
            if self.read_budget is not None:
                self.read_budget -= len(data)
            return data
        except trio.BrokenResourceError as error:
            self._fate.note(error)
            raise
        finally:
            if self.answered is not None:
                self.answered.set()

    def __getattr__(self, name: str) -> Any:
        # Everything else (send_eof, aclose, do_handshake, socket...) is the stream's own; Hypercorn
        # tells TLS from plain TCP by whether `do_handshake` exists.
        return getattr(self._stream, name)


class GuardedTCPServer(TCPServer):
    """Hypercorn's per-connection server, starting with the bytes the listener already read, with
    the connection's fate in its state, closing its stream only between writes and, for a
    WebSocket the app closed, only once the peer answered.

    Hypercorn's `_close` (run when the protocol ends the connection, e.g. after the peer's close
    frame) shuts the stream down without the send lock its writers take, so an app task writing at
    that moment gets `trio.BusyResourceError` from inside `send_all` instead of a quiet end.

    When the app closes a WebSocket, Hypercorn sends the close frame and ends the TCP connection at
    once. RFC 6455 (7.1.1) has the server close TCP after the closing handshake, and clients rely on
    it: a client whose socket ends while it is still handling the close frame may report the
    connection as dropped (1006). So the close waits up to CLOSE_LINGER_S for the peer's first bytes
    after the close frame (its own close frame) or its EOF.

    Then the connection closes lingering (linger.py): its write side shut, what the peer still
    sends is read until it closes, for up to LINGER_S and LINGER_BYTES (by Hypercorn's reading task,
    when another task closes), so that the peer gets FIN, not RST. Not once the server is shutting
    down."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: dict[str, Any],
        stream: trio.abc.Stream,
        *,
        already_read: bytes = b"",
    ) -> None:
        fate = ConnectionFate()
        state = ConnectionState({**state, CONNECTION_KEY: fate})
        self._watched = _WatchedStream(stream, fate)
        super().__init__(app, config, context, state, self._watched)  # type: ignore[arg-type]
        self._raw = stream
        self._already_read = already_read
        self._reader: trio.lowlevel.Task | None = None
        self._read_all = trio.Event()
        """The reading task is done: the peer closed, the connection broke or was closed."""

    async def _read_data(self) -> None:
        """Hand the protocol what the listener read to route the connection, then read on."""
        self._reader = trio.lowlevel.current_task()
        try:
            if self._already_read:
                await self.protocol.handle(RawData(self._already_read))
            await super()._read_data()
        finally:
            self._read_all.set()

    async def _close(self) -> None:
        """Close lingering (linger.py): where the reading task is elsewhere (an app's task closes),
        shut the write side and let that task read on to the peer's end, for up to LINGER_S."""
        reader_elsewhere = self._reader not in (None, trio.lowlevel.current_task()) and not self._read_all.is_set()
        answered = self._watched.answered
        if answered is not None and reader_elsewhere:
            with trio.move_on_after(CLOSE_LINGER_S):
                await answered.wait()
        linger = not self.context.terminated.is_set()
        async with self._send_locked():
            if not reader_elsewhere:
                if linger:
                    await linger_close(self._raw)
                else:
                    await trio.aclose_forcefully(self._raw)
                return
            if linger:
                self._watched.read_budget = LINGER_BYTES
                await shut_write(self._raw)
        if linger:
            with trio.move_on_after(LINGER_S):
                await self._read_all.wait()
        async with self._send_locked():
            await trio.aclose_forcefully(self._raw)

    @asynccontextmanager
    async def _send_locked(self) -> AsyncIterator[None]:
        """The send lock, unless this task holds it already (a write that failed closes)."""
        if self.send_lock.statistics().owner is trio.lowlevel.current_task():
            yield
        else:
            async with self.send_lock:
                yield


class GuardedWSStream(ws_stream.WSStream):
    """Hypercorn's WebSocket stream, holding the peer's frames until the app has answered the
    handshake, and ending the connection after refusing one.

    Hypercorn answers any data that comes before the app accepted with `400` ("data before
    handshake"), while the app is already answering the upgrade: some clients send their first
    frame in the same write as the request (not RFC 6455's way, but callscribe's own routes take
    it), and any client can. The two answers then collide in h11 (`LocalProtocolError` tracebacks
    logged, and the client gets 400 instead of the app's 101, 401 or 404). Here such data waits,
    and the connection's reading with it, until the app has answered: after a 101 it is the
    WebSocket's first frames, after a refusal it is dropped (the connection closes lingering).

    A request that Hypercorn refuses itself (an upgrade without `Sec-WebSocket-Key`, a wrong
    version) gets `400` with `connection: close`, but the connection is then left open and not
    idle, so the keep-alive timeout never ends it either: any client could hold connections open
    for as long as it likes. Here the refusal also ends the stream, which closes the connection as
    the header says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answered = trio.Event()
        """The app has answered the handshake (accepted, refused, or ended), or the stream closed."""

    async def handle(self, event: Event) -> None:
        if isinstance(event, (Body, Data)) and not self.closed and self.app_put is not None:
            await self._answered.wait()
            if not self.handshake.accepted:
                return
        was_closed = self.closed
        try:
            await super().handle(event)
        finally:
            if isinstance(event, StreamClosed):
                self._answered.set()
        if self.closed and not was_closed and not isinstance(event, StreamClosed):
            await self.send(StreamClosed(stream_id=self.stream_id))

    async def app_send(self, message: ASGISendEvent | None) -> None:
        try:
            await super().app_send(message)
        finally:
            if self.state is not ws_stream.ASGIWebsocketState.HANDSHAKE:
                self._answered.set()


def _install_hypercorn_fixes() -> None:
    """Hypercorn has no hooks for these: `WSStream.__init__` builds its buffer from the module's
    `WebsocketBuffer` name, and the HTTP/1.1 protocol its streams from its `WSStream` name."""
    ws_stream.WebsocketBuffer = OverflowSafeBuffer  # type: ignore[misc]
    h11_protocol.WSStream = GuardedWSStream  # type: ignore[attr-defined]  # replaces its import


_install_hypercorn_fixes()
