"""``callscribe bench``: calls per core, latency and memory of a real server process, measured.

How one step runs (see docs/performance.md for the method and the numbers):

1. The fake Deepgram starts in this process (the *load process*, pinned to one core), and
   ``callscribe serve`` starts as its own process, pinned to the other core with ``taskset``,
   pointed at the fake. (Floor steps start ``python -m callscribe.bench.floor`` instead.)
2. N simulated Twilio calls connect (both tracks, 100 frames/s each, real-time pacing, calls spread
   over the 20 ms period) and M subscribers per call subscribe on ``/client``.
3. After a warm-up, a measurement window: server CPU from ``/proc/<pid>/stat`` (utime+stime), RSS
   from ``/proc/<pid>/status``, this process's own CPU, and latencies of the frames sent and the
   results sent in the window (one clock: ``time.monotonic()`` in this process).
4. Every call sends ``stop``; once the server closed them all, the audio the fake received is
   compared byte for byte in length with the frames sent, per call and channel.

Scenarios: ``ramp`` (N = 10, 25, 50, 100, ... until the server no longer sustains the load, then a
bisection step), ``floor`` (the same load against the stack's floor servers), ``fanout`` (1 call,
1,000 subscribers), ``soak`` (50 calls for ``--soak-minutes``, calls ending and being replaced,
RSS slope). ``--quick`` makes everything small. Results go to ``--out`` as JSON, Markdown and a
PNG plot (matplotlib; ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from callscribe.bench import load as bench_load
from callscribe.bench import ws as bench_ws
from callscribe.bench.load import Audio, Pacer, SimCall, SimSubscriber, Tracker
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour

API_KEY = "bench-key"
KINDS = ("callscribe", "floor-receive", "floor-forward", "floor-asgi-receive")
DEFAULT_STEPS = (10, 25, 50, 100, 150, 200, 250, 300, 400, 500)
CPU_LIMIT_PCT = 95.0
LATENCY_SLACK_MS = 50.0
"""Sustained: audio latency p99 within window + this."""
TARGET_SLACK_MS = 10.0
"""The latency target (while the server is under 50% CPU): p99 within window + this."""
CLK_TCK = os.sysconf("SC_CLK_TCK")

_processes: set[subprocess.Popen[bytes]] = set()


# -------------------------------------------------------------------------------- processes


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


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


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies (even by SIGKILL), so no server outlives it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _interrupted(error: BaseException) -> bool:
    """Ctrl-C, also when trio hands it over inside an exception group."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_interrupted(sub) for sub in error.exceptions)
    return False


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Options:
    """How every step runs (from the command line)."""

    host: str = "127.0.0.1"
    window_ms: int = 100
    pin: bool = True
    server_cpu: int = 0
    load_cpu: int = 1
    server_pythonpath: str | None = None
    server_log_level: str = "info"
    log_dir: Path = field(default_factory=lambda: Path("bench-results") / "logs")
    drain_s: float = 20.0
    connect_concurrency: int = 32
    retries: int = 2
    """Re-runs of a step disturbed by other processes on the benchmark's cores."""
    quiet: bool = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


@dataclass
class StepPlan:
    kind: str = "callscribe"
    calls: int = 10
    subscribers: int = 1
    measure_s: float = 15.0
    warmup_s: float = 5.0
    call_seconds: float | None = None
    """Soak: each call lasts this long and is replaced by a new one while the step runs."""
    rss_interval_s: float = 1.0
    profile_path: Path | None = None


class ServerProcess:
    """The server under test, in its own process (pinned with taskset when asked)."""

    def __init__(self, opts: Options, kind: str, deepgram_url: str) -> None:
        self.kind = kind
        self.port = free_port(opts.host)
        self.host = opts.host
        opts.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = opts.log_dir / f"server-{kind}-{self.port}.log"
        env = dict(os.environ)
        env["DEEPGRAM_API_KEY"] = API_KEY
        for name in ("DEEPGRAM_URL", "PROXY_URL", "CERT_PEM", "KEY_PEM", "DEEPGRAM_CA_FILE"):
            env.pop(name, None)
        if opts.server_pythonpath:
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
            command = ["taskset", "-c", str(opts.server_cpu), *command]
        self.command = command
        self._log = open(self.log_path, "wb")
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        _processes.add(self.process)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                status, _ = await bench_ws.http_get(self.host, self.port, "/healthz", timeout=1.0)
                if status == 200:
                    return
            except (OSError, trio.TooSlowError, bench_ws.WebSocketError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} server not ready within {timeout:g} s:\n{self.log_tail()}")
            await trio.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout)
        self._log.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    finally:
        _processes.discard(process)


def kill_all() -> None:
    """Stop every process this module started (Ctrl-C, errors)."""
    for process in list(_processes):
        try:
            stop_process(process, 5.0)
        except Exception:
            pass


