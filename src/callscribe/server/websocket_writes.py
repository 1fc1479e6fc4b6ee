"""The writes of one served WebSocket (websocket.py): in order, never two at once, bounded.

On plain TCP, a frame sent while nothing is queued or being written is written at once with a
non-blocking `send` by the sending task (a subscriber's message costs one system call, no wake of
another task). Everything else (what did not fit, replies to pings, close frames, writes on TLS)
goes through the connection's writer task (`run`) and a bounded queue, in order. A peer that takes
nothing for `stall_timeout_s` is given up on (`stalled`), as is one that makes us queue more than
`WRITE_QUEUE` replies at once.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import trio
from websockets.frames import Frame, Opcode

WRITE_QUEUE = 64
"""Writes that may wait for the writer (talk-back audio is sent in chunks of ~100 ms)."""

GiveUp = Callable[[str, bool], None]
"""Called with why and whether the peer stalled, when the connection is to be given up on."""


class WebSocketWrites:
    """The write side of one connection. `gone` is called when the writer ended under a sender
    (the connection is over); `give_up` when a write failed or stalled."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        fast_socket: socket.socket | None,
        *,
        stall_timeout_s: float,
        give_up: GiveUp,
        gone: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._fast_socket = fast_socket
        self._stall_timeout_s = stall_timeout_s
        self._give_up = give_up
        self._gone = gone
        self.outbox_send, self._outbox = trio.open_memory_channel[bytes](WRITE_QUEUE)
        self.unwritten = 0
        """Writes handed to the writer and not finished: a frame may go straight out only at 0."""
        self._last_words: list[bytes] = []
        """A close frame that found the queue full, and what came after it: written after the rest."""

    async def send(self, data: bytes) -> None:
        """Write the frame `data` at once if nothing waits before it (plain TCP), else queue it."""
        if self._fast_socket is not None and self.unwritten == 0:
            rest = self._send_now(self._fast_socket, data)
            if rest is not data:  # all or part of it went (or the connection broke)
                if rest:  # the rest of a frame begun on the wire: queued at once, never cancelled
                    self.queue_nowait(rest)
                await trio.lowlevel.checkpoint()
                return
        await self._queue(data)

    async def _queue(self, data: bytes) -> None:
        """Hand `data` to the writer, waiting for room (a cancelled wait queues nothing)."""
        self.unwritten += 1
        try:
            await self.outbox_send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # the writer gave up or ended
            self.unwritten -= 1
            self._gone()
        except BaseException:
            self.unwritten -= 1
            raise

    def queue_last(self, data: bytes) -> None:
        """Queue a close frame behind everything queued, even when the queue is full: the writer
        then writes it after the rest (a slow peer that catches up still learns why it was closed)."""
        if self.outbox_send.statistics().current_buffer_used < WRITE_QUEUE:
            self.queue_nowait(data)
        else:
            self.unwritten += 1
            self._last_words.append(data)

    def queue_nowait(self, data: bytes) -> None:
        """Queue `data` without waiting; a full queue gives the connection up."""
        if self._last_words:  # behind a close frame that found the queue full (the protocol's EOF, say)
            self.unwritten += 1
            self._last_words.append(data)
            return
        self.unwritten += 1
        try:
            self.outbox_send.send_nowait(data)
        except trio.WouldBlock:
            self.unwritten -= 1
            self._give_up("the write queue is full", False)
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # the writer gave up or ended
            self.unwritten -= 1
            self._gone()

    def _send_now(self, sock: socket.socket, data: bytes) -> bytes:
        """Write what the socket takes without waiting; what is left for the writer (b"": all of it
        went, or the connection broke)."""
        try:
            sent = sock.send(data)
        except BlockingIOError:
            return data
        except OSError as error:
            self._give_up("the connection broke", error.errno == errno.ETIMEDOUT)
            return b""
        return data[sent:]

    async def run(self) -> None:
        """Write queued data in order until the queue is closed (`end`) or the peer stalls; then
        the close frame if it found the queue full."""
        async with self._outbox:
            async for data in self._outbox:
                if not await self._write(data):
                    return
        for data in self._last_words:
            if not await self._write(data):
                return

    def end(self) -> None:
        """Nothing more is queued: the writer ends once it has written what is."""
        self.outbox_send.close()

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
                    self._give_up("the connection broke", timed_out)
                    return False
        finally:
            self.unwritten -= 1
        if stalled.cancelled_caught:
            self._give_up(f"it took no data for {self._stall_timeout_s:g} s", True)
            return False
        return True

    async def _send_eof(self) -> None:
        try:
            await self._stream.send_eof()  # type: ignore[attr-defined]
        except (AttributeError, trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass  # TLS streams have no half-close; the close below ends them


class _LastFrame:
    text: str | None = None
    frame = b""


def text_frame(text: str) -> bytes:
    """A server's frame of the text message `text` (no extensions: the same bytes for every peer).
    A result fanned out to a call's subscribers is one `str` object: it is framed once."""
    if text is not _LastFrame.text:
        _LastFrame.frame = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])
        _LastFrame.text = text
    return _LastFrame.frame
