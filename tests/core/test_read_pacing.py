import pytest
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.read_pacing import EARLY_S, REMEMBERED, ReadPacer


def test_the_next_read_is_when_the_next_window_can_be_complete() -> None:
    pacer = ReadPacer(0.1)
    # The window ending at 0.1 s of stream audio was complete at 10.25 s: the stream runs 10.15 s
    # behind our clock, so the window ending at 0.2 s can be complete at 10.35 s at the earliest.
    assert pacer.window_done(10.25, 0.1) == pytest.approx(10.35 - EARLY_S)


def test_a_late_window_does_not_move_the_next_read_later() -> None:
    pacer = ReadPacer(0.1)
    pacer.window_done(10.25, 0.1)
    # The next window came 30 ms late (network jitter): the one after it may come on time again.
    assert pacer.window_done(10.38, 0.2) == pytest.approx(10.45 - EARLY_S)


def test_an_earlier_window_teaches_the_smaller_delay_at_once() -> None:
    pacer = ReadPacer(0.1)
    pacer.window_done(10.25, 0.1)
    assert pacer.window_done(10.33, 0.2) == pytest.approx(10.43 - EARLY_S)


def test_a_path_that_got_slower_is_followed_after_the_remembered_windows() -> None:
    pacer = ReadPacer(0.1)
    pacer.window_done(10.25, 0.1)
    for n in range(2, REMEMBERED + 2):  # from the second window on, every window is 50 ms later
        next_read = pacer.window_done(10.2 + 0.05 + 0.1 * n, 0.1 * n)
    assert next_read == pytest.approx(10.2 + 0.05 + 0.1 * (REMEMBERED + 2) - EARLY_S)


def test_a_window_must_have_a_length() -> None:
    with pytest.raises(ValueError, match="longer than 0"):
        ReadPacer(0)


@given(
    window_s=st.sampled_from([0.02, 0.1, 0.25]),
    base_delay_s=st.floats(0, 5),
    extra_delays_s=st.lists(st.floats(0, 0.5), min_size=1, max_size=60),
)
def test_no_window_is_read_later_than_it_would_be_at_the_smallest_delay_seen(
    window_s: float, base_delay_s: float, extra_delays_s: list[float]
) -> None:
    """Whatever the network does, the reader is told to look again no later than the moment the next
    window would be complete if it came with the smallest delay among the remembered windows: a
    window that comes with that delay or a larger one is never waited for by the pacer."""
    pacer = ReadPacer(window_s)
    delays: list[float] = []
    for n, extra in enumerate(extra_delays_s, start=1):
        timeline = n * window_s
        delay = base_delay_s + extra
        delays.append(delay)
        next_read = pacer.window_done(timeline + delay, timeline)
        smallest = min(delays[-REMEMBERED:])
        assert next_read <= timeline + window_s + smallest - EARLY_S + 1e-9
        assert next_read >= timeline + window_s + base_delay_s - EARLY_S - 1e-9