# -------------------------------------------------------------------------------- statistics


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``, or None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def linear_fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least-squares slope of y over x, with its standard error and 95% interval."""
    n = len(points)
    if n < 3:
        return None
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mean_x) ** 2 for p in points)
    if sxx == 0:
        return None
    slope = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / sxx
    intercept = mean_y - slope * mean_x
    residual = sum((p[1] - intercept - slope * p[0]) ** 2 for p in points)
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return {
        "slope": slope,
        "stderr": stderr,
        "ci95_low": slope - 1.96 * stderr,
        "ci95_high": slope + 1.96 * stderr,
        "intercept": intercept,
    }


# -------------------------------------------------------------------------------- one step


async def _run_step(opts: Options, plan: StepPlan) -> dict[str, Any]:
    audio = Audio()
    tracker = Tracker()
    fake = FakeDeepgram(
        FakeDeepgramBehaviour(api_key=API_KEY, idle_timeout_s=60.0), on_audio=tracker.on_audio, on_send=tracker.on_send
    )
    result: dict[str, Any] = {"kind": plan.kind, "calls": plan.calls, "subscribers_per_call": plan.subscribers}
    audio_checked = plan.kind not in ("floor-receive", "floor-asgi-receive")
    counts = {
        "calls_started": 0,
        "calls_failed": 0,
        "calls_exact": 0,
        "calls_inexact": 0,
        "frames_sent": 0,
        "frames_received": 0,
        "subscribers_failed": 0,
        "subscribers_ok": 0,
    }
    failures: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve, opts.host, 0)
        server = ServerProcess(opts, plan.kind, fake.url + "?interim_results=true")
        result["server_command"] = " ".join(server.command)
        try:
            await server.wait_ready()
            await trio.sleep(0.5)
            result["rss_idle_kb"] = server.rss_kb()
            pacer = Pacer()
            nursery.start_soon(pacer.run)
            limiter = trio.CapacityLimiter(opts.connect_concurrency)
            running = True
            next_index = 0
            all_calls: list[SimCall] = []
            all_subscribers: list[SimSubscriber] = []

            async def account(call: SimCall) -> None:
                counts["frames_sent"] += call.frames_sent
                if not audio_checked:
                    return
                session = tracker.session_of_call.get(call.index)
                if session is None and call.ticks == 0:
                    counts["calls_exact"] += 1  # stopped before its first frame: nothing to deliver
                    return
                if session is None:
                    counts["calls_inexact"] += 1
                    if len(failures) < 5:
                        failures.append(
                            f"call {call.index} ({call.call_sid}, {call.ticks} frame pairs): no Deepgram session seen"
                        )
                    return
                with trio.move_on_after(10):
                    await session.closed.wait()
                received = [len(channel) for channel in session.audio_by_channel]
                counts["frames_received"] += sum(received) // 160
                if len(received) == 2 and all(r == call.ticks * 160 for r in received):
                    counts["calls_exact"] += 1
                else:
                    counts["calls_inexact"] += 1
                tracker.sessions.pop(session.request_id, None)
                if plan.call_seconds is not None:  # long runs: keep memory flat on our side too
                    for channel in session.audio_by_channel:
                        channel.clear()
                    fake.sessions[:] = [other for other in fake.sessions if other is not session]
                    tracker.session_of_call.pop(call.index, None)

            async def run_subscriber(subscriber: SimSubscriber, traffic: trio.Nursery) -> None:
                await subscriber.run(opts.host, server.port, tracker, traffic, limiter)
                if subscriber.failure:
                    counts["subscribers_failed"] += 1
                    if len(failures) < 5:
                        failures.append(
                            f"subscriber of call {subscriber.call.index} ({subscriber.call.call_sid}): {subscriber.failure}"
                        )
                else:
                    counts["subscribers_ok"] += 1

            async def run_call(call: SimCall, traffic: trio.Nursery) -> None:
                nonlocal next_index
                conn = None
                try:
                    async with limiter:
                        conn = call.conn = await bench_ws.connect(
                            opts.host, server.port, "/twilio", traffic, timeout=15.0
                        )
                    conn.send_now(call.opening())
                    pacer.add(call)
                    counts["calls_started"] += 1
                    call.started.set()
                    await trio.sleep(0.05)
                    for _ in range(plan.subscribers):
                        subscriber = SimSubscriber(call)
                        all_subscribers.append(subscriber)
                        traffic.start_soon(run_subscriber, subscriber, traffic)
                    while conn.close_code is None:
                        try:
                            await conn.receive()
                        except EOFError:
                            break
                    if conn.close_code != 1000 and len(failures) < 5:
                        failures.append(f"call {call.index}: closed with {conn.close_code} {conn.close_reason}".strip())
                except (OSError, EOFError, bench_ws.WebSocketError, trio.TooSlowError) as error:
                    call.failure = f"{type(error).__name__}: {error}"
                    counts["calls_failed"] += 1
                    if len(failures) < 5:
                        failures.append(f"call {call.index}: {call.failure}")
                finally:
                    call.started.set()
                    call.finished.set()
                    if conn is not None:
                        with trio.CancelScope(shield=True):
                            await conn.aclose(timeout=1.0)
                    if call.conn is not None:
                        with trio.CancelScope(shield=True):
                            await account(call)
                if running and plan.call_seconds is not None:
                    start_call(traffic, plan.call_seconds)

            def start_call(traffic: trio.Nursery, seconds: float | None) -> SimCall:
                nonlocal next_index
                ticks = None if seconds is None else max(1, round(seconds / 0.02))
                call = SimCall(next_index, audio, stop_after_ticks=ticks)
                tracker.calls[next_index] = call
                next_index += 1
                all_calls.append(call)
                traffic.start_soon(run_call, call, traffic)
                return call

            async with trio.open_nursery() as traffic:
                setup_started = time.monotonic()
                first = []
                # Calls arrive over a second or more (like real traffic), not all in one burst.
                spread = min(5.0, max(1.0, plan.calls * 0.02))
                for i in range(plan.calls):
                    # Soak: stagger the first calls' lengths so that calls end evenly over time.
                    seconds = None if plan.call_seconds is None else plan.call_seconds * (i + 1) / plan.calls
                    first.append(start_call(traffic, seconds))
                    await trio.sleep(spread / plan.calls)
                with trio.move_on_after(30 + 0.05 * plan.calls * (1 + plan.subscribers)) as setup:
                    for call in first:
                        await call.started.wait()
                    await trio.sleep(0.1)
                    for subscriber in list(all_subscribers):
                        await subscriber.subscribed.wait()
                if setup.cancelled_caught:
                    failures.append("set-up did not finish in time")
                result["setup_s"] = round(time.monotonic() - setup_started, 2)
                await trio.sleep(plan.warmup_s)

                # ---- the measurement window
                w0 = time.monotonic()
                tracker.window = (w0, math.inf)
                cpu0, load0, frames0 = server.cpu_seconds(), cpu_seconds(), pacer.frames_sent
                busy0 = cpu_busy_seconds(opts.server_cpu) if opts.pin else None
                load_busy0 = cpu_busy_seconds(opts.load_cpu) if opts.pin else None
                lag_index = len(pacer.lag)
                profiler = _start_profiler(server.pid, plan.measure_s, plan.profile_path) if plan.profile_path else None
                rss_samples: list[tuple[float, int]] = []
                end_at = w0 + plan.measure_s
                last_prune = w0
                while (now := time.monotonic()) < end_at:
                    if server.process.poll() is not None:
                        failures.append(f"server exited with {server.process.returncode}")
                        break
                    rss_samples.append((round(now - w0, 3), server.rss_kb()))
                    if now - last_prune > 60:
                        tracker.forget_before(now - 30)
                        last_prune = now
                    await trio.sleep(min(plan.rss_interval_s, max(0.0, end_at - now)))
                w1 = time.monotonic()
                running = False  # no more replacement calls (soak)
                cpu1, load1, frames1 = server.cpu_seconds(), cpu_seconds(), pacer.frames_sent
                busy1 = cpu_busy_seconds(opts.server_cpu) if opts.pin else None
                load_busy1 = cpu_busy_seconds(opts.load_cpu) if opts.pin else None
                tracker.window = (w0, w1)
                rss_samples.append((round(w1 - w0, 3), server.rss_kb()))
                active_in_window = pacer.active
                if profiler is not None:
                    await _finish_profiler(profiler, plan.measure_s + 30)

                # ---- the end: stop every call and let the server finish them
                drain_started = time.monotonic()
                running = False
                for call in all_calls:
                    call.stop_requested = True
                pacer.close()
                with trio.move_on_after(opts.drain_s) as drain:
                    for call in list(all_calls):
                        await call.finished.wait()
                    for subscriber in list(all_subscribers):
                        await subscriber.subscribed.wait()
                if drain.cancelled_caught:
                    unfinished = sum(1 for call in all_calls if not call.finished.is_set())
                    failures.append(f"{unfinished} calls not closed by the server within {opts.drain_s:g} s of stop")
                with trio.move_on_after(5):
                    while counts["subscribers_ok"] + counts["subscribers_failed"] < len(all_subscribers):
                        await trio.sleep(0.05)
                result["drain_s"] = round(time.monotonic() - drain_started, 2)
                traffic.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(server.stop)
            nursery.cancel_scope.cancel()

    window = w1 - w0
    server_cpu = cpu1 - cpu0
    frames_in_window = frames1 - frames0
    lags = list(pacer.lag[lag_index:])
    result.update(
        {
            "measure_s": round(window, 2),
            "server_cpu_pct": round(100 * server_cpu / window, 1),
            "load_cpu_pct": round(100 * (load1 - load0) / window, 1),
            "server_core_other_pct": None
            if busy0 is None or busy1 is None
            else round(100 * (busy1 - busy0 - server_cpu) / window, 1),
            "load_core_other_pct": None
            if load_busy0 is None or load_busy1 is None
            else round(100 * (load_busy1 - load_busy0 - (load1 - load0)) / window, 1),
            "frames_in_window": frames_in_window,
            "frames_offered_pct": round(100 * frames_in_window / (active_in_window * 100 * window), 1)
            if plan.call_seconds is None and active_in_window
            else None,
            "cpu_us_per_frame": round(1e6 * server_cpu / frames_in_window, 1) if frames_in_window else None,
            "cpu_pct_per_call": round(100 * server_cpu / window / plan.calls, 3) if plan.calls else None,
            "pacer_lag_p99_ms": ms(percentile(lags, 99)),
            "pacer_lag_max_ms": ms(max(lags) if lags else None),
            "rss_kb": max(r for _, r in rss_samples) if rss_samples else None,
            "rss_samples": rss_samples if plan.call_seconds is not None else None,
            **counts,
            "calls_total": len(all_calls),
            "subscribers_total": len(all_subscribers),
            "unidentified_sessions": tracker.unidentified_sessions,
        }
    )
    if result.get("rss_kb") and result.get("rss_idle_kb") and plan.calls:
        result["rss_per_call_kb"] = round((result["rss_kb"] - result["rss_idle_kb"]) / plan.calls, 1)
    window_ms = opts.window_ms
    audio_lat = tracker.audio_latency
    result.update(
        {
            "window_ms": window_ms,
            "audio_samples": len(audio_lat),
            "audio_p50_ms": ms(percentile(audio_lat, 50)),
            "audio_p99_ms": ms(percentile(audio_lat, 99)),
            "audio_max_ms": ms(max(audio_lat) if audio_lat else None),
            "added_p50_ms": ms(percentile(tracker.added_latency, 50)),
            "added_p99_ms": ms(percentile(tracker.added_latency, 99)),
        }
    )
    for name in ("audio_p50_ms", "audio_p99_ms"):
        value = result[name]
        result[name.replace("audio_", "audio_minus_window_")] = None if value is None else round(value - window_ms, 2)
    complete = [worst for key, worst in tracker.fanout_worst.items() if tracker.fanout_count[key] >= plan.subscribers]
    result.update(
        {
            "results_sent_in_window": tracker.results_sent_in_window,
            "fanout_deliveries": len(tracker.fanout_latency),
            "fanout_p50_ms": ms(percentile(tracker.fanout_latency, 50)),
            "fanout_p99_ms": ms(percentile(tracker.fanout_latency, 99)),
            "fanout_max_ms": ms(max(tracker.fanout_latency) if tracker.fanout_latency else None),
            "fanout_messages_complete": len(complete),
            "fanout_messages_incomplete": len(tracker.fanout_worst) - len(complete),
            "fanout_last_p50_ms": ms(percentile(complete, 50)),
            "fanout_last_p99_ms": ms(percentile(complete, 99)),
        }
    )
    # ---- verdict
    reasons = list(failures)
    if counts["calls_failed"]:
        reasons.append(f"{counts['calls_failed']} calls failed to connect")
    if audio_checked and counts["calls_inexact"]:
        reasons.append(
            f"audio lost or padded in {counts['calls_inexact']} calls "
            f"({counts['frames_received']} of {counts['frames_sent']} frames accounted)"
        )
    if audio_checked and result["audio_p99_ms"] is None:
        reasons.append("no audio latency measured")
    elif audio_checked and result["audio_p99_ms"] > window_ms + LATENCY_SLACK_MS:
        reasons.append(f"audio p99 {result['audio_p99_ms']:.0f} ms > window + {LATENCY_SLACK_MS:g} ms")
    if result["server_cpu_pct"] >= CPU_LIMIT_PCT:
        reasons.append(f"server CPU {result['server_cpu_pct']}% >= {CPU_LIMIT_PCT:g}%")
    if counts["subscribers_failed"]:
        reasons.append(f"{counts['subscribers_failed']} subscribers failed")
    result["sustained"] = not reasons
    result["reasons"] = reasons
    result["load_bound"] = result["load_cpu_pct"] >= 90 or (result["pacer_lag_p99_ms"] or 0) > 10
    return result


def _start_profiler(pid: int, seconds: float, path: Path) -> subprocess.Popen[bytes] | None:
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
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    _processes.add(process)
    return process


async def _finish_profiler(process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        await trio.sleep(0.1)
    if process.poll() is None:
        process.kill()
    _processes.discard(process)


DISTURBED_PCT = 5.0
"""A step during which other processes used more than this much of the server's core is re-run."""


