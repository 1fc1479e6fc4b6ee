"""Webhook delivery: the store's outbox POSTed to each receiver, in order per call, at least once.

The writer puts each event into the `outbox` table in the same transaction as the rows it is
about (so an event exists exactly when its call or final does, and survives a restart). One task
per receiver URL then loops: take the events that may be sent now -- the first undelivered event
of each call, if it is due -- POST them (up to `CONCURRENCY` calls' events at once, each call's in
order), and record the round in one transaction: delivered events are deleted, failed ones get
their next attempt (core/webhooks.py `RetryPolicy`), events past the retry period are dropped. The
task sleeps until the writer says new events are in, the next retry is due, or `POLL_S` passed.

A receiver that is down or slow holds up only its own task and its own events: calls, other
receivers and the writer never wait for it. Its failures are logged once per outage, and counted,
with the delivery lag and the events waiting, on /metrics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx
import trio

from callscribe import __version__
from callscribe.core import webhooks
from callscribe.server.store import OutboxEvent, Settlement, StoreUnavailable
from callscribe.server.store_writer import StoreRecorder

log = logging.getLogger(__name__)

CONCURRENCY = 8
"""Calls whose next event is sent to one receiver at once."""
ROUND_SIZE = 100
POLL_S = 5.0
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ATTEMPT_TIMEOUT_S = 30.0
"""An attempt's whole exchange, however its answer trickles in (httpx's timeouts are per read)."""


@dataclass
class ReceiverStats:
    """What /metrics shows of one receiver."""

    delivered: int = 0
    failed: int = 0
    """Attempts that failed (each retry counts)."""
    dropped: int = 0
    """Events given up after the retry period."""
    lag_sum_s: float = 0.0
    """Seconds from events' creation to their delivery, summed over `delivered`."""
    pending: int = 0
    oldest_created_at: float | None = None
    failing_since: float | None = None


class WebhookDelivery:
    def __init__(
        self,
        store: StoreRecorder,
        secret: str | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        poll_s: float = POLL_S,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
    ) -> None:
        self.store = store
        self.attempt_timeout_s = attempt_timeout_s
        self.receivers = store.events.receivers
        self.policy = store.events.policy
        self.secret = secret.encode() if secret else None
        self.stats = {receiver: ReceiverStats() for receiver in self.receivers}
        self.names = webhooks.receiver_names(self.receivers)
        """Receivers as logs and metrics show them (no credentials, no query)."""
        self._transport = transport
        self._poll_s = poll_s
        self._wake = {receiver: trio.Event() for receiver in self.receivers}
        store.on_events = self.wake

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for receiver in self.receivers:
                nursery.start_soon(self._serve, receiver)
            task_status.started()

    async def _serve(self, receiver: str) -> None:
        store, engine = self.store, self.store.engine
        stats = self.stats[receiver]
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, transport=self._transport) as client:
            while True:
                self._wake[receiver] = trio.Event()  # before looking, so that a wake-up meanwhile is not lost
                wait_s = self._poll_s
                try:
                    heads = await store.in_thread(
                        engine.outbox_heads, store.instance, receiver, time.time(), ROUND_SIZE
                    )
                    if heads:
                        await self._round(client, receiver, heads)
                    state = await store.in_thread(engine.outbox_state, store.instance, receiver)
                    stats.pending, stats.oldest_created_at = state.pending, state.oldest_created_at
                    if heads:
                        continue
                    if state.next_due_at is not None:
                        wait_s = min(wait_s, max(0.0, state.next_due_at - time.time()))
                except StoreUnavailable as error:
                    log.debug("webhook %s: the store cannot answer: %s", self.names[receiver], error)
                except Exception:  # logged; this receiver's next round tries again, the others go on
                    log.exception("webhook %s: delivery round failed unexpectedly", self.names[receiver])
                with trio.move_on_after(wait_s):
                    await self._wake[receiver].wait()

    async def _round(self, client: httpx.AsyncClient, receiver: str, heads: list[OutboxEvent]) -> None:
        delivered: list[OutboxEvent] = []
        retry: list[tuple[OutboxEvent, int, float, str]] = []
        dropped: list[OutboxEvent] = []
        limiter = trio.CapacityLimiter(CONCURRENCY)
        stats = self.stats[receiver]

        async def attempt(event: OutboxEvent) -> None:
            async with limiter:
                error = await self._post(client, receiver, event)
            now = time.time()
            if error is None:
                delivered.append(event)
                stats.delivered += 1
                stats.lag_sum_s += max(0.0, now - event.created_at)
                return
            stats.failed += 1
            failures = event.attempts + 1
            next_at = self.policy.next_attempt(failures, event.created_at, now)
            if next_at is None:
                dropped.append(event)
                stats.dropped += 1
                log.warning(
                    "webhook %s: gave up %s %s of call %s after %d attempts over %.0f s (last: %s)",
                    self.names[receiver],
                    event.kind,
                    event.event_id,
                    event.call_sid,
                    failures,
                    now - event.created_at,
                    error,
                )
            else:
                retry.append((event, failures, next_at, error))
            if stats.failing_since is None:
                stats.failing_since = now
                log.warning(
                    "webhook %s: delivery failed: %s; events wait in the store and are retried (first in %.1f s)",
                    self.names[receiver],
                    error,
                    self.policy.delay(failures),
                )

        async with trio.open_nursery() as nursery:
            for event in heads:
                nursery.start_soon(attempt, event)
        if delivered and stats.failing_since is not None and not retry:
            log.warning(
                "webhook %s: delivering again after %.0f s", self.names[receiver], time.time() - stats.failing_since
            )
            stats.failing_since = None
        try:
            await self.store.in_thread(self.store.engine.outbox_settle, Settlement(delivered, retry, dropped))
        except StoreUnavailable as error:  # delivered events will be sent again: at least once
            log.debug("webhook %s: could not record a delivery round: %s", self.names[receiver], error)
            await trio.sleep(1.0)

    async def _post(self, client: httpx.AsyncClient, receiver: str, event: OutboxEvent) -> str | None:
        """POST one event; None when the receiver took it (any 2xx), else what went wrong."""
        body = event.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"callscribe/{__version__}",
            webhooks.EVENT_ID_HEADER: event.event_id,
            webhooks.EVENT_TYPE_HEADER: event.kind,
        }
        if self.secret is not None:
            headers[webhooks.SIGNATURE_HEADER] = webhooks.sign(self.secret, int(time.time()), body)
        try:
            # The status is the answer: the body is not read (it could be endless, or huge).
            with trio.fail_after(self.attempt_timeout_s):
                async with client.stream("POST", receiver, content=body, headers=headers) as response:
                    status = response.status_code
        except trio.TooSlowError:
            return f"no answer within {self.attempt_timeout_s:g} s"
        except (httpx.HTTPError, httpx.InvalidURL) as error:  # InvalidURL: not an HTTPError
            return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"
