"""The `/twilio` WebSocket on callscribe's own Trio code: websockets' sans-IO protocol over a socket.

Twilio sends 50 frames a second per track, so the cost of each frame's path decides how many calls
a core carries. Through Hypercorn a frame is read by its connection task, parsed by wsproto, put on
a queue and picked up by the app's task: two task wakes and a pure-Python parser per frame. Here the
call's own reader task reads the socket and parses with `websockets`' C-accelerated framing, and
everything one read produced is handed on at once (`receive_batch`).

Reading: a small buffer allocated once per connection; on plain TCP the reader waits with
`trio.lowlevel.wait_readable` and reads with a non-blocking `recv_into` on a duplicate of the
socket's descriptor (no failed `recv` before each wait, as `trio.SocketStream` does); on TLS it
reads through the `trio.SSLStream`. Optionally the wait is replaced by a shared tick
(`ReadTick`): every reader wakes on the same tick and takes what arrived, trading up to one tick of
latency for fewer wakes.

Writing: every write (replies to pings, close frames, talk-back audio, marks) goes through one
writer task per connection and a bounded queue, so two tasks never write at once; a peer that
takes nothing for `stall_timeout_s` is disconnected.

Messages (text or binary, reassembled from fragments) are limited to `max_message` bytes; a bigger
one fails the connection with 1009. Broken framing fails it with 1002 (invalid UTF-8 in a text
message: 1007). After the connection fails or the peer leaves, `receive*` raise
`trio.EndOfChannel`, and `send` drops its message (with a checkpoint).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import trio
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

log = logging.getLogger(__name__)
_protocol_log = logging.getLogger(__name__ + ".websockets")
"""websockets' own log lines ("connection open" at every call) stay below the server's info level;
what matters is logged by callscribe with the call's context."""
_protocol_log.setLevel(logging.WARNING)

READ_BUFFER = 4096
"""Bytes read at a time: a few Twilio frames (each ~300 bytes on the wire)."""
WRITE_QUEUE = 64
"""Writes that may wait for the writer (talk-back audio is sent in chunks of ~100 ms)."""


class ReadTick:
    """A shared clock that wakes every waiting reader at once, every `period_s`."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._tick = trio.Event()

    async def run(self) -> None:
        while True:
            await trio.sleep(self.period_s)
            tick, self._tick = self._tick, trio.Event()
            tick.set()

    async def wait(self) -> None:
        await self._tick.wait()


class MediaSocket:
    """One accepted WebSocket: `receive_batch`/`receive` for the reader, `send` for everyone else.

    Construct it after the handshake (see `serve_handshake`); run `writer()` in a task that lives
    as long as the connection; call `close()` once, at the end.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: ServerProtocol,
        peer: str,
        *,
        stall_timeout_s: float,
        read_tick: ReadTick | None = None,
    ) -> None:
        self.peer = peer
        self._stream = stream
        self._protocol = protocol
        self._stall_timeout_s = stall_timeout_s
        self._read_tick = read_tick
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)
        self._fast_socket = _duplicate_plain_socket(stream)
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](WRITE_QUEUE)
        self._pending: list[str | bytes] = []
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self.gone = False
        """The peer has left, failed the protocol, or stopped taking data."""
        self._eof = False

    # -- reading ---------------------------------------------------------------------------

    async def receive_batch(self) -> list[str | bytes]:
        """The messages of the next read that produced any (text as `str`, binary as `bytes`)."""
        while True:
            if self.gone or self._protocol.state is State.CLOSED or self._eof:
                raise trio.EndOfChannel
            data = await self._read()
            if not data:
                self._eof = True
                self._protocol.receive_eof()
                self._flush_protocol()
                raise trio.EndOfChannel
            self._protocol.receive_data(data)
            messages = self._messages()
            self._flush_protocol()
            if self._protocol.state is not State.OPEN:
                self.gone = True
            if messages:
                return messages

    async def receive(self) -> str | bytes:
        """One message at a time (the remainder of a batch is kept for the next call)."""
        if not self._pending:
            self._pending = await self.receive_batch()
        return self._pending.pop(0)

    async def _read(self) -> bytes:
        sock = self._fast_socket
        if sock is None:
            try:
                return bytes(await self._stream.receive_some(READ_BUFFER))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        while True:
            if sock.fileno() < 0:  # closed (aclose) before this read
                return b""
            if self._read_tick is None:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:  # closed under us (aclose)
                    return b""
            else:
                await self._read_tick.wait()
            try:
                count = sock.recv_into(self._buffer)
            except BlockingIOError:
                continue
            except OSError:
                return b""
            return bytes(self._view[:count])

    def _messages(self) -> list[str | bytes]:
        """Complete messages from the frames parsed so far; control frames are the protocol's."""
        out: list[str | bytes] = []
        for event in self._protocol.events_received():
            if not isinstance(event, Frame):  # only the handshake request comes before the frames
                continue
            opcode, data = event.opcode, bytes(event.data)
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if event.fin:
                    message = _decoded(self._protocol, opcode, data)
                else:
                    self._fragment_opcode, self._fragments = opcode, [data]
                    continue
            elif opcode is Opcode.CONT and self._fragment_opcode is not None:
                self._fragments.append(data)
                if not event.fin:
                    continue
                message = _decoded(self._protocol, self._fragment_opcode, b"".join(self._fragments))
                self._fragment_opcode, self._fragments = None, []
            else:
                continue
            if message is not None:
                out.append(message)
        return out

    # -- writing ---------------------------------------------------------------------------

    async def send(self, text: str) -> None:
        """Queue a text message. Once the peer is gone it is dropped, with a checkpoint."""
        if self.gone or self._protocol.state is not State.OPEN:
            await trio.lowlevel.checkpoint()
            return
        self._protocol.send_text(text.encode())
        for data in self._protocol.data_to_send():
            try:
                await self._outbox_send.send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):  # the writer gave up or ended
                self.gone = True
                return

    def _flush_protocol(self) -> None:
        """Queue what the protocol has to send (pongs, close frames, EOF) without waiting."""
        for data in self._protocol.data_to_send():
            try:
                self._outbox_send.send_nowait(data)
            except trio.WouldBlock:
                self._give_up("the write queue is full")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):  # the writer gave up or ended
                self.gone = True
                return

    async def writer(self) -> None:
        """Write queued data in order until the queue is closed (by `close`) or the peer stalls."""
        async with self._outbox:
            async for data in self._outbox:
                if not data:  # the protocol's end of stream
                    await self._send_eof()
                    continue
                with trio.move_on_after(self._stall_timeout_s) as stalled:
                    try:
                        await self._stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        self._give_up("the connection broke")
                        return
                if stalled.cancelled_caught:
                    self._give_up(f"it took no data for {self._stall_timeout_s:g} s")
                    return

    async def _send_eof(self) -> None:
        try:
            await self._stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # TLS streams have no half-close; the close below ends them

    def _give_up(self, why: str) -> None:
        if not self.gone:
            log.info("Twilio socket %s: disconnecting, %s", self.peer, why)
        self.gone = True

    # -- closing ---------------------------------------------------------------------------

    async def close(self, code: int, reason: str, timeout_s: float) -> None:
        """Send a close frame (unless the connection already ended) and wait, bounded, for the
        peer's, discarding whatever it still sends; then end the writer and the socket."""
        with trio.move_on_after(timeout_s):
            if not self.gone and self._protocol.state is State.OPEN:
                try:
                    self._protocol.send_close(code, reason)
                except InvalidState:
                    pass
                self._flush_protocol()
                while not self._eof and self._protocol.close_rcvd is None:
                    data = await self._read()
                    if not data:
                        break
                    self._protocol.receive_data(data)
                    self._protocol.events_received()
                    self._flush_protocol()
        self._outbox_send.close()

    async def aclose(self) -> None:
        if self._fast_socket is not None:
            # A reader still waiting on it wakes with ClosedResourceError instead of waiting forever.
            trio.lowlevel.notify_closing(self._fast_socket)
            self._fast_socket.close()
        await trio.aclose_forcefully(self._stream)


