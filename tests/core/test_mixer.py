"""The mixer: alignment, padding, hold-back bound, flush, and properties over arbitrary input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.mixer import SAMPLES_PER_MS, Mixer, WindowGate

FRAME = 160  # 20 ms


def tone(byte: int, n: int = FRAME) -> bytes:
    return bytes([byte]) * n


def channel(stream: bytes, index: int, channels: int) -> bytes:
    return stream[index::channels]


def collect(mixer: Mixer, *, flush: bool = False) -> list[bytes]:
    out = list(mixer.windows())
    if flush:
        out += list(mixer.flush())
    return out


def test_mono_passthrough_in_windows() -> None:
    mixer = Mixer(1, window_ms=100)
    audio = bytes(range(256)) * 10  # 2560 bytes = 320 ms
    out: list[bytes] = []
    for i in range(0, len(audio), FRAME):
        mixer.add(0, i // SAMPLES_PER_MS, audio[i : i + FRAME])
        out += mixer.windows()
    assert [len(w) for w in out] == [800, 800, 800]
    out += mixer.flush()
    assert len(out[-1]) == 2560 - 2400
    assert b"".join(out) == audio
    assert mixer.padded == [0] and mixer.dropped == [0]


def test_stereo_interleaves_inbound_on_channel_zero() -> None:
    mixer = Mixer(2, window_ms=20)
    mixer.add(0, 0, tone(0x11))
    assert collect(mixer) == []  # waits for the other track (within jitter)
    mixer.add(1, 0, tone(0x22))
    (window,) = collect(mixer)
    assert len(window) == 2 * FRAME
    assert channel(window, 0, 2) == tone(0x11)
    assert channel(window, 1, 2) == tone(0x22)
    assert window[:4] == bytes([0x11, 0x22, 0x11, 0x22])


def test_gap_is_padded_with_silence_of_exact_length() -> None:
    mixer = Mixer(1, window_ms=20)
    mixer.add(0, 0, tone(1))
    mixer.add(0, 80, tone(2))  # frames at 20, 40, 60 ms were lost
    out = b"".join(collect(mixer, flush=True))
    assert out == tone(1) + b"\xff" * (3 * FRAME) + tone(2)
    assert mixer.padded == [3 * FRAME]


def test_late_first_media_is_preceded_by_silence() -> None:
    mixer = Mixer(1, window_ms=20)
    mixer.add(0, 500, tone(7))
    out = b"".join(collect(mixer, flush=True))
    assert out == b"\xff" * 4000 + tone(7)


def test_millisecond_rounding_is_not_a_gap() -> None:
    mixer = Mixer(1, window_ms=20)
    mixer.add(0, 0, tone(1, 159))
    mixer.add(0, 20, tone(2))  # 1 sample later than contiguous: rounding, not a gap
    mixer.add(0, 39, tone(3))  # 7 samples early: still contiguous
    out = b"".join(collect(mixer, flush=True))
    assert out == tone(1, 159) + tone(2) + tone(3)


def test_repeated_and_backwards_timestamps_never_duplicate_audio() -> None:
    mixer = Mixer(1, window_ms=20)
    mixer.add(0, 0, tone(1))
    mixer.add(0, 20, tone(2))
    mixer.add(0, 20, tone(3))  # same timestamp again: fully overlaps, dropped
    mixer.add(0, 30, tone(4))  # overlaps 10 ms of the previous frame: only the new half is kept
    mixer.add(0, 0, tone(5))  # far backwards: dropped
    out = b"".join(collect(mixer, flush=True))
    assert out == tone(1) + tone(2) + tone(4, 80)
    assert mixer.dropped == [FRAME + 80 + FRAME]


def test_huge_timestamp_jump_resyncs_instead_of_allocating() -> None:
    mixer = Mixer(1, window_ms=20, max_gap_ms=1000)
    mixer.add(0, 0, tone(1))
    mixer.add(0, 10**12, tone(2))
    out = b"".join(collect(mixer, flush=True))
    assert out == tone(1) + tone(2)
    assert mixer.resyncs == 1


def test_silent_track_holds_the_other_back_at_most_window_plus_jitter() -> None:
    mixer = Mixer(2, window_ms=100, jitter_ms=40)
    emitted_at: list[int] = []
    for n in range(20):  # inbound only, outbound never arrives
        mixer.add(0, n * 20, tone(n))
        if list(mixer.windows()):
            emitted_at.append((n + 1) * 20)  # ms of inbound audio received when a window came out
    # The first window (100 ms) comes out once 140 ms are buffered: window + jitter.
    assert emitted_at[0] == 140
    assert max(mixer.buffered(0), mixer.buffered(1)) < (100 + 40) * SAMPLES_PER_MS
    assert mixer.padded[1] == mixer.head
    assert mixer.padded[0] == 0


def test_outbound_starting_late_lines_up_with_inbound() -> None:
    mixer = Mixer(2, window_ms=20, jitter_ms=20)
    out: list[bytes] = []
    for n in range(10):
        mixer.add(0, n * 20, tone(0x10 + n))
        if n >= 5:
            mixer.add(1, n * 20, tone(0x80 + n))
        out += mixer.windows()
    out += mixer.flush()
    stream = b"".join(out)
    inbound, outbound = channel(stream, 0, 2), channel(stream, 1, 2)
    assert inbound == b"".join(tone(0x10 + n) for n in range(10))
    assert outbound == b"\xff" * (5 * FRAME) + b"".join(tone(0x80 + n) for n in range(5, 10))


def test_flush_pads_the_shorter_track_and_emits_the_partial_window() -> None:
    mixer = Mixer(2, window_ms=100)
    mixer.add(0, 0, tone(1))
    mixer.add(0, 20, tone(1))
    mixer.add(1, 0, tone(2))
    assert collect(mixer) == []
    (last,) = list(mixer.flush())
    assert len(last) == 2 * 2 * FRAME
    assert channel(last, 1, 2) == tone(2) + b"\xff" * FRAME
    assert list(mixer.flush()) == []


def test_window_bounds_are_enforced() -> None:
    with pytest.raises(ValueError, match=r"20\.\.250"):
        Mixer(1, window_ms=10)
    with pytest.raises(ValueError):
        Mixer(1, window_ms=400)
    with pytest.raises(ValueError):
        Mixer(0)


# -- properties ------------------------------------------------------------------------------

frames = st.lists(
    st.tuples(
        st.integers(0, 1),  # channel
        st.integers(0, 3000),  # timestamp ms
        st.binary(min_size=1, max_size=400),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(frames=frames, window_ms=st.integers(20, 250), jitter_ms=st.integers(0, 100))
def test_any_input_gives_aligned_equal_channels_and_conserves_bytes(
    frames: list[tuple[int, int, bytes]], window_ms: int, jitter_ms: int
) -> None:
    mixer = Mixer(2, window_ms=window_ms, jitter_ms=jitter_ms)
    out: list[bytes] = []
    for ch, ts, payload in frames:
        mixer.add(ch, ts, payload)
        out += mixer.windows()
    full = list(out)
    out += mixer.flush()
    window = window_ms * SAMPLES_PER_MS
    assert all(len(w) == 2 * window for w in full)  # every window before the flush is exactly one window
    assert all(0 < len(w) <= 2 * window and len(w) % 2 == 0 for w in out)
    total = sum(len(w) for w in out) // 2
    assert total == mixer.head
    for ch in (0, 1):
        # every sample emitted is either received audio or inserted silence; nothing is invented or doubled
        assert mixer.received[ch] - mixer.dropped[ch] + mixer.padded[ch] == total
        assert mixer.dropped[ch] >= 0 and mixer.padded[ch] >= 0


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(min_size=1, max_size=320), min_size=1, max_size=50), window_ms=st.integers(20, 250))
def test_contiguous_audio_of_any_chunk_sizes_comes_out_unchanged(chunks: list[bytes], window_ms: int) -> None:
    mixer = Mixer(1, window_ms=window_ms)
    out: list[bytes] = []
    position = 0
    for chunk in chunks:
        mixer.add(0, position // SAMPLES_PER_MS, chunk)  # Twilio's whole-millisecond timestamps
        out += mixer.windows()
        position += len(chunk)
    out += mixer.flush()
    assert b"".join(out) == b"".join(chunks)
    assert mixer.padded == [0] and mixer.dropped == [0]


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=16, max_size=320), min_size=2, max_size=50),
    lost=st.sets(st.integers(1, 48)),
)
def test_lost_chunks_become_silence_and_every_other_chunk_keeps_its_place(chunks: list[bytes], lost: set[int]) -> None:
    mixer = Mixer(1, window_ms=20)
    out: list[bytes] = []
    placed: list[tuple[int, bytes]] = []
    position = 0
    for index, chunk in enumerate(chunks):
        if index not in lost:
            mixer.add(0, position // SAMPLES_PER_MS, chunk)
            out += mixer.windows()
            placed.append((position, chunk))
        position += len(chunk)
    out += mixer.flush()
    got = b"".join(out)
    assert mixer.dropped == [0]
    for true_position, chunk in placed:
        # Each chunk sits where its timestamp says, give or take the sub-millisecond rounding.
        assert any(
            got[q : q + len(chunk)] == chunk
            for q in range(max(0, true_position - SAMPLES_PER_MS + 1), true_position + 1)
        ), (true_position, len(got))
    last_position, last_chunk = placed[-1]
    assert last_position - SAMPLES_PER_MS < len(got) - len(last_chunk) <= last_position


frames_with_jumps = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.one_of(st.integers(0, 3000), st.integers(0, 60_000)),  # now and then a clock jump
        st.binary(min_size=1, max_size=400),
    ),
    max_size=80,
)


def in_reads(frames: list[tuple[int, int, bytes]], sizes: list[int]) -> list[list[tuple[int, int, bytes]]]:
    """`frames` cut into socket reads of the given sizes (repeated as needed)."""
    reads, position, size = [], 0, 0
    while position < len(frames):
        count = sizes[size % len(sizes)]
        reads.append(frames[position : position + count])
        position, size = position + count, size + 1
    return reads


@settings(max_examples=500, deadline=None)
@given(
    frames=frames_with_jumps,
    sizes=st.lists(st.integers(1, 5), min_size=1),
    window_ms=st.integers(20, 250),
    jitter_ms=st.integers(0, 100),
    max_gap_ms=st.sampled_from([10_000, 500]),
)
def test_handing_chunks_over_only_when_the_gate_says_delays_no_window(
    frames: list[tuple[int, int, bytes]], sizes: list[int], window_ms: int, jitter_ms: int, max_gap_ms: int
) -> None:
    """Chunks come in socket reads. Mixing every read at once, and holding reads back until the gate
    says a window is due, give the same windows after the same reads."""
    options = {"window_ms": window_ms, "jitter_ms": jitter_ms, "max_gap_ms": max_gap_ms}
    every_read, gated, gate = Mixer(2, **options), Mixer(2, **options), WindowGate(2, **options)
    expected: list[tuple[int, bytes]] = []
    got: list[tuple[int, bytes]] = []
    held: list[tuple[int, int, bytes]] = []
    for number, read in enumerate(in_reads(frames, sizes)):
        for ch, ts, payload in read:
            every_read.add(ch, ts, payload)
            gate.add(ch, ts, len(payload))
        expected += [(number, window) for window in every_read.windows()]
        held += read
        if gate.due():
            for ch, ts, payload in held:
                gated.add(ch, ts, payload)
            held.clear()
            got += [(number, window) for window in gated.windows()]
    assert got == expected
    for ch, ts, payload in held:
        gated.add(ch, ts, payload)
    assert list(gated.flush()) == list(every_read.flush())


def _feed_mono(mixer: Mixer, timestamps: list[int]) -> bytes:
    out = bytearray()
    for ts in timestamps:
        mixer.add(0, ts, bytes([ts // 20 % 251]) * 160)
        for w in mixer.windows():
            out += w
    for w in mixer.flush():
        out += w
    return bytes(out)


def test_mixer_one_clock_jump_is_counted_once() -> None:
    """One jump of Twilio's clock (60 s) followed by 1 s of ordinary frames: `resyncs` (the metric
    callscribe_twilio_timestamp_jumps_total) is 1 (every frame after the jump used to count)."""
    mixer = Mixer(1)
    _feed_mono(mixer, [20 * n for n in range(50)] + [60_000 + 20 * n for n in range(50)])
    assert mixer.resyncs == 1


def test_mixer_after_a_clock_jump_a_later_gap_is_still_padded() -> None:
    """After the jump the timeline must go on from the new anchor: a later 400 ms gap in the
    timestamps (frames lost) is padded with silence as it is without the jump. (Without the new
    anchor every later frame's gap stayed > max_gap: gaps were not padded, overlaps not dropped.)"""
    before = [20 * n for n in range(50)]
    after = [20 * n for n in range(50, 100) if not 60 <= n < 80]  # 400 ms of frames lost
    without_jump = Mixer(1)
    _feed_mono(without_jump, before + after)
    assert without_jump.padded[0] == 400 * 8
    with_jump = Mixer(1)
    _feed_mono(with_jump, before + [60_000 + ts for ts in after])
    assert with_jump.padded[0] == 400 * 8


def test_a_clock_jump_back_is_taken_as_one_and_the_audio_goes_on() -> None:
    # 20 s of frames, then Twilio's clock back at 0: not 1 s of "overlap" to drop (it would drop
    # everything after), but a jump: the audio goes on where it was.
    mixer = Mixer(1)
    out = _feed_mono(mixer, [20 * n for n in range(1000)] + [20 * n for n in range(50)])
    assert mixer.resyncs == 1 and mixer.dropped[0] == 0
    assert len(out) == 1050 * 160


def test_the_gate_says_where_the_latest_audio_is_and_where_the_next_window_will_be_due() -> None:
    gate = WindowGate(2, window_ms=100, jitter_ms=40)
    for n in range(5):  # 100 ms of both tracks, the outbound frame of each pair a little behind
        gate.add(0, 20 * n, 160)
        gate.add(1, 20 * n, 160)
    gate.add(0, 100, 160)  # the inbound track is a frame ahead
    assert gate.due()
    assert gate.received_to == 120 * SAMPLES_PER_MS
    # Due again when the outbound track (20 ms behind) has the window: the inbound is then at 220 ms.
    assert gate.next_due_at == 220 * SAMPLES_PER_MS


def test_with_a_silent_track_the_next_window_is_due_a_jitter_allowance_after_its_end() -> None:
    gate = WindowGate(2, window_ms=100, jitter_ms=40)
    for n in range(7):  # 140 ms of the inbound track alone: cut by the jitter rule
        gate.add(0, 20 * n, 160)
    assert gate.due()
    assert gate.received_to == 140 * SAMPLES_PER_MS
    assert gate.next_due_at == 240 * SAMPLES_PER_MS


def test_the_gate_counts_the_chunks_the_next_window_needs() -> None:
    gate = WindowGate(2, window_ms=100, jitter_ms=40)
    assert gate.chunks_until_due(160) == 10  # five of each track
    gate.add(0, 0, 160)
    assert gate.chunks_until_due(160) == 9  # the inbound track is 20 ms ahead: four more, and five
    gate.add(1, 0, 160)
    assert gate.chunks_until_due(160) == 8
    for n in range(1, 7):  # the inbound track alone, until the jitter rule cuts a window at 140 ms
        gate.add(0, 20 * n, 160)
    assert gate.due()
    # The outbound track is now the jitter allowance behind: it may have stopped. The next window is
    # due when the inbound track is 240 ms in, five chunks on (the outbound counts for none).
    assert gate.chunks_until_due(160) == 5


def test_chunks_longer_than_the_jitter_allowance_can_bring_the_jitter_rule_first() -> None:
    gate = WindowGate(2, window_ms=21, jitter_ms=1)
    # inbound 0-20, outbound 0-20, inbound 20-40: 40 ms is past 21 + 1, due before the outbound track
    # has its 21 ms.
    assert gate.chunks_until_due(160) == 3


@settings(max_examples=500, deadline=None)
@given(
    before=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 12)), max_size=30),
    window_ms=st.integers(20, 250),
    jitter_ms=st.integers(0, 100),
    chunk_ms=st.sampled_from([10, 20, 30]),
    stopped=st.sampled_from([None, 0, 1]),
)
def test_the_next_window_never_comes_with_fewer_chunks_than_the_gate_counts(
    before: list[tuple[int, int]], window_ms: int, jitter_ms: int, chunk_ms: int, stopped: int | None
) -> None:
    """From any state, with the tracks going on in real time (chunks in time order, the track behind
    first) or the one behind stopping when it is the jitter allowance behind, the next window is never
    due after fewer chunks than the gate counted: a reader woken after that many is never late."""
    gate = WindowGate(2, window_ms=window_ms, jitter_ms=jitter_ms)
    chunk = chunk_ms * SAMPLES_PER_MS
    position = [0, 0]
    for track, count in before:  # each track some chunks ahead of the other, in turns
        for _ in range(count):
            gate.add(track, position[track], chunk)
            position[track] += chunk_ms
        gate.due()
    lengths = gate._lengths  # as the gate sees the tracks (a cut pads the one behind)
    counted = gate.chunks_until_due(chunk)
    sending = [0, 1]
    behind = lengths[1 - stopped] - lengths[stopped] if stopped is not None else 0
    if behind > 0 and behind >= jitter_ms * SAMPLES_PER_MS:
        sending = [1 - stopped]  # the track behind stops (one in step with the other that stops: see read pacing)
    added = 0
    while not gate.due():
        track = min(sending, key=lambda t: position[t])
        gate.add(track, position[track], chunk)
        position[track] += chunk_ms
        added += 1
        assert added <= 1000
    assert added >= counted


