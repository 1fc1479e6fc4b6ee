"""The call's read pacing against reading every frame as it comes: each scenario runs on MockClock
with the paced reader, with a reader woken by bytes (as a plain TCP socket wakes it, `wake_after`)
and with a reader that ignores both (as the reader did before pacing); the audio must be the same
and no window later than core/read_pacing.py and `Call._read_twilio` say it may be."""

from __future__ import annotations

import json
import math
import random
from typing import Literal

import pytest
import trio

from callscribe.core.read_pacing import EARLY_S, framed, low_water
from callscribe.server.websocket import READ_BUFFER
from server.test_call import STOP, Harness, ScriptedDeepgram, twilio_media, twilio_start

Reader = Literal["unpaced", "paced", "bytes"]

Schedule = list[tuple[float, str]]
"""(arrival time in seconds from the call's start, Twilio frame), in arrival order."""


def real_time(track: str, first_ms: int, count: int, *, latency_s: float = 0.05, byte: int = 0x11) -> Schedule:
    """Frames of `track` from `first_ms` on, each arriving `latency_s` after its 20 ms ended."""
    return [
        ((first_ms + 20 * n + 20) / 1000 + latency_s, twilio_media(track, first_ms + 20 * n, bytes([byte]) * 160))
        for n in range(count)
    ]


def in_order(schedule: Schedule) -> Schedule:
    """A TCP stream delivers in order: no frame arrives before the one sent before it."""
    out: Schedule = []
    latest = 0.0
    for at, frame in sorted(schedule, key=_sent_order):
        latest = max(latest, at)
        out.append((latest, frame))
    return out


def _sent_order(item: tuple[float, str]) -> tuple[int, int]:
    media = json.loads(item[1])["media"]
    return int(media["timestamp"]), 0 if media["track"] == "inbound" else 1


class ByteWoken:
    """The harness's Twilio frames as a plain TCP socket gives them to a reader that asked to be
    woken once `wake_after`'s bytes are there (SO_RCVLOWAT) or at its latest time: everything
    queued by then, in one read."""

    def __init__(self, h: Harness) -> None:
        self._frames = h._twilio_receive
        self._wake: tuple[int, float] | None = None

    def wake_after(self, messages: int, size: int, latest: float) -> None:
        self._wake = (low_water(messages, size, READ_BUFFER), latest)

    async def read(self, not_before: float = 0.0) -> list[str | None]:
        (wanted, latest), self._wake = self._wake or (1, math.inf), None
        frames: list[str | None] = []
        queued = 0
        while not frames or (queued < wanted and trio.current_time() < latest):
            with trio.move_on_at(latest if frames or trio.current_time() < latest else math.inf):
                frame = await self._frames.receive()
                frames.append(frame)
                queued += framed(len(frame or ""))
        while True:
            try:
                frames.append(self._frames.receive_nowait())
            except trio.WouldBlock:
                return frames


async def _run(
    schedule: Schedule, tracks: list[str], *, reader: Reader, window_ms: int, **settings: object
) -> tuple[list[float], bytes, int]:
    h = Harness(ScriptedDeepgram(channels=len(tracks)), window_ms=window_ms, **settings)
    read = h._read
    reads = 0
    if reader == "bytes":
        socket = ByteWoken(h)
        read = socket.read
        h.call._wake_after = socket.wake_after

    async def counted(not_before: float = 0.0) -> list[str | None]:
        nonlocal reads
        reads += 1
        return await read(not_before if reader == "paced" else 0.0)

    h.call._receive = counted
    with trio.fail_after(600):
        async with h.running(subscribed=False):
            base = trio.current_time()
            h.feed(twilio_start(tracks))
            for at, frame in schedule:
                await trio.sleep_until(base + at)
                h.feed(frame)
            await trio.sleep(1)
            h.feed(STOP)
    connection = h.deepgram.connections[0]
    sent_at = [at - base for m, at in zip(connection.sent, connection.sent_at, strict=True) if isinstance(m, bytes)]
    return sent_at, b"".join(h.deepgram.audio), reads


