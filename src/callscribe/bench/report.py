"""``callscribe bench`` output: the JSON results (merged with earlier runs') and the Markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callscribe.bench.headline import headline, headline_text, targets
from callscribe.bench.plot import plot
from callscribe.bench.profiling import profile_markdown

JSON_NAME = "bench-results.json"
MD_NAME = "bench-results.md"
PLOT_NAME = "bench-ramp.png"


def load_results(out: Path) -> dict[str, Any]:
    """The results of earlier runs in ``out`` (each run replaces the scenarios it ran), or ``{}``."""
    try:
        results = json.loads((out / JSON_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


_STEP_COLUMNS = [
    ("calls", "calls", None),
    ("server CPU %", "server_cpu_pct", 1),
    ("µs/frame", "cpu_us_per_frame", 1),
    ("load CPU %", "load_cpu_pct", 1),
    ("frames sent", "frames_sent", None),
    ("frames at Deepgram", "frames_received", None),
    ("audio p50 / p99 ms", ("audio_p50_ms", "audio_p99_ms"), 1),
    ("p99 − window ms", "audio_minus_window_p99_ms", 1),
    ("added p50 / p99 ms", ("added_p50_ms", "added_p99_ms"), 1),
    ("fan-out p50 / p99 ms", ("fanout_p50_ms", "fanout_p99_ms"), 1),
    ("RSS MB", "rss_kb", None),
    ("KB/call", "rss_per_call_kb", 1),
    ("others' CPU % on server / load core", ("server_core_other_pct", "load_core_other_pct"), 1),
    ("sustained", "sustained", None),
]


def _cell(step: dict[str, Any], key: Any, digits: int | None) -> str:
    if isinstance(key, tuple):
        return " / ".join(_cell(step, k, digits) for k in key)
    value = step.get(key)
    if key == "rss_kb" and value is not None:
        return f"{value / 1024:.1f}"
    if key == "sustained" and value is False:
        return "no: " + "; ".join(step.get("reasons", []))
    return _fmt(value, digits)


def step_table(steps: list[dict[str, Any]], first_column: str | None = None) -> str:
    """Markdown table of steps, one row each; ``first_column`` titles a leading column of step kinds."""
    columns = list(_STEP_COLUMNS)
    if first_column:
        columns.insert(0, (first_column, "kind", None))
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for step in steps:
        lines.append("| " + " | ".join(_cell(step, key, digits) for _, key, digits in columns) + " |")
    return "\n".join(lines)


def _stamp(section: dict[str, Any]) -> str:
    parts = [f"`{section['command']}`"] if section.get("command") else []
    if section.get("date"):
        parts.append(section["date"])
    if section.get("git"):
        parts.append(f"git {section['git']}")
    if section.get("label"):
        parts.append(f"label: {section['label']}")
    return "Run: " + ", ".join(parts) if parts else ""


def _heading(title: str, section: dict[str, Any]) -> list[str]:
    """A section's title and the line saying which run it comes from."""
    return [f"## {title}", "", _stamp(section), ""]


def _picows_line(floor: dict[str, Any]) -> str:
    """The ratio to the picows+uvloop floor (:mod:`callscribe.bench.floor_picows`), or why it is missing."""
    if "floor-picows-receive" in floor["steps"]:
        return (
            "Outside callscribe's stack, the picows+uvloop receive-only floor (`callscribe.bench.floor_picows`): "
            f"callscribe / picows+uvloop = **{_fmt(floor.get('ratio_to_floor_picows_receive'))}x** CPU per frame."
        )
    why = floor.get("picows_floor_skipped") or "not run by the benchmark that wrote these results"
    return f"The picows+uvloop floor (`callscribe.bench.floor_picows`) was skipped: {why}."


