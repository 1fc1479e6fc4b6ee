"""The ramp's plot: latency and CPU against concurrent calls (matplotlib, when installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plotting_available() -> bool:
    """Whether matplotlib is installed (the ``bench`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(results: dict[str, Any], path: Path) -> bool:
    """Draw the ramp's latency and CPU against calls into ``path``; False (nothing drawn) without a ramp or
    matplotlib."""
    ramp = results.get("ramp")
    if not ramp or not ramp.get("steps") or not plotting_available():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(ramp["steps"], key=lambda s: s["calls"])
    calls = [s["calls"] for s in steps]
    window = results.get("machine", {}).get("window_ms", 100)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)

    def series(key: str) -> list[float]:
        return [s.get(key) if s.get(key) is not None else float("nan") for s in steps]

    top.plot(calls, series("audio_p50_ms"), "o-", label="audio p50")
    top.plot(calls, series("audio_p99_ms"), "o-", label="audio p99")
    top.plot(calls, series("added_p99_ms"), "s--", label="added by server p99")
    top.plot(calls, series("fanout_p99_ms"), "^-", label="fan-out p99")
    top.axhline(window + 50, color="red", linestyle=":", label="sustained limit (window + 50 ms)")
    top.axhline(window + 10, color="orange", linestyle=":", label="target (window + 10 ms)")
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.legend(fontsize=8)
    top.grid(True, which="both", alpha=0.3)
    top.set_title(f"callscribe on one core: latency and CPU against concurrent calls (window {window} ms)")
    bottom.plot(calls, series("server_cpu_pct"), "o-", label="server CPU %")
    bottom.plot(calls, series("load_cpu_pct"), "o--", label="load process CPU %")
    floor = results.get("floor", {}).get("steps", {})
    for kind, style in (("floor-receive", ":"), ("floor-forward", "-."), ("floor-picows-receive", "--")):
        per_frame = floor.get(kind, {}).get("cpu_us_per_frame")
        if per_frame:
            bottom.plot(
                calls,
                [min(150, per_frame * n * 100 / 1e4) for n in calls],
                style,
                label=f"{kind} (projected from {per_frame} µs/frame)",
            )
    bottom.axhline(95, color="red", linestyle=":", label="95% CPU")
    best = ramp.get("max_sustained_calls")
    if best:
        for axis in (top, bottom):
            axis.axvline(best, color="green", alpha=0.5)
        bottom.annotate(f"max sustained {best}", (best, 5), rotation=90, fontsize=8, color="green")
    bottom.set_ylabel("CPU % of one core")
    bottom.set_xlabel("concurrent calls (both tracks, 100 frames/s each)")
    bottom.set_ylim(0, 110)
    bottom.legend(fontsize=8)
    bottom.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
