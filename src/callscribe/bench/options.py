"""What a benchmark run is asked to do: :class:`Options` for every step, :class:`StepPlan` for one
step, :class:`Settings` for the scenarios (all from ``callscribe bench``'s command line)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_KEY = "bench-key"
"""The Deepgram key the server under test and the fake Deepgram share."""
KINDS = ("callscribe", "floor-receive", "floor-forward", "floor-asgi-receive", "floor-picows-receive")
"""What a step can measure: callscribe, or one of the floor servers (:mod:`callscribe.bench.floor`, and
:mod:`callscribe.bench.floor_picows` for ``floor-picows-receive``)."""
RECEIVE_ONLY_KINDS = ("floor-receive", "floor-asgi-receive", "floor-picows-receive")
"""Floor servers that forward nothing to Deepgram (their steps check no audio)."""
DEFAULT_STEPS = (10, 25, 50, 100, 150, 200, 250, 300, 400, 500)
"""Call counts of the ramp."""


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
    coalesce_tracks: bool = False
    """Write each call's 20 ms pair of frames with one ``send`` (see :class:`~callscribe.bench.calls.SimCall`)."""
    store: str = "sqlite"
    """The server's call store: ``sqlite`` (a fresh file per server, as ``callscribe serve`` keeps by
    default), ``none``, or a location for ``--store`` (a postgresql:// URL)."""
    quiet: bool = False
    # -- several processes (bench/scale.py)
    workers: int = 1
    """``callscribe serve --workers N``: N > 1 runs with a Redis of the step's own, the server on
    `workers_cpus`."""
    workers_cpus: str | None = None
    """taskset's CPU list for the supervisor and its workers (None: every CPU, the load's too)."""
    redis: bool = False
    """Serve with a Redis of the step's own even with one worker (what the Redis hub itself costs)."""
    split: bool = False
    """Subscribers on a second server process (sharing a Redis of the step's own) rather than the calls' one."""

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


def server_cpus(opts: Options) -> str:
    """taskset's CPU list for the server: its own CPU for one process; with --workers, the
    `workers_cpus` asked for, else every CPU."""
    if opts.workers == 1:
        return str(opts.server_cpu)
    return opts.workers_cpus or f"0-{(os.cpu_count() or 1) - 1}"


@dataclass
class StepPlan:
    """One step: which server, how many calls and subscribers, for how long."""

    kind: str = "callscribe"
    """One of :data:`KINDS`."""
    calls: int = 10
    subscribers: int = 1
    measure_s: float = 15.0
    warmup_s: float = 5.0
    call_seconds: float | None = None
    """Soak: each call lasts this long and is replaced by a new one while the step runs."""
    rss_interval_s: float = 1.0
    profile_path: Path | None = None
    """Record the server with py-spy during the window, into this file."""
    store: str | None = None
    """The server's call store for this step (None: ``Options.store``)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown step kind {self.kind!r}; expected one of {', '.join(KINDS)}")


@dataclass
class Settings:
    """What the scenarios run."""

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
    viewer_rounds: int = 3
    """Rounds of the viewers scenario (1 viewer, then 50, each round)."""
    stop_when_load_bound: bool = True
    """The ramp stops at a step where the load process was near its limit (False: the load shares
    the machine with the server by design, and only the end-to-end criteria count)."""
    scale_rounds: int = 2
    """Interleaved rounds of the workers and streams scenarios."""
    streams_calls: int = 100
    profile: bool = False
    profile_calls: int = 100
    store_calls: int | None = None
    """Calls of the store on/off rounds (None: the ramp's largest sustained count, else 40)."""
    store_rounds: int = 3
    ramp_budget_s: float = 15 * 60

    def plan(self, calls: int, **fields: Any) -> StepPlan:
        """A step of `calls` calls with these settings' subscribers, measuring and warm-up times;
        `fields` sets StepPlan's other fields, or overrides those."""
        defaults = {"subscribers": self.subscribers, "measure_s": self.step_seconds, "warmup_s": self.warmup_seconds}
        return StepPlan(calls=calls, **(defaults | fields))
