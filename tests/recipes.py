"""Running the README's recipes as written: its code blocks, what they show, and terminals.

`Readme` finds the fenced blocks under a heading. `shown()` turns a block of what the README says
the user sees into `Shown` lines: each a pattern for one line of output (`...` stands for anything,
a callSid for any callSid), or, marked `<- typed`, a line the user types. `Network` is a network
namespace of its own (`unshare`), so that a recipe's fixed ports (5000, 8765, 8766) are free
whatever else runs on the machine; `Terminal` runs one command in it the way a user's terminal
does (bash, the venv activated, its own process group for Ctrl-C) and `expect` waits for what the
README shows, typing the typed lines when their turn comes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
LINE_TIMEOUT_S = 40.0
"""How long one expected line may take (the machine is shared; calls run in real time)."""
SID = re.compile(r"CA[0-9a-f]{32}")
SHORT_SID = re.compile(r"CA\.\.[0-9a-f]{6}")
TYPED = re.compile(r"^(?P<text>.*?)\s+<- typed\b.*$")


@dataclass(frozen=True)
class Block:
    language: str
    text: str

    @property
    def commands(self) -> list[str]:
        """The block's command lines, without trailing comments (two spaces or more, then `#`)."""
        lines = [re.sub(r"\s{2,}#\s.*$", "", line).strip() for line in self.text.splitlines()]
        return [line for line in lines if line and not line.startswith("#")]


class Readme:
    def __init__(self, text: str | None = None) -> None:
        self.text = (ROOT / "README.md").read_text() if text is None else text
        self.used: list[Block] = []
        """The blocks `block` and `first` handed out: the recipes that were run."""

    def section(self, heading: str) -> str:
        """From the heading line to the next heading of the same or a higher level."""
        lines = self.text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip("# ").strip() == heading and line.startswith("#"))
        level = len(lines[start]) - len(lines[start].lstrip("#"))
        end = next(
            (
                i
                for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
            ),
            len(lines),
        )
        return "\n".join(lines[start:end])

    def blocks(self, heading: str | None = None) -> list[Block]:
        text = self.text if heading is None else self.section(heading)
        return [
            Block(m["lang"], m["body"]) for m in re.finditer(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", text, re.S | re.M)
        ]

    def block(self, heading: str, language: str, index: int = 0) -> Block:
        found = [b for b in self.blocks(heading) if b.language == language][index]
        self.used.append(found)
        return found

    def first(self) -> Block:
        """The README's first block: its first lines."""
        found = self.blocks()[0]
        self.used.append(found)
        return found

    def inline(self, heading: str, starts: str) -> str:
        """An inline `code` span of the section that starts with `starts`."""
        prose = re.sub(r"^```.*?^```", "", self.section(heading), flags=re.S | re.M)
        return next(m for m in re.findall(r"`([^`]+)`", prose) if m.startswith(starts))


@dataclass(frozen=True)
class Shown:
    typed: bool
    text: str
    """What is typed, or the line as the README shows it."""
    pattern: re.Pattern[str] | None = None

    @property
    def group(self) -> str:
        """Lines of one group come in the README's order; games' lines and the transcript's come
        over two sockets, so between the groups any order is right."""
        return "game" if self.text.startswith("game ") else "main"


def shown(block: Block) -> list[Shown]:
    result = []
    for line in block.text.splitlines():
        typed = TYPED.match(line)
        if typed:
            result.append(Shown(True, typed["text"].strip()))
        elif line.strip():
            result.append(Shown(False, line, line_pattern(line)))
    return result


def line_pattern(line: str) -> re.Pattern[str]:
    """A shown line as a pattern: `...` is anything, a callSid (or its short form) any callSid."""
    parts = re.split(r"(\.\.\.|CA[0-9a-f]{32}|CA\.\.[0-9a-f]{6})", line.rstrip())
    regex = "".join(
        ".*"
        if part == "..."
        else SID.pattern
        if SID.fullmatch(part)
        else SHORT_SID.pattern
        if SHORT_SID.fullmatch(part)
        else re.escape(part)
        for part in parts
    )
    return re.compile(regex)


def namespaces_work() -> str | None:
    """None if recipes can run in network namespaces of their own, else why not."""
    for tool in ("unshare", "nsenter", "ip", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-rn", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot make a network namespace: {probe.stderr.strip()}"


def clean_environment() -> dict[str, str]:
    """A user's environment: none of callscribe's settings, no venv on PATH, no colours forced."""
    prefixes = (
        "DEEPGRAM_",
        "CERT_",
        "KEY_",
        "PROXY_",
        "CALLSCRIBE_",
        "TWILIO_",
        "PUBLIC_URL",
        "FORWARD_",
        "VIRTUAL_ENV",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT)))
    return env


