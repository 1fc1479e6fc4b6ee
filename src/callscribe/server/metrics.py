"""Prometheus metrics, served on GET /metrics.

Nothing here runs per media frame: live numbers (calls, subscribers, games) are read from the
server's state when Prometheus scrapes, and each call's totals are added once, when it ends.
Each app gets its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from callscribe.core.mixer import SAMPLES_PER_MS

if TYPE_CHECKING:
    from callscribe.server.call import Call

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    def __init__(self, live: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        for name, help_text in (
            ("active_calls", "Calls streaming now"),
            ("subscribers", "Subscribers connected to live calls"),
            ("games", "Games connected to /game"),
        ):
            gauge = Gauge(f"callscribe_{name}", help_text, registry=self.registry)
            gauge.set_function(functools.partial(_live_count, live, name))
        self.calls = Counter("callscribe_calls", "Calls ended", ["outcome"], registry=self.registry)
        self.frames = Counter("callscribe_twilio_frames", "Twilio media frames received", registry=self.registry)
        self.rejected = Counter(
            "callscribe_twilio_frames_rejected", "Twilio frames skipped as unusable", registry=self.registry
        )
        self.audio = Counter(
            "callscribe_audio_seconds_sent", "Seconds of call audio sent to Deepgram", registry=self.registry
        )
        self.lost = Counter(
            "callscribe_audio_seconds_lost", "Seconds of call audio that never reached Deepgram", registry=self.registry
        )
        self.results = Counter(
            "callscribe_deepgram_results", "Deepgram Results messages received", registry=self.registry
        )
        self.connections = Counter(
            "callscribe_deepgram_connections", "Deepgram connections opened", registry=self.registry
        )
        self.dropped = Counter(
            "callscribe_subscribers_dropped", "Subscribers disconnected for lagging or stalling", registry=self.registry
        )
        self.overlapping = Counter(
            "callscribe_twilio_audio_seconds_overlapping",
            "Seconds of Twilio audio skipped because their timestamps repeated audio already placed",
            registry=self.registry,
        )
        self.clock_jumps = Counter(
            "callscribe_twilio_timestamp_jumps",
            "Twilio timestamps far ahead of the track (over 10 s), taken as clock jumps and not padded",
            registry=self.registry,
        )
        self.unparsable = Counter(
            "callscribe_deepgram_messages_unparsable",
            "Deepgram messages not of the expected shape (passed on unchanged)",
            registry=self.registry,
        )

    def call_ended(self, call: Call, outcome: str) -> None:
        """Add a finished call's totals (its `outcome`: ok, no_start, transcription_failed, failed)."""
        self.calls.labels(outcome).inc()
        self.frames.inc(call.stream.media_frames)
        self.rejected.inc(call.stream.rejected)
        if (mixer := call.mixer) is not None:
            self.overlapping.inc(sum(mixer.dropped) / (SAMPLES_PER_MS * 1000))
            self.clock_jumps.inc(mixer.resyncs)
        if (deepgram := call.deepgram) is not None:
            backlog = deepgram.backlog
            self.audio.inc(deepgram.audio_bytes_sent / backlog.bytes_per_second)
            self.lost.inc(backlog.lost / backlog.bytes_per_second)
            self.results.inc(deepgram.results_received)
            self.connections.inc(len(deepgram.streams))
            self.unparsable.inc(deepgram.unparsable)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _live_count(live: Callable[[], dict[str, int]], name: str) -> float:
    return live()[name]