def run_step(opts: Options, plan: StepPlan, *, retries: int | None = None) -> dict[str, Any]:
    """Run one step in a fresh trio run, a fresh fake Deepgram and a fresh server process.

    When other processes took more than `DISTURBED_PCT` of the server's core during the window
    (a shared machine), the step is run again (at most ``opts.retries`` times) and the least
    disturbed run is kept; ``disturbed`` says whether even that one was.
    """
    attempts = []
    for attempt in range(1 + (opts.retries if retries is None else retries)):
        started = time.monotonic()
        result = trio.run(_run_step, opts, plan)
        result["wall_s"] = round(time.monotonic() - started, 1)
        other = max(result.get("server_core_other_pct") or 0.0, result.get("load_core_other_pct") or 0.0)
        result["disturbed"] = other > DISTURBED_PCT
        attempts.append((other, attempt, result))
        if not result["disturbed"]:
            break
        opts.say(
            f"  ({plan.kind} {plan.calls} calls: other processes used {other}% of a benchmark core; "
            f"{'running it again' if attempt < (opts.retries if retries is None else retries) else 'keeping the least disturbed run'})"
        )
        time.sleep(5)
    best = min(attempts, key=lambda a: (a[0], a[1]))[2]
    best["attempts"] = len(attempts)
    return best


