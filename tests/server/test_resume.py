"""Ids and resuming, the same for the one-process hub and the Redis hub (two hubs on one Redis:
the call on one, subscribers on the other)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import pytest
import trio

from callscribe.server import hub as hub_module
from callscribe.server import redis_hub as redis_hub_module
from callscribe.server.hub import Hub, InMemoryHub, Subscription, UnknownCall
from callscribe.server.redis_hub import RedisHub
from redis_server import RedisServer, needs_redis


@asynccontextmanager
async def hubs(kind: str, redis: RedisServer | None) -> AsyncIterator[tuple[Hub, Hub]]:
    """(the hub the call is published on, the hub subscribers use)."""
    if kind == "memory":
        one = InMemoryHub()
        yield one, one
        return
    assert redis is not None
    async with trio.open_nursery() as nursery:
        a, b = RedisHub(redis.url), RedisHub(redis.url)
        await nursery.start(a.run)
        await nursery.start(b.run)
        yield a, b
        nursery.cancel_scope.cancel()


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Hub, Hub]]:
    redis = None
    if request.param == "redis":
        redis = RedisServer()
        await redis.start()
    try:
        async with hubs(request.param, redis) as both:
            yield both
    finally:
        if redis is not None:
            await redis.kill()


async def take(subscription: Subscription, count: int) -> list[str]:
    got: list[str] = []
    with trio.fail_after(5):
        async for message in subscription:
            got.append(message)
            if len(got) == count:
                break
    return got


async def rest(subscription: Subscription) -> list[str]:
    with trio.fail_after(5):
        return [message async for message in subscription]


async def start(call: Hub, follow: Hub, call_sid: str = "CA1") -> None:
    """Register the call, and wait until the subscribers' hub lists it (Redis writes are queued)."""
    await call.register_call(call_sid)
    with trio.fail_after(5):
        while call_sid not in await follow.active_calls():
            await trio.sleep(0.01)


def result(n: int) -> str:
    return json.dumps({"type": "Results", "is_final": True, "n": n})


async def test_ids_only_for_those_who_ask_and_plain_text_is_unchanged(pair: tuple[Hub, Hub]) -> None:
    call, follow = pair
    await start(call, follow)
    async with follow.subscribe("CA1") as plain, follow.subscribe("CA1", ids=True) as tagged:
        text = '{"type":"Results",  "is_final":true}'
        await call.publish("CA1", text)
        await call.publish("CA1", '{"type":"Results","is_final":false}', droppable=True)
        await call.unregister_call("CA1")
        assert await rest(plain) == [text, '{"type":"Results","is_final":false}']
        first, interim = await rest(tagged)
    assert first.endswith(text[1:]) and json.loads(first)["id"]  # the id, then the text byte for byte
    assert "id" not in json.loads(interim)  # interim results are not kept and have no id


async def test_resuming_after_an_id_misses_nothing_and_repeats_nothing(pair: tuple[Hub, Hub]) -> None:
    call, follow = pair
    await start(call, follow)
    async with follow.subscribe("CA1", ids=True) as first:
        for n in range(5):
            await call.publish("CA1", result(n))
            await call.publish("CA1", '{"type":"Results","is_final":false}', droppable=True)
        seen = [json.loads(m) for m in await take(first, 10)]
    last_id = next(m for m in seen if m["type"] == "Results" and m.get("n") == 2)["id"]
    for n in range(5, 8):  # published while nobody listens
        await call.publish("CA1", result(n))
    async with follow.subscribe("CA1", after=last_id) as again:
        resumed = [json.loads(m) for m in await take(again, 5)]
        await call.publish("CA1", result(8))
        await call.unregister_call("CA1")
        resumed += [json.loads(m) for m in await rest(again)]
    assert [m["n"] for m in resumed] == [3, 4, 5, 6, 7, 8]
    assert again.close_code == 1000


async def test_a_call_that_ended_can_still_be_resumed_to_its_end(pair: tuple[Hub, Hub]) -> None:
    call, follow = pair
    await start(call, follow)
    async with follow.subscribe("CA1", ids=True) as first:
        await call.publish("CA1", result(0))
        (seen,) = await take(first, 1)
    await call.publish("CA1", result(1))
    await call.unregister_call("CA1", 1000, "call ended")
    with trio.fail_after(5):
        while "CA1" in await follow.active_calls():
            await trio.sleep(0.01)
    async with follow.subscribe("CA1", after=json.loads(seen)["id"]) as late:
        assert [json.loads(m)["n"] for m in await rest(late)] == [1]
    assert (late.close_code, late.close_reason) == (1000, "call ended")
    with pytest.raises(UnknownCall):  # without `after` an ended call is unknown, as before
        async with follow.subscribe("CA1"):
            pass


