"""The processes the benchmark starts: the server under test (pinned to its core), and a registry
so that none of them outlives the benchmark (Ctrl-C, errors, even SIGKILL of the benchmark)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from callscribe.bench import ws as bench_ws
from callscribe.bench.machine import thread_cpu_seconds, tree_cpu_seconds, tree_rss_kb
from callscribe.bench.options import API_KEY, Options
from callscribe.bench.ws_frames import WebSocketError

_processes: set[subprocess.Popen[bytes]] = set()


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies (even by SIGKILL), so no server
    outlives it. (The benchmark starts its processes from its main thread, which the signal follows.)"""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_process(command: list[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Start ``command`` (stdin from /dev/null), registered for :func:`kill_all` and dying with this process."""
    process: subprocess.Popen[bytes] = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
        **popen,
    )
    _processes.add(process)
    return process


def forget_process(process: subprocess.Popen[bytes]) -> None:
    """Take an ended process out of the registry."""
    _processes.discard(process)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; waits for the process to end."""
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    finally:
        forget_process(process)


def kill_all() -> None:
    """Stop every process this module started (Ctrl-C, errors)."""
    for process in list(_processes):
        try:
            stop_process(process, 5.0)
        except Exception:
            pass


def free_port(host: str) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """The server under test, in its own process (pinned with taskset when asked)."""

    def __init__(
        self,
        opts: Options,
        kind: str,
        deepgram_url: str,
        store: str | None = None,
        *,
        redis_url: str | None = None,
        cpus: str | None = None,
    ) -> None:
        """`store`: the call store (default `opts.store`); `redis_url`: serve with it (and
        `opts.workers`); `cpus`: taskset's list (default `opts.server_cpu`)."""
        self.kind = kind
        self._store_dir: str | None = None
        self.port = free_port(opts.host)
        self.host = opts.host
        opts.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = opts.log_dir / f"server-{kind}-{self.port}.log"
        env = dict(os.environ)
        env["DEEPGRAM_API_KEY"] = API_KEY
        for name in ("DEEPGRAM_URL", "PROXY_URL", "CERT_PEM", "KEY_PEM", "DEEPGRAM_CA_FILE"):
            env.pop(name, None)
        # The picows floor is the benchmark's own yardstick, not code of the tree under test (which may predate it).
        if opts.server_pythonpath and kind != "floor-picows-receive":
            env["PYTHONPATH"] = opts.server_pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        listen = f"{opts.host}:{self.port}"
        if kind == "callscribe":
            command = [
                sys.executable,
                "-m",
                "callscribe",
                "serve",
                "--listen",
                listen,
                "--deepgram-url",
                deepgram_url,
                "--window-ms",
                str(opts.window_ms),
                "--log-level",
                opts.server_log_level,
            ]
            # By variable rather than flag, so that trees from before the call store (--server-pythonpath) run too.
            env["CALLSCRIBE_STORE"] = self._store_location(store or opts.store)
            if redis_url:
                command += ["--redis-url", redis_url]
            if opts.workers > 1:
                command += ["--workers", str(opts.workers)]
        elif kind == "floor-picows-receive":  # not callscribe's stack: no Deepgram, its own module
            command = [sys.executable, "-m", "callscribe.bench.floor_picows", "--listen", listen]
        else:
            command = [
                sys.executable,
                "-m",
                "callscribe.bench.floor",
                "--kind",
                kind.removeprefix("floor-"),
                "--listen",
                listen,
                "--deepgram-url",
                deepgram_url,
                "--deepgram-api-key",
                API_KEY,
                "--window-ms",
                str(opts.window_ms),
            ]
        if opts.pin and shutil.which("taskset"):
            command = ["taskset", "-c", cpus or str(opts.server_cpu), *command]
        self.command = command
        self._log = open(self.log_path, "wb")
        self.process = start_process(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def _store_location(self, store: str) -> str:
        """``sqlite``: a fresh file in a directory of its own, deleted with the server."""
        if store != "sqlite":
            return store
        self._store_dir = tempfile.mkdtemp(prefix="callscribe-bench-store-")
        return os.path.join(self._store_dir, "callscribe.db")

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """The server's CPU time (with --workers: the supervisor's and its workers')."""
        return tree_cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return tree_rss_kb(self.pid)

    def main_thread_cpu_seconds(self) -> float | None:
        """CPU of the server's main thread (its event loop); the rest of the process's CPU is worker
        threads' (the call store's database work)."""
        return thread_cpu_seconds(self.pid, self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = 30.0, workers: int = 1) -> None:
        """Poll ``/healthz`` until it answers 200 (and every worker listens); RuntimeError if the server
        exits or takes too long."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = await bench_ws.http_get(self.host, self.port, "/healthz", timeout=1.0)
                if status == 200 and (workers == 1 or f"{workers} workers listening" in self.log_tail(400)):
                    return
            except (OSError, trio.TooSlowError, WebSocketError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server not ready within {timeout:g} s:\n{self.log_tail()}")
            await trio.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout)
        self._log.close()
        if self._store_dir is not None:
            shutil.rmtree(self._store_dir, ignore_errors=True)


class RedisProcess:
    """A redis-server of the step's own on a free port (no persistence), for --workers and split steps."""

    def __init__(self, opts: Options) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is needed for steps with several server processes (scripts/setup test)")
        self.port = free_port(opts.host)
        self.url = f"redis://{opts.host}:{self.port}"
        self.process = start_process(
            ["redis-server", "--port", str(self.port), "--bind", opts.host, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        self._host = opts.host

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self._host, self.port), timeout=1.0) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            await trio.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout:g} s")

    def stop(self) -> None:
        stop_process(self.process, 5.0)
