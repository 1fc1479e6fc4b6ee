"""RFC 6455 framing for the benchmark's WebSocket client, without IO.

Frames to the server are built once as bytes and masked with the connection's key
(:func:`client_frame`); frames from the server (unmasked) are parsed incrementally from a byte stream
by :class:`FrameReader`, fragmented messages reassembled. Only what the benchmark needs: text, close,
ping/pong, fragmentation; no extensions. :mod:`callscribe.bench.ws` does the IO.
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class WebSocketError(Exception):
    """The handshake failed or the peer broke the protocol."""


def mask(key: bytes, data: bytes) -> bytes:
    """``data`` XOR-ed with the 4-byte ``key`` repeated (RFC 6455 section 5.3)."""
    n = len(data)
    if n == 0:
        return b""
    stream = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final client frame (masked with ``key``)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + key + mask(key, payload)


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code, then the reason cut to fit a control frame."""
    return struct.pack("!H", code) + reason.encode()[:120]


def parse_close(payload: bytes) -> tuple[int, str]:
    """``(code, reason)`` of a close frame's payload; 1005 (no status) when it has none."""
    if len(payload) < 2:
        return 1005, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


class FrameReader:
    """Incremental parser of the frames a server sends: ``feed(bytes) -> [(opcode, payload)]``.

    Fragmented messages are reassembled (the opcode of the first fragment is reported); control
    frames may come between fragments, as the RFC allows.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            b0 = buffer[pos]
            b1 = buffer[pos + 1]
            length = b1 & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                header = 10
            key = b""
            if b1 & 0x80:
                if end - pos < header + 4:
                    break
                key = bytes(buffer[pos + header : pos + header + 4])
                header += 4
            if end - pos < header + length:
                break
            payload = bytes(buffer[pos + header : pos + header + length])
            pos += header + length
            if key:
                payload = mask(key, payload)
            opcode = b0 & 0x0F
            final = b0 & 0x80
            if opcode >= 0x8:
                frames.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if self._fragments is None:
                    raise WebSocketError("continuation frame without a first fragment")
                self._fragments.append(payload)
                if final:
                    frames.append((self._fragment_opcode, b"".join(self._fragments)))
                    self._fragments = None
            elif not final:
                self._fragments = [payload]
                self._fragment_opcode = opcode
            else:
                frames.append((opcode, payload))
        if pos:
            del buffer[:pos]
        return frames
