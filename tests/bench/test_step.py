"""A tiny benchmark step measures real traffic against real server processes.

Nothing here asserts speed: numbers come from `callscribe bench`, not from tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from callscribe.bench import report
from callscribe.bench.machine import machine_info
from callscribe.bench.options import Options, StepPlan
from callscribe.bench.step import describe, run_step

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the benchmark reads /proc (Linux)")


def test_a_tiny_run_measures_real_traffic_end_to_end(tmp_path: Path) -> None:
    """Two calls with two subscribers each against a real `callscribe serve` process, for a second."""
    opts = Options(pin=False, log_dir=tmp_path / "logs", quiet=True, retries=0, drain_s=10.0)
    step = run_step(opts, StepPlan(calls=2, subscribers=2, measure_s=1.5, warmup_s=0.5))
    assert step["calls_started"] == 2 and step["calls_failed"] == 0
    # every frame sent is accounted for at the fake Deepgram, byte for byte, per call and channel
    assert step["frames_sent"] > 0
    assert step["frames_received"] == step["frames_sent"]
    assert step["calls_exact"] == 2
    assert step["frames_in_window"] > 0
    # latencies are measured, positive and plausible (audio waits for its 100 ms window)
    assert step["audio_samples"] > 0
    assert 0 < step["audio_p50_ms"] <= step["audio_p99_ms"]
    assert 0 < step["added_p50_ms"] <= step["audio_p99_ms"]
    assert step["server_cpu_pct"] > 0 and step["cpu_us_per_frame"] > 0
    assert step["rss_idle_kb"] > 0 and step["rss_kb"] >= step["rss_idle_kb"] * 0.9
    assert step["subscribers_ok"] == 4 and step["subscribers_failed"] == 0
    # results the fake sent in the window reached both subscribers of their call
    if step["results_sent_in_window"]:
        assert step["fanout_deliveries"] == 2 * step["results_sent_in_window"]
        assert step["fanout_p50_ms"] > 0
    assert "callscribe    2 calls x2 subs" in describe(step)

    results = {"machine": machine_info(opts), "ramp": {"steps": [step], "max_sustained_calls": 2}}
    paths = report.write_outputs(results, tmp_path)
    written = json.loads((tmp_path / report.JSON_NAME).read_text())
    assert written["ramp"]["steps"][0]["frames_sent"] == step["frames_sent"]
    assert "| 2 |" in (tmp_path / report.MD_NAME).read_text()
    assert all(path.exists() for path in paths)
    assert report.load_results(tmp_path)["headline"]["max_sustained_calls_per_core"] == 2


def test_the_floor_server_forwards_every_frame(tmp_path: Path) -> None:
    opts = Options(pin=False, log_dir=tmp_path / "logs", quiet=True, retries=0, drain_s=10.0, coalesce_tracks=True)
    step = run_step(opts, StepPlan(kind="floor-forward", calls=2, subscribers=0, measure_s=1.0, warmup_s=0.3))
    assert step["frames_sent"] > 0 and step["frames_received"] == step["frames_sent"]
    assert step["audio_p50_ms"] > 0


def test_a_step_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown step kind 'floor-bogus'"):
        StepPlan(kind="floor-bogus")
