"""`/client?wait=SECONDS` with many subscribers waiting: one poll of the hub for all of them, a call
of this process waking its waiters at once, a hub error and a time-out told to each."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from callscribe.core.access import ALLOWED
from callscribe.core.call_waiters import WAIT_POLL_S
from callscribe.server.app import Server
from callscribe.server.call_settings import CallSettings
from callscribe.server.hub import HubUnavailable, InMemoryHub

WAITERS = 300


class CountingHub(InMemoryHub):
    """An in-memory hub that counts `active_calls` (but the call feed's, once a second) and can be
    made unavailable."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0
        self.down = False

    async def active_calls(self) -> list[str]:
        if "CallFeed" not in trio.lowlevel.current_task().name:
            self.asked += 1
        if self.down:
            raise HubUnavailable("Redis is unavailable")
        return await super().active_calls()


@dataclass(eq=False)
class FakeSocket:
    """A subscriber that names `call_sid`, then reads until it is told to leave (`gone`)."""

    call_sid: str
    query: str
    peer: str = "peer"
    stalled: bool = False
    sent: list[str] = field(default_factory=list)
    closed: tuple[int, str] | None = None
    gone: trio.Event = field(default_factory=trio.Event)
    named: bool = False

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def receive(self) -> str:
        if not self.named:
            self.named = True
            return self.call_sid
        await self.drain()
        raise trio.EndOfChannel

    async def drain(self) -> None:
        await self.gone.wait()

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, CountingHub, trio.Nursery]]:
    hub = CountingHub()
    server = Server(CallSettings(), hub)
    await nursery.start(server.supervisor.run)
    yield server, hub, nursery


async def start_waiting(server: Server, nursery: trio.Nursery, sockets: list[FakeSocket]) -> None:
    for ws in sockets:
        nursery.start_soon(server.subscribers.serve, ws, ALLOWED)
    await trio.testing.wait_all_tasks_blocked()
    assert all(ws.named and ws.closed is None for ws in sockets)


def error_of(ws: FakeSocket) -> str:
    message = json.loads(ws.sent[-1])
    assert message["type"] == "Error"
    return str(message["message"])


async def test_many_waiters_share_one_poll_of_the_hub(
    served: tuple[Server, CountingHub, trio.Nursery], autojump_clock: trio.abc.Clock
) -> None:
    server, hub, nursery = served
    sockets = [FakeSocket("CAlater", "wait=10", f"peer{n}") for n in range(WAITERS)]
    await start_waiting(server, nursery, sockets)
    await trio.sleep(1.0)  # past the first quick polls
    asked, started = hub.asked, trio.current_time()
    await trio.sleep(5.0)
    assert hub.asked - asked <= 5.0 / WAIT_POLL_S[1] + 1  # one poll each 0.25 s for all of them, not one each
    assert trio.current_time() - started == pytest.approx(5.0)
    await server.hub.register_call("CAlater")
    with trio.fail_after(1):
        while server.hub.stats()["subscribers"] < WAITERS:
            await trio.sleep(0.01)
    await server.hub.unregister_call("CAlater")
    await trio.testing.wait_all_tasks_blocked()
    assert {ws.closed for ws in sockets} == {(1000, "call ended")}
    asked = hub.asked
    await trio.sleep(10.0)
    assert hub.asked == asked  # nobody waits: nothing polls


async def test_a_call_of_this_process_wakes_its_waiters_at_once(
    served: tuple[Server, CountingHub, trio.Nursery], autojump_clock: trio.abc.Clock
) -> None:
    server, hub, nursery = served
    sockets = [FakeSocket("CAsoon", "wait=10", f"peer{n}") for n in range(10)]
    await start_waiting(server, nursery, sockets)
    await trio.sleep(3.0)
    registered_at, asked = trio.current_time(), hub.asked
    await server.hub.register_call("CAsoon")
    await trio.testing.wait_all_tasks_blocked()
    assert server.hub.stats()["subscribers"] == 10  # without waiting for the next poll
    assert trio.current_time() == registered_at and hub.asked == asked
    await server.hub.publish("CAsoon", '{"type": "Results"}')
    await trio.testing.wait_all_tasks_blocked()
    assert all(ws.sent[-1] == '{"type": "Results"}' for ws in sockets)
    for ws in sockets:
        ws.gone.set()


async def test_a_hub_error_reaches_every_waiter(
    served: tuple[Server, CountingHub, trio.Nursery], autojump_clock: trio.abc.Clock
) -> None:
    server, hub, nursery = served
    sockets = [FakeSocket(f"CA{n % 3}", "wait=10", f"peer{n}") for n in range(20)]
    await start_waiting(server, nursery, sockets)
    await trio.sleep(1.0)
    hub.down = True
    with trio.fail_after(1):
        while any(ws.closed is None for ws in sockets):
            await trio.sleep(0.01)
    assert {ws.closed for ws in sockets} == {(1013, "hub unavailable, try again later")}
    assert {error_of(ws) for ws in sockets} == {"subscriptions are unavailable: Redis is unavailable"}


async def test_waiters_that_time_out_or_leave_stop_waiting_and_the_others_go_on(
    served: tuple[Server, CountingHub, trio.Nursery], autojump_clock: trio.abc.Clock
) -> None:
    server, hub, nursery = served
    short = [FakeSocket("CAx", "wait=1.5", f"short{n}") for n in range(5)]
    leaving = [FakeSocket("CAx", "wait=10", f"leaving{n}") for n in range(5)]
    staying = FakeSocket("CAx", "wait=10", "staying")
    await start_waiting(server, nursery, [*short, *leaving, staying])
    await trio.sleep(1.0)
    for ws in leaving:
        ws.gone.set()
    await trio.sleep(1.0)
    assert {ws.closed for ws in short} == {(1008, "unknown callSid")}
    assert {error_of(ws) for ws in short} == {"call 'CAx' did not start within 1.5 s"}
    assert {ws.closed for ws in leaving} == {None}  # gone: nothing said to them
    assert len(server.supervisor.waiters) == 1
    asked = hub.asked
    await trio.sleep(1.0)
    assert hub.asked - asked in (4, 5)  # the one left is still polled for, each 0.25 s
    await server.hub.register_call("CAx")
    await trio.testing.wait_all_tasks_blocked()
    assert server.hub.stats()["subscribers"] == 1 and len(server.supervisor.waiters) == 0
    staying.gone.set()
