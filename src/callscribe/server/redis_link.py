"""One process's link to a shared Redis: the client, command deadlines, outages and the lease.

Shared by the Redis hub (calls and fan-out) and the Redis games (codes and patches), so that a
process has one view of whether Redis is there:

- Every command gets a deadline (`deadline()`, `command_timeout_s`); a Redis that fails or hangs
  is *down*. The outage is logged once (`failed`), Redis is PINGed every `PROBE_INTERVAL_S`, and its
  return is logged as soon as it answers; then the scripts are loaded again (a restarted Redis
  has lost them) and every `renewal` runs at once. coredis's own log lines are lowered to DEBUG.
- The process has an *origin*, 8 random hex characters, and vouches for itself in
  `{prefix}:processes` (sorted set: origin -> time) every `lease_s / 3`, together with every
  `renewal` (its calls, its game codes). A process not heard of for `stale_s` (the lease less
  one watch interval) is dead: its calls end, its codes are free. Those who watch for that look
  every `watch_interval_s` (`lease_s / 10`), so a dead process is noticed within `lease_s`.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypedDict

import anyio
import coredis
import coredis.retry
import trio

from callscribe.core.fanout import ORIGIN_LENGTH
from callscribe.server.hub import RESUME_WINDOW_S, HubUnavailable

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 1.0
"""Deadline of a Redis command (or a pipeline of them); past it, Redis is down."""
PROBE_INTERVAL_S = 1.0
"""During an outage Redis is PINGed this often."""
CONNECT_TIMEOUT_S = 2.0
"""Deadline to connect when serve.py checks Redis at start-up."""
LEASE_S = 30.0
"""A process that dies is noticed within this long (its calls end, its codes are freed)."""
FORGOTTEN_AFTER_S = RESUME_WINDOW_S
"""Calls and processes not vouched for in this long (plus the lease) leave the registry: the
history of a dead process's call has expired by then, and nobody can resume it."""
REDIS_ERRORS = (coredis.exceptions.RedisError, OSError)
"""What a failed or unanswered command raises (TimeoutError is an OSError)."""
PUBSUB_ERRORS = (*REDIS_ERRORS, anyio.ClosedResourceError, anyio.BrokenResourceError)
"""Also what coredis's pub/sub raises when its connection goes while it is being closed."""