async def later_windows(
    schedule: Schedule, tracks: list[str], window_ms: int = 100, reader: Reader = "paced", **settings: object
) -> tuple[list[tuple[int, float, float]], float]:
    """(window number, how much later it left with the `reader`, when it left) for every window that
    left later than with the unpaced reader, and the reader's reads as a share of the unpaced one's."""
    before, audio_before, reads_before = await _run(schedule, tracks, reader="unpaced", window_ms=window_ms, **settings)
    after, audio_after, reads_after = await _run(schedule, tracks, reader=reader, window_ms=window_ms, **settings)
    assert audio_after == audio_before and len(after) == len(before)
    later = [(n, round(a - b, 4), a) for n, (a, b) in enumerate(zip(after, before, strict=True)) if a > b + 1e-9]
    return later, reads_after / reads_before


async def test_a_steady_stream_is_never_later_and_read_about_twice_a_window(autojump_clock: trio.abc.Clock) -> None:
    schedule = in_order(real_time("inbound", 0, 150) + real_time("outbound", 0, 150, byte=0x22))
    later, reads = await later_windows(schedule, ["inbound", "outbound"])
    assert not later
    assert reads < 0.45  # a read a pair before: five a window; now two (the wake, the last pair)


async def test_a_window_length_not_a_multiple_of_20_ms_is_never_later(autojump_clock: trio.abc.Clock) -> None:
    for window_ms in (30, 50, 70, 250):
        schedule = in_order(real_time("inbound", 0, 100) + real_time("outbound", 0, 100, byte=0x22))
        later, _ = await later_windows(schedule, ["inbound", "outbound"], window_ms=window_ms)
        assert not later, f"window {window_ms} ms: {later}"


async def test_timestamps_jumping_back_and_forward_are_never_later(autojump_clock: trio.abc.Clock) -> None:
    # Both tracks jump 500 ms back at 1 s (the overlap is dropped), then 3 s forward at 2 s (padded).
    def jumped(track: str, byte: int) -> Schedule:
        out: Schedule = []
        for n in range(150):
            sent_ms = 20 * n
            stamp = sent_ms - 500 if sent_ms >= 1000 else sent_ms
            stamp = stamp + 3000 if sent_ms >= 2000 else stamp
            out.append(((sent_ms + 20) / 1000 + 0.05, twilio_media(track, stamp, bytes([byte]) * 160)))
        return out

    schedule = sorted(jumped("inbound", 0x11) + jumped("outbound", 0x22), key=lambda item: item[0])
    later, _ = await later_windows(schedule, ["inbound", "outbound"])
    assert not later


async def test_a_sender_faster_than_real_time_is_held_back_once_at_most(autojump_clock: trio.abc.Clock) -> None:
    # 1.5x real time. The first paced read (after one window, the rate cannot be known) sleeps
    # through the second window; from then on every window comes earlier than the last, and the
    # reader reads as frames come. (Deepgram is taken as fast as it comes: its own pace, at most
    # replay_rate x real time, would hide the reader's.)
    schedule = [(0.03 + (20 * n + 20) / 1500, twilio_media("inbound", 20 * n, b"\x11" * 160)) for n in range(300)]
    later, _ = await later_windows(schedule, ["inbound"], replay_rate=100.0)
    assert [n for n, _, _ in later] in ([], [1]), later


