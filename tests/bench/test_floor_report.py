"""The floor comparison's report and headline show the picows+uvloop floor, or why it was skipped."""

from __future__ import annotations

from typing import Any

import pytest

from callscribe.bench import scenarios
from callscribe.bench.headline import headline, headline_text
from callscribe.bench.options import Options, Settings
from callscribe.bench.report import markdown


def _step(kind: str, us: float) -> dict[str, Any]:
    return {"kind": kind, "calls": 5, "cpu_us_per_frame": us, "server_cpu_pct": 1.0, "sustained": True}


def _floor(picows: bool) -> dict[str, Any]:
    steps = {k: _step(k, us) for k, us in (("floor-receive", 180.0), ("floor-forward", 200.0), ("callscribe", 234.0))}
    floor: dict[str, Any] = {"calls": 5, "steps": steps, "ratio_to_floor_receive": 1.3, "ratio_to_floor_forward": 1.17}
    if picows:
        steps["floor-picows-receive"] = _step("floor-picows-receive", 39.0)
        floor["ratio_to_floor_picows_receive"] = 6.0
    else:
        floor["picows_floor_skipped"] = "picows and uvloop not installed"
    return floor


def test_the_report_and_headline_give_the_ratio_to_the_picows_floor() -> None:
    results = {"floor": _floor(picows=True)}
    assert "callscribe / picows+uvloop = **6.0x** CPU per frame" in markdown(results)
    assert "| floor-picows-receive | 5 |" in markdown(results)
    head = headline(results)
    assert head["ratio_to_picows_floor"] == 6.0 and head["floor_picows_receive_us_per_frame"] == 39.0
    assert "vs the picows+uvloop floor: 234.0 µs vs 39.0 µs receive-only = 6.0x" in headline_text(results)


def test_the_report_says_why_the_picows_floor_is_missing() -> None:
    results = {"floor": _floor(picows=False)}
    assert "picows+uvloop floor (`callscribe.bench.floor_picows`) was skipped: picows and uvloop not installed" in (
        markdown(results)
    )
    assert "ratio_to_picows_floor" not in headline(results)
    assert "picows" not in headline_text(results)


def test_the_floor_scenario_skips_the_picows_floor_with_one_line_when_it_cannot_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[str] = []

    def fake_step(opts: Options, plan: Any, **_: Any) -> dict[str, Any]:
        ran.append(plan.kind)
        return {**_step(plan.kind, 100.0), "frames_sent": 1, "frames_received": 0, "subscribers_per_call": 0}

    monkeypatch.setattr(scenarios, "run_step", fake_step)
    monkeypatch.setattr(scenarios, "describe", lambda step: f"ran {step['kind']}")
    monkeypatch.setattr(scenarios.importlib.util, "find_spec", lambda name: None)
    out = scenarios.scenario_floor(Options(), Settings(floor_calls=5), None)
    assert "floor-picows-receive" not in ran and "floor-receive" in ran
    assert out["picows_floor_skipped"] == "picows and uvloop not installed"
    assert "ratio_to_floor_picows_receive" not in out and out["ratio_to_floor_receive"] == 1.0
    skipped = [line for line in capsys.readouterr().out.splitlines() if "picows" in line]
    assert skipped == [
        "floor: skipping floor-picows-receive (picows and uvloop not installed: pip install 'callscribe[bench]')"
    ]


def test_the_floor_scenario_runs_the_picows_floor_when_it_can(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def fake_step(opts: Options, plan: Any, **_: Any) -> dict[str, Any]:
        ran.append(plan.kind)
        return _step(plan.kind, 50.0 if plan.kind == "floor-picows-receive" else 100.0)

    monkeypatch.setattr(scenarios, "run_step", fake_step)
    monkeypatch.setattr(scenarios, "describe", lambda step: "")
    monkeypatch.setattr(scenarios, "picows_floor_missing", lambda: None)
    out = scenarios.scenario_floor(Options(quiet=True), Settings(floor_calls=5), None)
    assert ran[0] == "floor-picows-receive" and "callscribe" in ran
    assert out["ratio_to_floor_picows_receive"] == 2.0 and "picows_floor_skipped" not in out
