"""The machine the benchmark runs on, as Linux's /proc tells it: CPU time and RSS of a process, busy
time of a core, and a description of the machine and software stored with the results."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from callscribe.bench.options import Options, server_cpus

CLK_TCK = os.sysconf("SC_CLK_TCK")
_PACKAGES = ("hypercorn", "quart", "quart-trio", "trio", "trio-websocket", "wsproto", "msgspec", "h11")


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int, tid: int) -> float | None:
    """utime + stime of one thread of a process, seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int | str = "self") -> int:
    """Resident set size of a process, KiB (from /proc/<pid>/status); 0 if it has none."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a `--workers` supervisor and its workers), from /proc."""
    tree, index = [pid], 0
    while index < len(tree):
        try:  # a child belongs to the thread that started it (Trio starts processes from its threads)
            for task in os.listdir(f"/proc/{tree[index]}/task"):
                with open(f"/proc/{tree[index]}/task/{task}/children") as f:
                    tree += [int(child) for child in f.read().split() if int(child) not in tree]
        except OSError:
            pass
        index += 1
    return tree


def _tree_sum(pid: int, measure: Callable[[int], float]) -> float:
    """`measure` summed over a process and its live descendants (one that ended meanwhile counts 0)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += measure(member)
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants, seconds (a worker that ended is not counted)."""
    return _tree_sum(pid, cpu_seconds)


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its live descendants, KiB."""
    return int(_tree_sum(pid, rss_kb))


def cpu_busy_seconds(cpu: int) -> float | None:
    """Time CPU ``cpu`` was busy (anything but idle and iowait), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    values = [int(v) for v in line.split()[1:]]
                    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git_revision() -> str:
    """The checkout's short revision, marked when it has uncommitted changes; "" outside git."""
    try:
        root = Path(__file__).resolve().parents[3]
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(opts: Options) -> dict[str, Any]:
    """The machine, the software stack and how the benchmark used them, for the results."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git": _git_revision(),
        "pinned": _pinning(opts),
        "window_ms": opts.window_ms,
        "server_pythonpath": opts.server_pythonpath,
        "frames_per_send": 2 if opts.coalesce_tracks else 1,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _pinning(opts: Options) -> str:
    if not opts.pin:
        return "not pinned"
    return f"server on CPU {server_cpus(opts)}, load on CPU {opts.load_cpu}"
