"""The ``store`` scenario: what the call store costs, the same load with the store off and on, in
interleaved rounds.

Each round runs the step twice, store off (``--store none``) and on (a fresh SQLite file, the
default of ``callscribe serve``), the order alternating from round to round so that drift on a
shared machine (other processes, thermal state) falls on both alike. Only numbers from the same
round are compared: the store's cost in a round is the difference of server CPU per frame, in % of
the "off" step; memory per call and audio latency are compared the same way. A second measure does
not depend on two runs agreeing: the share of the "on" server's CPU spent outside its event loop's
thread, in the worker threads where the store's transactions run (with the store off that share is
the baseline of the process's other threads). The summary gives each round's figures and medians.
"""

from __future__ import annotations

import statistics
from typing import Any

from callscribe.bench.options import Options, Settings
from callscribe.bench.step import describe, run_step

VARIANTS = ("none", "sqlite")
DEFAULT_CALLS = 40
"""Without a ramp: the highest sustained step measured on the reference machine (docs/performance.md)."""


def store_calls(settings: Settings, ramp: dict[str, Any] | None) -> int:
    if settings.store_calls is not None:
        return settings.store_calls
    if ramp and ramp.get("max_sustained_calls"):
        return int(ramp["max_sustained_calls"])
    return DEFAULT_CALLS


def _cost_pct(on: float | None, off: float | None) -> float | None:
    if on is None or not off:
        return None
    return round((on - off) / off * 100, 1)


def _difference(on: float | None, off: float | None) -> float | None:
    return None if on is None or off is None else round(on - off, 1)


def compare(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per round: the store's cost in CPU per frame (%), audio latency and memory per call; and the medians."""
    rows = []
    for number, steps in enumerate(rounds, 1):
        off, on = steps["none"], steps["sqlite"]
        rows.append(
            {
                "round": number,
                "cpu_pct_off": off.get("server_cpu_pct"),
                "cpu_pct_on": on.get("server_cpu_pct"),
                "us_per_frame_off": off.get("cpu_us_per_frame"),
                "us_per_frame_on": on.get("cpu_us_per_frame"),
                "cpu_cost_pct": _cost_pct(on.get("cpu_us_per_frame"), off.get("cpu_us_per_frame")),
                "threads_cpu_pct_off": off.get("worker_threads_cpu_pct"),
                "threads_cpu_pct_on": on.get("worker_threads_cpu_pct"),
                "audio_p50_ms_off": off.get("audio_p50_ms"),
                "audio_p50_ms_on": on.get("audio_p50_ms"),
                "audio_p99_ms_off": off.get("audio_p99_ms"),
                "audio_p99_ms_on": on.get("audio_p99_ms"),
                "kb_per_call_off": off.get("rss_per_call_kb"),
                "kb_per_call_on": on.get("rss_per_call_kb"),
                "kb_per_call_difference": _difference(on.get("rss_per_call_kb"), off.get("rss_per_call_kb")),
                "sustained": bool(off.get("sustained")) and bool(on.get("sustained")),
                "disturbed": bool(off.get("disturbed")) or bool(on.get("disturbed")),
            }
        )
    costs = [row["cpu_cost_pct"] for row in rows if row["cpu_cost_pct"] is not None]
    threads = [row["threads_cpu_pct_on"] for row in rows if row["threads_cpu_pct_on"] is not None]
    memory = [row["kb_per_call_difference"] for row in rows if row["kb_per_call_difference"] is not None]
    return {
        "rows": rows,
        "cpu_cost_pct_median": round(statistics.median(costs), 1) if costs else None,
        "threads_cpu_pct_on_median": round(statistics.median(threads), 1) if threads else None,
        "kb_per_call_difference_median": round(statistics.median(memory), 1) if memory else None,
    }


def scenario_store(opts: Options, settings: Settings, ramp: dict[str, Any] | None) -> dict[str, Any]:
    calls = store_calls(settings, ramp)
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(settings.store_rounds):
        order = VARIANTS if number % 2 == 0 else tuple(reversed(VARIANTS))
        steps: dict[str, dict[str, Any]] = {}
        for store in order:
            step = run_step(opts, settings.plan(calls, store=store))
            opts.say(f"round {number + 1}, store {store}: {describe(step)}")
            steps[store] = step
        rounds.append(steps)
    summary = compare(rounds)
    opts.say(
        f"store: {calls} calls, {settings.store_rounds} rounds: CPU per frame {summary['cpu_cost_pct_median']:+}% "
        f"(median), worker threads {summary['threads_cpu_pct_on_median']}% of the server's CPU, memory per call "
        f"{summary['kb_per_call_difference_median']:+} KB"
        if summary["cpu_cost_pct_median"] is not None and summary["kb_per_call_difference_median"] is not None
        else "store: no comparable rounds"
    )
    return {"calls": calls, "rounds": rounds, **summary}


def store_markdown(section: dict[str, Any]) -> list[str]:
    """The report's lines for the store scenario."""

    def cell(value: Any, suffix: str = "") -> str:
        return "–" if value is None else f"{value}{suffix}"

    lines = [
        f"{section['calls']} calls, both tracks, 1 subscriber each; store off (`--store none`) and on (SQLite, the "
        f"default), interleaved. Median cost of the store: **{cell(section['cpu_cost_pct_median'], '%')} CPU per "
        f"frame** between the two runs of a round; the store's worker threads took "
        f"**{cell(section.get('threads_cpu_pct_on_median'), '%')}** of the server's CPU; memory per call "
        f"{cell(section['kb_per_call_difference_median'], ' KB')}.",
        "",
        "| round | server CPU % off / on | µs/frame off / on | store's cost | worker threads' CPU share off / on"
        " | audio p50 ms off / on | audio p99 ms off / on | KB/call off / on | sustained | disturbed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        lines.append(
            f"| {row['round']} | {cell(row['cpu_pct_off'])} / {cell(row['cpu_pct_on'])} "
            f"| {cell(row['us_per_frame_off'])} / {cell(row['us_per_frame_on'])} | {cell(row['cpu_cost_pct'], '%')} "
            f"| {cell(row.get('threads_cpu_pct_off'), '%')} / {cell(row.get('threads_cpu_pct_on'), '%')} "
            f"| {cell(row['audio_p50_ms_off'])} / {cell(row['audio_p50_ms_on'])} "
            f"| {cell(row['audio_p99_ms_off'])} / {cell(row['audio_p99_ms_on'])} "
            f"| {cell(row['kb_per_call_off'])} / {cell(row['kb_per_call_on'])} "
            f"| {'yes' if row['sustained'] else 'no'} | {'yes' if row['disturbed'] else 'no'} |"
        )
    return lines
