"""The ``viewers`` scenario: does watching a call slow the call down?

A dashboard page showing a call is a ``/client`` subscriber of it. This runs one call with one
subscriber and the same call with ``VIEWERS`` (50) subscribers, alternating, ``rounds`` times each
(interleaved, so a disturbance of the machine hits both alike), and compares the call's audio
latency (simulator to fake Deepgram) and the part of it the server adds. Watching must not change
either beyond the noise between rounds of the same kind.
"""

from __future__ import annotations

import statistics
from typing import Any

from callscribe.bench.options import Options, Settings
from callscribe.bench.step import describe, run_step

VIEWERS = 50
"""Subscribers of the watched call."""
KEYS = ("audio_p50_ms", "audio_p99_ms", "added_p50_ms", "added_p99_ms", "fanout_p99_ms", "server_cpu_pct")
"""What is compared between one viewer and many."""


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 2) if present else None


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds, per number of viewers, of each compared figure; and how far apart the
    rounds of one kind were (the noise a difference must exceed to mean anything)."""
    out: dict[str, Any] = {}
    for viewers in sorted({r["viewers"] for r in rounds}):
        mine = [r for r in rounds if r["viewers"] == viewers]
        out[str(viewers)] = {key: _median([r[key] for r in mine]) for key in KEYS}
        p99s = [r["added_p99_ms"] for r in mine if r["added_p99_ms"] is not None]
        out[str(viewers)]["added_p99_spread_ms"] = round(max(p99s) - min(p99s), 2) if p99s else None
    one, many = out.get("1"), out.get(str(VIEWERS))
    if one and many and one["added_p99_ms"] is not None and many["added_p99_ms"] is not None:
        difference = round(many["added_p99_ms"] - one["added_p99_ms"], 2)
        noise = max(one["added_p99_spread_ms"] or 0.0, many["added_p99_spread_ms"] or 0.0)
        out["added_p99_difference_ms"] = difference
        out["unchanged"] = difference <= max(noise, 1.0)
    return out


def scenario_viewers(opts: Options, settings: Settings) -> dict[str, Any]:
    rounds: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    for _ in range(settings.viewer_rounds):
        for viewers in (1, VIEWERS):
            result = run_step(opts, settings.plan(1, subscribers=viewers))
            opts.say(f"{describe(result)} [{viewers} viewer{'s' if viewers > 1 else ''}]")
            steps.append(result)
            rounds.append({"viewers": viewers, **{key: result.get(key) for key in KEYS}})
    summary = summarise(rounds)
    if "unchanged" in summary:
        one, many = summary["1"], summary[str(VIEWERS)]
        opts.say(
            f"viewers: 1 call, audio p99 {one['audio_p99_ms']} ms with 1 viewer, {many['audio_p99_ms']} ms with "
            f"{VIEWERS}; added by the server p99 {one['added_p99_ms']} vs {many['added_p99_ms']} ms "
            f"({'unchanged' if summary['unchanged'] else 'CHANGED'}: rounds of one kind differ by up to "
            f"{max(one['added_p99_spread_ms'] or 0, many['added_p99_spread_ms'] or 0)} ms)"
        )
    return {"rounds": rounds, "steps": steps, "viewers": VIEWERS, **summary}


def viewers_markdown(section: dict[str, Any]) -> list[str]:
    """The report's paragraph for the scenario."""
    if "unchanged" not in section:
        return []
    one, many = section["1"], section[str(section["viewers"])]
    return [
        f"One call watched by 1 and by {section['viewers']} `/client` subscribers, {len(section['rounds']) // 2} "
        f"interleaved rounds each (medians): audio p50/p99 {one['audio_p50_ms']}/{one['audio_p99_ms']} ms vs "
        f"{many['audio_p50_ms']}/{many['audio_p99_ms']} ms; added by the server p99 {one['added_p99_ms']} vs "
        f"{many['added_p99_ms']} ms (difference {section['added_p99_difference_ms']} ms): "
        f"**{'unchanged' if section['unchanged'] else 'changed'}** (rounds of one kind differ by up to "
        f"{max(one['added_p99_spread_ms'] or 0, many['added_p99_spread_ms'] or 0)} ms). Server CPU "
        f"{one['server_cpu_pct']}% vs {many['server_cpu_pct']}%.",
        "",
    ]
