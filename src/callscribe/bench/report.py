"""``callscribe bench`` output: the JSON results, the Markdown report, the plot, the profile summary."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

JSON_NAME = "bench-results.json"
MD_NAME = "bench-results.md"
PLOT_NAME = "bench-ramp.png"

CPU_TARGET_RATIO = 1.25
CALLS_TARGET = 100
LATENCY_TARGET_SLACK_MS = 10
LATENCY_TARGET_CPU_PCT = 50
FANOUT_TARGET_MS = 100
RSS_TARGET_KB = 250


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def load_results(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / JSON_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def _step_at(results: dict[str, Any], calls: int) -> dict[str, Any] | None:
    steps = [s for s in results.get("ramp", {}).get("steps", []) if s["calls"] == calls]
    if steps:
        return steps[0]
    floor = results.get("floor", {})
    if floor.get("calls") == calls:
        return floor.get("steps", {}).get("callscribe")
    return None


# -------------------------------------------------------------------------------- targets


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the issue; met None when not measured."""
    rows: list[tuple[str, str, bool | None]] = []
    window = results.get("machine", {}).get("window_ms", 100)
    floor = results.get("floor", {})
    ratio = floor.get("ratio_to_floor_receive")
    if ratio is not None:
        steps = floor["steps"]
        rows.append(
            (
                f"server CPU per frame at {floor['calls']} calls ≤ {CPU_TARGET_RATIO}x the stack floor",
                f"{steps['callscribe']['cpu_us_per_frame']} µs vs {steps['floor-receive']['cpu_us_per_frame']} µs = {ratio}x",
                ratio <= CPU_TARGET_RATIO,
            )
        )
    else:
        rows.append((f"server CPU per frame ≤ {CPU_TARGET_RATIO}x the stack floor", "not measured", None))
    ramp = results.get("ramp")
    if ramp:
        best = ramp["max_sustained_calls"]
        rows.append(
            (
                f"≥ {CALLS_TARGET} sustained calls per core, nothing lost, 1 subscriber per call",
                f"{best} calls",
                best >= CALLS_TARGET,
            )
        )
        calm = [
            s
            for s in ramp["steps"]
            if s["server_cpu_pct"] < LATENCY_TARGET_CPU_PCT and s.get("audio_p99_ms") is not None
        ]
        if calm:
            worst = max(calm, key=lambda s: s["audio_p99_ms"])
            rows.append(
                (
                    f"audio latency p99 ≤ window + {LATENCY_TARGET_SLACK_MS} ms while the server is under {LATENCY_TARGET_CPU_PCT}% CPU",
                    f"worst {worst['audio_p99_ms']} ms (at {worst['calls']} calls, {worst['server_cpu_pct']}% CPU; window {window} ms)",
                    worst["audio_p99_ms"] <= window + LATENCY_TARGET_SLACK_MS,
                )
            )
        per_call = [s for s in ramp["steps"] if s.get("rss_per_call_kb") is not None and s["sustained"]]
        if per_call:
            worst = max(per_call, key=lambda s: s["calls"])  # the most calls: idle overhead spread thinnest
            rows.append(
                (
                    f"memory ≤ {RSS_TARGET_KB} KB per call above the idle baseline",
                    f"{worst['rss_per_call_kb']} KB/call (at {worst['calls']} calls, the largest sustained step)",
                    worst["rss_per_call_kb"] <= RSS_TARGET_KB,
                )
            )
    fanout = results.get("fanout")
    if fanout:
        value = fanout["step"].get("fanout_last_p99_ms")
        rows.append(
            (
                f"fan-out, 1 call to {fanout['subscribers']} subscribers: p99 to the last subscriber ≤ {FANOUT_TARGET_MS} ms",
                f"{value} ms",
                None if value is None else value <= FANOUT_TARGET_MS,
            )
        )
    soak = results.get("soak")
    if soak and "slope_kb_per_min" in soak:
        low, high = soak["slope_ci95_kb_per_min"]
        rows.append(
            (
                "soak: RSS slope indistinguishable from zero",
                f"second half {soak['slope_kb_per_min']} KB/min (95% CI {low} .. {high}); {soak['calls']} calls for {soak['minutes']:g} min, "
                f"RSS {soak['rss_first_kb'] / 1024:.1f} → {soak['rss_half_kb'] / 1024:.1f} → {soak['rss_last_kb'] / 1024:.1f} MB",
                soak["flat"],
            )
        )
    return rows


