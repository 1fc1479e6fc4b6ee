"""Games across processes through Redis: the shared code pool, and the patches' envelopes.

- `{prefix}:codes`           hash: code -> "origin game-id" of the game holding it. A claim (one
                             script) takes the first of the claimer's shuffled codes that nobody
                             holds, or whose holder's process is dead (not vouched for within the
                             lease, redis_link.py): a process that dies frees its codes. With
                             the lease, a process holds its games' codes again where Redis lost
                             them (it restarted empty) and re-sends releases an outage dropped.
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
        self._mine: dict[str, str] = {}
        """The codes this process's games hold (code -> game id), whatever Redis says."""
        self._claiming: set[str] = set()  # game ids whose claim is on its way
        self._unreleased: dict[str, str] = {}
        """Releases that never reached Redis (code -> "origin game-id"), sent again at the next renewal."""
        self.changes = trio.Event()
        """Set when another process claimed or released a code."""
        for script in (CLAIM, RELEASE):
            self._link.register_script(script)
        self._link.renewals.append(self.renew)

    async def claim(self, game_id: str) -> str | None:
        link = self._link
        if link.down:
            raise HubUnavailable("Redis is unavailable")
        candidates = list(self.pool.codes)
        self._rng.shuffle(candidates)
        keys = [link.key("codes"), link.key("processes"), link.key("codes", "changed")]
        self._claiming.add(game_id)
        try:
            with link.deadline():
                code = await link.client.evalsha(
                    link.script(CLAIM), keys, [link.stale_before(), f"{link.origin} {game_id}", *candidates]
                )
        except REDIS_ERRORS as error:
            raise link.unavailable("claiming a game code", error) from error
        finally:
            self._claiming.discard(game_id)
        if code is None:
            return None
        self._held[str(code)] = CodeHolder(link.origin, game_id)
        self._mine[str(code)] = game_id
        self.pool.hold_exactly(self._held)
        return str(code)

    def release(self, code: str, game_id: str) -> None:
        link = self._link
        if self._held.get(code) == CodeHolder(link.origin, game_id):
            del self._held[code]
            self.pool.hold_exactly(self._held)
        if self._mine.get(code) == game_id:
            del self._mine[code]
        self._send_release(code, f"{link.origin} {game_id}")

    def _send_release(self, code: str, owner: str) -> None:
        keys = [self._link.key("codes"), self._link.key("codes", "changed")]

        def stage(pipe: Pipeline) -> None:
            pipe.evalsha(self._link.script(RELEASE), keys, [code, owner])

        def dropped() -> None:  # (an outage, a full outbox): or the code would stay held for ever
            self._unreleased[code] = owner

        self._hub.outbox.put(Write(stage, None, dropped))

    async def renew(self) -> None:
        """With the lease (and when Redis is back): send again the releases that never reached
        Redis, and hold again the codes of this process's games that nobody holds in Redis (it
        restarted empty), so that no other process gives them to a second game."""
        pending, self._unreleased = self._unreleased, {}
        for code, owner in pending.items():
            self._send_release(code, owner)
        if not self._mine:
            return
        link = self._link
        owners = {code: f"{link.origin} {game_id}" for code, game_id in self._mine.items()}
        try:
            with link.deadline():
                async with link.client.pipeline(transaction=False) as pipe:
                    for code, owner in owners.items():
                        pipe.hsetnx(link.key("codes"), code, owner)
        except REDIS_ERRORS as error:
            link.failed("renewing the game codes", error)

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
            if origin == link.origin and self._mine.get(code) != game_id and game_id not in self._claiming:
                self._send_release(code, owner)  # held in this process's name by no game of it
            elif origin in live:
                replica[code] = CodeHolder(origin, game_id)
        for code, game_id in self._mine.items():  # this process's games hold them, whatever Redis says
            replica[code] = CodeHolder(link.origin, game_id)
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
