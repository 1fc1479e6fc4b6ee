"""The writes a process sends to Redis without waiting for them: a bounded outbox, sent in order.

A call never waits for Redis. What it (or a game) has Redis do -- publish a message, register or end
a call, relay a game's command -- is a `Write` queued here without blocking; one writer task sends
them in order, a pipeline per batch of up to `BATCH_SIZE`, under the link's command deadline. A
write that finds the outbox full, or Redis down, is dropped and counted (`RedisLink.unwritten`), and
its `dropped` callback runs; a sent one's `done` gets Redis's answer. Redis refusing a batch (an
error answer) is logged at most once a minute and drops it; failing or hanging is an outage.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import coredis
import trio

from callscribe.server.redis_link import REDIS_ERRORS, RedisLink, Sparse

log = logging.getLogger(__name__)

OUTBOX_SIZE = 1000
"""Writes that may wait for Redis; beyond that they are dropped."""
BATCH_SIZE = 100

Pipeline = Any
"""coredis's pipeline (its type is generic over the client's own)."""


@dataclass(frozen=True, slots=True)
class Write:
    """`stage` adds the write's commands to a pipeline and returns what to await for its answer
    (None: no answer wanted); `done` gets that answer, `dropped` runs if the write never reached Redis."""

    stage: Callable[[Pipeline], Any]
    done: Callable[[Any], None] | None = None
    dropped: Callable[[], None] | None = None


class Outbox:
    def __init__(self, link: RedisLink, size: int = OUTBOX_SIZE) -> None:
        self._link = link
        self._send, self._receive = trio.open_memory_channel[Write](size)
        self._queued, self._congested = 0, False
        self.empty = trio.Event()
        """Set while nothing waits to be written."""
        self.empty.set()
        self._refused = Sparse("Redis refused %d write batch(es), the last: %s")

    @property
    def congested(self) -> bool:
        """Writes are being dropped for want of room, until Redis catches up."""
        return self._congested

    def put(self, write: Write) -> None:
        """Queue `write` without waiting (dropped if Redis is down or the outbox is full)."""
        if self._link.down:
            self._drop(write)
            return
        try:
            self._send.send_nowait(write)
        except trio.WouldBlock:
            if not self._congested:
                self._congested = True
                log.warning("Redis is not keeping up: %d writes wait; dropping more until it catches up", self._queued)
            self._drop(write)
            return
        self._queued += 1
        if self.empty.is_set():
            self.empty = trio.Event()

    def _drop(self, write: Write) -> None:
        self._link.unwritten += 1
        if write.dropped is not None:
            write.dropped()

    async def run(self) -> None:
        """Send the outbox to Redis in order, a pipeline per batch (dropped while Redis is down)."""
        async for first in self._receive:
            batch = [first]
            while len(batch) < BATCH_SIZE:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._write(batch)
            self._queued -= len(batch)
            if self._queued == 0:
                self.empty.set()
                if self._congested and not self._link.down:
                    self._congested = False
                    log.warning("Redis caught up; %d writes were dropped", self._link.unwritten)
                    self._link.unwritten = 0

    async def _write(self, batch: list[Write]) -> None:
        link = self._link
        try:
            if link.down:
                raise ConnectionError("Redis is down")  # (already logged)
            with link.deadline():
                async with link.client.pipeline(transaction=False) as pipe:
                    pending = [(write, write.stage(pipe)) for write in batch]
                answers = [(write, await answer) for write, answer in pending if answer is not None]
        except REDIS_ERRORS as error:
            if isinstance(error, coredis.exceptions.ResponseError):
                self._refused(error)  # Redis answered: not an outage
                if "NOSCRIPT" in str(error):  # Redis restarted between two writes
                    await link.reload_scripts()
            else:
                link.failed("writing", error)
            for write in batch:
                self._drop(write)
            return
        for write, answer in answers:
            if write.done is not None:
                write.done(answer)