def describe(step: dict[str, Any]) -> str:
    def f(value: Any, unit: str = "") -> str:
        return "-" if value is None else f"{value}{unit}"

    verdict = "sustained" if step["sustained"] else "NOT sustained: " + "; ".join(step["reasons"])
    return (
        f"{step['kind']:>13} {step['calls']:>4} calls x{step['subscribers_per_call']} subs: server CPU {step['server_cpu_pct']:5.1f}% "
        f"({f(step['cpu_us_per_frame'], ' us/frame')}), load CPU {step['load_cpu_pct']:.0f}%, "
        f"audio p50/p99 {f(step['audio_p50_ms'])}/{f(step['audio_p99_ms'])} ms (added {f(step['added_p50_ms'])}/{f(step['added_p99_ms'])}), "
        f"fan-out p50/p99 {f(step['fanout_p50_ms'])}/{f(step['fanout_p99_ms'])} ms, RSS {f(step['rss_kb'] and round(step['rss_kb'] / 1024, 1), ' MB')} "
        f"({f(step.get('rss_per_call_kb'), ' KB/call')}), frames {step['frames_received']}/{step['frames_sent']}: {verdict}"
        + (
            f" [disturbed: others used {step.get('server_core_other_pct')}%/{step.get('load_core_other_pct')}% of the server/load cores]"
            if step.get("disturbed")
            else ""
        )
    )


