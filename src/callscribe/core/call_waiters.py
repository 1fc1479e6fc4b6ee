"""Subscribers waiting for their calls to start (`/client?wait=SECONDS`): one process asks its hub
which calls are live once for all of them, soon after someone starts waiting, then less often, and
not at all while nobody waits. Each answer says which waiters it wakes."""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

WAIT_POLL_S = (0.05, 0.25)
"""While subscribers wait for their calls, the hub is asked this often (first, then at most)."""

W = TypeVar("W", bound=Hashable)


class WaitList(Generic[W]):
    """Who waits for which call, and when the hub is next to be asked (times are the caller's clock)."""

    def __init__(self, poll_s: tuple[float, float] = WAIT_POLL_S) -> None:
        self._first, self._most = poll_s
        self._call_of: dict[W, str] = {}
        self._by_call: dict[str, dict[W, None]] = {}
        self._unanswered: dict[W, None] = {}
        """Waiters no answer has reached yet."""
        self._last = -math.inf
        self._delay = self._first
        self._due = math.inf

    def __len__(self) -> int:
        return len(self._call_of)

    def add(self, waiter: W, call_sid: str, now: float) -> None:
        """`waiter` waits for `call_sid` from `now`: the next answer comes soon (not sooner than
        the first poll interval after the last one), then again more and more slowly."""
        self._call_of[waiter] = call_sid
        self._by_call.setdefault(call_sid, {})[waiter] = None
        self._unanswered[waiter] = None
        self._delay = self._first
        self._due = min(self._due, max(now, self._last + self._first))

    def remove(self, waiter: W) -> None:
        """`waiter` stopped waiting (it left, timed out, or was woken); nothing if it was not here."""
        call_sid = self._call_of.pop(waiter, None)
        if call_sid is None:
            return
        self._unanswered.pop(waiter, None)
        waiters = self._by_call[call_sid]
        del waiters[waiter]
        if not waiters:
            del self._by_call[call_sid]
        if not self._call_of:
            self._due = math.inf

    def next_poll(self) -> float | None:
        """When to ask the hub which calls are live; None while nobody waits."""
        return self._due if self._call_of else None

    def answered(self, live: Collection[str], now: float) -> tuple[list[W], list[W]]:
        """The hub answered `live` at `now`: the waiters whose calls are live (no longer waiting),
        and those the answer reached first that still wait."""
        started = [waiter for call_sid in self._by_call.keys() & set(live) for waiter in self._by_call[call_sid]]
        for waiter in started:
            self.remove(waiter)
        first = list(self._unanswered)
        self._unanswered.clear()
        self._polled(now)
        return started, first

    def started(self, call_sid: str) -> list[W]:
        """`call_sid` is live now (it registered on this process): its waiters, no longer waiting."""
        started = list(self._by_call.get(call_sid, ()))
        for waiter in started:
            self.remove(waiter)
        return started

    def failed(self, now: float) -> list[W]:
        """The hub could not answer: every waiter, none waiting any more."""
        everyone = list(self._call_of)
        for waiter in everyone:
            self.remove(waiter)
        self._polled(now)
        return everyone

    def _polled(self, now: float) -> None:
        self._last = now
        self._due = now + self._delay if self._call_of else math.inf
        self._delay = min(self._delay * 2, self._most)
