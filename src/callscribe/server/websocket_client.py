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
    """The connection to `where` (host:port) could not be opened; `cause` says why."""

    def __init__(self, where: str, cause: str) -> None:
        super().__init__(f"{where}: {cause}")
        self.where = where
        self.cause = cause


async def connect_websocket(
    nursery: trio.Nursery,
    url: str,
    *,
    headers: list[tuple[str, str]] | tuple[()] = (),
    connect_timeout: float = 5.0,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> trio_websocket.WebSocketConnection:
    """Open a client WebSocket whose background reader runs in `nursery`; the caller closes it.

    Each step (TCP, TLS, WebSocket upgrade) is bounded by `connect_timeout`. Raises `ConnectFailed`
    naming the step or the root cause, or trio-websocket's `ConnectionRejected` for a refused upgrade.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectFailed(url, "not a ws:// or wss:// URL with a host")
    host = parts.hostname
    default_port = 443 if secure else 80
    port = parts.port or default_port
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    where = host_header if port != default_port else f"{host_header}:{port}"
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    step = "the TCP connection"
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
            if secure:
                step = "the TLS handshake"
                context = ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
                await stream.do_handshake()
            step = "the WebSocket handshake"
            return await trio_websocket.wrap_client_stream(
                nursery, stream, host_header, resource, extra_headers=extra, max_message_size=max_message_size
            )
    except BaseException as error:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(error, trio.TooSlowError):
            raise ConnectFailed(where, f"timed out after {connect_timeout:g} s waiting for {step}") from None
        if isinstance(error, trio_websocket.ConnectionRejected):
            raise
        if isinstance(error, (OSError, trio.BrokenResourceError, trio_websocket.HandshakeError)):
            raise ConnectFailed(where, describe_failure(error)) from error
        raise


def describe_failure(error: BaseException) -> str:
    """One line naming the root cause of a failed connection attempt.

    trio-websocket wraps OSErrors in HandshakeError, trio reports failed connection attempts as an
    OSError caused by a group, and TLS failures surface as BrokenResourceError caused by an SSLError.
    """
    texts: list[str] = []
    for cause in _root_causes(error):
        if isinstance(cause, ssl.SSLError):
            text = f"TLS error: {cause.reason or cause}"
            if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
                text += f" ({cause.verify_message})"
        elif isinstance(cause, OSError):
            text = str(cause) or type(cause).__name__
        else:
            text = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        if text not in texts:
            texts.append(text)
    return "; ".join(texts)


def _root_causes(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [root for sub in error.exceptions for root in _root_causes(sub)]
    if error.__cause__ is not None:
        return _root_causes(error.__cause__)
    return [error]
