"""`callscribe calls` and the README's recipes for the call store, run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import webvtt

from callscribe.core import webhooks
from callscribe.server.store import EventSettings, open_engine
from store_records import end, final, start

README = (Path(__file__).parents[2] / "README.md").read_text()
CALL_SID = "CA0f3c5d2c8e2b4f0e9a1b7c6d5e4f3a2b"


def readme_block(after: str, language: str) -> str:
    """The first ```language block of the README after the text `after`."""
    rest = README[README.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", rest, re.DOTALL)
    assert match is not None
    return match.group(1)


def make_store(folder: Path) -> None:
    engine = open_engine(str(folder / "data" / "callscribe.db"))
    engine.open()
    engine.register("test", time.time())
    engine.write(
        [
            start(CALL_SID, 1_700_000_000.0),
            final(CALL_SID, 1, "I want a refund please"),
            final(CALL_SID, 2, "Of course", channel=1),
            end(CALL_SID, 2, at=1_700_000_042.0),
            start("CA2", 1_700_000_100.0),
            final("CA2", 1, "nothing to see"),
        ],
        EventSettings(),
    )
    engine.close()


def run(command: list[str] | str, cwd: Path, shell: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLSCRIBE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(command, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=60)


def test_the_readme_recipes_for_the_command_line(tmp_path: Path) -> None:
    make_store(tmp_path)
    recipe = readme_block("### On the command line", "sh")
    outputs = []
    for line in recipe.strip().splitlines():
        result = run(["bash", "-euo", "pipefail", "-c", line], tmp_path)
        assert result.returncode == 0, (line, result.stderr)
        outputs.append(result.stdout)
    listed, shown, _ = outputs
    assert listed.splitlines() == [
        f"2023-11-14T22:13:20.000Z  {CALL_SID}  +15550100 -> +15550199  42 s  ended  I want a refund please"
    ]
    assert f"callSid: {CALL_SID}" in shown and "outcome: ended" in shown
    assert shown.endswith("[00:00] Caller: I want a refund please\n[00:01] Other party: Of course\n")
    cues = list(webvtt.read(str(tmp_path / "call.vtt")))
    assert [(c.voice, c.text) for c in cues] == [("Caller", "I want a refund please"), ("Other party", "Of course")]


def test_listing_as_json_an_unknown_call_and_no_store(tmp_path: Path) -> None:
    make_store(tmp_path)
    cli = [sys.executable, "-m", "callscribe", "calls"]
    result = run([*cli, "--store", "data/callscribe.db", "list", "--live", "--json"], tmp_path)
    assert [c["callSid"] for c in json.loads(result.stdout)["calls"]] == ["CA2"]
    result = run([*cli, "--data-dir", "data", "export", CALL_SID, "--format", "json"], tmp_path)
    assert [json.loads(line)["channel"]["alternatives"][0]["transcript"] for line in result.stdout.splitlines()] == [
        "I want a refund please",
        "Of course",
    ]
    unknown = run([*cli, "show", "CAnope"], tmp_path)
    assert unknown.returncode == 1 and "no call 'CAnope'" in unknown.stderr
    missing = run([*cli, "--data-dir", "elsewhere", "list"], tmp_path)
    assert (
        missing.returncode == 2
        and missing.stderr.count("\n") == 1
        and "no store at elsewhere/callscribe.db" in missing.stderr
    )
    bad = run([*cli, "list", "--since", "soon"], tmp_path)
    assert bad.returncode == 2 and "since must be an ISO 8601 time" in bad.stderr


def test_the_readme_signature_check_accepts_what_callscribe_signs() -> None:
    namespace: dict[str, object] = {}
    exec(readme_block("**Signature.**", "python"), namespace)
    verify = namespace["verify"]
    body = b'{"id":"evt_1","type":"call.started"}'
    header = webhooks.sign(b"my secret", int(time.time()), body)
    assert verify("my secret", header, body) is True  # type: ignore[operator]
    assert verify("my secret", header, body.replace(b"1", b"2")) is False  # type: ignore[operator]
    assert verify("another secret", header, body) is False  # type: ignore[operator]
    old = webhooks.sign(b"my secret", int(time.time()) - 3600, body)
    assert verify("my secret", old, body) is False  # type: ignore[operator]
    assert verify("my secret", "nonsense", body) is False  # type: ignore[operator]
