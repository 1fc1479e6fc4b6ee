"""callscribe's own accept loop in front of Hypercorn's per-connection server.

`hypercorn.trio.serve` runs every accepted connection in one nursery with the listener: an
exception that escapes Hypercorn's protocol code for one connection (a bug, a peer sending what
it did not expect) ends that nursery and with it the whole server and every live call. Here each
connection runs Hypercorn's own `TCPServer` behind a barrier: whatever it raises is logged with
the peer's address, the connection is closed, and every other connection goes on.

Everything else is Hypercorn's, in the order its `worker_serve` does it: the ASGI lifespan
(Quart's `before_serving` starts callscribe's supervisor), the listening sockets from its config
(with TLS), `WorkerContext` for keep-alive and graceful shutdown, and `graceful_timeout` for the
connections still open once the shutdown trigger has returned. This relies on Hypercorn internals
(`TCPServer`, `Lifespan`, `WorkerContext`), so pyproject pins Hypercorn's minor version and
tests/test_listener.py fails if their shape changes.

Defects of Hypercorn 0.18 found by fuzzing are worked around where they start, each in a class
below (see docs/upstream/hypercorn.md): after refusing an oversized WebSocket message with 1009 it
keeps the half-filled message buffer, and the next frame of the other type raises `TypeError` out
of the connection (`OverflowSafeBuffer`); closing a connection races a write in progress
(`GuardedTCPServer`); a refused WebSocket handshake leaves the connection open
(`RefusalClosingWSStream`).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.protocol import h11 as h11_protocol
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Event, StreamClosed
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app
from wsproto.events import Message

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

    def extend(self, event: Message) -> None:
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


class _WatchedStream:
    """A connection's stream that records in its `ConnectionFate` why a read or write failed."""

    def __init__(self, stream: trio.abc.Stream, fate: ConnectionFate) -> None:
        self._stream = stream
        self._fate = fate

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as error:
            self._fate.note(error)
            raise

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as error:
            self._fate.note(error)
            raise

    def __getattr__(self, name: str) -> Any:
        # Everything else (send_eof, aclose, do_handshake, socket...) is the stream's own; Hypercorn
        # tells TLS from plain TCP by whether `do_handshake` exists.
        return getattr(self._stream, name)


class GuardedTCPServer(TCPServer):
    """Hypercorn's per-connection server, with the connection's fate in its state, closing its
    stream only between writes.

    Hypercorn's `_close` (run when the protocol ends the connection, e.g. after the peer's close
    frame) shuts the stream down without the send lock its writers take, so an app task writing at
    that moment gets `trio.BusyResourceError` from inside `send_all` instead of a quiet end."""

    def __init__(
        self, app: AppWrapper, config: Config, context: WorkerContext, state: dict[str, Any], stream: trio.abc.Stream
    ) -> None:
        fate = ConnectionFate()
        state = ConnectionState({**state, CONNECTION_KEY: fate})
        super().__init__(app, config, context, state, _WatchedStream(stream, fate))  # type: ignore[arg-type]

    async def _close(self) -> None:
        if self.send_lock.statistics().owner is trio.lowlevel.current_task():
            await super()._close()
        else:
            async with self.send_lock:
                await super()._close()


class RefusalClosingWSStream(ws_stream.WSStream):
    """Hypercorn's WebSocket stream, ending the connection after refusing a handshake.

    A request that Hypercorn refuses itself (an upgrade without `Sec-WebSocket-Key`, a wrong
    version, data before the handshake) gets `400` with `connection: close`, but the connection is
    then left open and not idle, so the keep-alive timeout never ends it either: any client could
    hold connections open for as long as it likes. Here the refusal also ends the stream, which
    closes the connection as the header says."""

    async def handle(self, event: Event) -> None:
        was_closed = self.closed
        await super().handle(event)
        if self.closed and not was_closed and not isinstance(event, StreamClosed):
            await self.send(StreamClosed(stream_id=self.stream_id))


def _install_hypercorn_fixes() -> None:
    """Hypercorn has no hooks for these: `WSStream.__init__` builds its buffer from the module's
    `WebsocketBuffer` name, and the HTTP/1.1 protocol its streams from its `WSStream` name."""
    ws_stream.WebsocketBuffer = OverflowSafeBuffer  # type: ignore[misc]
    h11_protocol.WSStream = RefusalClosingWSStream  # type: ignore[misc]


_install_hypercorn_fixes()


async def guarded_connection(handle: Callable[[trio.abc.Stream], Awaitable[None]], stream: trio.abc.Stream) -> None:
    """Run one connection's handler; whatever it raises stays with this connection."""
    peer = _peer_of(stream)
    try:
        await handle(stream)
    except* Exception as group:
        log.error("connection from %s failed and was closed; the server goes on", peer, exc_info=group.exceptions[0])
    finally:
        await trio.aclose_forcefully(stream)


def _peer_of(stream: trio.abc.Stream) -> str:
    transport = getattr(stream, "transport_stream", stream)
    try:
        host, port = transport.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return "unknown"
    return f"{host}:{port}"


async def serve(
    app: object,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI `app` on the sockets `config` describes until `shutdown_trigger` returns;
    `task_status` gets the bound URLs."""
    asgi: AppWrapper = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    lifespan_state: dict = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners, binds = _listeners(config)
            handler = partial(
                guarded_connection,
                lambda stream: GuardedTCPServer(asgi, config, context, lifespan_state, stream).run(),
            )
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            # Idle keep-alive connections close now; the others get `graceful_timeout` to finish.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _listeners(config: Config) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], list[str]]:
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    binds: list[str] = []
    for sock in sockets.secure_sockets:
        sock.listen(config.backlog)
        listeners.append(
            trio.SSLListener(
                trio.SocketListener(trio.socket.from_stdlib_socket(sock)), ssl_context, https_compatible=True
            )
        )
        binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    return listeners, binds
