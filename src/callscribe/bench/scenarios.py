"""The benchmark's scenarios, each a series of steps (:func:`~callscribe.bench.step.run_step`).

``ramp`` (N = 10, 25, 50, 100, ... until the server no longer sustains the load, then bisection
steps), ``floor`` (the same load against the floor servers: callscribe's stack's, and picows+uvloop's),
``fanout`` (1 call, 1,000 subscribers), ``soak`` (50 calls for ``--soak-minutes``, calls ending and
being replaced, RSS slope), ``profile`` (one step under py-spy).
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from callscribe.bench.options import Options, Settings, StepPlan
from callscribe.bench.profiling import summarise_profile
from callscribe.bench.stats import linear_fit
from callscribe.bench.step import describe, run_step


def scenario_ramp(opts: Options, settings: Settings) -> dict[str, Any]:
    """More calls step by step until the server no longer sustains them, then bisection steps between the
    last sustained and the first unsustained count."""
    steps: list[dict[str, Any]] = []
    last_pass: int | None = None
    first_fail: int | None = None
    started = time.monotonic()

    def step(calls: int) -> dict[str, Any]:
        result = run_step(opts, settings.plan(calls))
        opts.say(describe(result))
        steps.append(result)
        return result

    for calls in [n for n in settings.steps if n <= settings.max_calls]:
        if time.monotonic() - started > settings.ramp_budget_s:
            opts.say("ramp: time budget used up")
            break
        result = step(calls)
        if result["sustained"]:
            last_pass = calls
        else:
            first_fail = calls
            break
        if result["load_bound"] and settings.stop_when_load_bound:
            opts.say(
                "ramp: the load process is near its own limit; stopping here (numbers above it would measure the load)"
            )
            break
    for _ in range(settings.refine):
        if last_pass is None or first_fail is None or first_fail - last_pass <= max(5, last_pass // 10):
            break
        if time.monotonic() - started > settings.ramp_budget_s:
            break
        middle = (last_pass + first_fail) // 2
        middle -= middle % 5 if middle > 20 else 0
        if middle in (last_pass, first_fail):
            break
        result = step(middle)
        if result["sustained"]:
            last_pass = middle
        else:
            first_fail = middle
    steps.sort(key=lambda s: s["calls"])
    return {"steps": steps, "max_sustained_calls": last_pass or 0, "first_unsustained_calls": first_fail}


def floor_calls(settings: Settings, ramp: dict[str, Any] | None) -> int:
    """Calls of the floor comparison: as asked, else the ramp's largest sustained count, else 100."""
    if settings.floor_calls is not None:
        return settings.floor_calls
    if ramp and ramp.get("max_sustained_calls"):
        return int(ramp["max_sustained_calls"])
    return 100


def picows_floor_missing() -> str | None:
    """What the picows+uvloop floor (:mod:`callscribe.bench.floor_picows`) lacks here ("picows and
    uvloop", ...), or None when it can run."""
    missing = [name for name in ("picows", "uvloop") if importlib.util.find_spec(name) is None]
    return " and ".join(missing) or None


def scenario_floor(opts: Options, settings: Settings, ramp: dict[str, Any] | None) -> dict[str, Any]:
    """The same load against each floor server and callscribe (reusing the ramp's step when it has one),
    and the ratios of CPU per frame. The picows+uvloop floor runs when both are installed, and is
    skipped with a line saying so otherwise."""
    calls = floor_calls(settings, ramp)
    results: dict[str, Any] = {}
    kinds = ["floor-asgi-receive", "floor-receive", "floor-forward", "callscribe"]
    missing = picows_floor_missing()
    if missing:
        opts.say(f"floor: skipping floor-picows-receive ({missing} not installed: pip install 'callscribe[bench]')")
    else:
        kinds.insert(0, "floor-picows-receive")
    for kind in kinds:
        reuse = [s for s in (ramp or {}).get("steps", []) if s["calls"] == calls and s["kind"] == "callscribe"]
        if kind == "callscribe" and reuse:
            results[kind] = reuse[0]
            continue
        subscribers = settings.subscribers if kind == "callscribe" else 0
        result = run_step(opts, settings.plan(calls, kind=kind, subscribers=subscribers))
        opts.say(describe(result))
        results[kind] = result
    out: dict[str, Any] = {"calls": calls, "steps": results}
    if missing:
        out["picows_floor_skipped"] = f"{missing} not installed"
    ours = results["callscribe"].get("cpu_us_per_frame")
    for kind in ("floor-receive", "floor-forward", "floor-asgi-receive", "floor-picows-receive"):
        if kind not in results:
            continue
        floor = results[kind].get("cpu_us_per_frame")
        if ours and floor:
            out[f"ratio_to_{kind.replace('-', '_')}"] = round(ours / floor, 2)
    return out


