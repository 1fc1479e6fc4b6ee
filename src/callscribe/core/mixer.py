"""Aligns a call's tracks on one timeline and cuts them into interleaved windows for Deepgram. No IO.

Audio is 8 kHz mu-law, one byte per sample, so a position on the timeline is a byte offset:
`timestamp_ms * 8`. Each channel keeps a buffer of audio that starts at `head`, the first sample not
yet emitted (shared by all channels). A chunk is placed where its timestamp says:

- within `ROUNDING_SAMPLES` of the channel's end: appended (Twilio's millisecond timestamps round);
- later than that: the gap is filled with mu-law silence (0xFF) of exactly that length, then the
  chunk is appended -- unless the chunk is more than `max_gap_ms` beyond the furthest channel's
  end (or more than that before its own channel's end), which is treated as a jump of the stream's
  clock: the chunk is placed at the furthest channel's end and `resyncs` is counted, so a hostile
  timestamp cannot make us allocate gigabytes of silence. Twilio's tracks share one clock, so a
  jump moves the timeline of every channel alike: tracks that pause together come back together
  whichever of them comes back first, and a track that starts late lands next to the audio the
  others have at its timestamp however much of it is buffered;
- earlier than the end (a repeated or backwards timestamp, or audio for a stretch that was already
  padded): the part that overlaps is dropped and counted. The timeline only moves forward, so
  audio is never duplicated and no length is ever negative.

A window (`window_ms` of every channel) is emitted as soon as every channel has it. The mix never
waits for a silent track for long: when one channel has a full window plus `jitter_ms` more
buffered, the lagging channels are padded with silence to a full window and it is emitted. So a
track that stops (or never starts, like the outbound leg before `<Dial>` connects) holds the other
back by at most one window plus the jitter allowance. `flush()` pads the channels to the same
length and emits what is left, the last window possibly shorter.

Interleaving: window byte `i * channels + c` is sample `i` of channel `c` (Deepgram's
`multichannel=true` layout); with one channel the window is the channel's audio unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

SAMPLES_PER_MS = 8
ROUNDING_SAMPLES = SAMPLES_PER_MS
"""Twilio timestamps are whole milliseconds: a chunk within 1 ms of where it is expected is contiguous."""

_NOTHING: Iterator[bytes] = iter(())
"""An exhausted iterator: what `windows()` returns when no window is ready (shared; it has no state)."""

MIN_WINDOW_MS = 20
MAX_WINDOW_MS = 250


class Mixer:
    def __init__(
        self,
        channels: int,
        *,
        window_ms: int = 100,
        jitter_ms: int = 40,
        max_gap_ms: int = 10_000,
    ) -> None:
        if channels < 1:
            raise ValueError("a mix needs at least one channel")
        if not MIN_WINDOW_MS <= window_ms <= MAX_WINDOW_MS:
            raise ValueError(f"window_ms must be {MIN_WINDOW_MS}..{MAX_WINDOW_MS}, not {window_ms}")
        if jitter_ms < 0 or max_gap_ms < 0:
            raise ValueError("jitter_ms and max_gap_ms must not be negative")
        self.channels = channels
        self.window = window_ms * SAMPLES_PER_MS
        self.jitter = jitter_ms * SAMPLES_PER_MS
        self.max_gap = max_gap_ms * SAMPLES_PER_MS
        self.head = 0
        self._buffers = [bytearray() for _ in range(channels)]
        self._out = bytearray(self.window * channels)
        self.received = [0] * channels
        """Payload bytes received per channel."""
        self.padded = [0] * channels
        """Silence bytes inserted per channel (gaps, late starts, held-back tracks, flush)."""
        self.dropped = [0] * channels
        """Payload bytes dropped per channel because they overlapped audio already placed."""
        self.resyncs = 0
        """Timestamp jumps beyond `max_gap_ms` (either way), taken as clock jumps: the chunk was
        placed at the furthest channel's end and every channel's later timestamps are read from there."""
        self._shift = 0  # samples to take off every channel's timestamps (clock jumps)

    def buffered(self, channel: int) -> int:
        """Samples of `channel` waiting to be emitted."""
        return len(self._buffers[channel])

    def add(self, channel: int, timestamp_ms: int, payload: bytes) -> None:
        """Place one chunk of `channel`'s audio at `timestamp_ms` on the call's timeline."""
        buffer = self._buffers[channel]
        self.received[channel] += len(payload)
        gap = timestamp_ms * SAMPLES_PER_MS - self._shift - (self.head + len(buffer))
        if -ROUNDING_SAMPLES <= gap <= ROUNDING_SAMPLES:
            buffer += payload
            return
        jump = _jump(gap, max(map(len, self._buffers)) - len(buffer), self.max_gap)
        if jump:
            self.resyncs += 1
            self._shift += jump
            gap -= jump
        pad, drop = _placement(gap, len(payload))
        self.padded[channel] += pad
        self.dropped[channel] += drop
        if pad:
            buffer.extend(b"\xff" * pad)
        if drop < len(payload):
            buffer += payload[drop:]

    def windows(self) -> Iterator[bytes]:
        """Emit every window that is ready now.

        Called after every chunk (100 times a second per call) and usually nothing is ready, so that
        case is answered from two lengths, with no generator made; ready windows are cut at once.
        """
        buffers = self._buffers
        if len(buffers) == 2:
            first, second = len(buffers[0]), len(buffers[1])
            shortest, longest = (first, second) if first <= second else (second, first)
        else:
            shortest, longest = min(map(len, buffers)), max(map(len, buffers))
        if not _due(shortest, longest, self.window, self.jitter):
            return _NOTHING
        return iter(list(self._ready()))

    def _ready(self) -> Iterator[bytes]:
        window = self.window
        buffers = self._buffers
        while True:
            shortest, longest = min(map(len, buffers)), max(map(len, buffers))
            if not _due(shortest, longest, window, self.jitter):
                return
            if shortest < window:
                self._pad_to(window)
            yield self._cut(window)

    def flush(self) -> Iterator[bytes]:
        """At call end: pad the channels to one length and emit everything, the last window short."""
        longest = max(map(len, self._buffers))
        self._pad_to(longest)
        while longest > 0:
            size = min(self.window, longest)
            yield self._cut(size)
            longest -= size

    def _pad_to(self, length: int) -> None:
        for channel, buffer in enumerate(self._buffers):
            missing = length - len(buffer)
            if missing > 0:
                buffer.extend(b"\xff" * missing)
                self.padded[channel] += missing

    def _cut(self, size: int) -> bytes:
        """Remove `size` samples from every channel and return them interleaved."""
        self.head += size
        buffers = self._buffers
        if self.channels == 1:
            window = bytes(buffers[0][:size])
            del buffers[0][:size]
            return window
        channels = self.channels
        out = self._out if size == self.window else bytearray(size * channels)
        for channel, buffer in enumerate(buffers):
            out[channel::channels] = buffer[:size]
            del buffer[:size]
        return bytes(out)


def _jump(gap: int, behind: int, max_gap: int) -> int:
    """A chunk starts `gap` samples after its channel's end, which is `behind` samples short of the
    furthest channel's end: the clock jump to take off every channel's timestamps from now on (0:
    none), which puts the chunk at the furthest channel's end. Shared by `Mixer` and `WindowGate`."""
    if gap - behind > max_gap or gap < -max_gap:
        return gap - behind
    return 0


