"""Games across processes through Redis: the shared code pool, and the patches' envelopes.

- `{prefix}:codes`           hash: code -> "origin game-id" of the game holding it. A claim (one
                             script) takes the first of the claimer's shuffled codes that nobody
                             holds, or whose holder's process is dead (not vouched for within the
                             lease, redis_link.py): a process that dies frees its codes.
- `{prefix}:codes:changed`   pub/sub: a code was claimed or released; every process then reloads
                             the held codes into its replica, the `CodePool` its patch machines
                             match against (also every watch interval, which drops the codes of
                             processes that died).
- `{prefix}:games:{origin}`  pub/sub: the envelopes (`callscribe.core.game_link`) for the process
                             `origin`, sent in order through the hub's outbox.

Every process must have the same codes (`--game-codes`). A game's code is claimed when it
connects; if Redis cannot be reached then, the game is refused (`HubUnavailable`, close 1013).
"""

from __future__ import annotations

import logging
import random

import coredis
import trio

from callscribe.core.codes import CodePool
from callscribe.core.game_link import Envelope, decode, encode
from callscribe.server.games import CodeHolder, GameRegistry
from callscribe.server.hub import HubUnavailable
from callscribe.server.redis_hub import RedisHub
from callscribe.server.redis_link import REDIS_ERRORS, Sparse
from callscribe.server.redis_outbox import Pipeline, Write
from callscribe.server.remote_games import RemoteGames

log = logging.getLogger(__name__)

CLAIM = """
for i = 3, #ARGV do
    local holder = redis.call('HGET', KEYS[1], ARGV[i])
    local free = not holder
    if holder then
        local seen = redis.call('ZSCORE', KEYS[2], string.sub(holder, 1, 8))
        free = (not seen) or tonumber(seen) < tonumber(ARGV[1])
    end
    if free then
        redis.call('HSET', KEYS[1], ARGV[i], ARGV[2])
        redis.call('PUBLISH', KEYS[3], ARGV[i])
        return ARGV[i]
    end
end
return false
"""
"""Hold the first free code of ARGV[3:] for ARGV[2] ("origin game-id"); ARGV[1]: stale-before time.
KEYS: codes, processes, changed channel."""

RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    redis.call('PUBLISH', KEYS[2], ARGV[1])
    return 1
end
return 0
"""


class RedisCodes:
    """The registry's `CodeLedger` in Redis (see the module documentation)."""

    def __init__(self, hub: RedisHub, pool: CodePool, rng: random.Random | None = None) -> None:
        self.pool = pool
        self._hub, self._link = hub, hub.link
        self._rng = rng or random.Random()
        self._held: dict[str, CodeHolder] = {}
        self.changes = trio.Event()
        """Set when another process claimed or released a code."""
        for script in (CLAIM, RELEASE):
            self._link.register_script(script)

    async def claim(self, game_id: str) -> str | None:
        link = self._link
        if link.down:
            raise HubUnavailable("Redis is unavailable")
        candidates = list(self.pool.codes)
        self._rng.shuffle(candidates)
        keys = [link.key("codes"), link.key("processes"), link.key("codes", "changed")]
        try:
            with link.deadline():
                code = await link.client.evalsha(
                    link.script(CLAIM), keys, [link.stale_before(), f"{link.origin} {game_id}", *candidates]
                )
        except REDIS_ERRORS as error:
            raise link.unavailable("claiming a game code", error) from error
        if code is None:
            return None
        self._held[str(code)] = CodeHolder(link.origin, game_id)
        self.pool.hold_exactly(self._held)
        return str(code)

    def release(self, code: str, game_id: str) -> None:
        link = self._link
        owner = f"{link.origin} {game_id}"
        if self._held.get(code) == CodeHolder(link.origin, game_id):
            del self._held[code]
            self.pool.hold_exactly(self._held)
        keys = [link.key("codes"), link.key("codes", "changed")]

        def stage(pipe: Pipeline) -> None:
            pipe.evalsha(link.script(RELEASE), keys, [code, owner])

        self._hub.outbox.put(Write(stage))

    def holder(self, code: str) -> CodeHolder | None:
        holder = self._held.get(code)
        return holder if holder is not None and holder.origin != self._link.origin else None

    def changed(self, data: object) -> None:
        self.changes.set()

    async def refresh(self) -> set[str]:
        """Reload the held codes of live processes into the replica; returns the live processes."""
        link = self._link
        with link.deadline():
            held = await link.client.hgetall(link.key("codes"))
            live = set(
                await link.client.zrange(
                    link.key("processes"), link.stale_before(), "+inf", sortby=coredis.PureToken.BYSCORE
                )
            )
        replica = {}
        for code, owner in held.items():
            origin, _, game_id = owner.partition(" ")
            if origin in live:
                replica[code] = CodeHolder(origin, game_id)
        self._held = replica
        self.pool.hold_exactly(replica)
        return {str(origin) for origin in live}


class RedisGames:
    """Runs the games' side of Redis for a registry: codes, envelopes, and dead peers."""

    def __init__(self, hub: RedisHub, registry: GameRegistry) -> None:
        self.hub, self.link = hub, hub.link
        self.codes = RedisCodes(hub, registry.pool)
        registry.codes = self.codes
        self.links = RemoteGames(registry, self.link.origin, self._send)
        self._inbox = self.link.key("games", self.link.origin)
        hub.extra_channels += [self._inbox, self.link.key("codes", "changed")]
        hub.on_channel_message[self._inbox] = self._received
        hub.on_channel_message[self.link.key("codes", "changed")] = self.codes.changed
        hub.services.append(self.run)
        self._malformed = Sparse("skipped %d malformed game envelope(s), the last: %.60r")

    def _send(self, origin: str, envelope: Envelope) -> None:
        channel, data = self.link.key("games", origin), encode(envelope)

        def stage(pipe: Pipeline) -> None:
            pipe.publish(channel, data)

        self.hub.outbox.put(Write(stage))

    def _received(self, data: object) -> None:
        envelope = decode(data)
        if envelope is None:
            self._malformed(data)
        else:
            self.links.receive(envelope)

    async def run(self) -> None:
        """Keep the replica of held codes fresh and let go of patches whose peers died."""
        while True:
            self.codes.changes = trio.Event()
            if not self.link.down:
                try:
                    live = await self.codes.refresh()
                except REDIS_ERRORS as error:
                    self.link.failed("reading the game codes", error)
                else:
                    self.links.peer_died(live.__contains__)
            with trio.move_on_after(self.link.watch_interval_s):
                await self.codes.changes.wait()
