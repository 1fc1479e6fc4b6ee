"""The WebSockets of the two hot paths on callscribe's own Trio code: websockets' sans-IO protocol
over a socket. `/twilio` (media in: 50 frames a second per track) and `/client` (transcripts out:
every result to every subscriber of the call).

Through Hypercorn a frame is read by its connection task, parsed by wsproto, put on a queue and
picked up by the app's task: two task wakes and a pure-Python parser per frame, and as much again
for each message sent. Here the call's own reader task reads the socket and parses with
`websockets`' C-accelerated framing, and everything one read produced is handed on at once
(`receive_batch`); a message sent goes straight to the socket when nothing waits before it.

Reading: a small buffer allocated once per connection; on plain TCP the reader waits with
`trio.lowlevel.wait_readable` and reads with a non-blocking `recv_into` on a duplicate of the
socket's descriptor (no failed `recv` before each wait, as `trio.SocketStream` does); on TLS it
reads through the `trio.SSLStream`. On plain TCP a reader may ask to be woken only once a number
of bytes has come, or at a given time if they have not (`wake_after`: the call's reader asks for
the frames that complete its next window, so it reads once a window, as that window's last frame
lands; the kernel holds the wake, `SO_RCVLOWAT`). On TLS the bytes are not the messages, and the
reader may instead ask not to read before a given time (`receive_batch(not_before)`: the call does,
until its next window can be complete, see core/read_pacing.py); it then reads at once, without
waiting to be told the socket is readable. A read that filled the buffer is followed by another
at once, whatever the reader asked: a peer ahead of real time (a burst after a network hiccup) is
read as fast as it sends. Optionally the wait is replaced by a shared tick (`ReadTick`): every
reader wakes on the same tick and takes what arrived, trading up to one tick of latency for fewer
wakes.

Writing: websocket_writes.py (at once on plain TCP when nothing waits, else through one writer
task and a bounded queue); a peer that takes nothing for `stall_timeout_s` is disconnected
(`stalled`). Accepting: websocket_accept.py.

Messages (text or binary, reassembled from fragments) are limited to `max_message` bytes; a bigger
one fails the connection with 1009. Broken framing fails it with 1002 (invalid UTF-8 in a text
message: 1007). After the connection fails or the peer leaves, `receive*` raise
`trio.EndOfChannel`, and `send` drops its message (with a checkpoint).
"""

from __future__ import annotations

import errno
import logging
import math
import socket

import trio
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from callscribe.core.read_pacing import MAX_HEADER, low_water
from callscribe.server.linger import LINGER_BYTES
from callscribe.server.websocket_writes import WebSocketWrites, text_frame

log = logging.getLogger(__name__)

READ_BUFFER = 4096
"""Bytes read at a time: a 100 ms window of both tracks (ten Twilio frames of ~390 bytes on the
wire) in one read. (8 KiB measured 1-7% less CPU per frame and ~10 KB more memory per call.)"""
CLOSE_TIMEOUT_S = 2.0
"""Closing (our close frame, the peer's answer) gives up after this."""
MAX_CLOSE_REASON = 120
"""Close reasons must fit a control frame (125 bytes, 2 of them the code)."""


def close_reason(reason: str) -> str:
    """`reason` cut to what a close frame carries, on a character boundary."""
    return reason.encode(errors="replace")[:MAX_CLOSE_REASON].decode(errors="ignore")


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


