"""`/client?wait=SECONDS`: the subscribers of one process waiting for their calls to start. One task
(the supervisor runs it beside the hub) asks the hub which calls are live for all of them, as often
as core/call_waiters.py says, and not at all while nobody waits; a call that registers on this
process wakes its waiters at once."""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from callscribe.core.call_waiters import WAIT_POLL_S, WaitList
from callscribe.server.hub import Hub, HubUnavailable


class _Waiter:
    __slots__ = ("answered", "done", "error", "started")

    def __init__(self) -> None:
        self.answered = trio.Event()
        """The first answer came (or the end)."""
        self.done = trio.Event()
        self.started = False
        self.error: HubUnavailable | None = None

    def end(self, started: bool = False, error: HubUnavailable | None = None) -> None:
        self.started, self.error = started, error
        self.answered.set()
        self.done.set()


class CallWaiters:
    """One process's subscribers waiting for calls to start, and the one poll of the hub for them."""

    def __init__(self, hub: Hub, poll_s: tuple[float, float] = WAIT_POLL_S) -> None:
        self.hub = hub
        self._list: WaitList[_Waiter] = WaitList(poll_s)
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._list)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the hub while anyone waits; until cancelled."""
        task_status.started()
        while True:
            due = self._list.next_poll()
            if due is None or due > trio.current_time():
                self._changed = trio.Event()
                with trio.move_on_at(math.inf if due is None else due):
                    await self._changed.wait()
                continue
            try:
                live = await self.hub.active_calls()
            except HubUnavailable as error:
                for waiter in self._list.failed(trio.current_time()):
                    waiter.end(error=error)
                continue
            started, first = self._list.answered(live, trio.current_time())
            for waiter in started:
                waiter.end(started=True)
            for waiter in first:
                waiter.answered.set()

    def registered(self, call_sid: str) -> None:
        """A call of this process registered with the hub: its waiters need not wait for a poll."""
        for waiter in self._list.started(call_sid):
            waiter.end(started=True)

    async def wait(self, call_sid: str, seconds: float, waiting: Callable[[], object]) -> bool:
        """True once `call_sid` is live; False if it is not within `seconds` of the first answer
        (`waiting` is called when the first answer does not have it). Raises `HubUnavailable`."""
        waiter = _Waiter()
        self._list.add(waiter, call_sid, trio.current_time())
        self._changed.set()
        try:
            await waiter.answered.wait()
            if not waiter.done.is_set():
                waiting()
                with trio.move_on_after(seconds):
                    await waiter.done.wait()
        finally:
            self._list.remove(waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.started
