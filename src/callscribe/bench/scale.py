"""Scenarios of several server processes: ``workers`` and ``streams``.

``workers``
    Calls per machine with ``callscribe serve --workers 1`` and ``--workers 2`` (each step with a
    redis-server of its own): a short ramp of each, in interleaved rounds (1, 2, 1, 2, ...) so that
    a shared machine's noise falls on both alike; then audio latency at half of each one's
    sustained maximum, and 1 call fanned out to ``--fanout-subscribers`` subscribers spread by the
    kernel over both workers. The server's workers may run on every core; the load process stays
    pinned to its own core (``--load-cpu``), so the second worker shares that core with the load.
``streams``
    The cost of fan-out through Redis: calls on one server process (pinned to ``--server-cpu``),
    their subscribers on a second one beside the load. Rounds alternate this tree with a baseline
    tree (``--baseline-pythonpath``, e.g. a checkout of the pub/sub-only fan-out), and compare the
    calls' process CPU per frame and the fan-out latency.
"""

from __future__ import annotations

import dataclasses
from statistics import median
from typing import Any

from callscribe.bench.options import Options, Settings, StepPlan
from callscribe.bench.scenarios import scenario_fanout, scenario_ramp
from callscribe.bench.step import describe, run_step

WORKER_STEPS = {1: (30, 45, 60, 75, 90, 105), 2: (60, 90, 120, 150, 180)}
"""The ramps' call counts (each stops at its first unsustained step, then bisects)."""


def scenario_workers(opts: Options, settings: Settings) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    for number in range(1, settings.scale_rounds + 1):
        for workers in (1, 2):
            opts.say(f"-- round {number}: --workers {workers}")
            ramp = scenario_ramp(
                dataclasses.replace(opts, workers=workers),
                dataclasses.replace(settings, steps=WORKER_STEPS[workers], stop_when_load_bound=False),
            )
            rounds.append({"round": number, "workers": workers, **ramp})
    best = {w: median(r["max_sustained_calls"] for r in rounds if r["workers"] == w) for w in (1, 2)}
    ratios = [
        round(two["max_sustained_calls"] / one["max_sustained_calls"], 2)
        for one, two in zip(rounds[::2], rounds[1::2], strict=True)
        if one["max_sustained_calls"]
    ]
    half_load = {}
    for workers in (1, 2):
        calls = max(1, int(best[workers] // 2))
        step = run_step(
            dataclasses.replace(opts, workers=workers),
            StepPlan(calls=calls, subscribers=settings.subscribers, measure_s=settings.step_seconds),
        )
        opts.say(describe(step))
        half_load[workers] = step
    fanout = scenario_fanout(dataclasses.replace(opts, workers=2), settings)["step"]
    opts.say(
        f"workers: sustained calls, median of {settings.scale_rounds} rounds: 1 worker {best[1]:g}, 2 workers "
        f"{best[2]:g}; ratio per round {ratios}. Audio p99 at half load: 1 worker "
        f"{half_load[1]['audio_p99_ms']} ms ({half_load[1]['calls']} calls), 2 workers {half_load[2]['audio_p99_ms']} ms "
        f"({half_load[2]['calls']} calls). Fan-out over 2 workers, {settings.fanout_subscribers} subscribers: "
        f"to the last p50 {fanout['fanout_last_p50_ms']} ms, p99 {fanout['fanout_last_p99_ms']} ms"
    )
    return {
        "rounds": rounds,
        "max_sustained_calls": {str(w): best[w] for w in best},
        "ratios": ratios,
        "half_load": {str(w): step for w, step in half_load.items()},
        "fanout": fanout,
    }


def scenario_streams(opts: Options, settings: Settings, baseline_pythonpath: str | None) -> dict[str, Any]:
    trees = {"this tree": opts.server_pythonpath}
    if baseline_pythonpath:
        trees["baseline"] = baseline_pythonpath
    steps: list[dict[str, Any]] = []
    for number in range(1, settings.scale_rounds + 1):
        for name, pythonpath in trees.items():
            step = run_step(
                dataclasses.replace(opts, split=True, server_pythonpath=pythonpath),
                StepPlan(calls=settings.streams_calls, subscribers=1, measure_s=settings.step_seconds),
                retries=0,
            )
            step |= {"round": number, "tree": name}
            opts.say(f"{name}: {describe(step)}")
            steps.append(step)
    summary = {}
    for name in trees:
        mine = [s for s in steps if s["tree"] == name]
        summary[name] = {
            "cpu_us_per_frame": median(s["cpu_us_per_frame"] or 0 for s in mine),
            "server_cpu_pct": median(s["server_cpu_pct"] for s in mine),
            "fanout_p99_ms": median(s["fanout_p99_ms"] or 0 for s in mine),
            "fanout_p50_ms": median(s["fanout_p50_ms"] or 0 for s in mine),
        }
        opts.say(f"streams: {name}: {summary[name]}")
    return {"calls": settings.streams_calls, "steps": steps, "summary": summary}
