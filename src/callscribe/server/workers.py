"""`callscribe serve --workers N`: N server processes on one port, supervised by this one.

Each worker is `python -m callscribe serve` with the same flags and environment, started by the
supervisor with `CALLSCRIBE_WORKERS=1` and the internal `CALLSCRIBE_WORKER_OF` (the supervisor's pid
and a readiness pipe). A worker binds the port with SO_REUSEPORT, so the kernel spreads new
connections over the workers' listening sockets; they share calls, subscribers and game codes
through Redis, which more than one worker requires. The supervisor:

- checks, before starting any worker, that the address can be bound (binding it itself with
  SO_REUSEPORT: with port 0 that picks the port every worker then uses) and that Redis answers; a
  failure is one line on stderr and exit 2, as for one process. A worker that fails to start
  stops them all with its own one line, and exit 2.
- restarts a worker that dies (after a pause that doubles, up to 30 s, while they keep dying within
  seconds of starting);
- on SIGTERM or SIGINT sends SIGTERM to every worker, which drains like one process does (calls
  finish, final results are delivered), waits for them (SIGKILL after the grace period and 15 s
  more) and exits 0.

A worker whose supervisor is gone (even by SIGKILL) notices within `ORPHAN_CHECK_S` and drains
as on SIGTERM. (Not Linux's parent-death signal: it follows the thread that started the child, and
Trio starts processes from its worker threads, which come and go.)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from callscribe.server.config import ServerSettings

log = logging.getLogger(__name__)

WORKER_ENV = "CALLSCRIBE_WORKER_OF"
"""Set by the supervisor in its workers' environment: "<supervisor pid>:<readiness pipe fd>"."""
READY_TIMEOUT_S = 30.0
QUICK_DEATH_S = 5.0
MAX_RESTART_PAUSE_S = 30.0
KILL_AFTER_GRACE_S = 15.0
ORPHAN_CHECK_S = 0.5


class SupervisorError(Exception):
    """The workers could not be started; the message is one line for the person starting them."""


def worker_argv(argv: Sequence[str], host: str, port: int) -> list[str]:
    """The worker's command line: the supervisor's, without `--workers`, listening on `port`
    (the last `--listen` wins)."""
    host = f"[{host}]" if ":" in host else host
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument == "--workers":
            skip = True
            continue
        if argument.startswith("--workers="):
            continue
        kept.append(argument)
    return [sys.executable, "-m", "callscribe", *kept, "--listen", f"{host}:{port}"]


def reserve_address(settings: ServerSettings) -> socket.socket:
    """Bind (not listen on) the address with SO_REUSEPORT: proves it is free and, for port 0,
    picks the port. Kept open while the workers run, so the port stays the workers'."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((settings.host, settings.port))
    except OSError as error:
        sock.close()
        where = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"
        raise SupervisorError(f"cannot listen on {where}: {error.strerror or error}") from None
    return sock


@dataclass
class _Worker:
    number: int
    process: trio.Process | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches and stops the workers."""

    def __init__(self, settings: ServerSettings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.stopping = False
        self.workers = [_Worker(n) for n in range(1, settings.workers + 1)]
        self._port = 0

    async def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT; the exit status (raises SupervisorError at start-up)."""
        with reserve_address(self.settings) as reserved:
            self._port = reserved.getsockname()[1]
            if self.settings.redis_url:
                from callscribe.server.serve import StartupError, reach_redis

                try:
                    await reach_redis(self.settings.redis_url)
                except* StartupError as group:
                    raise SupervisorError(str(group.exceptions[0])) from None
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    if not await self._start(worker):  # its one line is on stderr: stop the others
                        self.stopping = True
                        await self._stop_all()
                        return 2
                log.info(
                    "callscribe: %d workers listening on %s:%d (pids %s)",
                    len(self.workers),
                    self.settings.host,
                    self._port,
                    ", ".join(str(w.process.pid) for w in self.workers if w.process),
                )
                for worker in self.workers:
                    nursery.start_soon(self._watch, worker)
                await self._wait_for_signal()
                self.stopping = True
                await self._stop_all()
                nursery.cancel_scope.cancel()
        failed = [w for w in self.workers if w.exits and w.exits[-1] != 0]
        for worker in failed:
            log.warning("worker %d ended with status %d", worker.number, worker.exits[-1])
        return 0

    async def _start(self, worker: _Worker) -> bool:
        """Start `worker` and wait until it listens; False if it ended first (its error is on stderr)."""
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, CALLSCRIBE_WORKERS="1", **{WORKER_ENV: f"{os.getpid()}:{write_fd}"})
        try:
            worker.process = await trio.lowlevel.open_process(
                worker_argv(self.argv, self.settings.host, self._port),
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(write_fd,),
            )
        finally:
            os.close(write_fd)
        worker.started_at = trio.current_time()
        ready = False
        try:
            with trio.move_on_after(READY_TIMEOUT_S):
                # The worker writes "ready" once it listens, or its end closes as it dies (EOF).
                await trio.lowlevel.wait_readable(read_fd)
                ready = os.read(read_fd, 16).startswith(b"ready")
        finally:
            os.close(read_fd)
        if not ready:
            if worker.process.returncode is None:
                worker.process.terminate()
            await worker.process.wait()
        return ready

    async def _watch(self, worker: _Worker) -> None:
        """Restart `worker` whenever it dies, until the supervisor stops."""
        pause = 0.0
        while True:
            assert worker.process is not None
            status = await worker.process.wait()
            worker.exits.append(status)
            if self.stopping:
                return
            lived = trio.current_time() - worker.started_at
            pause = min(MAX_RESTART_PAUSE_S, max(1.0, pause * 2)) if lived < QUICK_DEATH_S else 0.0
            log.error(
                "worker %d (pid %d) died (%s) after %.0f s; restarting it%s",
                worker.number,
                worker.process.pid,
                _describe_status(status),
                lived,
                f" in {pause:g} s" if pause else "",
            )
            await trio.sleep(pause)
            if self.stopping:
                return
            await self._start(worker)

    async def _wait_for_signal(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: draining %d workers", signal.Signals(signum).name, len(self.workers))
                return

    async def _stop_all(self) -> None:
        running = [w.process for w in self.workers if w.process is not None and w.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.settings.shutdown_grace_s + KILL_AFTER_GRACE_S):
            for process in running:
                await process.wait()
        for process in running:
            if process.returncode is None:
                log.error("worker pid %d did not stop in time; killing it", process.pid)
                process.kill()
                await process.wait()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is not None and not worker.exits:
                worker.exits.append(worker.process.returncode)


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"


def worker_of() -> tuple[int, int] | None:
    """In a worker: (the supervisor's pid, the readiness pipe's fd); None in a lone server."""
    value = os.environ.get(WORKER_ENV, "")
    pid, _, fd = value.partition(":")
    if not (pid.isdigit() and fd.isdigit()):
        return None
    return int(pid), int(fd)


async def watch_supervisor(supervisor_pid: int) -> None:
    """In a worker: once the supervisor is gone, drain as on SIGTERM (the signal handler does)."""
    while os.getppid() == supervisor_pid:
        await trio.sleep(ORPHAN_CHECK_S)
    log.warning("the supervisor (pid %d) is gone; draining", supervisor_pid)
    os.kill(os.getpid(), signal.SIGTERM)


def tell_ready(fd: int) -> None:
    """In a worker, once it listens: the supervisor may go on."""
    try:
        os.write(fd, b"ready\n")
        os.close(fd)
    except OSError:
        pass
