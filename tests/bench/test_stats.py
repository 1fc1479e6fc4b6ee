"""The benchmark's statistics."""

from __future__ import annotations

from callscribe.bench.scenarios import soak_fit
from callscribe.bench.stats import linear_fit, ms, percentile


def test_percentiles_and_slopes() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert ms(0.0123456) == 12.35 and ms(None) is None
    fit = linear_fit([(x, 5.0 + 2.0 * x) for x in range(10)])
    assert fit is not None and abs(fit["slope"] - 2.0) < 1e-9 and fit["stderr"] < 1e-9
    flat = linear_fit([(x, 100.0 + (-1) ** x) for x in range(50)])
    assert flat is not None and flat["ci95_low"] <= 0 <= flat["ci95_high"]
    assert linear_fit([(1.0, 1.0), (2.0, 2.0)]) is None and linear_fit([(1.0, 1.0)] * 3) is None


def test_a_soak_is_flat_unless_rss_keeps_growing() -> None:
    seconds = 600.0
    steady = [(float(t), 50_000 + (4 if t % 20 else 0)) for t in range(0, 601, 2)]
    fit = soak_fit(steady, seconds)
    assert fit["flat"] and fit["rss_first_kb"] == 50_000 and fit["fit_from_s"] == 300
    growing = [(float(t), 50_000 + t) for t in range(0, 601, 2)]  # 60 MB/h: 7% of RSS per hour
    fit = soak_fit(growing, seconds)
    assert not fit["flat"] and fit["slope_kb_per_min"] == 60.0
    assert soak_fit([], seconds) == {}