def test_two_tracks_in_step_are_counted_exactly() -> None:
    """Twilio's steady case (a frame of each track every 20 ms): the reader is woken by the very
    frame that completes each window, never one before it. (With a jitter allowance shorter than a
    frame the count can be low, which costs a read, never lateness.)"""
    for window_ms, jitter_ms in ((100, 40), (250, 40), (70, 40), (30, 40), (120, 20), (60, 100)):
        gate = WindowGate(2, window_ms=window_ms, jitter_ms=jitter_ms)
        counted, added = gate.chunks_until_due(160), 0
        for n in range(400):
            for track in (0, 1):
                gate.add(track, 20 * n, 160)
                added += 1
                if gate.due():
                    assert added == counted, (window_ms, jitter_ms, n)
                    counted, added = gate.chunks_until_due(160), 0


@settings(max_examples=500, deadline=None)
@given(
    before=st.lists(st.tuples(st.integers(0, 1), st.sampled_from([10, 20, 30, 40])), max_size=40),
    later=st.lists(st.sampled_from([10, 20, 30, 40]), min_size=1, max_size=8),
    window_ms=st.integers(20, 250),
    jitter_ms=st.integers(0, 100),
)
def test_counted_with_the_largest_chunk_so_far_chunks_of_mixed_sizes_are_never_late(
    before: list[tuple[int, int]], later: list[int], window_ms: int, jitter_ms: int
) -> None:
    """Chunks of several sizes (the stream takes any up to 1 s): counted with the largest so far,
    the next window never comes with fewer chunks no larger than that, in real time. (Counted with
    the latest chunk, a smaller one overcounts: the call's reader is then woken late.)"""
    gate = WindowGate(2, window_ms=window_ms, jitter_ms=jitter_ms)
    position, largest = [0, 0], 0
    for track, size_ms in before:
        gate.add(track, position[track], size_ms * SAMPLES_PER_MS)
        position[track] += size_ms
        largest = max(largest, size_ms)
        gate.due()
    if not largest:
        return
    counted = gate.chunks_until_due(largest * SAMPLES_PER_MS)
    sizes = [size for size in later if size <= largest] or [largest]
    added = 0
    while not gate.due():
        track = min((0, 1), key=lambda t: position[t])
        size_ms = sizes[added % len(sizes)]
        gate.add(track, position[track], size_ms * SAMPLES_PER_MS)
        position[track] += size_ms
        added += 1
        assert added <= 1000
    assert added >= counted