def _decoded(protocol: ServerProtocol, opcode: Opcode, data: bytes) -> str | bytes | None:
    if opcode is Opcode.BINARY:
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        protocol.fail(1007, "invalid UTF-8 in a text message")
        return None


def _duplicate_plain_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """A non-blocking duplicate of a plain TCP stream's socket, for `recv_into` without trio's
    wrapper; None for TLS (which must be read through its `SSLStream`)."""
    if not isinstance(stream, trio.SocketStream):
        return None
    duplicate = socket.socket(fileno=stream.socket.dup().detach())
    duplicate.setblocking(False)
    return duplicate


Refusal = tuple[int, str]
"""An HTTP status and a reason, to refuse a WebSocket upgrade before accepting it."""


async def accept_media_socket(
    stream: trio.abc.Stream,
    head: bytes,
    peer: str,
    *,
    check: Callable[[Request], Refusal | None],
    max_message: int,
    stall_timeout_s: float,
    read_tick: ReadTick | None = None,
) -> MediaSocket | None:
    """Answer the upgrade request in `head` (read by the listener, up to its blank line): refuse it
    with `check`'s status and reason, or accept it. None when the connection is refused or is not
    a valid WebSocket upgrade (it has then been answered, e.g. 400, and should be closed)."""
    protocol = ServerProtocol(max_size=max_message, logger=_protocol_log)
    protocol.receive_data(head)
    events = protocol.events_received()
    request = events[0] if events and isinstance(events[0], Request) else None
    if request is not None:
        refusal = check(request)
        response = protocol.reject(refusal[0], refusal[1] + "\n") if refusal else protocol.accept(request)
        protocol.send_response(response)
        if response.status_code != 101:
            log.warning(
                "refused a WebSocket upgrade from %s: %s %s",
                peer,
                response.status_code,
                response.body.decode(errors="replace").strip(),
            )
    with trio.move_on_after(stall_timeout_s):
        try:
            for data in protocol.data_to_send():
                if data:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
    if request is None or protocol.state is not State.OPEN:
        return None
    return MediaSocket(stream, protocol, peer, stall_timeout_s=stall_timeout_s, read_tick=read_tick)
