"""The store scenario's comparison of interleaved rounds, store off and on."""

from __future__ import annotations

from typing import Any

from callscribe.bench.options import Settings
from callscribe.bench.store_ab import compare, store_calls, store_markdown


def step(us: float, kb: float, p99: float = 80.0) -> dict[str, Any]:
    return {
        "server_cpu_pct": us / 10,
        "cpu_us_per_frame": us,
        "audio_p50_ms": 40.0,
        "audio_p99_ms": p99,
        "rss_per_call_kb": kb,
        "worker_threads_cpu_pct": 1.5,
        "sustained": True,
        "disturbed": False,
    }


def test_each_round_is_compared_within_itself_and_the_median_summarises() -> None:
    rounds = [
        {"none": step(200, 200), "sqlite": step(204, 202)},
        {"none": step(250, 190), "sqlite": step(255, 195)},  # a noisier, slower round: same relative cost
        {"none": step(210, 210), "sqlite": step(231, 205)},
    ]
    summary = compare(rounds)
    assert [row["cpu_cost_pct"] for row in summary["rows"]] == [2.0, 2.0, 10.0]
    assert summary["cpu_cost_pct_median"] == 2.0
    assert [row["kb_per_call_difference"] for row in summary["rows"]] == [2.0, 5.0, -5.0]
    assert summary["kb_per_call_difference_median"] == 2.0
    lines = store_markdown({"calls": 40, **summary})
    assert summary["threads_cpu_pct_on_median"] == 1.5
    assert "**2.0% CPU per frame**" in lines[0] and "threads took **1.5%**" in lines[0]
    assert lines[-1].startswith("| 3 | 21.0 / 23.1 | 210 / 231 | 10.0% | 1.5% / 1.5% |")


def test_missing_numbers_are_left_out() -> None:
    summary = compare([{"none": {}, "sqlite": {}}])
    assert summary["cpu_cost_pct_median"] is None and summary["rows"][0]["sustained"] is False


def test_how_many_calls() -> None:
    assert store_calls(Settings(), None) == 40
    assert store_calls(Settings(), {"max_sustained_calls": 35}) == 35
    assert store_calls(Settings(store_calls=12), {"max_sustained_calls": 35}) == 12