def markdown(results: dict[str, Any]) -> str:
    """The Markdown report: machine, headline, targets, then a section per scenario run."""
    machine = results.get("machine", {})
    out = ["# callscribe benchmark results", ""]
    if machine:
        out.append(
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gib')} GiB, Linux {machine.get('kernel')}, "
            f"Python {machine.get('python')}; {machine.get('pinned')}. Window {machine.get('window_ms')} ms. "
            + ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items())
        )
        out.append("")
    out += ["## Headline", "", "```", headline_text(results), "```", ""]
    rows = targets(results)
    if rows:
        out += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        out += [f"| {t} | {m} | {'yes' if met else 'no' if met is False else '–'} |" for t, m, met in rows]
        out.append("")
    ramp = results.get("ramp")
    if ramp:
        out += [
            *_heading("Ramp", ramp),
            f"Max sustained calls per core: **{ramp['max_sustained_calls']}** (first unsustained: {_fmt(ramp.get('first_unsustained_calls'))}).",
            "",
            step_table(ramp["steps"]),
            "",
        ]
        out += [f"![latency and CPU against calls]({PLOT_NAME})", ""]
    floor = results.get("floor")
    if floor:
        out += [
            *_heading("Floor", floor),
            f"The same load ({floor['calls']} calls) against the stack's floor servers (`callscribe.bench.floor`): "
            f"callscribe / receive-only = **{_fmt(floor.get('ratio_to_floor_receive'))}x**, "
            f"callscribe / parse+forward = **{_fmt(floor.get('ratio_to_floor_forward'))}x** CPU per frame "
            f"(callscribe / raw-ASGI receive-only = {_fmt(floor.get('ratio_to_floor_asgi_receive'))}x).",
            "",
            _picows_line(floor),
            "",
            step_table(list(floor["steps"].values()), "server"),
            "",
        ]
    fanout = results.get("fanout")
    if fanout:
        step = fanout["step"]
        out += [
            *_heading("Fan-out", fanout),
            f"1 call, {fanout['subscribers']} subscribers: {step['fanout_deliveries']} deliveries of {step['results_sent_in_window']} "
            f"messages in {step['measure_s']} s; per delivery p50 {step['fanout_p50_ms']} ms, p99 {step['fanout_p99_ms']} ms, "
            f"max {step['fanout_max_ms']} ms; to the **last** subscriber p50 {step['fanout_last_p50_ms']} ms, "
            f"**p99 {step['fanout_last_p99_ms']} ms** ({step['fanout_messages_complete']} messages reached all, "
            f"{step['fanout_messages_incomplete']} did not). Server CPU {step['server_cpu_pct']}%, load CPU {step['load_cpu_pct']}%.",
            "",
        ]
    soak = results.get("soak")
    if soak:
        step = soak["step"]
        churn = (
            f"each call lasting {soak['call_seconds']:g} s and replaced by a new one"
            if soak.get("call_seconds")
            else "calls lasting the whole soak"
        )
        out += [
            *_heading("Soak", soak),
            f"{soak['calls']} concurrent calls for {soak['minutes']:g} min, {churn} ({step['calls_total']} calls in all). "
            f"Audio p50/p99 {step['audio_p50_ms']}/{step['audio_p99_ms']} ms, frames {step['frames_received']}/{step['frames_sent']}, "
            f"server CPU {step['server_cpu_pct']}%.",
            "",
        ]
        if "slope_kb_per_min" in soak:
            low, high = soak["slope_ci95_kb_per_min"]
            out += [
                f"RSS {soak['rss_first_kb'] / 1024:.1f} MB at the start of the window, {soak['rss_half_kb'] / 1024:.1f} MB half-way, "
                f"{soak['rss_last_kb'] / 1024:.1f} MB at the end. Least-squares slope of the second half (steady state): "
                f"**{soak['slope_kb_per_min']} KB/min** (95% CI {low} .. {high}); of everything after {soak['slope_all_from_s']:g} s: "
                f"{soak['slope_all_kb_per_min']} KB/min. Verdict: {'flat' if soak['flat'] else 'not flat'} "
                f"(flat = the steady-state slope is statistically zero or below 1% of RSS per hour).",
                "",
            ]
    store = results.get("store")
    if store:
        from callscribe.bench.store_ab import store_markdown

        out += [*_heading("Call store", store), *store_markdown(store), ""]
    viewers = results.get("viewers")
    if viewers:
        from callscribe.bench.viewers import viewers_markdown

        out += [*_heading("Viewers", viewers), *viewers_markdown(viewers)]
    profile = results.get("profile")
    if profile:
        out += [*_heading("Profile", profile), profile_markdown(profile), ""]
    return "\n".join(out).rstrip() + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    """Write the JSON results, the Markdown report and (when possible) the plot to ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    paths = [out / JSON_NAME, out / MD_NAME]
    (out / JSON_NAME).write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    (out / MD_NAME).write_text(markdown(results))
    if plot(results, out / PLOT_NAME):
        paths.append(out / PLOT_NAME)
    return paths
