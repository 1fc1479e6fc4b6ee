"""A step's figures and verdict, from what was measured."""

from __future__ import annotations

from typing import Any

from callscribe.bench.options import StepPlan
from callscribe.bench.step_result import Window, latency_figures, verdict, window_figures
from callscribe.bench.tracker import Tracker
from callscribe.bench.traffic import TrafficCounts


def figures(**window: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "seconds": 10.0,
        "server_cpu_s": 5.0,
        "load_cpu_s": 2.0,
        "server_core_busy_s": 5.5,
        "load_core_busy_s": None,
        "frames": 10_000,
        "active_calls": 10,
        "sender_lags": [0.001] * 99 + [0.02],
        "rss_samples": [(0.0, 50_000), (10.0, 51_000)],
    }
    counts = TrafficCounts(calls_started=10, frames_sent=20_000, frames_received=20_000, calls_exact=10)
    result = window_figures(Window(**{**defaults, **window}), StepPlan(calls=10), counts)
    return result | latency_figures(Tracker(audio_latency=[0.12] * 10), window_ms=100, subscribers=1)


def test_window_figures() -> None:
    result = figures()
    assert (result["server_cpu_pct"], result["load_cpu_pct"]) == (50.0, 20.0)
    assert (result["server_core_other_pct"], result["load_core_other_pct"]) == (5.0, None)
    assert (result["cpu_us_per_frame"], result["frames_offered_pct"], result["cpu_pct_per_call"]) == (500.0, 100.0, 5.0)
    assert (result["pacer_lag_p99_ms"], result["pacer_lag_max_ms"]) == (1.0, 20.0)
    assert result["rss_kb"] == 51_000 and result["rss_samples"] is None  # samples are kept for soaks only
    assert result["audio_p99_ms"] == 120.0 and result["audio_minus_window_p99_ms"] == 20.0
    assert result["frames_sent"] == result["frames_received"] == 20_000


def test_a_step_is_sustained_only_when_nothing_went_wrong() -> None:
    assert verdict(figures(), [], audio_checked=True) == {"sustained": True, "reasons": [], "load_bound": False}
    busy = figures(server_cpu_s=9.6, load_cpu_s=9.5)
    judged = verdict(
        busy | {"calls_failed": 1, "subscribers_failed": 2}, ["set-up did not finish in time"], audio_checked=True
    )
    assert judged["reasons"] == [
        "set-up did not finish in time",
        "1 calls failed to connect",
        "server CPU 96.0% >= 95%",
        "2 subscribers failed",
    ]
    assert not judged["sustained"] and judged["load_bound"]
    late = figures() | {"audio_p99_ms": 151.0, "calls_inexact": 1, "frames_received": 19_998}
    assert verdict(late, [], audio_checked=True)["reasons"] == [
        "audio lost or padded in 1 calls (19998 of 20000 frames accounted)",
        "audio p99 151 ms > window + 50 ms",
    ]
    assert verdict(late, [], audio_checked=False)["sustained"]  # receive-only floors forward no audio
