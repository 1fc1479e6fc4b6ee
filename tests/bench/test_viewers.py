"""The viewers scenario's verdict: 50 viewers of a call change nothing unless the difference beats the noise."""

from __future__ import annotations

from typing import Any

from callscribe.bench.viewers import VIEWERS, summarise, viewers_markdown


def rounds(one: list[float], many: list[float]) -> list[dict[str, Any]]:
    made = []
    for added_one, added_many in zip(one, many, strict=True):
        for viewers, added in ((1, added_one), (VIEWERS, added_many)):
            made.append(
                {
                    "viewers": viewers,
                    "audio_p50_ms": 60.0,
                    "audio_p99_ms": 100.0 + added,
                    "added_p50_ms": 1.0,
                    "added_p99_ms": added,
                    "fanout_p99_ms": 2.0 if viewers == 1 else 5.0,
                    "server_cpu_pct": 3.0,
                }
            )
    return made


def test_a_difference_within_the_noise_between_rounds_is_no_change() -> None:
    summary = summarise(rounds([3.0, 4.5, 3.5], [4.0, 3.2, 4.4]))
    assert summary["1"]["added_p99_ms"] == 3.5 and summary["50"]["added_p99_ms"] == 4.0
    assert summary["1"]["added_p99_spread_ms"] == 1.5
    assert summary["added_p99_difference_ms"] == 0.5 and summary["unchanged"]


def test_a_difference_beyond_the_noise_is_a_change() -> None:
    summary = summarise(rounds([3.0, 3.2, 3.1], [9.0, 9.5, 9.2]))
    assert summary["added_p99_difference_ms"] == 6.1 and not summary["unchanged"]
    section = {"rounds": rounds([3.0], [9.0]), "viewers": VIEWERS, **summarise(rounds([3.0, 3.2], [9.0, 9.5]))}
    assert "**changed**" in "".join(viewers_markdown(section))


def test_missing_figures_give_no_verdict() -> None:
    made = rounds([3.0], [4.0])
    for r in made:
        r["added_p99_ms"] = None
    summary = summarise(made)
    assert "unchanged" not in summary
    assert viewers_markdown({"rounds": made, "viewers": VIEWERS, **summary}) == []
