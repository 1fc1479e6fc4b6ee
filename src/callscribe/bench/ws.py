"""A lean WebSocket client for the benchmark's load generator (``callscribe bench``).

The load process has to offer hundreds of simulated Twilio calls (100 frames per second each) and
thousands of subscribers from one core, while the server it measures gets the other. A
full-featured client (trio-websocket: a reader task, wsproto events, memory channels) costs more
per frame than the server being measured, so the load generator speaks the wire protocol itself:

- the opening handshake is a plain HTTP/1.1 upgrade request;
- frames (:mod:`callscribe.bench.ws_frames`) are written with a non-blocking ``send`` straight from
  the real-time sender -- no task, no await -- with whatever the kernel does not take kept in order
  and flushed by a helper task;
- what the server sends is read from the socket and parsed by a
  :class:`~callscribe.bench.ws_frames.FrameReader`.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import time
from collections.abc import Iterable

import trio

from callscribe.bench.ws_frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    WebSocketError,
    client_frame,
    close_payload,
    parse_close,
)

RECV_SIZE = 65536


class ClientConnection:
    """One client WebSocket over a non-blocking socket.

    ``send_now`` never waits: it writes what the kernel takes and queues the rest, in order, for a
    drain task started in ``nursery``. ``receive`` returns the next batch of frames with the
    ``time.monotonic()`` at which their bytes were read.
    """

    def __init__(
        self, sock: socket.socket, nursery: trio.Nursery, leftover: bytes = b"", *, stamped: bool = False
    ) -> None:
        self.sock = sock
        self._stamped = stamped and _enable_arrival_stamps(sock)
        self.key = os.urandom(4)
        self.reader = FrameReader()
        self._nursery = nursery
        self._pending = bytearray()
        self._draining = False
        self._leftover = leftover
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.bytes_sent = 0

    # -- sending -----------------------------------------------------------------------------

    def frame(self, opcode: int, payload: bytes) -> bytes:
        return client_frame(opcode, payload, self.key)

    def send_now(self, data: bytes) -> None:
        """Write ``data`` (whole frames) without waiting; the kernel's refusal is queued, never lost."""
        if self.closed:
            return
        self.bytes_sent += len(data)
        if self._pending:
            self._pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost()
            return
        if sent < len(data):
            self._pending += data[sent:]
            if not self._draining:
                self._draining = True
                self._nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        try:
            while self._pending and not self.closed:
                await trio.lowlevel.wait_writable(self.sock)
                try:
                    sent = self.sock.send(self._pending)
                except BlockingIOError:
                    continue
                except OSError:
                    self._lost()
                    return
                del self._pending[:sent]
        finally:
            self._draining = False

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued reached the kernel (bounded)."""
        with trio.move_on_after(timeout):
            while self._pending and not self.closed:
                await trio.sleep(0.005)

    def send_text(self, text: str | bytes) -> None:
        self.send_now(self.frame(OP_TEXT, text.encode() if isinstance(text, str) else text))

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self) -> tuple[float, list[tuple[int, bytes]]]:
        """Next frames from the server, answering pings. Raises EOFError when the socket ends."""
        if self._leftover:
            data, self._leftover = self._leftover, b""
            frames = self.reader.feed(data)
            if frames:
                return time.monotonic(), self._answer(frames)
        while True:
            stamp = None
            try:
                if self._stamped:
                    data, ancillary, _flags, _address = self.sock.recvmsg(RECV_SIZE, STAMP_SPACE)
                    stamp = _arrival(ancillary)
                else:
                    data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError:
                data = b""
            now = time.monotonic() if stamp is None else stamp
            if not data:
                self._lost()
                raise EOFError("connection closed by peer")
            frames = self.reader.feed(data)
            if frames:
                return now, self._answer(frames)

    def _answer(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        for opcode, payload in frames:
            if opcode == OP_PING:
                self.send_now(self.frame(OP_PONG, payload))
            elif opcode == OP_CLOSE and self.close_code is None:
                self.close_code, self.close_reason = parse_close(payload)
                self.send_now(self.frame(OP_CLOSE, payload[:2]))
        return frames

    async def receive_text(self, timeout: float) -> str:
        """The next text message (skipping control frames); EOFError if the server closes first."""
        with trio.fail_after(timeout):
            while True:
                _, frames = await self.receive()
                for opcode, payload in frames:
                    if opcode == OP_TEXT:
                        return payload.decode()
                    if opcode == OP_CLOSE:
                        raise EOFError(f"server closed with {self.close_code} {self.close_reason}")

    async def wait_closed(self, timeout: float) -> bool:
        """Read (and drop) until the server's close frame; True if it came within ``timeout``."""
        with trio.move_on_after(timeout):
            while self.close_code is None:
                try:
                    await self.receive()
                except EOFError:
                    break
        return self.close_code is not None

    async def aclose(self, code: int = 1000, timeout: float = 2.0) -> None:
        """Close politely if the server has not, then drop the socket."""
        if self.closed:
            return
        if self.close_code is None:
            self.send_now(self.frame(OP_CLOSE, close_payload(code)))
            await self.flush(timeout)
            with trio.move_on_after(timeout):
                try:
                    while self.close_code is None:
                        await self.receive()
                except EOFError:
                    pass
        else:
            await self.flush(timeout)
        self._lost()

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._pending.clear()
            try:
                trio.lowlevel.notify_closing(self.sock)
            except RuntimeError:  # outside trio
                pass
            try:
                self.sock.close()
            except OSError:
                pass


SO_TIMESTAMPNS = 35
"""Linux's socket option (and control message type) for receive timestamps in nanoseconds; the
socket module does not name it."""
STAMP_SPACE = socket.CMSG_SPACE(16)


def _enable_arrival_stamps(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """When the kernel received the data just read, on ``time.monotonic()``'s clock (the stamp is
    on the real-time clock), or None without a stamp."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            real: float = seconds + nanoseconds / 1e9
            return real - (time.time() - time.monotonic())
    return None


async def connect(
    host: str,
    port: int,
    path: str,
    nursery: trio.Nursery,
    *,
    timeout: float = 10.0,
    headers: Iterable[tuple[str, str]] = (),
    stamped: bool = False,
) -> ClientConnection:
    """Open ``ws://host:port/path``; raises ``WebSocketError``/``OSError``/``trio.TooSlowError``.
    ``stamped``: `receive` times each read by the kernel's arrival stamp (Linux), not by when this
    process got round to reading it, so that the load process's own delays do not count."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.setblocking(False)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        with trio.fail_after(timeout):
            await sock.connect((host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
            while request:
                sent = await sock.send(request)
                request = request[sent:]
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = await sock.recv(RECV_SIZE)
                if not chunk:
                    raise WebSocketError(f"{path}: connection closed during the handshake")
                response += chunk
                if len(response) > 65536:
                    raise WebSocketError(f"{path}: handshake response too long")
        head, _, leftover = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 101"):
            raise WebSocketError(f"{path}: upgrade refused: {status.decode('latin-1')}")
    except BaseException:
        raw.close()
        raise
    return ClientConnection(raw, nursery, leftover, stamped=stamped)


async def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (for health checks): ``(status, body)``."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = await stream.receive_some(RECV_SIZE)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if length and len(body) >= int(length.group(1)):
                        break
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise WebSocketError(f"bad HTTP response: {head[:80]!r}") from None
    return status, body
