"""Lingering close: ending a connection whose peer may still be sending.

Closing a TCP socket with received bytes still unread makes the kernel answer with RST instead of
FIN, and some clients (Windows, some proxies) then drop the answer they had already received (a
refusal's status and reason, a close frame's code) and report "connection reset" instead. So, as
nginx (`lingering_close`) and Apache do, the answer is written, the write side shut (the peer sees
the answer end), and what the peer still sends is read and dropped until it closes, at most
`LINGER_BYTES` for at most `LINGER_S`; then the socket is closed. Over TLS the same is done on the
TCP stream under it: the answer's records are out, no close_notify is sent (the listener is
`https_compatible`, as without lingering) and the ciphertext that still comes is dropped unread.
"""

from __future__ import annotations

import trio

LINGER_S = 2.0
"""The longest a closing connection waits for its peer to stop sending and close."""
LINGER_BYTES = 64 * 1024
"""The most a closing connection reads and drops; a peer that sends more is cut off (RST)."""


async def linger_close(stream: trio.abc.Stream) -> None:
    """Shut the write side of `stream`, drop what its peer sends until it closes (bounded:
    `LINGER_BYTES`, `LINGER_S`, or the caller's cancel scope, e.g. shutdown), then close it. A
    stream already closed is left as it is."""
    try:
        with trio.move_on_after(LINGER_S):
            await _discard_until_closed(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def shut_write(stream: trio.abc.Stream) -> bool:
    """Shut the write side of `stream` (of the TCP stream under it, for TLS); False if it is
    closed or broken already, or cannot be half-closed."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if not isinstance(transport, trio.abc.HalfCloseableStream):
        return False
    try:
        await transport.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        return False
    return True


async def _discard_until_closed(stream: trio.abc.Stream) -> None:
    if not await shut_write(stream):
        return
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    left = LINGER_BYTES
    try:
        while left > 0 and (chunk := await transport.receive_some(left)):
            left -= len(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
        pass
