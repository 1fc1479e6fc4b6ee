"""Where the server's time goes: py-spy records the server during a step's window, and its folded
stacks are summarised (self and inclusive time per function, self time per package) for the report."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from callscribe.bench.processes import forget_process, start_process


def start_profiler(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy recording process ``pid`` for ``seconds`` into ``path``; None without py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() and not shutil.which(spy):
        print("bench: py-spy not found; no profile (pip install -e '.[bench]')", file=sys.stderr)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, int(seconds))),
        "--rate",
        "200",
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(path),
    ]
    return start_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def finish_profiler(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) for py-spy to write its output; kill it after that."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        await trio.sleep(0.1)
    if process.poll() is None:
        process.kill()
    forget_process(process)


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
    """The report's section on a profile (a :func:`summarise_profile` result with its step)."""
    if "profile_error" in profile:
        return str(profile["profile_error"])
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
