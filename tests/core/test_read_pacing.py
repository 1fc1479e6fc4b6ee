import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from callscribe.core.read_pacing import EARLY_S, JITTER_SHARE, REMEMBERED, TOLERANCE_S, UNPACED, ReadPacer


def done(pacer: ReadPacer, now: float, received_to: float, next_due: float, *, after_sleep: bool = False) -> float:
    return pacer.window_done(now, received_to, next_due, after_sleep=after_sleep)


def test_the_next_read_is_when_the_audio_that_completes_the_next_window_can_be_there() -> None:
    # Audio up to 0.1 s of the stream was read at 10.25 s: the stream runs 10.15 s behind our
    # clock, so audio up to 0.2 s (the next window) can be there at 10.35 s at the earliest.
    assert done(ReadPacer(), 10.25, 0.1, 0.2) == pytest.approx(10.35 - EARLY_S)


def test_a_late_window_moves_the_next_read_earlier_not_later() -> None:
    pacer = ReadPacer()
    done(pacer, 10.25, 0.1, 0.2)
    # The next window came 30 ms late (network jitter): the one after it may come on time again,
    # and on a path that jitters the reader wakes earlier by a share of the spread.
    assert done(pacer, 10.38, 0.2, 0.3) == pytest.approx(10.45 - EARLY_S - 0.03 * JITTER_SHARE)


def test_a_window_read_right_after_a_sleep_is_no_measurement_and_the_next_is_read_as_it_comes() -> None:
    pacer = ReadPacer()
    done(pacer, 10.25, 0.1, 0.2)
    # The reader woke at 10.348 and found the window complete: it may have come at 10.30, or
    # earlier. Read the next one as its frames come, and measure it.
    assert done(pacer, 10.348, 0.2, 0.3, after_sleep=True) == UNPACED
    assert done(pacer, 10.40, 0.3, 0.4) == UNPACED  # 50 ms earlier than before: settling
    # Settled: paced again, from the smallest delay (less half the spread: 50 ms).
    assert done(pacer, 10.50, 0.4, 0.5) == pytest.approx(10.60 - EARLY_S - 0.05 * JITTER_SHARE)


def test_a_stream_ahead_of_real_time_is_never_paced() -> None:
    pacer = ReadPacer()
    done(pacer, 0.13, 0.1, 0.2)
    for n in range(2, 30):  # 1.5x real time: every window comes 33 ms earlier than the last
        assert done(pacer, 0.03 + n * 0.1 / 1.5, n * 0.1, (n + 1) * 0.1) == UNPACED


def test_clock_drift_well_under_the_tolerance_keeps_the_pacing() -> None:
    pacer = ReadPacer()
    for n in range(1, 200):  # Twilio's clock 100 ppm fast: 10 us earlier every window
        next_read = done(pacer, 5 + n * 0.1 * (1 - 1e-4), n * 0.1, (n + 1) * 0.1)
        assert next_read != UNPACED


def test_a_path_that_got_slower_is_followed_after_the_remembered_windows() -> None:
    pacer = ReadPacer()
    done(pacer, 10.2, 0.1, 0.2)
    for n in range(2, REMEMBERED + 2):  # from the second window on, 50 ms later than the first
        next_read = done(pacer, 10.15 + 0.1 * n, 0.1 * n, 0.1 * (n + 1))
    assert next_read == pytest.approx(10.15 + 0.1 * (REMEMBERED + 2) - EARLY_S)


@given(
    base_delay_s=st.floats(0, 5),
    extra_delays_s=st.lists(st.floats(0, 0.5), min_size=1, max_size=80),
    next_due_s=st.sampled_from([0.02, 0.1, 0.14, 0.25]),
)
@example(base_delay_s=0.0, extra_delays_s=[0.005, 0.0], next_due_s=0.02)  # exactly at the tolerance, after rounding
def test_the_reader_is_never_told_to_sleep_past_what_the_smallest_recent_delay_allows(
    base_delay_s: float, extra_delays_s: list[float], next_due_s: float
) -> None:
    """Whatever the network does, the next read is when the next window's audio would be there with
    the smallest delay among the remembered windows, less the margins, and pacing is given up only
    for a window that came earlier than all of them."""
    pacer = ReadPacer()
    delays: list[float] = []
    for n, extra in enumerate(extra_delays_s, start=1):
        received_to = n * 0.1
        delay = (received_to + base_delay_s + extra) - received_to  # as the pacer sees it, rounding included
        smallest_before = min(delays[-REMEMBERED:], default=delay)
        delays.append(delay)
        next_read = done(pacer, received_to + delay, received_to, received_to + next_due_s)
        if delay < smallest_before - TOLERANCE_S:
            assert next_read == UNPACED
        else:
            remembered = delays[-REMEMBERED:]
            spread = max(remembered) - min(remembered)
            expected = received_to + next_due_s + min(remembered) - EARLY_S - spread * JITTER_SHARE
            assert next_read == pytest.approx(expected)
