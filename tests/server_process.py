"""`callscribe serve` as a real process of its own, for tests of several processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from conftest import RunningServer, free_port

SETTINGS_PREFIXES = ("DEEPGRAM_", "CERT_", "KEY_", "PROXY_", "CALLSCRIBE_", "TWILIO_")


class ServerProcess:
    """One `python -m callscribe serve ...` on a free loopback port, its log in `log_path`."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
        # Each process keeps its call store in a folder of its own, beside its log (unless told otherwise).
        data = {"CALLSCRIBE_DATA_DIR": str(log_path.parent / f"data-{self.port}")}
        self.env = base | data | env | {"PROXY_URL": f"127.0.0.1:{self.port}"}
        self.args, self.log_path = args, log_path
        self.process: trio.Process | None = None
        self.server = RunningServer(
            f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}", trio.Event(), trio.Event()
        )

    async def start(self, ready_line: str = "") -> ServerProcess:
        """Start it, and wait until /healthz answers (and `ready_line` is in the log)."""
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "callscribe", "serve", *self.args],
                env=self.env,
                cwd=self.log_path.parent,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        async with httpx.AsyncClient() as http:
            with trio.fail_after(20):
                while True:
                    if self.process.returncode is not None:
                        raise AssertionError(f"the server exited with {self.process.returncode}:\n{self.log}")
                    try:
                        if (await http.get(self.server.http_url + "/healthz")).status_code == 200 and (
                            ready_line in self.log
                        ):
                            return self
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing cleaned up (as a crash)."""
        assert self.process is not None
        self.process.kill()

    async def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, and the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(timeout_s):
            return await self.process.wait()

    async def close(self) -> None:
        """However the test went: no process outlives it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
