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

Writing: on plain TCP, a message sent while nothing is queued or being written is written at once
with a non-blocking `send` by the sending task (a subscriber's message costs one system call, no
wake of another task). Everything else (what did not fit, replies to pings, close frames, writes
on TLS) goes through one writer task per connection and a bounded queue, in order, so two tasks
never write at once. A peer that takes nothing for `stall_timeout_s` is disconnected (`stalled`).

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
from collections.abc import Callable
from dataclasses import dataclass

import trio
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from callscribe.server.linger import LINGER_BYTES

log = logging.getLogger(__name__)
_protocol_log = logging.getLogger(__name__ + ".websockets")
"""websockets' own log lines ("connection open" at every call) stay below the server's info level;
what matters is logged by callscribe with the call's context."""
_protocol_log.setLevel(logging.WARNING)

READ_BUFFER = 4096
"""Bytes read at a time: a 100 ms window of both tracks (ten Twilio frames of ~390 bytes on the
wire) in one read. (8 KiB measured 1-7% less CPU per frame and ~10 KB more memory per call.)"""
WRITE_QUEUE = 64
"""Writes that may wait for the writer (talk-back audio is sent in chunks of ~100 ms)."""
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
        self._stall_timeout_s = stall_timeout_s
        self._read_tick = read_tick
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)
        self._fast_socket = _duplicate_plain_socket(stream)
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](WRITE_QUEUE)
        self._pending: list[str | bytes] = []
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._unwritten = 0
        self._last_words: list[bytes] = []
        """Writes handed to the writer and not finished: a message may go straight out only at 0."""
        self.gone = False
        """The peer has left, failed the protocol, or stopped taking data."""
        self.stalled = False
        """It was disconnected for taking no data for `stall_timeout_s` (by us or the kernel)."""
        self._gone = trio.Event()
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
        self._wake = (max(1, low_water(messages, size) - (held + MAX_HEADER if held else 0)), latest)

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
            frames = [_text_frame(text)]
        for data in frames:
            if self._fast_socket is not None and self._unwritten == 0:
                rest = self._send_now(self._fast_socket, data)
                if rest is not data:  # all or part of it went (or the connection broke)
                    if rest:  # the rest of a frame begun on the wire: queued at once, never cancelled
                        self._queue_nowait(rest)
                    await trio.lowlevel.checkpoint()
                    continue
            await self._queue(data)

    async def _queue(self, data: bytes) -> None:
        """Hand `data` to the writer, waiting for room (a cancelled wait queues nothing)."""
        self._unwritten += 1
        try:
            await self._outbox_send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # the writer gave up or ended
            self._unwritten -= 1
            self._set_gone()
        except BaseException:
            self._unwritten -= 1
            raise

    def _queue_last(self, data: bytes) -> None:
        """Queue a close frame behind everything queued, even when the queue is full: the writer
        then writes it after the rest (a slow peer that catches up still learns why it was closed)."""
        if self._outbox_send.statistics().current_buffer_used < WRITE_QUEUE:
            self._queue_nowait(data)
        else:
            self._unwritten += 1
            self._last_words.append(data)

    def _queue_nowait(self, data: bytes) -> None:
        if self._last_words:  # behind a close frame that found the queue full (the protocol's EOF, say)
            self._unwritten += 1
            self._last_words.append(data)
            return
        self._unwritten += 1
        try:
            self._outbox_send.send_nowait(data)
        except trio.WouldBlock:
            self._unwritten -= 1
            self._give_up("the write queue is full")
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # the writer gave up or ended
            self._unwritten -= 1
            self._set_gone()

    def _send_now(self, sock: socket.socket, data: bytes) -> bytes:
        """Write what the socket takes without waiting; what is left for the writer (b"": all of it
        went, or the connection broke)."""
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return data
        except OSError as error:
            self._give_up("the connection broke", stalled=error.errno == errno.ETIMEDOUT)
            return b""
        return data[sent:]

    def _flush_protocol(self) -> None:
        """Queue what the protocol has to send (pongs, close frames, EOF) without waiting; a peer
        that makes us answer more than the queue holds is given up on."""
        for data in self._protocol.data_to_send():
            self._queue_nowait(data)
            if self.gone:
                return

    async def writer(self) -> None:
        """Write queued data in order until the queue is closed (by `close`) or the peer stalls;
        then the close frame if it found the queue full (`_last_words`)."""
        async with self._outbox:
            async for data in self._outbox:
                if not await self._write(data):
                    return
        for data in self._last_words:
            if not await self._write(data):
                return

    async def _write(self, data: bytes) -> bool:
        """Write one queued piece (b"": the protocol's end of stream); False once the peer is given up on."""
        try:
            if not data:
                await self._send_eof()
                return True
            with trio.move_on_after(self._stall_timeout_s) as stalled:
                try:
                    await self._stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    timed_out = isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ETIMEDOUT
                    self._give_up("the connection broke", stalled=timed_out)
                    return False
        finally:
            self._unwritten -= 1
        if stalled.cancelled_caught:
            self._give_up(f"it took no data for {self._stall_timeout_s:g} s", stalled=True)
            return False
        return True

    async def _send_eof(self) -> None:
        try:
            await self._stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # TLS streams have no half-close; the close below ends them

    def _give_up(self, why: str, *, stalled: bool = False) -> None:
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
        the rest of what the peer sent unread, it would get RST instead of FIN (linger.py)."""
        self._wake = None  # a wake the call's reader asked for is for its messages, not the close frame
        left = math.inf  # bytes still read: up to the peer's close frame, whatever comes before it
        with trio.move_on_after(timeout_s):
            if not self.gone and self._protocol.state is State.OPEN:
                try:
                    self._protocol.send_close(code, close_reason(reason))
                except InvalidState:
                    pass
                for data in self._protocol.data_to_send():
                    self._queue_last(data)
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
        self._outbox_send.close()

    async def aclose(self) -> None:
        if self._fast_socket is not None:
            # A reader still waiting on it wakes with ClosedResourceError instead of waiting forever.
            trio.lowlevel.notify_closing(self._fast_socket)
            self._fast_socket.close()
        await trio.aclose_forcefully(self._stream)


class _LastFrame:
    text: str | None = None
    frame = b""


def _text_frame(text: str) -> bytes:
    """A server's frame of the text message `text` (no extensions: the same bytes for every peer).
    A result fanned out to a call's subscribers is one `str` object: it is framed once."""
    if text is not _LastFrame.text:
        _LastFrame.frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        _LastFrame.text = text
    return _LastFrame.frame


