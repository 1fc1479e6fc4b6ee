"""The picows+uvloop floor serves what the benchmark expects of a receive-only floor.

Skipped where picows or uvloop is not installed (they come with the ``bench`` extra). Nothing here
asserts speed: numbers come from `callscribe bench`, not from tests.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import trio

pytest.importorskip("picows", reason="picows is in the bench extra: pip install 'callscribe[bench]'")
pytest.importorskip("uvloop", reason="uvloop is in the bench extra: pip install 'callscribe[bench]'")

from callscribe.bench import ws as bench_ws
from callscribe.bench.calls import Audio, SimCall
from callscribe.bench.options import Options, StepPlan
from callscribe.bench.processes import ServerProcess
from callscribe.bench.step import run_step

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the benchmark reads /proc (Linux)")


def test_the_picows_floor_answers_its_health_check_and_ends_a_call_on_stop(tmp_path: Path) -> None:
    opts = Options(pin=False, log_dir=tmp_path / "logs", quiet=True)
    server = ServerProcess(opts, "floor-picows-receive", "ws://127.0.0.1:9/unused")

    async def main() -> None:
        await server.wait_ready(timeout=20.0)
        status, body = await bench_ws.http_get(server.host, server.port, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "kind": "picows-receive"}
        status, _ = await bench_ws.http_get(server.host, server.port, "/nowhere")
        assert status == 404
        async with trio.open_nursery() as nursery:
            # A short call: the server keeps it open through its media and closes it after `stop`.
            call = SimCall(1, Audio())
            conn = call.conn = await bench_ws.connect(server.host, server.port, "/twilio", nursery, timeout=10.0)
            conn.send_now(call.opening())
            for _ in range(25):
                assert call.tick()
            assert not await conn.wait_closed(0.2)
            call.stop_requested = True
            assert not call.tick() and call.stop_sent
            assert await conn.wait_closed(10.0)
            assert (conn.close_code, conn.close_reason) == (1000, "call ended")
            await conn.aclose()
            # A caller that hangs up without `stop` gets its close answered.
            other = SimCall(2, Audio())
            conn = other.conn = await bench_ws.connect(server.host, server.port, "/twilio", nursery, timeout=10.0)
            conn.send_now(other.opening())
            assert other.tick()
            await conn.aclose(code=1001, timeout=10.0)
            assert conn.close_code == 1001
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        started = time.monotonic()
        server.stop(timeout=10.0)
    assert server.process.returncode == 0, server.log_tail()  # SIGTERM ends it cleanly, not by SIGKILL
    assert time.monotonic() - started < 10.0


def test_a_tiny_floor_step_on_picows_receives_every_call_to_its_stop(tmp_path: Path) -> None:
    """Two calls for a second: all connect, all frames are written, every call is closed with 1000
    after its `stop` (which comes after every frame on the same connection)."""
    opts = Options(pin=False, log_dir=tmp_path / "logs", quiet=True, retries=0, drain_s=10.0)
    step = run_step(opts, StepPlan(kind="floor-picows-receive", calls=2, subscribers=0, measure_s=1.0, warmup_s=0.3))
    assert "-m callscribe.bench.floor_picows --listen 127.0.0.1:" in step["server_command"]
    assert step["calls_started"] == 2 and step["calls_failed"] == 0
    assert step["frames_sent"] > 0 and step["frames_in_window"] > 0
    assert step["cpu_us_per_frame"] is not None  # may be 0.0: /proc counts CPU in 10 ms ticks
    assert step["sustained"], step["reasons"]  # a call not closed with 1000 after its stop is a reason


def test_the_picows_floor_runs_from_the_benchmark_even_against_an_older_tree(tmp_path: Path) -> None:
    """``--server-pythonpath`` points the servers at a tree under test, which may predate this floor."""
    older = tmp_path / "older"
    (older / "callscribe").mkdir(parents=True)
    (older / "callscribe" / "__init__.py").write_text("")  # a callscribe without bench.floor_picows
    opts = Options(pin=False, log_dir=tmp_path / "logs", quiet=True, server_pythonpath=str(older))
    server = ServerProcess(opts, "floor-picows-receive", "ws://127.0.0.1:9/unused")
    try:
        trio.run(server.wait_ready, 20.0)
    finally:
        server.stop(timeout=10.0)