def headline(results: dict[str, Any]) -> dict[str, Any]:
    head: dict[str, Any] = {}
    ramp = results.get("ramp")
    if ramp:
        head["max_sustained_calls_per_core"] = ramp["max_sustained_calls"]
        sustained = [s for s in ramp["steps"] if s["sustained"]]
        at = _step_at(results, 100) if ramp["max_sustained_calls"] >= 100 else None
        at = at or (max(sustained, key=lambda s: s["calls"]) if sustained else None)
        if at:
            head["at_calls"] = at["calls"]
            for key in (
                "audio_p50_ms",
                "audio_p99_ms",
                "added_p50_ms",
                "added_p99_ms",
                "fanout_p99_ms",
                "rss_per_call_kb",
                "server_cpu_pct",
                "cpu_us_per_frame",
                "cpu_pct_per_call",
            ):
                head[key] = at.get(key)
    floor = results.get("floor")
    if floor:
        head["floor_receive_us_per_frame"] = floor["steps"]["floor-receive"].get("cpu_us_per_frame")
        head["floor_forward_us_per_frame"] = floor["steps"]["floor-forward"].get("cpu_us_per_frame")
        head["callscribe_us_per_frame_at_floor_calls"] = floor["steps"]["callscribe"].get("cpu_us_per_frame")
        head["ratio_to_stack_floor"] = floor.get("ratio_to_floor_receive")
        head["ratio_to_forward_floor"] = floor.get("ratio_to_floor_forward")
        if "floor-asgi-receive" in floor["steps"]:
            head["floor_asgi_receive_us_per_frame"] = floor["steps"]["floor-asgi-receive"].get("cpu_us_per_frame")
    if results.get("fanout"):
        head["fanout_last_subscriber_p99_ms"] = results["fanout"]["step"].get("fanout_last_p99_ms")
    if results.get("soak") and "slope_kb_per_min" in results["soak"]:
        head["soak_slope_kb_per_min"] = results["soak"]["slope_kb_per_min"]
    return head


