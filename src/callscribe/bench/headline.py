"""What the benchmark's results say: the targets, met or not, and the headline numbers."""

from __future__ import annotations

from typing import Any

CPU_TARGET_RATIO = 1.25
CALLS_TARGET = 100
LATENCY_TARGET_SLACK_MS = 10
LATENCY_TARGET_CPU_PCT = 50
FANOUT_TARGET_MS = 100
RSS_TARGET_KB = 250


def _step_at(results: dict[str, Any], calls: int) -> dict[str, Any] | None:
    """The callscribe step at ``calls`` calls, from the ramp or else the floor comparison."""
    steps: list[dict[str, Any]] = [s for s in results.get("ramp", {}).get("steps", []) if s["calls"] == calls]
    if steps:
        return steps[0]
    floor = results.get("floor", {})
    if floor.get("calls") == calls:
        step: dict[str, Any] | None = floor.get("steps", {}).get("callscribe")
        return step
    return None


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each performance target (docs/performance.md); met None when not measured."""
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
    """The headline numbers: the ramp's best, the step at 100 calls (else the largest sustained one), the
    floor ratios, fan-out and soak."""
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
        if "floor-picows-receive" in floor["steps"]:
            head["floor_picows_receive_us_per_frame"] = floor["steps"]["floor-picows-receive"].get("cpu_us_per_frame")
            head["ratio_to_picows_floor"] = floor.get("ratio_to_floor_picows_receive")
    if results.get("fanout"):
        head["fanout_last_subscriber_p99_ms"] = results["fanout"]["step"].get("fanout_last_p99_ms")
    if results.get("soak") and "slope_kb_per_min" in results["soak"]:
        head["soak_slope_kb_per_min"] = results["soak"]["slope_kb_per_min"]
    return head


def headline_text(results: dict[str, Any]) -> str:
    """The headline and the targets as lines of text (printed at the end of a run, and in the report)."""
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
    if head.get("ratio_to_picows_floor") is not None:
        lines.append(
            f"CPU per frame vs the picows+uvloop floor: {head['callscribe_us_per_frame_at_floor_calls']} µs vs "
            f"{head['floor_picows_receive_us_per_frame']} µs receive-only = {head['ratio_to_picows_floor']}x"
        )
    if "fanout_last_subscriber_p99_ms" in head:
        lines.append(f"fan-out to the last of the subscribers: p99 {head['fanout_last_subscriber_p99_ms']} ms")
    if "soak_slope_kb_per_min" in head:
        lines.append(f"soak RSS slope: {head['soak_slope_kb_per_min']} KB/min")
    for target, measured, met in targets(results):
        lines.append(f"  [{'met' if met else 'MISSED' if met is False else '?'}] {target}: {measured}")
    return "\n".join(lines)
