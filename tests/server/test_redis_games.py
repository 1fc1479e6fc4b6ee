"""Games across processes: two servers on one Redis, the call on one, the game on the other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import coredis
import pytest
import trio
import trio_websocket

from callscribe.core.codes import CodePool
from callscribe.server.games import GameRegistry, GameSettings
from callscribe.server.redis_games import RedisGames
from callscribe.server.redis_hub import RedisHub
from callscribe.testing.fake_aura import FakeAura, FakeAuraBehaviour
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import run_call
from conftest import API_KEY, RunningServer, start_server, stop_servers
from game_client import GameClient, game_call, play, say_when_connected
from redis_server import RedisServer, needs_redis

pytestmark = needs_redis
PHONE = "+15550002222"


async def two_servers(
    nursery: trio.Nursery, fake: FakeDeepgram, aura: FakeAura, redis_url: str, codes: str, *, interim: bool = False
) -> tuple[RunningServer, RunningServer]:
    servers = []
    for _ in range(2):
        servers.append(
            await start_server(
                nursery,
                fake,
                games=GameSettings(phone_number=PHONE, codes_file=codes),
                speech="aura",
                speak_url=aura.url,
                redis_url=redis_url,
                deepgram_url=fake.url + ("?interim_results=true" if interim else ""),
            )
        )
    return servers[0], servers[1]


@pytest.fixture
def codes_file(tmp_path) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"game_codes": ["42", "7"]}))
    return str(path)


async def test_a_caller_on_one_process_is_patched_to_a_game_on_another_and_it_talks_back(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, fake_aura: FakeAura, redis_url: str, codes_file: str
) -> None:
    a, c = await two_servers(nursery, fake_deepgram, fake_aura, redis_url, codes_file)
    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(play, c, game, say_when_connected("Welcome to the game"))
        fake_deepgram.behaviour.transcript = f"number {game.code}"
        fake_deepgram.behaviour.result_every_s = 0.5
        report = await run_call(a.url("/twilio"), game_call(5.0), speed=1.5, bidirectional=True)
    assert game.messages[0]["type"] == "CallConnected"
    assert game.messages[1]["type"] == "Results"  # what carried the code
    assert "SpeechDone" in game.types  # the mark was echoed on A's Twilio socket and came back
    assert game.messages[-1]["type"] == "CallEnded"
    assert report.playback is not None
    assert report.playback.audio == fake_aura.expected_audio("Welcome to the game")  # played on A
    await stop_servers(a, c)


async def test_keypad_and_dtmf_across_processes_and_codes_are_shared(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, fake_aura: FakeAura, redis_url: str, codes_file: str
) -> None:
    a, c = await two_servers(nursery, fake_deepgram, fake_aura, redis_url, codes_file)
    fake_deepgram.behaviour.transcript = "hello there"
    first, second = GameClient(), GameClient()
    async with trio.open_nursery() as inner, trio.open_nursery() as idle:
        await inner.start(play, c, first)  # returns with CallEnded
        await idle.start(play, a, second)  # the other code: the pool is one across processes
        assert {first.code, second.code} == {"42", "7"}
        async with trio_websocket.open_websocket_url(a.url("/game"), connect_timeout=5) as third:
            error = json.loads(await third.get_message())
            assert "all 2 game codes are in use" in error["message"]
        keys = [(0.3 + 0.1 * i, digit) for i, digit in enumerate(first.code)]
        spec = game_call(3.0, dtmf=[*keys, (1.5, "#"), (1.8, "5")])
        await run_call(a.url("/twilio"), spec, speed=2.0, bidirectional=True)
        idle.cancel_scope.cancel()
    assert first.messages[0] == {"type": "CallConnected", "callSid": spec.call_sid}
    assert {"type": "Dtmf", "digit": "5"} in first.messages
    assert first.messages[-1]["type"] == "CallEnded"
    assert second.messages == []
    await stop_servers(a, c)


async def test_barge_in_across_processes(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str, codes_file: str
) -> None:
    """The caller on A talks over a long Say of the game on C: A's Twilio socket is told `clear`, and
    the game `Interrupted`, as in one process."""
    aura = FakeAura(FakeAuraBehaviour(api_key=API_KEY, hold_after_chunks=1))  # speaks, then keeps speaking
    await nursery.start(aura.serve)
    a, c = await two_servers(nursery, fake_deepgram, aura, redis_url, codes_file, interim=True)
    game = GameClient()
    fake_deepgram.behaviour.result_every_s = 0.5
    async with trio.open_nursery() as inner:
        await inner.start(
            play, c, game, say_when_connected(json.dumps({"type": "Say", "text": "A very long story " * 20}))
        )
        fake_deepgram.behaviour.transcript = f"number {game.code}"
        report = await run_call(a.url("/twilio"), game_call(4.0), speed=2.0, bidirectional=True)
    aura.release()
    assert game.messages[0]["type"] == "CallConnected" and "Interrupted" in game.types
    assert "SpeechDone" not in game.types
    assert report.playback is not None and report.playback.clears >= 1
    assert 0 < len(report.playback.audio) < len(aura.expected_audio("A very long story " * 20))
    assert game.messages[-1]["type"] == "CallEnded"
    await stop_servers(a, c)


@asynccontextmanager
async def hub_with_games(url: str, codes: list[str], **options: float) -> AsyncIterator[tuple[RedisHub, GameRegistry]]:
    """A RedisHub and a Redis-backed game registry of the test's own, running until the block ends."""
    async with trio.open_nursery() as nursery:
        hub = RedisHub(url, **options)  # type: ignore[arg-type]
        registry = GameRegistry(GameSettings(), None, CodePool(codes))
        RedisGames(hub, registry)
        await nursery.start(hub.run)
        yield hub, registry
        nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], bool], within_s: float) -> None:
    with trio.fail_after(within_s):
        while not predicate():
            await trio.sleep(0.02)