class ServedWebSocket:
    """One accepted WebSocket: `receive_batch`/`receive` for the reader, `send` for everyone else.

    Construct it with `accept_websocket`; run `writer()` in a task that lives as long as the
    connection; call `close()` once, at the end, then `aclose()`.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: ServerProtocol,
        peer: str,
        *,
        stall_timeout_s: float,
        read_tick: ReadTick | None = None,
        query: str = "",
        what: str = "Twilio socket",
        early: bytes = b"",
    ) -> None:
        self.peer = peer
        self._early = early
        """Bytes that came with the upgrade request, after its head: read before the socket."""
        self.query = query
        """The request's query string (after `?`)."""
        self._what = what
        self._stream = stream
        self._protocol = protocol
        self._read_tick = read_tick
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)
        self._fast_socket = _duplicate_plain_socket(stream)
        self._writes = WebSocketWrites(
            stream, self._fast_socket, stall_timeout_s=stall_timeout_s, give_up=self._give_up, gone=self._set_gone
        )
        self._pending: list[str | bytes] = []
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self.gone = False
        """The peer has left, failed the protocol, or stopped taking data."""
        self.stalled = False
        """It was disconnected for taking no data for `stall_timeout_s` (by us or the kernel)."""
        self._gone = trio.Event()
        self._closed = False
        self._eof = False
        self._more = False
        self._wakes_on_bytes = self._fast_socket is not None and read_tick is None and hasattr(socket, "SO_RCVLOWAT")
        self._wake: tuple[int, float] | None = None
        """The next wait's low-water mark (bytes) and latest time, from `wake_after`."""
        self._low_water = 1
        """The socket's SO_RCVLOWAT as last set."""

    # -- reading ---------------------------------------------------------------------------

    async def receive_batch(self, not_before: float = 0.0) -> list[str | bytes]:
        """The messages of the next read that produced any (text as `str`, binary as `bytes`),
        read no earlier than `not_before` (trio time): a reader that knows nothing it can use comes
        sooner takes everything up to then in one read."""
        while True:
            if self.gone or self._protocol.state is State.CLOSED or self._eof:
                raise trio.EndOfChannel
            data = await self._read(not_before)
            if not data:
                self._eof = True
                self._protocol.receive_eof()
                self._flush_protocol()
                self._gone.set()
                raise trio.EndOfChannel
            self._protocol.receive_data(data)
            messages = self._messages()
            self._flush_protocol()
            if self._protocol.state is not State.OPEN:
                self._set_gone()
            if messages:
                return messages

    @property
    def wakes_on_bytes(self) -> bool:
        """Whether `wake_after` is honoured: a plain TCP socket read without the shared tick."""
        return self._wakes_on_bytes

    def wake_after(self, messages: int, size: int, latest: float) -> None:
        """Let the next read wait until `messages` more messages of at least `size` bytes can be
        there (the kernel holds the wake until that many bytes have come: `SO_RCVLOWAT`), or until
        `latest` (trio time), whichever comes first; then the read takes whatever came. For the
        call's reader, which knows how much completes its next window. A peer that closes, resets
        or fails wakes it at once."""
        if not (self._wakes_on_bytes and messages > 0 < size):
            self._wake = None
            return
        # A read that ended inside a frame left its first bytes with the parser (its header, at
        # most MAX_HEADER bytes, already taken off): they will not come again. (`reader` is the
        # sans-IO protocol's buffer, not documented API: test_websocket's
        # test_the_bytes_of_a_message_already_read_count_towards_the_wake fails if it goes.)
        held = len(self._protocol.reader.buffer)
        self._wake = (max(1, low_water(messages, size, READ_BUFFER) - (held + MAX_HEADER if held else 0)), latest)

    async def receive(self) -> str | bytes:
        """One message at a time (the remainder of a batch is kept for the next call)."""
        if not self._pending:
            self._pending = await self.receive_batch()
        return self._pending.pop(0)

    async def _read(self, not_before: float = 0.0) -> bytes:
        if self._early:
            data, self._early = self._early, b""
            return data
        # Read at once, without waiting to be told the socket is readable, when it most likely is:
        # after a read that filled the buffer (the peer is ahead of us: read on, whatever
        # `not_before` says) or after a pause (`not_before`). One wake fewer, and a `recv` that
        # finds nothing costs a system call, not a wake.
        read_now = self._more
        self._more = False
        if read_now:
            await trio.lowlevel.checkpoint()  # a peer that floods us must not starve the other calls
        elif not_before > trio.current_time():
            await trio.sleep_until(not_before)
            read_now = True
        sock = self._fast_socket
        if sock is None:
            try:
                data = bytes(await self._stream.receive_some(READ_BUFFER))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            self._more = len(data) == READ_BUFFER
            return data
        while True:
            if sock.fileno() < 0:  # closed (aclose) before this read
                return b""
            if read_now:
                read_now = False
            elif self._wake is not None:
                low_water, latest = self._wake
                self._wake = None
                if not await self._wait_bytes(sock, low_water, latest):
                    return b""
            elif self._read_tick is None:
                if self._low_water > 1:  # no wake asked for (a cancelled wait, close, a read of no message)
                    self._set_low_water(sock, 1)
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:  # closed under us (aclose)
                    return b""
            else:
                await self._read_tick.wait()
            try:
                count = sock.recv_into(self._buffer)
            except BlockingIOError:
                if self._low_water > 1:  # woken with too few bytes (by the timer): take whatever comes
                    self._set_low_water(sock, 1)
                continue
            except OSError as error:  # ETIMEDOUT: the kernel cut off a peer that took no data
                self.stalled = self.stalled or error.errno == errno.ETIMEDOUT
                return b""
            self._more = count == len(self._buffer)
            return bytes(self._view[:count])

    async def _wait_bytes(self, sock: socket.socket, low_water: int, latest: float) -> bool:
        """Wait until `low_water` bytes are there or `latest`; False if the socket was closed."""
        if latest <= trio.current_time():
            low_water = 1
        if low_water != self._low_water:
            self._set_low_water(sock, low_water)
        try:
            with trio.CancelScope(deadline=latest if low_water > 1 else math.inf):
                await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:  # closed under us (aclose)
            return False
        return True

    def _set_low_water(self, sock: socket.socket, low_water: int) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, low_water)
        except OSError:  # closed or reset: the read says so
            low_water = 1
        self._low_water = low_water

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
            if message is None:  # it failed the connection: nothing after it is processed (RFC 6455 7.1.7)
                break
            out.append(message)
        return out

    # -- writing ---------------------------------------------------------------------------

    async def drain(self) -> None:
        """Read and drop what the peer sends (answering its pings and close) until it leaves or
        the connection fails, for a peer that has nothing more to say (a subscriber)."""
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                try:
                    while True:
                        await self.receive_batch()
                except trio.EndOfChannel:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            await self._gone.wait()
            nursery.cancel_scope.cancel()

    async def send(self, text: str) -> None:
        """Send a text message: at once if nothing waits before it (plain TCP), else queued for the
        writer. Once the peer is gone it is dropped, with a checkpoint."""
        if self.gone or self._protocol.state is not State.OPEN:
            await trio.lowlevel.checkpoint()
            return
        if self._protocol.extensions:  # none is ever negotiated today; they would change the framing
            self._protocol.send_text(text.encode())
            frames = self._protocol.data_to_send()
        else:
            frames = [text_frame(text)]
        for data in frames:
            await self._writes.send(data)

    def _flush_protocol(self) -> None:
        """Queue what the protocol has to send (pongs, close frames, EOF) without waiting; a peer
        that makes us answer more than the queue holds is given up on."""
        for data in self._protocol.data_to_send():
            self._writes.queue_nowait(data)
            if self.gone:
                return

    async def writer(self) -> None:
        """Write what is queued, in order, until `close` (or the peer stalls): run it in a task
        that lives as long as the connection."""
        await self._writes.run()

    def _give_up(self, why: str, stalled: bool = False) -> None:
        if not self.gone:
            log.info("%s %s: disconnecting, %s", self._what, self.peer, why)
        self.stalled = self.stalled or stalled
        self._set_gone()

    def _set_gone(self) -> None:
        self.gone = True
        self._gone.set()

    # -- closing ---------------------------------------------------------------------------

    async def close(self, code: int, reason: str, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send a close frame (unless the connection already ended) and wait, bounded, for the
        peer's, discarding whatever it still sends; then end the writer and the socket.

        A connection that failed (1002, 1007, 1009: its close frame and end of stream already
        queued) is read on the same way until the peer closes, at most `LINGER_BYTES`: closed with
        the rest of what the peer sent unread, it would get RST instead of FIN (linger.py). A
        second close only ends the writer: the first waited for the peer already."""
        if self._closed:
            self._writes.end()
            return
        self._closed = True
        self._wake = None  # a wake the call's reader asked for is for its messages, not the close frame
        left = math.inf  # bytes still read: up to the peer's close frame, whatever comes before it
        with trio.move_on_after(timeout_s):
            if not self.gone and self._protocol.state is State.OPEN:
                try:
                    self._protocol.send_close(code, close_reason(reason))
                except InvalidState:
                    pass
                for data in self._protocol.data_to_send():
                    self._writes.queue_last(data)
            elif self.stalled or self._protocol.state is not State.CLOSING:
                left = 0  # stalled, broken or closed: nothing to wait for
            else:
                left = LINGER_BYTES  # failed, its close frame queued: the peer is owed no more
            while not self._eof and self._protocol.close_rcvd is None and left > 0:
                data = await self._read()
                if not data:
                    break
                left -= len(data)
                self._protocol.receive_data(data)  # after a failure, the protocol discards it
                self._protocol.events_received()
                self._flush_protocol()
        self._writes.end()

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