class _DemoteToDebug(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("coredis").addFilter(_DemoteToDebug())


class Sparse:
    """A warning logged at most once a minute, with the count of occurrences since the last one."""

    def __init__(self, message: str) -> None:
        self.message, self.count, self.next_at = message, 0, -math.inf

    def __call__(self, *args: object) -> None:
        self.count += 1
        if (now := trio.current_time()) >= self.next_at:
            log.warning(self.message, self.count, *args)
            self.count, self.next_at = 0, now + 60.0


Renewal = Callable[[], Awaitable[None]]


class LinkOptions(TypedDict, total=False):
    """`RedisLink`'s keyword arguments (what the Redis hub passes on to its link)."""

    prefix: str
    lease_s: float
    command_timeout_s: float


class RedisLink:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "callscribe",
        lease_s: float = LEASE_S,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.client = coredis.Redis.from_url(
            url,
            decode_responses=True,
            connect_timeout=command_timeout_s,
            stream_timeout=command_timeout_s,
            retry_policy=coredis.retry.NoRetryPolicy(),
        )
        self.where, self.prefix, self.lease_s, self.timeout = url.rsplit("@", 1)[-1], prefix, lease_s, command_timeout_s
        self.watch_interval_s = lease_s / 10
        self.stale_s = lease_s - self.watch_interval_s
        self.origin = secrets.token_hex(ORIGIN_LENGTH // 2)
        self.down, self.back = False, trio.Event()
        self.back.set()
        self.unwritten = 0
        """Writes dropped (outbox full, Redis down) since this was last logged."""
        self.renewals: list[Renewal] = []
        self._scripts: dict[str, str] = {}  # source -> sha1
        self._outage_began, self._outage = 0.0, trio.Event()

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def stale_before(self) -> float:
        """Wall-clock time before which a vouch is too old: its process is dead."""
        return time.time() - self.stale_s

    @contextmanager
    def deadline(self) -> Iterator[None]:
        """The Redis commands in the block get `command_timeout_s` together, then TimeoutError."""
        with trio.move_on_after(self.timeout) as scope:
            yield
        if scope.cancelled_caught:
            raise TimeoutError(f"no answer within {self.timeout:g} s")

    def script(self, source: str) -> str:
        """The sha1 of a script loaded by `run` (register it before)."""
        return self._scripts[source]

    def register_script(self, source: str) -> None:
        self._scripts.setdefault(source, "")

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and load the scripts, then vouch and probe until cancelled. Raises
        `HubUnavailable` if Redis does not answer at start-up."""
        async with self.client:
            try:
                with self.deadline():
                    await self.client.ping()
                    await self._load_scripts()
                    await self.client.zadd(self.key("processes"), {self.origin: time.time()})
            except REDIS_ERRORS as error:
                raise HubUnavailable(f"Redis at {self.where} does not answer: {error}") from error
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._vouch)
                nursery.start_soon(self._probe)
                task_status.started()
                await trio.sleep_forever()

    async def _load_scripts(self) -> None:
        for source in self._scripts:
            self._scripts[source] = str(await self.client.script_load(source))

    async def reload_scripts(self) -> None:
        try:
            with self.deadline():
                await self._load_scripts()
        except REDIS_ERRORS as error:
            self.failed("loading scripts", error)

    # -- outages ------------------------------------------------------------------------------------

    def failed(self, what: str, error: BaseException) -> None:
        if not self.down:
            self.down, self._outage_began, self.back = True, trio.current_time(), trio.Event()
            self._outage.set()
            log.error(
                "Redis is unavailable (%s: %s); calls go on, this process's subscribers are served directly",
                what,
                str(error) or type(error).__name__,
            )

    def unavailable(self, what: str, error: BaseException) -> HubUnavailable:
        self.failed(what, error)
        return HubUnavailable(f"Redis is unavailable: {error}")

    async def _probe(self) -> None:
        """During an outage, PING Redis every PROBE_INTERVAL_S; once it answers, resume."""
        while True:
            await self._outage.wait()
            while True:
                await trio.sleep(PROBE_INTERVAL_S)
                try:
                    with self.deadline():
                        await self.client.ping()
                        await self._load_scripts()
                    break
                except REDIS_ERRORS as error:
                    log.debug("Redis is still unavailable: %s", error)
            self._outage, self.down = trio.Event(), False
            self.back.set()
            log.warning(
                "Redis is back after %.1f s; %d writes were dropped meanwhile (other processes' subscribers missed them)",
                trio.current_time() - self._outage_began,
                self.unwritten,
            )
            self.unwritten = 0
            await self.vouch_now()

    # -- the lease ------------------------------------------------------------------------------------

    async def _vouch(self) -> None:
        while True:
            await trio.sleep(self.lease_s / 3)
            await self.vouch_now()

    async def vouch_now(self) -> None:
        """Say this process is alive, and renew what it holds."""
        if self.down:
            return
        now = time.time()
        forgotten = now - (FORGOTTEN_AFTER_S + self.lease_s)
        try:
            with self.deadline():
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.key("processes"), {self.origin: now})
                    # Dead processes, and calls nobody buried (none followed them), would stay for ever.
                    pipe.zremrangebyscore(self.key("processes"), -math.inf, forgotten)
                    pipe.zremrangebyscore(self.key("calls"), -math.inf, forgotten)
        except REDIS_ERRORS as error:
            self.failed("renewing the lease", error)
            return
        for renew in self.renewals:
            await renew()