async def until_held_in_redis(url: str, code: str, held: bool, within_s: float) -> None:
    """Wait until Redis says `code` is (or is not) held by someone."""
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        with trio.fail_after(within_s):
            while (await client.hget("callscribe:codes", code) is not None) != held:
                await trio.sleep(0.05)


async def test_a_game_code_whose_release_was_dropped_is_released_later(
    redis_server: RedisServer,
) -> None:
    """The game left during an outage: its release through the outbox was dropped. It is sent
    again with the lease (it used to stay held, in this live process's name, for ever)."""
    async with hub_with_games(redis_server.url, ["42"], lease_s=3.0) as (a, games_a):
        game = await games_a.join("peer")
        assert game is not None and game.code == "42"
        redis_server.pause()
        await a.publish("CA-x", "{}")  # any write: Redis is found hung
        await until(lambda: a.link.down, 5)
        games_a.leave(game)  # its code's release is dropped
        redis_server.resume()
        await until(lambda: not a.link.down, 10)
        await until_held_in_redis(redis_server.url, "42", held=False, within_s=10)  # the lease's renewal
        async with hub_with_games(redis_server.url, ["42"], lease_s=3.0) as (_, games_b):
            again = await games_b.join("other peer")
        assert again is not None, "the only code is still held by a game that left long ago"


async def test_after_redis_restarts_empty_a_held_code_is_held_again(redis_server: RedisServer) -> None:
    """Redis restarted (empty): the codes of live games are held again on its return, as the calls
    are vouched for (another process used to claim the code a live game still held)."""
    async with hub_with_games(redis_server.url, ["42"]) as (a, games_a):
        first = await games_a.join("peer")
        assert first is not None and first.code == "42"
        await redis_server.kill()
        await redis_server.start()
        await a.publish("CA-x", "{}")  # any write: the restart is noticed
        await until(lambda: a.link.down, 5)
        await until(lambda: not a.link.down, 10)
        await until_held_in_redis(redis_server.url, "42", held=True, within_s=10)  # held again by A's game
        async with hub_with_games(redis_server.url, ["42"]) as (_, games_b):
            second = await games_b.join("other peer")
        assert second is None, f"code {second.code if second else ''} given to a second game while A's game holds it"
