"""The waiting room of `/client?wait=`: one poll for every waiter, which waiters an answer wakes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.call_waiters import WaitList


def polls(waits: WaitList[str], until: float, live: tuple[str, ...] = ()) -> list[float]:
    """The times the list asks the hub at, answered `live` each time, up to `until`."""
    times: list[float] = []
    while (due := waits.next_poll()) is not None and due <= until and len(times) < 1000:
        times.append(due)
        waits.answered(live, due)
    return times


def test_nobody_waiting_means_no_poll() -> None:
    waits: WaitList[str] = WaitList()
    assert waits.next_poll() is None
    waits.add("a", "CA1", 3.0)
    waits.remove("a")
    assert waits.next_poll() is None and len(waits) == 0
    waits.remove("a")  # (twice: nothing)


def test_the_hub_is_asked_at_once_then_more_and_more_slowly() -> None:
    waits: WaitList[str] = WaitList((0.05, 0.25))
    waits.add("a", "CA1", 10.0)
    assert polls(waits, 11.0) == pytest.approx([10.0, 10.05, 10.15, 10.35, 10.6, 10.85])


def test_one_answer_serves_every_waiter() -> None:
    waits: WaitList[int] = WaitList((0.05, 0.25))
    for n in range(1000):
        waits.add(n, f"CA{n % 7}", 0.0)
    assert len(polls(waits, 2.0)) == 10  # at 0, .05, .15, .35, .6, .85, 1.1, 1.35, 1.6, 1.85
    assert len(waits) == 1000


def test_a_newcomer_is_answered_soon_even_when_the_poll_has_slowed_down() -> None:
    waits: WaitList[str] = WaitList((0.05, 0.25))
    waits.add("old", "CA1", 0.0)
    assert polls(waits, 5.0)[-1] == pytest.approx(4.85)
    waits.add("new", "CA2", 4.86)  # just after a poll: not at once, but within the first interval
    assert waits.next_poll() == pytest.approx(4.9)
    assert waits.answered((), 4.9) == ([], ["new"])
    assert waits.next_poll() == pytest.approx(4.95)  # and quickly again, for the newcomer


def test_an_answer_wakes_the_waiters_of_live_calls_only() -> None:
    waits: WaitList[str] = WaitList()
    waits.add("a1", "CA1", 0.0)
    waits.add("a2", "CA1", 0.0)
    waits.add("b", "CA2", 0.0)
    started, first = waits.answered(["CA1", "CA9"], 0.0)
    assert sorted(started) == ["a1", "a2"]
    assert first == ["b"]  # told once that its call is not live yet
    assert waits.answered(["CA9"], 0.05) == ([], [])
    assert waits.answered(["CA2"], 0.15) == (["b"], [])
    assert waits.next_poll() is None


def test_a_call_that_registers_wakes_its_waiters_at_once() -> None:
    waits: WaitList[str] = WaitList()
    waits.add("a", "CA1", 0.0)
    waits.add("b", "CA2", 0.0)
    assert waits.started("CA1") == ["a"]
    assert waits.started("CA1") == []
    assert len(waits) == 1 and waits.next_poll() == 0.0


def test_a_failed_poll_reaches_every_waiter() -> None:
    waits: WaitList[str] = WaitList((0.05, 0.25))
    waits.add("a", "CA1", 0.0)
    waits.add("b", "CA2", 0.0)
    assert sorted(waits.failed(1.0)) == ["a", "b"]
    assert waits.next_poll() is None
    waits.add("c", "CA1", 1.01)  # not hammering a hub that just failed
    assert waits.next_poll() == pytest.approx(1.05)


@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "remove", "answer", "start", "fail"]), st.integers(0, 5), st.integers(0, 2))
    )
)
def test_every_waiter_is_woken_once_and_polls_are_spaced(ops: list[tuple[str, int, int]]) -> None:
    waits: WaitList[int] = WaitList((0.05, 0.25))
    waiting: dict[int, str] = {}
    now, last_poll = 0.0, -math.inf
    for op, waiter, call in ops:
        now += 0.01
        if op == "add" and waiter not in waiting:
            waiting[waiter] = f"CA{call}"
            waits.add(waiter, f"CA{call}", now)
        elif op == "remove":
            waiting.pop(waiter, None)
            waits.remove(waiter)
        elif op == "answer" and (due := waits.next_poll()) is not None:
            now = max(now, due)
            assert now - last_poll >= 0.05 - 1e-9
            started, _ = waits.answered([f"CA{call}"], now)
            last_poll = now
            assert sorted(started) == sorted(w for w, sid in waiting.items() if sid == f"CA{call}")
            for w in started:
                del waiting[w]
        elif op == "start":
            started = waits.started(f"CA{call}")
            assert sorted(started) == sorted(w for w, sid in waiting.items() if sid == f"CA{call}")
            for w in started:
                del waiting[w]
        elif op == "fail" and waiting:
            assert sorted(waits.failed(now)) == sorted(waiting)
            waiting.clear()
            last_poll = now
        assert len(waits) == len(waiting)
        assert (waits.next_poll() is None) == (not waiting)
