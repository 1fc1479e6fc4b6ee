"""The serving process's garbage collector (gc_tuning.py), set in a child process so that the test
process keeps its own."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from callscribe import cli
from callscribe.server import gc_tuning

PROBE = """
import gc, sys
import callscribe.cli
from callscribe.server.gc_tuning import tune_for_serving
tune_for_serving()
print(gc.get_freeze_count(), *gc.get_threshold())
"""


def test_loaded_code_is_frozen_and_young_collections_are_rarer() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    frozen, *threshold = map(int, out.stdout.split())
    assert frozen > 10_000  # the imported modules' objects are never scanned again
    assert threshold == [gc_tuning.YOUNG_THRESHOLD, gc_tuning.MIDDLE_THRESHOLD, gc_tuning.OLD_THRESHOLD]
    assert gc_tuning.YOUNG_THRESHOLD > 700  # CPython's default


def test_the_serve_command_tunes_the_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    tuned: list[bool] = []
    monkeypatch.setattr(gc_tuning, "tune_for_serving", lambda: tuned.append(True))
    with socket.socket() as taken:  # the server cannot listen: it stops at once with status 2
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = cli.main(["serve", "--listen", f"127.0.0.1:{port}", "--deepgram-api-key", "k", "--store", "none"])
    assert status == 2
    assert tuned == [True]
