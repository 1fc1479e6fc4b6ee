"""A real redis-server for tests: started on a free loopback port by the test itself."""

from __future__ import annotations

import shutil
import signal
import subprocess

import coredis
import pytest
import trio

from conftest import free_port

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is installed by scripts/setup"
)


class RedisServer:
    """A redis-server of the test's own on a free port, which a test may kill and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: trio.Process | None = None

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        with trio.fail_after(10):
            while True:
                try:
                    async with coredis.Redis.from_url(self.url) as client:
                        await client.ping()
                    return
                except* (coredis.exceptions.ConnectionError, OSError):
                    pass  # not listening yet
                await trio.sleep(0.05)

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None

    def pause(self) -> None:
        """Hang: connections stay open and nothing is answered (SIGSTOP), until `resume`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
