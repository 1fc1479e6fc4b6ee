"""The store's writer: what calls hand over is kept, in batches, without ever making a call wait.

`StoreRecorder` is the `Recorder` of a real store. Each call's `call_started`, `final` and
`call_ended` appends one small record to a bounded queue (and numbers the call's finals 1, 2, 3,
...); nothing else happens on the call's task. One writer task per process takes what has queued
(waiting `BATCH_WINDOW_S` after the first record, so that a busy server writes a few large
transactions a second rather than one per final; the history of late subscribers includes what
still waits, so the wait delays only the API and webhooks) and runs it as one transaction in a worker thread.

When the database is down or slow, the writer keeps its batch and retries (0.5 s, doubling to 5 s)
while the queue fills; once the queue is full, finals are dropped and counted (a call's start and
end are always queued: they are two per call, and a call must not be left without its row). The
outage is logged once when it begins, once when it ends (with what was dropped). Calls never notice.

Besides the writer: a heartbeat (the process's lease, see store_postgres.py; with PostgreSQL also
closing the calls of processes that are gone), retention (`--retention-days`), and the reads of
the REST API and of late subscribers' history, each in a worker thread under a limiter.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import trio

from callscribe.core.call_record import CallEnd, CallStart
from callscribe.server.hub import last_stream_ended
from callscribe.server.store import (
    EndWrite,
    Engine,
    EventSettings,
    FinalWrite,
    StartWrite,
    StoreError,
    StoreSettings,
    StoreUnavailable,
    Write,
    open_engine,
)

if TYPE_CHECKING:
    from callscribe.server.webhook_delivery import WebhookDelivery

log = logging.getLogger(__name__)

BATCH_WINDOW_S = 0.2
"""After the first record of a batch, how long the writer waits for more: a few transactions a second
whatever the load (each transaction has a fixed cost: its commit, a new FTS5 segment to merge later)."""
BATCH_MAX = 2000
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
HEARTBEAT_S = 5.0
LEASE_S = 30.0
"""A process whose heartbeat is older than this is gone (PostgreSQL; SQLite knows by its lock)."""
RETENTION_EVERY_S = 3600.0
READERS = 4
"""Reads (REST API, history, webhook delivery) in worker threads at once."""

P = ParamSpec("P")
T = TypeVar("T")


class _LiveCall:
    __slots__ = ("finals", "streams")

    def __init__(self) -> None:
        self.streams = 1
        self.finals = 0


class StoreRecorder:
    """A `Recorder` that keeps calls in `engine` (already opened and registered as `instance`)."""

    def __init__(
        self,
        engine: Engine,
        *,
        instance: str,
        queue_size: int = 10_000,
        events: EventSettings | None = None,
        retention_days: float = 0.0,
        lease_s: float = LEASE_S,
    ) -> None:
        self.engine = engine
        self.instance = instance
        self.events = events or EventSettings()
        self.queue_size = queue_size
        self.retention_days = retention_days
        self.lease_s = lease_s
        self.on_events: Callable[[], None] | None = None
        """Called when a batch wrote webhook events (the delivery wakes up)."""
        self.delivery: WebhookDelivery | None = None
        """Runs beside the writer when webhooks are configured."""
        self._live: dict[str, _LiveCall] = {}
        self._queue: deque[Write] = deque()
        self._in_flight: list[Write] = []
        self._ready = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._readers = trio.CapacityLimiter(READERS)
        self.written = 0
        self.dropped = 0
        self.up = True
        self._outage_began = 0.0
        self._dropped_in_outage = 0

    # -- from the calls (never waits) ------------------------------------------------------------

    def call_started(self, start: CallStart) -> None:
        live = self._live.get(start.call_sid)
        if live is not None:  # another stream of a call already recorded here
            live.streams += 1
            return
        self._live[start.call_sid] = _LiveCall()
        self._offer(StartWrite(start), always=True)

    def final(self, call_sid: str, message: str) -> None:
        live = self._live.get(call_sid)
        if live is None:
            return
        live.finals += 1
        self._offer(FinalWrite(call_sid, live.finals, message, time.time()))

    def call_ended(self, call_sid: str, end: CallEnd) -> None:
        live = last_stream_ended(self._live, call_sid)
        if live is not None:
            self._offer(EndWrite(call_sid, end, live.finals), always=True)

    def _offer(self, write: Write, always: bool = False) -> None:
        if len(self._queue) >= self.queue_size and not always:
            self.dropped += 1
            self._dropped_in_outage += 1
            if self._dropped_in_outage == 1:
                log.warning(
                    "store: %d writes are waiting for %s; dropping transcript finals until it catches up",
                    len(self._queue),
                    self.engine.where,
                )
            return
        self._queue.append(write)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._in_flight)

    # -- late subscribers --------------------------------------------------------------------------

    async def history(self, call_sid: str) -> list[str]:
        """The call's finals so far, in order: those kept, and those still waiting to be written.

        The waiting ones are looked at before the database is read, and a write leaves the queue
        only once committed, so every final handed over before this call is in one or the other.
        While the call's own start still waits, the store can only hold an older call of the same
        callSid (which the start will replace): then only the waiting finals are the call's."""
        waiting: dict[int, str] = {}
        started_here = False
        for write in (*self._in_flight, *self._queue):
            if isinstance(write, FinalWrite):
                if write.call_sid == call_sid:
                    waiting[write.seq] = write.raw
            elif isinstance(write, StartWrite) and write.start.call_sid == call_sid:
                started_here = True
        if started_here:  # the store has nothing of this call yet (an older call with its callSid, at most)
            return [waiting[seq] for seq in sorted(waiting)]
        kept = dict(await self.in_thread(self.engine.history, call_sid))
        kept.update(waiting)
        return [kept[seq] for seq in sorted(kept)]

    async def in_thread(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run an engine method in a worker thread (at most `READERS` at once); `StoreUnavailable` if
        the database cannot answer."""

        def call() -> T:
            return function(*args, **kwargs)

        return await trio.to_thread.run_sync(call, limiter=self._readers, abandon_on_cancel=True)

    # -- the tasks -----------------------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_loop)
            nursery.start_soon(self._heartbeat_loop)
            if self.retention_days > 0:
                nursery.start_soon(self._retention_loop)
            if self.delivery is not None:
                await nursery.start(self.delivery.run)
            task_status.started()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (the caller bounds the wait)."""
        await self._idle.wait()

    async def _write_loop(self) -> None:
        while True:
            await self._ready.wait()
            await trio.sleep(BATCH_WINDOW_S)
            self._ready = trio.Event()
            count = min(len(self._queue), BATCH_MAX)
            self._in_flight = [self._queue.popleft() for _ in range(count)]
            if self._queue:
                self._ready.set()
            try:
                await self._write(self._in_flight)
            finally:
                self._in_flight = []
            if not self._queue:
                self._idle.set()

    async def _write(self, batch: list[Write]) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                events = await trio.to_thread.run_sync(self.engine.write, batch, self.events, abandon_on_cancel=True)
            except StoreUnavailable as error:
                self._outage(str(error))
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except Exception:
                if len(batch) == 1:
                    log.exception("store: a write failed and was dropped: %s", _describe(batch[0]))
                    self.dropped += 1
                    return
                # A bug or a write the database refuses: one by one, so that only that write is lost
                # (a batch holds up to BATCH_MAX writes of every live call).
                log.warning("store: a batch of %d writes failed; writing them one by one", len(batch))
                for write in batch:
                    await self._write([write])
                return
            break
        self.written += len(batch)
        if not self.up:
            self.up = True
            log.warning(
                "store: %s is back after %.1f s; %d writes kept, %d transcript finals dropped meanwhile",
                self.engine.where,
                trio.current_time() - self._outage_began,
                len(batch),
                self._dropped_in_outage,
            )
        self._dropped_in_outage = 0
        if events and self.on_events is not None:
            self.on_events()

    def _outage(self, reason: str) -> None:
        if self.up:
            self.up = False
            self._outage_began = trio.current_time()
            log.warning(
                "store: cannot write to %s: %s; calls go on, writes queue (up to %d) and are retried",
                self.engine.where,
                reason,
                self.queue_size,
            )

    async def _heartbeat_loop(self) -> None:
        # Its own thread slot: readers (API queries, histories, webhooks) may hold all of theirs for
        # longer than the lease, and a process whose heartbeat waits that long has its calls reaped.
        lease_thread = trio.CapacityLimiter(1)
        while True:
            await trio.sleep(min(HEARTBEAT_S, self.lease_s / 6))
            try:
                await trio.to_thread.run_sync(
                    self.engine.heartbeat, self.instance, time.time(), limiter=lease_thread, abandon_on_cancel=True
                )
                if not self.engine.exclusive:
                    await self.reap(lease_thread)
            except StoreUnavailable as error:
                log.debug("store: heartbeat failed: %s", error)
            except Exception:  # e.g. a read-only standby after a failover: logged, and the loop goes on
                log.exception("store: heartbeat failed unexpectedly; trying again")

    async def reap(self, limiter: trio.CapacityLimiter | None = None) -> list[str]:
        """Close the calls of processes that are gone (interrupted); returns their callSids. (In a
        thread of `limiter`'s, by default one of the readers'.)"""
        closed = await trio.to_thread.run_sync(
            self.engine.reap,
            self.instance,
            time.time(),
            self.lease_s,
            self.events,
            limiter=limiter or self._readers,
            abandon_on_cancel=True,
        )
        if closed:
            log.warning(
                "store: %d call(s) left open by a process that stopped are closed as interrupted: %s",
                len(closed),
                ", ".join(closed[:10]) + (" ..." if len(closed) > 10 else ""),
            )
            if self.on_events is not None and self.events.receivers:
                self.on_events()
        return closed

    async def _retention_loop(self) -> None:
        while True:
            cutoff = time.time() - self.retention_days * 86400
            try:
                deleted = await self.in_thread(self.engine.delete_ended_before, cutoff)
            except StoreUnavailable as error:
                log.debug("store: retention postponed: %s", error)
            except Exception:  # logged; the next round tries again
                log.exception("store: retention failed unexpectedly")
            else:
                if deleted:
                    log.info("store: deleted %d call(s) older than %g days", deleted, self.retention_days)
            await trio.sleep(RETENTION_EVERY_S)


async def open_store(settings: StoreSettings, *, shared: bool = False, lease_s: float = LEASE_S) -> StoreRecorder:
    """Open the store of `settings` (its location must be set) for this process: connect, upgrade the
    schema, register, and close the calls that processes gone since left open. `StoreError` if it
    cannot be used."""
    assert settings.location is not None
    engine = open_engine(settings.location, settings.speaker_labels, shared=shared)
    await trio.to_thread.run_sync(engine.open)
    recorder = StoreRecorder(
        engine,
        instance=secrets.token_hex(8),
        queue_size=settings.queue_size,
        events=EventSettings(settings.webhook_urls, settings.webhook_retry),
        retention_days=settings.retention_days,
        lease_s=lease_s,
    )
    try:
        await trio.to_thread.run_sync(engine.register, recorder.instance, time.time())
        await recorder.reap()
    except StoreUnavailable as error:
        await trio.to_thread.run_sync(engine.close)
        raise StoreError(f"cannot use the store at {engine.where}: {error}") from None
    return recorder


def _describe(write: Write) -> str:
    if isinstance(write, StartWrite):
        return f"the start of call {write.start.call_sid}"
    if isinstance(write, FinalWrite):
        return f"final {write.seq} of call {write.call_sid}"
    return f"the end of call {write.call_sid}"
