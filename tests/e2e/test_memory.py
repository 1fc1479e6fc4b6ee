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

import httpx
import trio
import trio.testing

from callscribe.core.audio import generate_tone
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, run_call
from conftest import RunningServer, Subscriber, subscribe

WARM_UP_CALLS = 12
MEASURED_CALLS = 48
CONCURRENT = 6
LEAK_BUDGET_PER_CALL = 1024
"""Bytes of heap growth allowed per finished call. Measured here: 120-190 (trio internals and the
test's own clients). A real per-call leak is kilobytes: a Call left in the server's set is ~20 KB,
a subscriber's queue or a task a few KB."""


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
                if health["active_calls"] == 0 and health["subscribers"] == 0:
                    break
                await trio.sleep(0.05)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)


def _heap() -> int:
    _prune_trio_deadlines()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _prune_trio_deadlines() -> None:
    """Trio drops expired-or-cancelled timeouts from its deadline heap lazily, in batches once there
    are ~1,000 stale ones; until then each keeps its CancelScope. That is bounded, but over a
    hundred calls it looks like growth, so prune now (private API: skipped if trio changes it)."""
    runner = getattr(getattr(trio._core._run, "GLOBAL_RUN_CONTEXT", None), "runner", None)
    prune = getattr(getattr(runner, "deadlines", None), "_prune", None)
    if prune is not None:
        prune()


async def test_finished_calls_leave_nothing_behind(server: RunningServer, fake_deepgram: FakeDeepgram) -> None:
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
            snapshot = tracemalloc.take_snapshot()
            top = "\n".join(str(stat) for stat in snapshot.statistics("lineno")[:10])
            raise AssertionError(
                f"heap grew {growth_per_call:.0f} bytes per finished call; largest allocations:\n{top}"
            )
    finally:
        tracemalloc.stop()