class Network:
    """A network namespace with only a loopback interface, held open by a process of its own."""

    def __init__(self) -> None:
        self.holder: trio.Process | None = None

    async def __aenter__(self) -> Network:
        self.holder = await trio.lowlevel.open_process(
            ["unshare", "-rn", "sh", "-c", "ip link set lo up && echo up && exec cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.holder.stdout is not None
        with trio.fail_after(10):
            assert (await self.holder.stdout.receive_some(16)).strip() == b"up"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.holder is not None and self.holder.stdin is not None
        await self.holder.stdin.aclose()  # `cat` ends, and with it the namespace
        with trio.move_on_after(5):
            await self.holder.wait()
        if self.holder.returncode is None:
            self.holder.kill()
            await self.holder.wait()

    def enter(self) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--user", "--preserve-credentials", "--"]


@dataclass
class Terminal:
    """One command, typed into a terminal at `cwd` after `. .venv/bin/activate` in the checkout."""

    network: Network
    command: str
    cwd: Path = ROOT
    name: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    """Set for this terminal beside the user's (e.g. where the server keeps its call store)."""
    lines: list[str] = field(default_factory=list)
    process: trio.Process | None = None
    _changed: trio.Event = field(default_factory=trio.Event)
    _eof: bool = False

    async def start(self, nursery: trio.Nursery) -> Terminal:
        script = (
            f"cd {shlex.quote(str(ROOT))} && . .venv/bin/activate && cd {shlex.quote(str(self.cwd))} && {self.command}"
        )
        self.process = await trio.lowlevel.open_process(
            [*self.network.enter(), "bash", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=clean_environment() | self.environment,
            start_new_session=True,  # its own process group, as in a terminal: Ctrl-C reaches all of it
        )
        nursery.start_soon(self._read)
        return self

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        pending = b""
        while True:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            self.lines += [line.decode("utf-8", "replace").rstrip("\r") for line in complete]
            self._wake()
        if pending:
            self.lines.append(pending.decode("utf-8", "replace"))
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for(self, pattern: str | re.Pattern[str], after: int = 0, timeout: float = LINE_TIMEOUT_S) -> int:
        """The index of the first line from `after` on that `pattern` matches in full."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with trio.move_on_after(timeout):
            while True:
                for index in range(after, len(self.lines)):
                    if regex.fullmatch(self.lines[index]):
                        return index
                if self._eof:
                    break
                await self._changed.wait()
        raise AssertionError(f"{self.name or self.command!r} never showed {regex.pattern!r}; it showed:\n{self.output}")

    async def expect(self, items: list[Shown]) -> None:
        """Everything the README shows, each group's lines in order; typed lines are typed once
        the lines above them have shown."""
        position: dict[str, int] = {}
        for item in items:
            if item.typed:
                await self.type(item.text)
                continue
            assert item.pattern is not None
            found = await self.wait_for(item.pattern, position.get(item.group, 0))
            position[item.group] = found + 1

    async def type(self, text: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.send_all(text.encode() + b"\n")

    async def end_input(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.aclose()

    def interrupt(self) -> None:
        """Ctrl-C."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)

    async def exit_status(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        with trio.move_on_after(timeout):
            status = await self.process.wait()
            while not self._eof:  # what it wrote last is still in the pipe
                await self._changed.wait()
            return status
        os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        raise AssertionError(f"{self.name or self.command!r} did not end within {timeout:g} s:\n{self.output}")

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
