"""Audio kept for Deepgram until its final results cover it, and the pace of replaying it. No IO.

Deepgram's final results say which audio is done: a final for channel c with `start` s and
`duration` d covers that channel up to s + d (in the connection's time; plus the connection's offset
in call time). Everything after the point that every channel's finals have reached is still "in
flight": if the connection drops, the transcript of that audio would be lost. `AudioBacklog` keeps
those windows (bounded) and, after a reconnect, hands them out again from the first one not yet
covered. The new connection's time 0 is that window's position in the call, which is the offset to
add to everything it says. A connection's audio stays the call's from there without a hole, since
Deepgram's times count what it got: audio that leaves a full backlog before it went out (the
connection fell behind) is sent as silence of the same length, and counted as lost. When Deepgram is
given up on, `abandon` counts what it never got as lost.

`Pacer` keeps the replay at most `rate` x real time (Deepgram asks for at most 1.25x) after an
initial burst of `burst_s` seconds of audio. The burst is there so that live audio, which arrives
in real time and a window at a time, is never delayed.
"""

from __future__ import annotations

from collections import deque

BYTES_PER_SECOND_PER_CHANNEL = 8000
SILENCE = b"\xff"
"""Mu-law silence, in place of audio a full backlog dropped before it went out."""


class AudioBacklog:
    def __init__(self, channels: int, max_seconds: float = 60.0) -> None:
        self.bytes_per_second = BYTES_PER_SECOND_PER_CHANNEL * channels
        self.channels = channels
        self.max_bytes = int(max_seconds * self.bytes_per_second)
        self._windows: deque[tuple[int, bytes]] = deque()  # (offset in the call's interleaved audio, window)
        self._held = 0
        self.end = 0
        """Interleaved bytes of call audio appended so far."""
        self.sent_until = 0
        """Offset up to which audio went out on the current connection."""
        self.lost = 0
        """Bytes that never went to Deepgram: dropped from a full backlog, or abandoned."""
        self.abandoned = False
        self._final_end = [0.0] * channels
        self._in_flight: int | None = None
        """The offset of the window `next_unsent` handed out and `mark_sent` has not confirmed."""
        self._in_flight_dropped = 0
        """The bytes of that window, if a full backlog dropped it meanwhile: lost unless it went out."""

    def append(self, window: bytes) -> None:
        if self.abandoned:
            self.end += len(window)
            self.sent_until = self.end
            self.lost += len(window)
            return
        self._windows.append((self.end, window))
        self.end += len(window)
        self._held += len(window)
        while self._held > self.max_bytes and self._windows:
            offset, oldest = self._windows.popleft()
            self._held -= len(oldest)
            if offset == self._in_flight:  # it goes out all the same (`mark_sent`), or is lost
                self._in_flight_dropped = len(oldest)
            elif offset + len(oldest) > self.sent_until:  # not sent: silence goes out in its place
                self.lost += offset + len(oldest) - max(offset, self.sent_until)

    @property
    def _kept_from(self) -> int:
        """The offset of the oldest audio still held: everything before it left the backlog."""
        return self._windows[0][0] if self._windows else self.end

    def next_unsent(self) -> bytes | None:
        """The next window to send on the current connection (call `mark_sent` once it went out)."""
        if self.sent_until < (kept_from := self._kept_from):
            self._in_flight = self.sent_until
            return SILENCE * min(kept_from - self.sent_until, self.bytes_per_second // 10)
        for offset, window in self._windows:
            if offset >= self.sent_until:
                self._in_flight = offset
                return window
        return None

    def mark_sent(self, window: bytes) -> None:
        """The window `next_unsent` gave went out (it may have left a full backlog meanwhile)."""
        if self._in_flight is not None:
            self.sent_until = max(self.sent_until, self._in_flight + len(window))
            self._in_flight = None
            self._in_flight_dropped = 0

    def _forget_in_flight(self) -> int:
        """The connection ended with a window handed out and not confirmed: lost if it left the backlog."""
        dropped, self._in_flight, self._in_flight_dropped = self._in_flight_dropped, None, 0
        self.lost += dropped
        return dropped

    @property
    def unsent_seconds(self) -> float:
        return (self.end - self.sent_until) / self.bytes_per_second

    def acknowledge(self, channel: int, covered_until_s: float) -> None:
        """A final result covers `channel`'s audio up to call time `covered_until_s`."""
        if 0 <= channel < self.channels:
            self._final_end[channel] = max(self._final_end[channel], covered_until_s)
        covered = round(min(self._final_end) * self.bytes_per_second)
        while self._windows:
            offset, window = self._windows[0]
            if offset + len(window) > covered or offset + len(window) > self.sent_until:
                break
            self._windows.popleft()
            self._held -= len(window)

    def abandon(self) -> float:
        """Deepgram will get no more audio: what was not sent, and whatever is appended from now on,
        is counted as lost. Returns the seconds of audio abandoned now."""
        unsent = self.end - max(self.sent_until, self._kept_from)  # (what a full backlog dropped is counted)
        self.lost += unsent
        unsent += self._forget_in_flight()
        self.sent_until = self.end
        self._windows.clear()
        self._held = 0
        self.abandoned = True
        return unsent / self.bytes_per_second

    def rewind(self) -> float:
        """A new connection starts: resend from the first uncovered window. Returns its call time (s)."""
        start = self._kept_from
        self.sent_until = start
        self._forget_in_flight()
        return start / self.bytes_per_second


class Pacer:
    """A token bucket: at most `rate` x real time after an initial burst of `burst_s` seconds of audio.

    From any send (the first included), the audio sent in the next T seconds, that send included,
    is at most `burst_s + rate * T` seconds, provided no single send is longer than `burst_s`.
    """

    def __init__(self, rate: float = 1.25, burst_s: float = 0.5) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._credit = burst_s
        self._at: float | None = None

    def delay(self, now: float, audio_s: float) -> float:
        """How long to wait before sending `audio_s` seconds of audio at `now`; then consider it sent."""
        if self._at is not None:
            self._credit = min(self.burst_s, self._credit + (now - self._at) * self.rate)
        self._at = now
        wait = max(0.0, (audio_s - self._credit) / self.rate)
        self._credit -= audio_s
        self._at = now + wait
        self._credit += wait * self.rate
        return wait
