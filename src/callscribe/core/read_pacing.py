"""When a call's reader next needs to read its Twilio socket. No IO; time is passed in.

(A plain TCP socket wakes the reader once the bytes of the next window's frames have come, with
`latest_read` as its bound, see `Call._read_twilio`; the pacer is for sockets that cannot: TLS.)

The mixer works a window at a time, so reading a Twilio socket whenever a frame arrives (every
20 ms, per track) wakes the reader several times a window for nothing the mixer can use yet, and
on Trio a wake costs more than the work a frame brings. Twilio sends audio in real time, so when a
call's next window will be complete is predictable: audio up to stream time `T` arrives at
`delay + T` on our clock, where `delay` is how far the stream runs behind our clock (the network
and Twilio's own buffering). The pacer learns that delay from the windows the reader completes
(the moment of the read that completed one against the latest audio it brought) and says when to
read next: when the audio that completes the next window can first be there (the `WindowGate`
knows where that is). The reader sleeps through the frames in between and takes them in one read.

A window that comes with the smallest delay among the last `REMEMBERED` windows, or a larger
one, finds the reader awake (it wakes `EARLY_S` before, and earlier by `JITTER_SHARE` of the
spread of those delays, then reads frames as they come until the window is complete), so it
leaves no later than without the pacer. What can be later:

- a window that comes earlier than all of those: the reader slept through its arrival. It cannot
  tell when it came, so the next window is read as it comes (unpaced) and measured;
- after a window that came more than `TOLERANCE_S` earlier than all of those (a faster path, a
  sender ahead of real time), the next window is read as it comes too, until the delay settles;
  a sender faster than real time is never paced;
- a window whose completing audio comes sooner than the gate foresaw (a track that was missing
  starts: the gate counted on the jitter allowance): once.

And what the reader notices between windows -- a `mark` or `dtmf` message, `stop`, the socket
closing -- is noticed up to a window later.

`low_water` is what such a wake on bytes waits for: the bytes on the wire of the frames that
complete the next window.
"""

from __future__ import annotations

from collections import deque

REMEMBERED = 50
"""Windows whose delays are remembered (5 s of 100 ms windows): the smallest of them is used, so a
path that got slower is followed after this many windows (until then the reader wakes early and
reads frames as they come, which costs wakes, not latency)."""
EARLY_S = 0.002
"""Wake this much before the predicted moment: timers fire up to about a millisecond late, and
Twilio's timestamps are whole milliseconds."""
TOLERANCE_S = 0.005
"""A delay this much smaller than every remembered one means the stream got earlier."""
JITTER_SHARE = 0.25
"""The reader wakes earlier by this share of the spread of the remembered delays: on a jittery path
a window often comes with less delay than the few before it, and waking for it costs less than
sleeping through it (a steady path has no spread, and loses nothing)."""
UNPACED = 0.0
"""What `window_done` returns for "read as frames come" (a time long past)."""


class ReadPacer:
    def __init__(self) -> None:
        self._delays: deque[float] = deque(maxlen=REMEMBERED)

    def window_done(self, now: float, received_to_s: float, next_due_s: float, *, after_sleep: bool) -> float:
        """The reader completed a window at `now` with the read that brought the stream's audio up
        to `received_to_s` (stream seconds); `after_sleep`: that read was the first after sleeping
        until a time this returned. The next window will be complete once audio up to `next_due_s`
        is there. Returns when to read next (`UNPACED`: at once, as frames come)."""
        if after_sleep:  # it may have been complete long before the reader woke: not a measurement
            return UNPACED
        delay = now - received_to_s
        earlier = bool(self._delays) and delay < min(self._delays) - TOLERANCE_S
        self._delays.append(delay)
        if earlier:
            return UNPACED
        smallest = min(self._delays)
        spread = max(self._delays) - smallest
        return smallest + next_due_s - EARLY_S - spread * JITTER_SHARE


def latest_read(window_done_at: float, received_to_s: float, next_due_s: float, jitter_ms: int) -> float:
    """For a reader woken by bytes (the socket holds its wake until the next window's frames can
    all be there): when to read whatever came if they have not. A window was completed at
    `window_done_at` by audio up to `received_to_s` (stream seconds); in real time the audio up to
    `next_due_s` comes `next_due_s - received_to_s` later. Half the jitter allowance on top (and
    `EARLY_S` for the timer) is the network's leeway: a window whose frames come later than that
    is read as they come (a read or two more, never later). What the count of frames cannot
    foresee -- a track that skipped frames (the mixer pads the gap, so fewer frames complete the
    window), a track that stopped, a `stop` or `mark` on their own -- is read by then."""
    return window_done_at + (next_due_s - received_to_s) + jitter_ms / 2000 + EARLY_S


# -- what a wake on bytes waits for (plain TCP: the socket's SO_RCVLOWAT, see server/websocket.py) --

MAX_HEADER = 14
"""The longest header of a client's WebSocket frame: 2 bytes, 8 of extended length, 4 of masking key."""


def framed(size: int) -> int:
    """Bytes on the wire of a client's message of `size` bytes in one frame: header, masking key, data."""
    return size + (2 if size < 126 else 4 if size < 65536 else 10) + 4


def low_water(messages: int, size: int, read_buffer: int) -> int:
    """Bytes on the wire by which `messages` client messages of at least `size` bytes each have
    come, but for half of the last (so a message or two a little longer or shorter than `size`
    changes nothing), and at most what one read of `read_buffer` bytes takes."""
    one = framed(size)
    return max(1, min(messages * one - one // 2, read_buffer - one))
