"""A step's figures and verdict, from what was measured; pure.

Sustained means: every call connected, every frame reached the fake Deepgram, audio latency p99
within the server's window + :data:`LATENCY_SLACK_MS`, server CPU under :data:`CPU_LIMIT_PCT`, and no
subscriber failed. ``load_bound`` flags a step where the load process itself was near its limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from callscribe.bench.options import StepPlan
from callscribe.bench.stats import ms, percentile
from callscribe.bench.tracker import Tracker
from callscribe.bench.traffic import TrafficCounts

CPU_LIMIT_PCT = 95.0
LATENCY_SLACK_MS = 50.0
"""Sustained: audio latency p99 within window + this."""


@dataclass
class Window:
    """What was measured over a step's measurement window."""

    seconds: float
    server_cpu_s: float
    """CPU time of the server process."""
    load_cpu_s: float
    """CPU time of this (the load) process."""
    server_core_busy_s: float | None
    """Busy time of the server's core, all processes (None: not pinned)."""
    load_core_busy_s: float | None
    frames: int
    """Frames sent in the window."""
    active_calls: int
    """Calls still sending at the end of the window."""
    sender_lags: list[float] = field(default_factory=list)
    """How late each phase of the real-time sender ran, seconds."""
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    """``(seconds into the window, server RSS KiB)``."""
    server_main_thread_cpu_s: float | None = None
    """CPU time of the server's main thread (the event loop); None if it could not be read."""


def _other_pct(busy: float | None, own: float, seconds: float) -> float | None:
    """The share of a core that other processes used, percent."""
    return None if busy is None else round(100 * (busy - own) / seconds, 1)


def window_figures(window: Window, plan: StepPlan, counts: TrafficCounts) -> dict[str, Any]:
    """CPU, frames, sender lag and memory of the window, and the traffic counts."""
    seconds = window.seconds
    server_cpu = window.server_cpu_s
    frames = window.frames
    lags = window.sender_lags
    figures: dict[str, Any] = {
        "measure_s": round(seconds, 2),
        "server_cpu_pct": round(100 * server_cpu / seconds, 1),
        "load_cpu_pct": round(100 * window.load_cpu_s / seconds, 1),
        "server_core_other_pct": _other_pct(window.server_core_busy_s, server_cpu, seconds),
        "load_core_other_pct": _other_pct(window.load_core_busy_s, window.load_cpu_s, seconds),
        "frames_in_window": frames,
        "frames_offered_pct": round(100 * frames / (window.active_calls * 100 * seconds), 1)
        if plan.call_seconds is None and window.active_calls
        else None,
        "cpu_us_per_frame": round(1e6 * server_cpu / frames, 1) if frames else None,
        "cpu_pct_per_call": round(100 * server_cpu / seconds / plan.calls, 3) if plan.calls else None,
        "worker_threads_cpu_pct": round(100 * (server_cpu - window.server_main_thread_cpu_s) / server_cpu, 1)
        if window.server_main_thread_cpu_s is not None and server_cpu
        else None,
        # "pacer": the real-time sender's name in earlier results, kept so that they compare.
        "pacer_lag_p99_ms": ms(percentile(lags, 99)),
        "pacer_lag_max_ms": ms(max(lags) if lags else None),
        "rss_kb": max(r for _, r in window.rss_samples) if window.rss_samples else None,
        "rss_samples": window.rss_samples if plan.call_seconds is not None else None,
        **asdict(counts),
    }
    return figures


def latency_figures(tracker: Tracker, window_ms: int, subscribers: int) -> dict[str, Any]:
    """Audio latency (simulator to fake Deepgram) and fan-out latency (fake Deepgram to subscribers)."""
    audio = tracker.audio_latency
    figures: dict[str, Any] = {
        "window_ms": window_ms,
        "audio_samples": len(audio),
        "audio_p50_ms": ms(percentile(audio, 50)),
        "audio_p99_ms": ms(percentile(audio, 99)),
        "audio_max_ms": ms(max(audio) if audio else None),
        "added_p50_ms": ms(percentile(tracker.added_latency, 50)),
        "added_p99_ms": ms(percentile(tracker.added_latency, 99)),
    }
    for name in ("audio_p50_ms", "audio_p99_ms"):
        value = figures[name]
        figures[name.replace("audio_", "audio_minus_window_")] = None if value is None else round(value - window_ms, 2)
    fanout = tracker.fanout_latency
    complete = [worst for key, worst in tracker.fanout_worst.items() if tracker.fanout_count[key] >= subscribers]
    figures |= {
        "results_sent_in_window": tracker.results_sent_in_window,
        "fanout_deliveries": len(fanout),
        "fanout_p50_ms": ms(percentile(fanout, 50)),
        "fanout_p99_ms": ms(percentile(fanout, 99)),
        "fanout_max_ms": ms(max(fanout) if fanout else None),
        "fanout_messages_complete": len(complete),
        "fanout_messages_incomplete": len(tracker.fanout_worst) - len(complete),
        "fanout_last_p50_ms": ms(percentile(complete, 50)),
        "fanout_last_p99_ms": ms(percentile(complete, 99)),
    }
    return figures


def verdict(result: dict[str, Any], failures: list[str], *, audio_checked: bool) -> dict[str, Any]:
    """``sustained``, the ``reasons`` it was not, and ``load_bound``, from a step's figures."""
    reasons = list(failures)
    if result["calls_failed"]:
        reasons.append(f"{result['calls_failed']} calls failed to connect")
    if audio_checked and result["calls_inexact"]:
        reasons.append(
            f"audio lost or padded in {result['calls_inexact']} calls "
            f"({result['frames_received']} of {result['frames_sent']} frames accounted)"
        )
    if audio_checked and result["audio_p99_ms"] is None:
        reasons.append("no audio latency measured")
    elif audio_checked and result["audio_p99_ms"] > result["window_ms"] + LATENCY_SLACK_MS:
        reasons.append(f"audio p99 {result['audio_p99_ms']:.0f} ms > window + {LATENCY_SLACK_MS:g} ms")
    cpu_limit = CPU_LIMIT_PCT * result.get("workers", 1)  # per worker: each is one process, one core at most
    if result["server_cpu_pct"] >= cpu_limit:
        reasons.append(f"server CPU {result['server_cpu_pct']}% >= {cpu_limit:g}%")
    if result["subscribers_failed"]:
        reasons.append(f"{result['subscribers_failed']} subscribers failed")
    return {
        "sustained": not reasons,
        "reasons": reasons,
        "load_bound": result["load_cpu_pct"] >= 90 or (result["pacer_lag_p99_ms"] or 0) > 10,
    }