def test_a_pause_of_both_tracks_near_max_gap_keeps_the_tracks_aligned() -> None:
    """Both tracks fall silent (Twilio skips silent packets) for about `max_gap_ms`, the inbound
    track 100 ms after the outbound one. Twilio's tracks share one clock: whether the pause is taken
    as a clock jump or padded, both tracks must come back at the same place. (Judged per channel,
    the outbound gap was just over the limit and the inbound one just under: the outbound track
    was put 10 s before the inbound audio of the same moment, and then dropped as overlap.)"""
    mixer = Mixer(2, window_ms=100, jitter_ms=40, max_gap_ms=10_000)
    out = bytearray()

    def add(ch: int, ts: int, byte: int) -> None:
        mixer.add(ch, ts, tone(byte))
        for window in mixer.windows():
            out.extend(window)

    for ts in range(0, 1000, 20):
        add(0, ts, 0x10)
        add(1, ts, 0x20)
    for ts in range(1000, 1100, 20):  # the inbound track goes on 100 ms longer
        add(0, ts, 0x10)
    for ts in range(11_050, 12_050, 20):  # both come back ~10 s later, the outbound frame first
        add(1, ts, 0x40)
        add(0, ts, 0x30)
    out += b"".join(mixer.flush())
    inbound, outbound = channel(bytes(out), 0, 2), channel(bytes(out), 1, 2)
    assert outbound.count(0x40) == 50 * FRAME  # no audio dropped
    assert inbound.index(0x30) == outbound.index(0x40)  # the same moment at the same place


def test_a_track_starting_late_in_a_large_batch_is_placed_at_its_timestamp() -> None:
    """The outbound track starts 15 s into the call (a `<Dial>` answered late) and the mixer is given
    the first 16 s at once: the outbound audio belongs 15 s in, next to the inbound audio of the
    same moment, not at the start (its gap to its own empty buffer is no clock jump: the inbound
    track is already there)."""
    mixer = Mixer(2, window_ms=100, jitter_ms=40, max_gap_ms=10_000)
    for ts in range(0, 16_000, 20):
        mixer.add(0, ts, tone(0x30 if ts >= 15_000 else 0x10))
        if ts >= 15_000:
            mixer.add(1, ts, tone(0x40))
    out = b"".join(collect(mixer, flush=True))
    inbound, outbound = channel(out, 0, 2), channel(out, 1, 2)
    assert mixer.resyncs == 0
    assert inbound.index(0x30) == outbound.index(0x40) == 15_000 * SAMPLES_PER_MS
