"""Opening a client WebSocket (to Deepgram) with a short timeout and the real cause of a failure.

trio-websocket's `open_websocket_url` waits 60 s by default and reports a failed TLS handshake only
as that timeout. Here the TCP connection and the TLS handshake are done first, each failure
becoming a `ConnectFailed` that says what went wrong; only then is the WebSocket handshake made on
the open stream. A refused WebSocket handshake still raises trio-websocket's `ConnectionRejected`
(status, headers, body), so the caller can read Deepgram's `dg-error`.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import trio
import trio_websocket

MAX_MESSAGE_SIZE = 1 << 20
"""Deepgram's messages are a few KiB; anything near a MiB is not a transcript."""


class ConnectFailed(Exception):
    """The connection could not be opened; the message says why."""


async def connect_websocket(
    nursery: trio.Nursery,
    url: str,
    *,
    headers: list[tuple[str, str]] | tuple[()] = (),
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
) -> trio_websocket.WebSocketConnection:
    """Open a client WebSocket whose background reader runs in `nursery`; the caller closes it."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectFailed(f"not a WebSocket URL: {url!r}")
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    where = f"{host}:{port}"
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
            if secure:
                context = ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError as error:
                    raise ConnectFailed(f"TLS handshake with {where} failed: {error.__cause__ or error}") from error
            return await trio_websocket.wrap_client_stream(
                nursery, stream, parts.netloc, resource, extra_headers=extra, max_message_size=MAX_MESSAGE_SIZE
            )
    except BaseException as error:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(error, trio.TooSlowError):
            raise ConnectFailed(f"no answer from {where} within {connect_timeout:g} s") from None
        if isinstance(error, OSError):
            raise ConnectFailed(f"cannot connect to {where}: {error.strerror or error}") from error
        if isinstance(error, trio_websocket.HandshakeError) and not isinstance(error, trio_websocket.ConnectionRejected):
            raise ConnectFailed(f"WebSocket handshake with {where} failed: {error!r}") from error
        raise
