"""Prometheus metrics, served on GET /metrics.

Nothing here runs per media frame: live numbers (calls, subscribers, games) are read from the
server's state when Prometheus scrapes, and each call's totals are added once, when it ends.
Each app gets its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from callscribe.core.mixer import SAMPLES_PER_MS

if TYPE_CHECKING:
    from callscribe.server.call import Call
    from callscribe.server.store_writer import StoreRecorder
    from callscribe.server.webhook_delivery import WebhookDelivery

__all__ = ["CONTENT_TYPE", "Metrics"]


class Metrics:
    def __init__(self, live: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        for name, help_text in (
            ("active_calls", "Calls streaming now"),
            ("subscribers", "Subscribers connected to live calls"),
            ("games", "Games connected to /game"),
            ("hub_up", "1 while the hub takes subscribers, 0 during an outage (Redis down)"),
        ):
            gauge = Gauge(f"callscribe_{name}", help_text, registry=self.registry)
            gauge.set_function(functools.partial(_live_count, live, name))
        counter = functools.partial(Counter, registry=self.registry)
        self.calls = counter("callscribe_calls", "Calls ended", ["outcome"])
        self.frames = counter("callscribe_twilio_frames", "Twilio media frames received")
        self.rejected = counter("callscribe_twilio_frames_rejected", "Twilio frames skipped as unusable")
        self.audio = counter("callscribe_audio_seconds_sent", "Seconds of call audio sent to Deepgram")
        self.lost = counter("callscribe_audio_seconds_lost", "Seconds of call audio that never reached Deepgram")
        self.results = counter("callscribe_deepgram_results", "Deepgram Results messages received")
        self.connections = counter("callscribe_deepgram_connections", "Deepgram connections opened")
        self.dropped = counter("callscribe_subscribers_dropped", "Subscribers disconnected for lagging or stalling")
        self.overlapping = counter(
            "callscribe_twilio_audio_seconds_overlapping",
            "Seconds of Twilio audio skipped because their timestamps repeated audio already placed",
        )
        self.clock_jumps = counter(
            "callscribe_twilio_timestamp_jumps",
            "Twilio timestamps far ahead of the track (over 10 s), taken as clock jumps and not padded",
        )
        self.unparsable = counter(
            "callscribe_deepgram_messages_unparsable",
            "Deepgram messages not of the expected shape (passed on unchanged)",
        )
        self.store = _StoreCollector()
        self.registry.register(self.store)

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


# -- the call store and webhooks ------------------------------------------------------------------


class _StoreCollector:
    """The store's and the webhook delivery's counts, read when Prometheus scrapes (their hot paths
    only add to plain numbers)."""

    def __init__(self) -> None:
        self.recorder: StoreRecorder | None = None
        self.delivery: WebhookDelivery | None = None

    def watch(self, recorder: StoreRecorder, delivery: WebhookDelivery | None) -> None:
        self.recorder, self.delivery = recorder, delivery

    def collect(self) -> Iterator[Metric]:
        recorder = self.recorder
        if recorder is not None:
            yield CounterMetricFamily(
                "callscribe_store_writes",
                "Records (call starts, finals, call ends) written to the store",
                recorder.written,
            )
            yield CounterMetricFamily(
                "callscribe_store_writes_dropped",
                "Transcript finals not kept: the store's queue was full (database down or too slow)",
                recorder.dropped,
            )
            yield GaugeMetricFamily("callscribe_store_queue", "Records waiting to be written", recorder.queued)
            yield GaugeMetricFamily(
                "callscribe_store_up", "1 while the store takes writes, 0 during an outage", recorder.up
            )
        delivery = self.delivery
        if delivery is None:
            return
        deliveries = CounterMetricFamily(
            "callscribe_webhook_deliveries",
            "Webhook delivery attempts: delivered, failed (each failed attempt), dropped (given up)",
            labels=["receiver", "result"],
        )
        lag = SummaryMetricFamily(
            "callscribe_webhook_delivery_lag_seconds",
            "Seconds from an event's creation to its delivery",
            labels=["receiver"],
        )
        pending = GaugeMetricFamily("callscribe_webhook_pending", "Events waiting for delivery", labels=["receiver"])
        oldest = GaugeMetricFamily(
            "callscribe_webhook_oldest_pending_seconds", "Age of the oldest event waiting", labels=["receiver"]
        )
        now = time.time()
        for receiver, stats in delivery.stats.items():
            name = delivery.names[receiver]
            deliveries.add_metric([name, "delivered"], stats.delivered)
            deliveries.add_metric([name, "failed"], stats.failed)
            deliveries.add_metric([name, "dropped"], stats.dropped)
            lag.add_metric([name], count_value=stats.delivered, sum_value=stats.lag_sum_s)
            pending.add_metric([name], stats.pending)
            age = 0.0 if stats.oldest_created_at is None else max(0.0, now - stats.oldest_created_at)
            oldest.add_metric([name], age)
        yield from (deliveries, lag, pending, oldest)
