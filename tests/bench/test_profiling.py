"""The profile summary reads py-spy's folded stacks."""

from __future__ import annotations

from pathlib import Path

from callscribe.bench.profiling import profile_markdown, summarise_profile


def test_profile_summary_reads_py_spy_folded_stacks(tmp_path: Path) -> None:
    folded = tmp_path / "p.folded"
    folded.write_text(
        "run (trio/_core/_run.py:10);handle (hypercorn/protocol/ws_stream.py:5);process (wsproto/frame_protocol.py:34) 3\n"
        "run (trio/_core/_run.py:10);_mix (callscribe/call.py:219) 1\n"
    )
    summary = summarise_profile(folded)
    assert summary["samples"] == 4
    assert summary["packages"][0] == ("wsproto", 75.0)
    assert ("run (trio/_core/_run.py)", 100.0) in summary["inclusive"]
    text = profile_markdown({"step": {"calls": 10, "server_cpu_pct": 50.0}, "folded": "p.folded", **summary})
    assert "| wsproto | 75.0 |" in text and "4 samples" in text


def test_a_missing_or_empty_profile_says_so(tmp_path: Path) -> None:
    assert summarise_profile(tmp_path / "none.folded") == {"profile_error": f"no profile at {tmp_path / 'none.folded'}"}
    (tmp_path / "empty.folded").write_text("")
    assert profile_markdown(summarise_profile(tmp_path / "empty.folded")) == "empty profile"