def _placement(gap: int, size: int) -> tuple[int, int]:
    """Where a chunk of `size` samples lands when it starts `gap` samples after its channel's end:
    (silence to insert before it, samples to drop from its start). Shared by `Mixer` and `WindowGate`."""
    if gap > ROUNDING_SAMPLES:
        return gap, 0
    if gap < -ROUNDING_SAMPLES:
        return 0, min(-gap, size)
    return 0, 0


def _due(shortest: int, longest: int, window: int, jitter: int) -> bool:
    """A window can be cut: every channel has one, or one channel is a window plus the jitter ahead."""
    return shortest >= window or longest >= window + jitter


class WindowGate:
    """Knows, from chunk timestamps and sizes alone, when the `Mixer` fed the same chunks would have
    a window to emit.

    The call's reader uses it to hand chunks to the mixer's task once per window rather than once per
    socket read, without delaying any window: the gate keeps the mixer's channel lengths with the same
    arithmetic (`_placement`, `_due`), so it says `due()` exactly after the chunk that completes one.
    """

    def __init__(self, channels: int, *, window_ms: int = 100, jitter_ms: int = 40, max_gap_ms: int = 10_000) -> None:
        self.window = window_ms * SAMPLES_PER_MS
        self.jitter = jitter_ms * SAMPLES_PER_MS
        self.max_gap = max_gap_ms * SAMPLES_PER_MS
        self.head = 0
        self._lengths = [0] * channels
        self._shift = 0

    def add(self, channel: int, timestamp_ms: int, size: int) -> None:
        """The mixer will be given a chunk of `size` samples of `channel` at `timestamp_ms`."""
        length = self._lengths[channel]
        gap = timestamp_ms * SAMPLES_PER_MS - self._shift - (self.head + length)
        if -ROUNDING_SAMPLES <= gap <= ROUNDING_SAMPLES:
            self._lengths[channel] = length + size
            return
        jump = _jump(gap, max(self._lengths) - length, self.max_gap)
        self._shift += jump
        pad, drop = _placement(gap - jump, size)
        self._lengths[channel] = length + pad + max(0, size - drop)

    @property
    def received_to(self) -> int:
        """The timeline position (in samples) of the latest audio added, on any channel."""
        return self.head + max(self._lengths)

    @property
    def next_due_at(self) -> int:
        """Where `received_to` will be when the next window is due, if every channel goes on as it
        is: when the channel furthest behind has a window, or the one ahead a window plus the jitter
        allowance (a channel that sends nothing is left further behind every window: the second)."""
        lengths = self._lengths
        return self.head + self.window + min(max(lengths) - min(lengths), self.jitter)

    def chunks_until_due(self, chunk: int) -> int:
        """The fewest chunks of `chunk` samples after which the next window can be due, if the
        channels go on in real time (each sending its chunks in time order, the others' interleaved
        by time): a reader woken after that many is never woken after the window was due.

        While no channel is the jitter allowance behind the one ahead, that is the fewer of: every
        channel's chunks up to a window (every channel has one), and the one ahead's up to a window
        plus the jitter allowance with the chunks the others send before its last (the jitter rule).
        A channel further behind may have stopped, and counts for none."""
        lengths = self._lengths
        window = self.window
        ahead = max(lengths)
        ahead_needs = -(-max(0, window + self.jitter - ahead) // chunk)
        behind = ahead - min(lengths)
        if behind and behind >= self.jitter:
            return ahead_needs
        last_starts = ahead + (ahead_needs - 1) * chunk
        all_have_one = before_the_last = 0  # chunks until every channel has a window; until the one ahead's last
        for length in lengths:  # once a read: a plain loop costs less than sum() over generators
            if length < window:
                all_have_one -= (length - window) // chunk
            if length < last_starts:
                before_the_last += (last_starts - length) // chunk
        return min(all_have_one, before_the_last + 1)

    def due(self) -> bool:
        """Whether the chunks added so far complete at least one window the mixer has not cut yet
        (those windows are then taken as cut)."""
        lengths = self._lengths
        window = self.window
        cut = False
        while _due(min(lengths), max(lengths), window, self.jitter):
            self._lengths = lengths = [max(length, window) - window for length in lengths]
            self.head += window
            cut = True
        return cut
