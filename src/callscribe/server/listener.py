"""callscribe's accept loop: each connection behind a barrier, routed by its first request.

Every accepted connection (TLS included, with the same certificate settings) runs in its own task
behind a barrier: whatever it raises is logged with the peer's address, that connection is closed,
and every other connection goes on. (`hypercorn.trio.serve` runs them all in one nursery, so one
connection's exception would end the server and every live call.)

The task reads the connection's first request head. A WebSocket upgrade for one of the `routes`
(the `/twilio` media streams) is served by callscribe's own code with those bytes; any other
connection goes, with the bytes already read, to Hypercorn's own per-connection server
(hypercorn_fixes.py), so every other route stays Quart-Trio on Hypercorn. A connection is routed
once: a later request on the same keep-alive connection stays with Hypercorn. An upgrade that
callscribe's code refuses (401, 403, 400) is then closed lingering (linger.py): the peer may have
sent its first frames right behind the request.

Everything else is Hypercorn's, in the order its `worker_serve` does it: the ASGI lifespan
(Quart's `before_serving` starts callscribe's supervisor), the listening sockets from its config,
`WorkerContext` for keep-alive and graceful shutdown, and `graceful_timeout` for the connections
still open once the shutdown trigger has returned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper
from hypercorn.utils import repr_socket_addr, wrap_app

from callscribe.server.hypercorn_fixes import GuardedTCPServer
from callscribe.server.linger import linger_close

log = logging.getLogger(__name__)

MAX_HEAD = 16 * 1024
"""Bytes read to find the first request head; a longer head goes to Hypercorn, which refuses it."""

Route = Callable[[trio.abc.Stream, bytes, str], Awaitable[None]]
"""Serves one upgraded connection: (stream, the bytes read so far, the peer's address)."""


async def guarded_connection(handle: Callable[[trio.abc.Stream], Awaitable[None]], stream: trio.abc.Stream) -> None:
    """Run one connection's handler; whatever it raises stays with this connection."""
    peer = peer_of(stream)
    try:
        await handle(stream)
    except* Exception as group:
        log.error("connection from %s failed and was closed; the server goes on", peer, exc_info=group.exceptions[0])
    finally:
        await trio.aclose_forcefully(stream)


def peer_of(stream: trio.abc.Stream) -> str:
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.SocketStream):
        return "unknown"
    try:
        host, port = transport.socket.getpeername()[:2]
    except (OSError, ValueError):
        return "unknown"
    return f"{host}:{port}"


async def read_head(stream: trio.abc.Stream, timeout_s: float, paths: Iterable[str] = ()) -> bytes:
    """The connection's first bytes, up to and including the end of the first request head; or,
    as soon as they cannot begin a `GET` of one of `paths`, what came so far (Hypercorn answers
    that without waiting); or `MAX_HEAD` bytes, or what came before the peer stopped or the timeout."""
    starts = [b"GET " + path.encode() for path in paths]
    data = b""
    with trio.move_on_after(timeout_s):
        while b"\r\n\r\n" not in data and len(data) < MAX_HEAD and (not starts or _may_start(data, starts)):
            try:
                chunk = await stream.receive_some(MAX_HEAD - len(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not chunk:
                break
            data += chunk
    return data


def _may_start(data: bytes, starts: list[bytes]) -> bool:
    """`data` may still become a request line that begins with one of `starts`, then a space or `?`."""
    for start in starts:
        if len(data) <= len(start):
            if start.startswith(data):
                return True
        elif data.startswith(start) and data[len(start) : len(start) + 1] in (b" ", b"?"):
            return True
    return False


def route_of(head: bytes, routes: Mapping[str, Route]) -> Route | None:
    """The route for a WebSocket upgrade (`GET <path> ... Upgrade: websocket`) to one of `routes`."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    request_line, _, headers = head[:end].partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        return None
    route = routes.get(parts[1].split(b"?", 1)[0].decode("latin-1"))
    if route is None:
        return None
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and value.strip().lower() == b"websocket":
            return route
    return None


async def serve(
    app: object,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    routes: Mapping[str, Route] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI `app` (and the WebSocket `routes` served outside it) on the sockets `config`
    describes until `shutdown_trigger` returns; `task_status` gets the bound URLs."""
    asgi: AppWrapper = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    lifespan_state: dict[str, object] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    own_routes = dict(routes or {})
    idle: set[trio.CancelScope] = set()
    """Connections whose first request has not come yet, or lingering after a refusal: shutdown
    closes them at once."""

    @contextmanager
    def while_idle() -> Iterator[trio.CancelScope]:
        with trio.CancelScope() as scope:
            if context.terminated.is_set():  # accepted just before the shutdown, say
                scope.cancel()
            idle.add(scope)
            try:
                yield scope
            finally:
                idle.discard(scope)

    async def connection(stream: trio.abc.Stream) -> None:
        head = b""
        with while_idle() as reading:
            head = await read_head(stream, config.keep_alive_timeout, own_routes)
        if not head or reading.cancelled_caught:
            return
        route = route_of(head, own_routes)
        if route is not None:
            await route(stream, head, peer_of(stream))
            with while_idle():  # a refused upgrade: its stream is still open, the peer maybe sending
                await linger_close(stream)
        else:
            await GuardedTCPServer(asgi, config, context, lifespan_state, stream, already_read=head).run()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners, binds = _listeners(config)
            handler = partial(guarded_connection, connection)
            async with trio.open_nursery() as accepting:
                accepting.start_soon(partial(trio.serve_listeners, handler, listeners, handler_nursery=connections))
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            # Idle keep-alive connections close now; the others get `graceful_timeout` to finish.
            await context.terminated.set()
            for scope in list(idle):
                scope.cancel()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


def _listeners(config: Config) -> tuple[list[trio.abc.Listener[trio.abc.Stream]], list[str]]:
    sockets = config.create_sockets()
    ssl_context = config.create_ssl_context()
    listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
    binds: list[str] = []
    for sock in sockets.secure_sockets:
        assert ssl_context is not None  # Hypercorn makes secure sockets only when TLS is configured
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