# -------------------------------------------------------------------------------- scenarios


@dataclass
class Settings:
    steps: tuple[int, ...] = DEFAULT_STEPS
    max_calls: int = 1000
    refine: int = 2
    step_seconds: float = 15.0
    warmup_seconds: float = 5.0
    subscribers: int = 1
    floor_calls: int | None = None
    """None: the ramp's largest sustained count (where every server keeps up, so CPU per frame is
    per frame processed), else 100."""
    fanout_subscribers: int = 1000
    fanout_seconds: float = 30.0
    soak_minutes: float = 10.0
    soak_calls: int = 50
    soak_call_seconds: float = 60.0
    profile: bool = False
    profile_calls: int = 100
    ramp_budget_s: float = 15 * 60


def scenario_ramp(opts: Options, settings: Settings) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    last_pass: int | None = None
    first_fail: int | None = None
    started = time.monotonic()

    def step(calls: int) -> dict[str, Any]:
        result = run_step(
            opts,
            StepPlan(
                calls=calls,
                subscribers=settings.subscribers,
                measure_s=settings.step_seconds,
                warmup_s=settings.warmup_seconds,
            ),
        )
        opts.say(describe(result))
        steps.append(result)
        return result

    for calls in [n for n in settings.steps if n <= settings.max_calls]:
        if time.monotonic() - started > settings.ramp_budget_s:
            opts.say("ramp: time budget used up")
            break
        result = step(calls)
        if result["sustained"]:
            last_pass = calls
        else:
            first_fail = calls
            break
        if result["load_bound"]:
            opts.say(
                "ramp: the load process is near its own limit; stopping here (numbers above it would measure the load)"
            )
            break
    for _ in range(settings.refine):
        if last_pass is None or first_fail is None or first_fail - last_pass <= max(5, last_pass // 10):
            break
        if time.monotonic() - started > settings.ramp_budget_s:
            break
        middle = (last_pass + first_fail) // 2
        middle -= middle % 5 if middle > 20 else 0
        if middle in (last_pass, first_fail):
            break
        result = step(middle)
        if result["sustained"]:
            last_pass = middle
        else:
            first_fail = middle
    steps.sort(key=lambda s: s["calls"])
    return {"steps": steps, "max_sustained_calls": last_pass or 0, "first_unsustained_calls": first_fail}


def floor_calls(settings: Settings, ramp: dict[str, Any] | None) -> int:
    if settings.floor_calls is not None:
        return settings.floor_calls
    if ramp and ramp.get("max_sustained_calls"):
        return int(ramp["max_sustained_calls"])
    return 100


def scenario_floor(opts: Options, settings: Settings, ramp: dict[str, Any] | None) -> dict[str, Any]:
    calls = floor_calls(settings, ramp)
    results: dict[str, Any] = {}
    for kind in ("floor-asgi-receive", "floor-receive", "floor-forward", "callscribe"):
        reuse = [s for s in (ramp or {}).get("steps", []) if s["calls"] == calls and s["kind"] == "callscribe"]
        if kind == "callscribe" and reuse:
            results[kind] = reuse[0]
            continue
        subscribers = settings.subscribers if kind == "callscribe" else 0
        result = run_step(
            opts,
            StepPlan(
                kind=kind,
                calls=calls,
                subscribers=subscribers,
                measure_s=settings.step_seconds,
                warmup_s=settings.warmup_seconds,
            ),
        )
        opts.say(describe(result))
        results[kind] = result
    out: dict[str, Any] = {"calls": calls, "steps": results}
    ours = results["callscribe"].get("cpu_us_per_frame")
    for kind in ("floor-receive", "floor-forward", "floor-asgi-receive"):
        floor = results[kind].get("cpu_us_per_frame")
        if ours and floor:
            out[f"ratio_to_{kind.replace('-', '_')}"] = round(ours / floor, 2)
    return out


def scenario_fanout(opts: Options, settings: Settings) -> dict[str, Any]:
    result = run_step(
        opts,
        StepPlan(
            calls=1,
            subscribers=settings.fanout_subscribers,
            measure_s=settings.fanout_seconds,
            warmup_s=settings.warmup_seconds,
        ),
    )
    opts.say(describe(result))
    opts.say(
        f"fan-out: {settings.fanout_subscribers} subscribers, {result['fanout_messages_complete']} messages reached all: "
        f"to the last subscriber p50 {result['fanout_last_p50_ms']} ms, p99 {result['fanout_last_p99_ms']} ms"
    )
    return {"step": result, "subscribers": settings.fanout_subscribers}


FLAT_PCT_PER_HOUR = 1.0
"""A soak is flat when its steady-state slope is statistically zero or under this much of RSS per hour
(RSS moves in whole pages, so a single 4 KB step can make a tiny slope 'significant')."""


def soak_fit(samples: list[tuple[float, int]], seconds: float) -> dict[str, Any]:
    """RSS slope of the soak's second half (steady state), and of everything after a 2-minute warm-up."""
    out: dict[str, Any] = {}
    half = seconds / 2
    steady = linear_fit([(t / 60, kb) for t, kb in samples if t >= half])
    warm = min(120.0, seconds * 0.2)
    everything = linear_fit([(t / 60, kb) for t, kb in samples if t >= warm])
    if steady is None or everything is None:
        return out
    mean = sum(kb for t, kb in samples if t >= half) / max(1, sum(1 for t, _ in samples if t >= half))
    out["fit_from_s"] = half
    out["slope_kb_per_min"] = round(steady["slope"], 2)
    out["slope_ci95_kb_per_min"] = [round(steady["ci95_low"], 2), round(steady["ci95_high"], 2)]
    out["slope_all_kb_per_min"] = round(everything["slope"], 2)
    out["slope_all_from_s"] = warm
    out["rss_first_kb"] = samples[0][1]
    out["rss_half_kb"] = next(kb for t, kb in samples if t >= half)
    out["rss_last_kb"] = samples[-1][1]
    out["flat"] = (steady["ci95_low"] <= 0 <= steady["ci95_high"]) or abs(
        steady["slope"]
    ) * 60 < FLAT_PCT_PER_HOUR / 100 * mean
    return out


def scenario_soak(opts: Options, settings: Settings) -> dict[str, Any]:
    seconds = settings.soak_minutes * 60
    call_seconds = settings.soak_call_seconds or None
    result = run_step(
        opts,
        StepPlan(
            calls=settings.soak_calls,
            subscribers=settings.subscribers,
            measure_s=seconds,
            warmup_s=settings.warmup_seconds,
            call_seconds=call_seconds,
            rss_interval_s=max(1.0, seconds / 300),
        ),
        retries=0,
    )  # memory growth does not depend on a quiet core; a re-run would double a long run
    opts.say(describe(result))
    soak: dict[str, Any] = {
        "step": result,
        "minutes": settings.soak_minutes,
        "calls": settings.soak_calls,
        "call_seconds": call_seconds,
        **soak_fit(result.get("rss_samples") or [], seconds),
    }
    if "slope_kb_per_min" in soak:
        low, high = soak["slope_ci95_kb_per_min"]
        opts.say(
            f"soak: RSS {soak['rss_first_kb'] / 1024:.1f} -> {soak['rss_last_kb'] / 1024:.1f} MB; second half slope "
            f"{soak['slope_kb_per_min']:.1f} KB/min (95% CI {low:.1f} .. {high:.1f}), whole run after warm-up "
            f"{soak['slope_all_kb_per_min']:.1f} KB/min: {'flat' if soak['flat'] else 'NOT flat'}"
        )
    return soak


# -------------------------------------------------------------------------------- command line


def machine_info(opts: Options) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    from importlib import metadata

    for name in ("hypercorn", "quart", "quart-trio", "trio", "trio-websocket", "wsproto", "msgspec", "h11"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    git = ""
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
        git = head.stdout.strip() + (" (+ uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git": git,
        "pinned": f"server on CPU {opts.server_cpu}, load on CPU {opts.load_cpu}" if opts.pin else "not pinned",
        "window_ms": opts.window_ms,
        "server_pythonpath": opts.server_pythonpath,
        "frames_per_send": 2 if bench_load.COALESCE_TRACKS else 1,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, not {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("call counts must be >= 1")
    return values


SCENARIOS = ("ramp", "floor", "fanout", "soak")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``callscribe bench``."""
    parser.add_argument(
        "--scenario",
        action="append",
        choices=(*SCENARIOS, "all"),
        help="what to run (repeatable): ramp, floor, fanout, soak, or all "
        "(default: ramp, floor and fanout; soak runs only when asked)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run: small steps, a few seconds each")
    parser.add_argument(
        "--steps", type=_int_list, help=f"call counts of the ramp (default {','.join(map(str, DEFAULT_STEPS))})"
    )
    parser.add_argument("--max-calls", type=int, default=1000, help="never ramp above this (default 1000)")
    parser.add_argument(
        "--refine",
        type=int,
        default=2,
        help="bisection steps between the last sustained and the first unsustained count (default 2)",
    )
    parser.add_argument("--step-seconds", type=float, help="measurement window per step (default 15)")
    parser.add_argument("--warmup-seconds", type=float, help="after set-up, before measuring (default 5)")
    parser.add_argument("--subscribers", type=int, default=1, help="subscribers per call (default 1)")
    parser.add_argument("--window-ms", type=int, default=100, help="the server's --window-ms (default 100)")
    parser.add_argument(
        "--floor-calls",
        type=int,
        help="calls for the floor comparison (default: the ramp's largest sustained count, "
        "so that every server keeps up; 100 without a ramp)",
    )
    parser.add_argument("--fanout-subscribers", type=int, help="subscribers of the one fan-out call (default 1000)")
    parser.add_argument("--fanout-seconds", type=float, help="fan-out measurement window (default 30)")
    parser.add_argument("--soak-minutes", type=float, default=None, help="soak length (default 10)")
    parser.add_argument("--soak-calls", type=int, default=None, help="concurrent calls during the soak (default 50)")
    parser.add_argument(
        "--soak-call-seconds",
        type=float,
        default=None,
        help="each soak call lasts this long and is replaced by a new one (default 60; 0 = calls last the whole soak)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also run one step under py-spy and summarise where the server's time goes",
    )
    parser.add_argument("--profile-calls", type=int, default=100, help="calls of the profiled step (default 100)")
    parser.add_argument(
        "--out",
        default="bench-results",
        help="directory for bench-results.json/.md, the plot and logs (default ./bench-results)",
    )
    parser.add_argument("--log-dir", default=None, help="server logs (default: OUT/logs)")
    parser.add_argument(
        "--fresh", action="store_true", help="do not merge with an existing bench-results.json in --out"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the load to separate CPUs")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU for the server (default 0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU for the load process (default 1)")
    parser.add_argument(
        "--server-pythonpath",
        default=None,
        help="prepended to the server's PYTHONPATH (to measure another tree of callscribe)",
    )
    parser.add_argument("--server-log-level", default="info", help="the server's --log-level (default info)")
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a step when other processes used more than 5%% of a benchmark core (default 2)",
    )
    parser.add_argument(
        "--coalesce-tracks",
        action="store_true",
        help="write each 20 ms pair of frames (both tracks) with one send (default: one send per frame)",
    )
    parser.add_argument("--label", default="", help="a note stored with the results (e.g. 'before')")


def settings_from_args(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s = Settings(
            steps=(5, 10, 20),
            step_seconds=4.0,
            warmup_seconds=1.0,
            fanout_subscribers=100,
            fanout_seconds=5.0,
            soak_minutes=1.0,
            soak_calls=10,
            soak_call_seconds=20.0,
            refine=0,
            profile_calls=10,
        )
    if args.steps:
        s.steps = args.steps
    s.max_calls = args.max_calls
    s.refine = args.refine if not args.quick or args.refine != 2 else 0
    s.subscribers = args.subscribers
    for name in (
        "step_seconds",
        "warmup_seconds",
        "floor_calls",
        "fanout_subscribers",
        "fanout_seconds",
        "soak_minutes",
        "soak_calls",
        "soak_call_seconds",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    s.profile = args.profile
    if args.profile_calls != 100 or not args.quick:
        s.profile_calls = args.profile_calls
    return s


def _raise_fd_limit(needed: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))
    except (ImportError, ValueError, OSError):
        pass


def run_from_cli(args: argparse.Namespace) -> int:
    """Run ``callscribe bench``; 0 when it ran (whatever it measured), 1 if it could not, 130 on Ctrl-C."""
    from callscribe.bench import report as bench_report

    scenarios = args.scenario or ["ramp", "floor", "fanout"]
    if "all" in scenarios:
        scenarios = list(SCENARIOS)
    settings = settings_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bench_load.COALESCE_TRACKS = args.coalesce_tracks
    opts = Options(
        window_ms=args.window_ms,
        pin=not args.no_pin,
        retries=max(0, args.retries),
        server_cpu=args.server_cpu,
        load_cpu=args.load_cpu,
        server_pythonpath=args.server_pythonpath,
        server_log_level=args.server_log_level,
        log_dir=Path(args.log_dir) if args.log_dir else out / "logs",
    )
    cpus = os.sched_getaffinity(0)
    if opts.pin and (
        len(cpus) < 2 or opts.server_cpu not in cpus or opts.load_cpu not in cpus or opts.server_cpu == opts.load_cpu
    ):
        print(
            f"bench: cannot pin to CPUs {opts.server_cpu}/{opts.load_cpu} (have {sorted(cpus)}); running unpinned",
            file=sys.stderr,
        )
        opts.pin = False
    if opts.pin and not shutil.which("taskset"):
        print("bench: taskset not found; the server runs unpinned", file=sys.stderr)
    if not bench_report.plotting_available():
        print(
            "bench: matplotlib is not installed, so no plot will be drawn (pip install -e '.[bench]')", file=sys.stderr
        )
    _raise_fd_limit(4 * max(settings.fanout_subscribers, max(settings.steps) * (1 + settings.subscribers)) + 256)
    if opts.pin:
        os.sched_setaffinity(0, {opts.load_cpu})
    results = bench_report.load_results(out) if not args.fresh else {}
    results["machine"] = machine_info(opts)
    command = "callscribe bench " + " ".join(
        sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else sys.argv[1:]
    )
    stamp = {
        "command": command.strip(),
        "label": args.label,
        "date": results["machine"]["date"],
        "git": results["machine"]["git"],
    }
    try:
        if "ramp" in scenarios:
            opts.say(f"== ramp: steps {','.join(map(str, settings.steps))}, {settings.step_seconds:g} s each")
            results["ramp"] = {**scenario_ramp(opts, settings), **stamp}
        if "floor" in scenarios:
            ramp = results.get("ramp") if "ramp" in scenarios else None
            opts.say(f"== floor: {floor_calls(settings, ramp)} calls against the stack's floor servers")
            results["floor"] = {**scenario_floor(opts, settings, ramp), **stamp}
        if "fanout" in scenarios:
            opts.say(f"== fan-out: 1 call, {settings.fanout_subscribers} subscribers")
            results["fanout"] = {**scenario_fanout(opts, settings), **stamp}
        if "soak" in scenarios:
            opts.say(f"== soak: {settings.soak_calls} calls for {settings.soak_minutes:g} min")
            results["soak"] = {**scenario_soak(opts, settings), **stamp}
        if settings.profile:
            opts.say(f"== profile: {settings.profile_calls} calls under py-spy")
            path = out / f"profile-{settings.profile_calls}-calls.folded"
            step = run_step(
                opts,
                StepPlan(
                    calls=settings.profile_calls,
                    subscribers=settings.subscribers,
                    measure_s=settings.step_seconds,
                    warmup_s=settings.warmup_seconds,
                    profile_path=path,
                ),
                retries=0,
            )  # where the time goes does not need an undisturbed core
            opts.say(describe(step) + " (under py-spy: slower than unprofiled)")
            results["profile"] = {"step": step, "folded": path.name, **bench_report.summarise_profile(path), **stamp}
    except BaseException as error:
        kill_all()
        if _interrupted(error):
            print("bench: interrupted; no results written", file=sys.stderr)
            return 130
        if isinstance(error, RuntimeError):
            print(f"bench: {error}", file=sys.stderr)
            return 1
        raise
    finally:
        kill_all()
    paths = bench_report.write_outputs(results, out)
    print(bench_report.headline_text(results))
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="callscribe bench", description=__doc__.split("\n\n")[0])
    add_cli_arguments(parser)
    return run_from_cli(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