async def test_when_the_outbound_track_starts_late_only_the_window_it_completes_first_is_later(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Until the outbound leg starts (1 s in), windows are cut when the inbound track is a window
    # plus the jitter allowance ahead; the reader counted on that for the window the outbound
    # track then completes sooner. From the next window on it counts on both tracks.
    schedule = in_order(real_time("inbound", 0, 150) + real_time("outbound", 1000, 100, byte=0x22))
    later, _ = await later_windows(schedule, ["inbound", "outbound"])
    assert len(later) <= 1 and all(by <= 0.04 for _, by, _ in later), later


async def test_when_the_network_delay_drops_only_the_window_slept_through_is_later(
    autojump_clock: trio.abc.Clock,
) -> None:
    # 2 s of audio come 120 ms later than the rest (a congested path); then the path clears: the
    # reader sleeps through the windows that come in the meantime, and catches up in one read.
    slow = [(at + 0.12, f) for at, f in real_time("inbound", 0, 100, latency_s=0.03)]
    slow += [(at + 0.12, f) for at, f in real_time("outbound", 0, 100, latency_s=0.03, byte=0x22)]
    fast = real_time("inbound", 2000, 100, latency_s=0.03) + real_time("outbound", 2000, 100, latency_s=0.03, byte=0x22)
    later, _ = await later_windows(in_order(slow + fast), ["inbound", "outbound"])
    assert len({left for _, _, left in later}) <= 1 and all(by <= 0.12 for _, by, _ in later), later


async def test_after_a_burst_at_the_start_only_the_first_paced_window_is_later(autojump_clock: trio.abc.Clock) -> None:
    # Twilio delivers the first 160 ms with the start (buffered while the socket opened).
    schedule = [(max(at, 0.2), frame) for at, frame in real_time("inbound", 0, 100, latency_s=0.03)]
    later, _ = await later_windows(in_order(schedule), ["inbound"])
    assert len({left for _, _, left in later}) <= 1, later


async def test_a_jittery_sender_loses_little(autojump_clock: trio.abc.Clock) -> None:
    # 0-60 ms of jitter on every frame: a window whose audio comes with less delay than every one
    # remembered is slept through (by up to the difference: the first windows, before there is
    # much to remember), and the reader wakes earlier by half the spread of the delays it saw.
    rng = random.Random(7)
    schedule = [(at + rng.uniform(0, 0.06), f) for at, f in real_time("inbound", 0, 250, latency_s=0.03)]
    schedule += [(at + rng.uniform(0, 0.06), f) for at, f in real_time("outbound", 0, 250, latency_s=0.03, byte=0x22)]
    later, reads = await later_windows(in_order(schedule), ["inbound", "outbound"])
    # Of 50 windows, with jitter up to 60 ms: how many depends on the order in which trio wakes
    # tasks due at the same instant of the mock clock (a read and a frame at once), which trio
    # shuffles on purpose: 2-7 in 40 runs, 10 once in CI. None is later by more than 30 ms.
    assert len(later) <= 12 and all(by <= 0.03 for _, by, _ in later), later
    assert reads < 0.8


def track_stops(window_ms: int = 100) -> Schedule:
    """Both tracks, then the outbound one stops at 1 s (a leg put on hold, say)."""
    return in_order(real_time("inbound", 0, 150) + real_time("outbound", 0, 50, byte=0x22))


def jittery() -> Schedule:
    rng = random.Random(7)
    schedule = [(at + rng.uniform(0, 0.06), f) for at, f in real_time("inbound", 0, 250, latency_s=0.03)]
    schedule += [(at + rng.uniform(0, 0.06), f) for at, f in real_time("outbound", 0, 250, latency_s=0.03, byte=0x22)]
    return in_order(schedule)


def two_chunk_sizes() -> Schedule:
    """The inbound track in chunks of 40 and 20 ms by turns (the stream takes any size up to 1 s)."""
    schedule: Schedule = []
    at_ms = 0
    for n in range(100):
        size_ms = 20 if n % 2 else 40
        schedule.append(((at_ms + size_ms) / 1000 + 0.05, twilio_media("inbound", at_ms, b"\x11" * (8 * size_ms))))
        at_ms += size_ms
    return in_order(schedule + real_time("outbound", 0, 150, byte=0x22))


def skips_frames(track: str, tracks: list[str]) -> Schedule:
    """Every track in real time, but `track` sends no frames for 40 ms at 1.04 s (its timestamps jump)."""
    schedule: Schedule = []
    for name, byte in zip(tracks, (0x11, 0x22), strict=False):  # one track or two
        frames = real_time(name, 0, 150, byte=byte)
        schedule += [f for n, f in enumerate(frames) if name != track or n not in (52, 53)]
    return in_order(schedule)


BOTH = ["inbound", "outbound"]
SCENARIOS: dict[str, tuple[Schedule, list[str], dict[str, object]]] = {
    "steady": (in_order(real_time("inbound", 0, 150) + real_time("outbound", 0, 150, byte=0x22)), BOTH, {}),
    "window 70 ms": (
        in_order(real_time("inbound", 0, 100) + real_time("outbound", 0, 100, byte=0x22)),
        BOTH,
        {"window_ms": 70},
    ),
    "window 250 ms": (
        in_order(real_time("inbound", 0, 100) + real_time("outbound", 0, 100, byte=0x22)),
        BOTH,
        {"window_ms": 250},
    ),
    "inbound only": (real_time("inbound", 0, 150), ["inbound"], {}),
    "outbound starts late": (
        in_order(real_time("inbound", 0, 150) + real_time("outbound", 1000, 100, byte=0x22)),
        BOTH,
        {},
    ),
    "path clears": (
        in_order(
            [(at + 0.12, f) for at, f in real_time("inbound", 0, 100, latency_s=0.03)]
            + [(at + 0.12, f) for at, f in real_time("outbound", 0, 100, latency_s=0.03, byte=0x22)]
            + real_time("inbound", 2000, 100, latency_s=0.03)
            + real_time("outbound", 2000, 100, latency_s=0.03, byte=0x22)
        ),
        BOTH,
        {},
    ),
    "burst at the start": (
        in_order([(max(at, 0.2), frame) for at, frame in real_time("inbound", 0, 100, latency_s=0.03)]),
        ["inbound"],
        {},
    ),
    "faster than real time": (
        [(0.03 + (20 * n + 20) / 1500, twilio_media("inbound", 20 * n, b"\x11" * 160)) for n in range(300)],
        ["inbound"],
        {"replay_rate": 100.0},
    ),
    "jittery": (jittery(), BOTH, {}),
    # The count of frames cannot see a track stop: the next window is due when the other one is the
    # jitter allowance ahead, with fewer frames than the reader waited for. Read at the latest
    # time (when they were due in real time, and half the jitter allowance), then as frames come.
    "outbound stops": (track_stops(), BOTH, {}),
    "chunks of two sizes": (two_chunk_sizes(), BOTH, {}),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_a_reader_woken_by_bytes_is_never_later(scenario: str, autojump_clock: trio.abc.Clock) -> None:
    # The socket wakes the reader once the frames that complete the next window can all be there
    # (`WindowGate.chunks_until_due`, never more than it takes): whatever the network does, the
    # window leaves with the read that brings its last frame, as when every frame is read.
    schedule, tracks, settings = SCENARIOS[scenario]
    later, reads = await later_windows(schedule, tracks, reader="bytes", **settings)  # type: ignore[arg-type]
    assert not later
    if scenario == "steady":
        assert reads < 0.25  # a read a pair before: five a window; now one


@pytest.mark.parametrize("tracks", [["inbound"], BOTH], ids=["one track", "two tracks"])
async def test_a_window_whose_track_skips_frames_leaves_at_most_half_the_jitter_allowance_later(
    tracks: list[str], autojump_clock: trio.abc.Clock
) -> None:
    # Timestamps that jump 40 ms (frames Twilio did not send): the mixer pads the gap, so the
    # window completes with fewer frames than `chunks_until_due` counted. Read per frame it leaves
    # with the frame after the gap; woken by bytes, at the latest time: when that frame was due in
    # real time, plus half the jitter allowance and EARLY_S (`latest_read`).
    later, _ = await later_windows(skips_frames(tracks[-1], tracks), tracks, reader="bytes")
    assert len(later) == 1 and later[0][1] <= 0.02 + EARLY_S + 1e-9, later


async def test_the_read_that_ends_the_stream_leaves_no_wake_for_the_close(autojump_clock: trio.abc.Clock) -> None:
    # After `stop` (or a fatal frame) the socket is read once more, by close() for the peer's close
    # frame: a wake asked for the next window's frames would hold that read until its latest time.
    h = Harness(ScriptedDeepgram(channels=2))
    socket = ByteWoken(h)
    h.call._receive = socket.read
    h.call._wake_after = socket.wake_after
    schedule = in_order(real_time("inbound", 0, 12) + real_time("outbound", 0, 12, byte=0x22))
    with trio.fail_after(60):
        async with h.running(subscribed=False):
            base = trio.current_time()
            h.feed(twilio_start(BOTH))
            for at, frame in schedule[:-1]:
                await trio.sleep_until(base + at)
                h.feed(frame)
            h.feed(schedule[-1][1], STOP)  # the last frame and stop in one read, mid-window
            await h.call.finished.wait()
            assert socket._wake is None