def scenario_fanout(opts: Options, settings: Settings) -> dict[str, Any]:
    """One call, many subscribers: how long a result takes to reach the last of them."""
    result = run_step(
        opts,
        StepPlan(
            calls=1,
            subscribers=settings.fanout_subscribers,
            measure_s=settings.fanout_seconds,
            warmup_s=settings.warmup_seconds,
        ),
    )
    opts.say(describe(result))
    opts.say(
        f"fan-out: {settings.fanout_subscribers} subscribers, {result['fanout_messages_complete']} messages reached all: "
        f"to the last subscriber p50 {result['fanout_last_p50_ms']} ms, p99 {result['fanout_last_p99_ms']} ms"
    )
    return {"step": result, "subscribers": settings.fanout_subscribers}


FLAT_PCT_PER_HOUR = 1.0
"""A soak is flat when its steady-state slope is statistically zero or under this much of RSS per hour
(RSS moves in whole pages, so a single 4 KB step can make a tiny slope 'significant')."""


def soak_fit(samples: list[tuple[float, int]], seconds: float) -> dict[str, Any]:
    """RSS slope of the soak's second half (steady state), and of everything after a 2-minute warm-up."""
    out: dict[str, Any] = {}
    half = seconds / 2
    steady = linear_fit([(t / 60, kb) for t, kb in samples if t >= half])
    warm = min(120.0, seconds * 0.2)
    everything = linear_fit([(t / 60, kb) for t, kb in samples if t >= warm])
    if steady is None or everything is None:
        return out
    mean = sum(kb for t, kb in samples if t >= half) / max(1, sum(1 for t, _ in samples if t >= half))
    out["fit_from_s"] = half
    out["slope_kb_per_min"] = round(steady["slope"], 2)
    out["slope_ci95_kb_per_min"] = [round(steady["ci95_low"], 2), round(steady["ci95_high"], 2)]
    out["slope_all_kb_per_min"] = round(everything["slope"], 2)
    out["slope_all_from_s"] = warm
    out["rss_first_kb"] = samples[0][1]
    out["rss_half_kb"] = next(kb for t, kb in samples if t >= half)
    out["rss_last_kb"] = samples[-1][1]
    out["flat"] = (steady["ci95_low"] <= 0 <= steady["ci95_high"]) or abs(
        steady["slope"]
    ) * 60 < FLAT_PCT_PER_HOUR / 100 * mean
    return out


def scenario_soak(opts: Options, settings: Settings) -> dict[str, Any]:
    """Calls for many minutes, ending and replaced, and the slope of the server's RSS (:func:`soak_fit`)."""
    seconds = settings.soak_minutes * 60
    call_seconds = settings.soak_call_seconds or None
    result = run_step(
        opts,
        StepPlan(
            calls=settings.soak_calls,
            subscribers=settings.subscribers,
            measure_s=seconds,
            warmup_s=settings.warmup_seconds,
            call_seconds=call_seconds,
            rss_interval_s=max(1.0, seconds / 300),
        ),
        retries=0,
    )  # memory growth does not depend on a quiet core; a re-run would double a long run
    opts.say(describe(result))
    soak: dict[str, Any] = {
        "step": result,
        "minutes": settings.soak_minutes,
        "calls": settings.soak_calls,
        "call_seconds": call_seconds,
        **soak_fit(result.get("rss_samples") or [], seconds),
    }
    if "slope_kb_per_min" in soak:
        low, high = soak["slope_ci95_kb_per_min"]
        opts.say(
            f"soak: RSS {soak['rss_first_kb'] / 1024:.1f} -> {soak['rss_last_kb'] / 1024:.1f} MB; second half slope "
            f"{soak['slope_kb_per_min']:.1f} KB/min (95% CI {low:.1f} .. {high:.1f}), whole run after warm-up "
            f"{soak['slope_all_kb_per_min']:.1f} KB/min: {'flat' if soak['flat'] else 'NOT flat'}"
        )
    return soak


def scenario_profile(opts: Options, settings: Settings, path: Path) -> dict[str, Any]:
    """One step under py-spy (slower than unprofiled), its folded stacks in ``path`` and their summary."""
    step = run_step(
        opts,
        settings.plan(settings.profile_calls, profile_path=path),
        retries=0,
    )  # where the time goes does not need an undisturbed core
    opts.say(describe(step) + " (under py-spy: slower than unprofiled)")
    return {"step": step, "folded": path.name, **summarise_profile(path)}
