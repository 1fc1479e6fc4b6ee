"""No memory is kept per finished call: Python heap before and after many calls through the real server.

The soak benchmark watches the server's RSS for minutes; RSS also moves with the allocator and the
kernel's socket buffers. This test asks the sharper question with tracemalloc: after a warm-up,
does the heap grow with the number of calls that have come and gone? A call keeps ~200 KB while it
is live (docs/performance.md); anything it leaves behind -- a registry entry, a hub queue, a
subscriber, a task, a log record -- shows up here multiplied by the number of calls.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from callscribe.core.audio import generate_tone
from callscribe.server import store_sqlite
from callscribe.server.store import StoreSettings
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, run_call
from conftest import RunningServer, Subscriber, start_server, subscribe

WARM_UP_CALLS = 12
MEASURED_CALLS = 48
CONCURRENT = 6
LEAK_BUDGET_PER_CALL = 1536
"""Bytes of heap growth allowed per finished call. Measured here: 350-600, on a quiet machine and
with both cores busy (trio internals and the test's own clients); before the SQLite engine's
allocations were left out, up to 1,053 with the store on a busy machine. A real per-call leak is
kilobytes: a Call left in the server's set is ~20 KB, a subscriber's queue or a task a few KB."""
NOT_COUNTED = [tracemalloc.Filter(False, store_sqlite.__file__)]
"""The SQLite engine's allocations: each pooled connection caches its prepared statements (up to
128), and a busy machine opens more of the pool (at most one connection per reader thread and the
writer) mid-test. Bounded, and the engine keeps nothing per call in Python: rows go to the file."""


async def _calls(server: RunningServer, fake: FakeDeepgram, count: int) -> None:
    audio = generate_tone(0.5, freq_hz=440)
    for batch in range(0, count, CONCURRENT):
        async with trio.open_nursery() as nursery:
            for _ in range(min(CONCURRENT, count - batch)):
                spec = CallSpec(inbound=audio, outbound=audio)
                nursery.start_soon(subscribe, server, spec.call_sid, Subscriber())
                nursery.start_soon(_call, server, spec)
        fake.sessions.clear()  # the fake keeps every session's audio; that is the test's memory, not the server's


async def _call(server: RunningServer, spec: CallSpec) -> None:
    report = await run_call(server.url("/twilio"), spec, speed=0)
    assert report.close_code == 1000, report


async def _idle(server: RunningServer) -> None:
    """Wait until the server reports no live call and no subscriber, then until every task is blocked
    (the last ones have ended)."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(10):
            while True:
                health = (await client.get(server.http_url + "/healthz")).json()
                metrics = (await client.get(server.http_url + "/metrics")).text
                store_idle = "callscribe_store_queue" not in metrics or "callscribe_store_queue 0.0" in metrics
                if health["active_calls"] == 0 and health["subscribers"] == 0 and store_idle:
                    break
                await trio.sleep(0.05)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


def _heap() -> int:
    _prune_trio_deadlines()
    gc.collect()
    return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(NOT_COUNTED).statistics("filename"))


def _prune_trio_deadlines() -> None:
    """Trio drops expired-or-cancelled timeouts from its deadline heap lazily, in batches once there
    are ~1,000 stale ones; until then each keeps its CancelScope. That is bounded, but over a
    hundred calls it looks like growth, so prune now (private API: skipped if trio changes it)."""
    runner = getattr(getattr(trio._core._run, "GLOBAL_RUN_CONTEXT", None), "runner", None)
    prune = getattr(getattr(runner, "deadlines", None), "_prune", None)
    if prune is not None:
        prune()


@pytest.fixture(params=["no store", "store"])
async def measured_server(
    request: pytest.FixtureRequest, nursery: trio.Nursery, fake_deepgram: FakeDeepgram, tmp_path: Path
) -> AsyncIterator[RunningServer]:
    """The server without a call store, and with one (SQLite): neither keeps anything per finished call."""
    store = StoreSettings(location=str(tmp_path / "calls.db")) if request.param == "store" else None
    running = await start_server(nursery, fake_deepgram, store=store)
    yield running
    running.stop.set()
    with trio.fail_after(10):
        await running.done.wait()


async def test_finished_calls_leave_nothing_behind(measured_server: RunningServer, fake_deepgram: FakeDeepgram) -> None:
    server = measured_server
    tracemalloc.start()
    try:
        await _calls(server, fake_deepgram, WARM_UP_CALLS)
        await _idle(server)
        before = _heap()
        await _calls(server, fake_deepgram, MEASURED_CALLS)
        await _idle(server)
        after = _heap()
        growth_per_call = (after - before) / MEASURED_CALLS
        print(f"heap {before / 1024:.0f} KB -> {after / 1024:.0f} KB: {growth_per_call:+.0f} bytes per call")
        if growth_per_call > LEAK_BUDGET_PER_CALL:
            snapshot = tracemalloc.take_snapshot().filter_traces(NOT_COUNTED)
            top = "\n".join(str(stat) for stat in snapshot.statistics("lineno")[:10])
            raise AssertionError(
                f"heap grew {growth_per_call:.0f} bytes per finished call; largest allocations:\n{top}"
            )
    finally:
        tracemalloc.stop()