def headline_text(results: dict[str, Any]) -> str:
    head = headline(results)
    lines = ["== headline"]
    if "max_sustained_calls_per_core" in head:
        lines.append(f"max sustained calls per core: {head['max_sustained_calls_per_core']}")
    if "at_calls" in head:
        lines.append(
            f"at {head['at_calls']} calls: server CPU {head['server_cpu_pct']}% ({head['cpu_us_per_frame']} µs/frame), "
            f"audio latency p50 {head['audio_p50_ms']} ms / p99 {head['audio_p99_ms']} ms "
            f"(added by the server p50 {head['added_p50_ms']} / p99 {head['added_p99_ms']} ms), "
            f"fan-out p99 {head['fanout_p99_ms']} ms, {head['rss_per_call_kb']} KB RSS per call"
        )
    if head.get("ratio_to_stack_floor") is not None:
        lines.append(
            f"CPU per frame vs the stack floor: {head['callscribe_us_per_frame_at_floor_calls']} µs vs "
            f"{head['floor_receive_us_per_frame']} µs receive-only = {head['ratio_to_stack_floor']}x "
            f"(parse+forward floor {head['floor_forward_us_per_frame']} µs = {head['ratio_to_forward_floor']}x)"
        )
    if "fanout_last_subscriber_p99_ms" in head:
        lines.append(f"fan-out to the last of the subscribers: p99 {head['fanout_last_subscriber_p99_ms']} ms")
    if "soak_slope_kb_per_min" in head:
        lines.append(f"soak RSS slope: {head['soak_slope_kb_per_min']} KB/min")
    for target, measured, met in targets(results):
        lines.append(f"  [{'met' if met else 'MISSED' if met is False else '?'}] {target}: {measured}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------- markdown

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


def markdown(results: dict[str, Any]) -> str:
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
            "## Ramp",
            "",
            _stamp(ramp),
            "",
            f"Max sustained calls per core: **{ramp['max_sustained_calls']}** (first unsustained: {_fmt(ramp.get('first_unsustained_calls'))}).",
            "",
            step_table(ramp["steps"]),
            "",
        ]
        out += [f"![latency and CPU against calls]({PLOT_NAME})", ""]
    floor = results.get("floor")
    if floor:
        out += [
            "## Floor",
            "",
            _stamp(floor),
            "",
            f"The same load ({floor['calls']} calls) against the stack's floor servers (`callscribe.bench.floor`): "
            f"callscribe / receive-only = **{_fmt(floor.get('ratio_to_floor_receive'))}x**, "
            f"callscribe / parse+forward = **{_fmt(floor.get('ratio_to_floor_forward'))}x** CPU per frame "
            f"(callscribe / raw-ASGI receive-only = {_fmt(floor.get('ratio_to_floor_asgi_receive'))}x).",
            "",
            step_table(list(floor["steps"].values()), "server"),
            "",
        ]
    fanout = results.get("fanout")
    if fanout:
        step = fanout["step"]
        out += [
            "## Fan-out",
            "",
            _stamp(fanout),
            "",
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
            "## Soak",
            "",
            _stamp(soak),
            "",
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
    profile = results.get("profile")
    if profile:
        out += ["## Profile", "", _stamp(profile), "", profile_markdown(profile), ""]
    return "\n".join(out).rstrip() + "\n"


# -------------------------------------------------------------------------------- plot


def plot(results: dict[str, Any], path: Path) -> bool:
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
    for kind, style in (("floor-receive", ":"), ("floor-forward", "-.")):
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


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results["headline"] = headline(results)
    paths = [out / JSON_NAME, out / MD_NAME]
    (out / JSON_NAME).write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    (out / MD_NAME).write_text(markdown(results))
    if plot(results, out / PLOT_NAME):
        paths.append(out / PLOT_NAME)
    return paths


# -------------------------------------------------------------------------------- profile

_FRAME = re.compile(r"^(?P<name>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")


def _package(path: str) -> str:
    """The package a py-spy frame's file belongs to (py-spy shows paths relative to sys.path)."""
    if path.startswith("<frozen"):
        return "stdlib"
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif match := re.search(r"python3\.\d+/(.+)$", path):
        return "stdlib:" + match.group(1).split("/", 1)[0].removesuffix(".py")
    elif "/src/" in path:
        path = path.split("/src/", 1)[1]
    first = path.lstrip("/").split("/", 1)[0]
    return first.removesuffix(".py") or "?"


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    match = re.search(r"python3\.\d+/(.+)$", path)
    if match:
        return match.group(1)
    if "/src/" in path:
        return path.split("/src/", 1)[1]
    return path


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive time per function and self time per package, from py-spy's raw (folded) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"profile_error": f"no profile at {path}"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if match:
                frames.append((f"{match.group('name')} ({_short(match.group('path'))})", _package(match.group("path"))))
        if not frames:
            continue
        own[frames[-1][0]] += count
        packages[frames[-1][1]] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
    if not total:
        return {"profile_error": "empty profile"}

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * count / total, 1)) for name, count in counter.most_common(top)]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive), "packages": share(packages)}


def profile_markdown(profile: dict[str, Any]) -> str:
    if "profile_error" in profile:
        return profile["profile_error"]
    step = profile.get("step", {})
    out = [
        f"py-spy, {profile['samples']} samples of the server's busy time at {step.get('calls')} calls "
        f"(server CPU {step.get('server_cpu_pct')}% while sampled). Raw stacks: `{profile.get('folded')}`.",
        "",
        "Self time by package (where the CPU actually is):",
        "",
        "| package | % of samples |",
        "|---|---|",
        *[f"| {name} | {pct} |" for name, pct in profile["packages"][:15]],
        "",
        "Top functions by self time:",
        "",
        "| function | self % |",
        "|---|---|",
        *[f"| `{name}` | {pct} |" for name, pct in profile["self"][:20]],
        "",
        "Top functions by inclusive time:",
        "",
        "| function | inclusive % |",
        "|---|---|",
        *[f"| `{name}` | {pct} |" for name, pct in profile["inclusive"][:25]],
    ]
    return "\n".join(out)