async def test_resuming_from_before_the_kept_history_says_what_is_missing(
    pair: tuple[Hub, Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "HISTORY", 5)
    monkeypatch.setattr(redis_hub_module, "HISTORY", 5)
    call, follow = pair
    await start(call, follow)
    async with follow.subscribe("CA1", ids=True) as first:
        await call.publish("CA1", result(0))
        (seen,) = await take(first, 1)
        for n in range(1, 300):
            await call.publish("CA1", result(n))
        await take(first, 299)
    async with follow.subscribe("CA1", after=json.loads(seen)["id"]) as late:
        gap = json.loads((await take(late, 1))[0])
    assert gap["type"] == "Error" and "no longer kept" in gap["message"] and "id" not in gap
    await call.unregister_call("CA1")


async def test_resuming_right_after_the_last_message_no_longer_kept_misses_nothing(
    pair: tuple[Hub, Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No gap notice for a subscriber that saw every message the history dropped; one for a
    subscriber that missed the last of them."""
    monkeypatch.setattr(hub_module, "HISTORY", 5)
    monkeypatch.setattr(redis_hub_module, "HISTORY", 5)
    call, follow = pair
    await start(call, follow)
    async with follow.subscribe("CA1", ids=True) as first:
        for n in range(300):
            await call.publish("CA1", result(n))
        ids = [json.loads(m)["id"] for m in await take(first, 300)]
    async with follow.subscribe("CA1", after="0-0") as replay:
        gap, oldest = (json.loads(m) for m in await take(replay, 2))
    assert "no longer kept" in gap["message"]
    kept = ids.index(oldest["id"])
    async with follow.subscribe("CA1", after=ids[kept - 2]) as one_missed:
        gap, *resumed = (json.loads(m) for m in await take(one_missed, 1 + 300 - kept))
    assert gap["type"] == "Error" and "no longer kept" in gap["message"]
    assert [m["n"] for m in resumed] == list(range(kept, 300))
    async with follow.subscribe("CA1", after=ids[kept - 1]) as right_after:
        resumed = [json.loads(m) for m in await take(right_after, 300 - kept)]
        await call.publish("CA1", result(300))
        await call.unregister_call("CA1")
        resumed += [json.loads(m) for m in await rest(right_after)]
    assert [m.get("n") for m in resumed] == list(range(kept, 301))


@needs_redis
async def test_a_history_trimmed_by_an_older_version_still_says_what_may_be_missing(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older versions trimmed a call's history (XADD MAXLEN ~) without noting the last id trimmed:
    resuming from before the first kept message gets the gap notice, resuming from it does not.
    Once this version keeps a message there, it trims the history to `HISTORY`, noting the last."""
    call_sid, key = "CA-old", "callscribe:history:CA-old"
    async with (
        hubs("redis", redis_server) as (hub, _),
        coredis.Redis.from_url(redis_server.url, decode_responses=True) as raw,
    ):
        await raw.zadd("callscribe:calls", {call_sid: time.time()})  # a call of another process
        async with raw.pipeline(transaction=False) as pipe:
            for n in range(1, 300):
                fields = {"k": "m", "o": "elsewher", "t": f'{{"n": {n}}}'}
                pipe.xadd(
                    key,
                    fields,
                    identifier=f"1-{n}",
                    trim_strategy=coredis.PureToken.MAXLEN,
                    threshold=5,
                    trim_operator=coredis.PureToken.APPROXIMATELY,
                )
        (oldest,) = await raw.xrange(key, count=1)
        kept = int(str(oldest.identifier).split("-")[1])
        assert kept > 1  # trimmed
        async with hub.subscribe(call_sid, after=f"1-{kept - 1}") as right_before:
            gap, first = (json.loads(m) for m in await take(right_before, 2))
        assert "no longer kept" in gap["message"] and first["n"] == kept
        async with hub.subscribe(call_sid, after=f"1-{kept}") as from_oldest:
            (first,) = (json.loads(m) for m in await take(from_oldest, 1))
        assert first["n"] == kept + 1
        monkeypatch.setattr(redis_hub_module, "HISTORY", 5)
        await hub.publish(call_sid, result(300))
        await hub.written()
        async with hub.subscribe(call_sid, after="1-295") as right_after:
            resumed = [json.loads(m)["n"] for m in await take(right_after, 5)]
        assert resumed == [296, 297, 298, 299, 300]
        async with hub.subscribe(call_sid, after="1-294") as one_missed:
            assert "no longer kept" in json.loads((await take(one_missed, 1))[0])["message"]


async def test_a_late_plain_subscriber_gets_the_sticky_notice_then_live_messages(pair: tuple[Hub, Hub]) -> None:
    call, follow = pair
    await start(call, follow)
    await call.publish("CA1", result(0))
    notice = json.dumps({"type": "Error", "source": "callscribe", "message": "gave up"})
    await call.publish("CA1", notice, sticky=True)
    await call.publish("CA1", result(1))
    if isinstance(call, RedisHub):
        await call.written()  # the notice is in Redis before the subscriber comes
    async with follow.subscribe("CA1") as late:
        await call.publish("CA1", result(2))
        await call.unregister_call("CA1")
        assert await rest(late) == [notice, result(2)]
