"""When a call's reader next needs to read its Twilio socket. No IO; time is passed in.

The mixer works a window at a time, so reading a Twilio socket whenever a frame arrives (every
20 ms, per track) wakes the reader several times a window for nothing the mixer can use yet, and
on Trio a wake costs more than the work a frame brings. Twilio sends audio in real time, so when a
call's next window will be complete is predictable: the window that ends at `T` seconds of the
stream was complete at `offset + T` on our clock, where `offset` is how far the stream runs
behind our clock (the network and Twilio's own buffering). The pacer learns that offset from each
window the reader completes and says when to read next: at the earliest moment the next window can
be complete. The reader sleeps through the frames in between and takes them in one read.

It never holds a window back: it uses the *smallest* offset among the last `REMEMBERED` windows, so
a window that comes with that delay or a larger one finds the reader already reading (as without
the pacer: it reads frames as they come until the window is complete). Only a window that comes
earlier than every recent one waits, for the difference, and then the smaller offset is learnt.
What the pacer does delay, by up to a window, is what the reader notices between windows: a `mark`
or `dtmf` message, `stop`, the socket closing.
"""

from __future__ import annotations

from collections import deque

REMEMBERED = 16
"""Windows whose offsets are remembered: a path that got slower is followed after this many
windows, a faster one at once."""
EARLY_S = 0.002
"""Read this much before the predicted moment: timers fire up to about a millisecond late, and
Twilio's timestamps are whole milliseconds."""


class ReadPacer:
    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("the window must be longer than 0 s")
        self.window_s = window_s
        self._offsets: deque[float] = deque(maxlen=REMEMBERED)

    def window_done(self, now: float, timeline_s: float) -> float:
        """The reader completed the windows up to `timeline_s` (seconds of the stream) at `now`;
        returns when to read next (the earliest the next window can be complete)."""
        self._offsets.append(now - timeline_s)
        return min(self._offsets) + timeline_s + self.window_s - EARLY_S
