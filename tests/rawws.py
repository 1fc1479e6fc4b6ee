"""A raw WebSocket client for hostile-input tests: it sends whatever frames it is told to, valid
or not (RFC 6455 section 5.2 framing, built by hand so that nothing is corrected on the way)."""

from __future__ import annotations

import base64
import os
import struct

import trio

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True, length: int | None = None
) -> bytes:
    """One frame. `length` overrides the announced payload length (to lie about it)."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The complete (unmasked, as servers send them) frames in `data`, as (opcode, payload)."""
    frames = []
    while len(data) >= 2:
        opcode, size = data[0] & 0xF, data[1] & 0x7F
        offset = 2
        if size == 126:
            size, offset = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, offset = struct.unpack("!Q", data[2:10])[0], 10
        if len(data) < offset + size:
            break
        frames.append((opcode, data[offset : offset + size]))
        data = data[offset + size :]
    return frames


def upgrade_request(path: str, host: str = "127.0.0.1", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 WebSocket upgrade request head."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWebSocket:
    """A client connection after the opening handshake; `send` writes raw bytes."""

    def __init__(self, stream: trio.SocketStream, status: int, head: bytes, rest: bytes) -> None:
        self.stream = stream
        self.status = status
        self.head = head
        self.received = bytearray(rest)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_until_closed(self, timeout_s: float = 5.0) -> bytes:
        """Everything the server sends until its close frame or the end of the connection (or the
        timeout)."""
        with trio.move_on_after(timeout_s):
            try:
                while self.close_code() is None and (chunk := await self.stream.receive_some(65536)):
                    self.received += chunk
            except trio.BrokenResourceError:
                pass
        return bytes(self.received)

    def close_code(self) -> int | None:
        """The code of the first close frame the server sent."""
        for opcode, payload in server_frames(bytes(self.received)):
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        return None

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def connect(
    port: int, path: str, *, headers: dict[str, str] | None = None, rcvbuf: int | None = None
) -> RawWebSocket:
    """Open `path` on 127.0.0.1:`port`; `rcvbuf` shrinks the receive buffer (a client that will
    stop reading fills it sooner)."""
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(upgrade_request(path, f"127.0.0.1:{port}", headers))
    status, head, rest = await read_response_head(stream)
    return RawWebSocket(stream, status, head, rest)


async def read_frames(
    stream: trio.abc.Stream, want: int, *, already: bytes = b"", timeout_s: float = 5.0
) -> list[tuple[int, bytes]]:
    """The server's frames in `already` and what the stream brings next, once there are `want` of
    them (or the stream ended); TooSlowError after `timeout_s`."""
    data = already
    with trio.fail_after(timeout_s):
        while len(server_frames(data)) < want:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return server_frames(data)


async def read_response_head(stream: trio.abc.Stream, timeout_s: float = 5.0) -> tuple[int, bytes, bytes]:
    """(status, head, the bytes after it) of the next response (status 0: none came)."""
    data = b""
    with trio.fail_after(timeout_s):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, head, rest
