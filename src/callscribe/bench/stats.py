"""The benchmark's statistics: nearest-rank percentiles and least-squares slopes."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``, or None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def ms(value: float | None) -> float | None:
    """Seconds as milliseconds rounded to 0.01, None staying None."""
    return None if value is None else round(value * 1000, 2)


def linear_fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares slope of y over x, with its standard error and 95% interval."""
    n = len(points)
    if n < 3:
        return None
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mean_x) ** 2 for p in points)
    if sxx == 0:
        return None
    slope = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((p[1] - intercept - slope * p[0]) ** 2 for p in points)
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return {
        "slope": slope,
        "stderr": stderr,
        "ci95_low": slope - 1.96 * stderr,
        "ci95_high": slope + 1.96 * stderr,
        "intercept": intercept,
    }