MAX_HEADER = 14
"""The longest header of a client's frame: 2 bytes, 8 of extended length, 4 of masking key."""


def framed(size: int) -> int:
    """Bytes on the wire of a client's message of `size` bytes in one frame: header, masking key, data."""
    return size + (2 if size < 126 else 4 if size < 65536 else 10) + 4


def low_water(messages: int, size: int) -> int:
    """Bytes on the wire by which `messages` client messages of at least `size` bytes each have
    come, but for half of the last (so a message or two a little longer or shorter than `size`
    changes nothing), and at most what one read takes."""
    one = framed(size)
    return max(1, min(messages * one - one // 2, READ_BUFFER - one))


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


class _ServerProtocol(ServerProtocol):
    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        """Subprotocols are the route's business (`Admission.subprotocol`): websockets would refuse
        an offer that is not an RFC 7230 token, such as a bearer token with `/` or `=` in it."""
        return None


class FirstValues:
    """Request headers as the access policy reads them: a header given on several lines is their
    values joined with ", " (as RFC 9110 allows), where websockets' `get` would raise."""

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    def get(self, key: str, /) -> str | None:
        values = self._headers.get_all(key)
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class Admission:
    """The answer to an upgrade request: refused with an HTTP status and a reason, or accepted
    (with the subprotocol to echo, if any)."""

    status: int = 101
    reason: str = ""
    subprotocol: str | None = None


async def accept_websocket(
    stream: trio.abc.Stream,
    head: bytes,
    peer: str,
    *,
    check: Callable[[Request], Admission],
    max_message: int,
    stall_timeout_s: float,
    read_tick: ReadTick | None = None,
    what: str = "Twilio socket",
) -> ServedWebSocket | None:
    """Answer the upgrade request in `head` (read by the listener, up to its blank line): refuse it
    with `check`'s status and reason, or accept it. None when the connection is refused or is not
    a valid WebSocket upgrade (it has then been answered, e.g. 400, and should be closed)."""
    protocol = _ServerProtocol(max_size=max_message, logger=_protocol_log)
    # Frames sent with the request (not RFC 6455's way, but seen) are read once the 101 is sent:
    # given to the protocol now, a ping's pong would go out before the 101 and messages be lost.
    end = head.find(b"\r\n\r\n")
    early = b""
    if end >= 0:
        head, early = head[: end + 4], head[end + 4 :]
    protocol.receive_data(head)
    events = protocol.events_received()
    request = events[0] if events and isinstance(events[0], Request) else None
    if request is not None:
        admission = check(request)
        if admission.status != 101:
            response = protocol.reject(admission.status, admission.reason + "\n")
        else:
            response = protocol.accept(request)
            if admission.subprotocol and response.status_code == 101:
                response.headers["Sec-WebSocket-Protocol"] = admission.subprotocol
        protocol.send_response(response)
        if response.status_code != 101:
            log.warning(
                "refused %s from %s: %s %s",
                "a subscriber" if what == "subscriber" else "a WebSocket upgrade",
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
    return ServedWebSocket(
        stream,
        protocol,
        peer,
        stall_timeout_s=stall_timeout_s,
        read_tick=read_tick,
        query=request.path.partition("?")[2],
        what=what,
        early=early,
    )
