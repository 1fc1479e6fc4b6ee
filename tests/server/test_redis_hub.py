"""The Redis hub: two callscribe servers sharing one Redis behave as one."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator

import coredis
import httpx
import pytest
import trio
import trio_websocket

from callscribe.core.audio import generate_tone
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, run_call
from conftest import RunningServer, Subscriber, free_port, start_server, subscribe, wait_until_live

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is installed by scripts/setup"
)


class RedisServer:
    """A redis-server of the test's own on a free port, which a test may kill and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: trio.Process | None = None

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        with trio.fail_after(10):
            while True:
                try:
                    async with coredis.Redis.from_url(self.url) as client:
                        await client.ping()
                    return
                except (coredis.exceptions.ConnectionError, OSError):
                    await trio.sleep(0.05)

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


async def _stop(*servers: RunningServer) -> None:
    """Stop the servers and wait until they are down: the redis_url fixture kills Redis on teardown,
    and a server still shutting down would hit a dead Redis."""
    for server in servers:
        server.stop.set()
    with trio.fail_after(10):
        for server in servers:
            await server.done.wait()


async def test_a_call_in_one_process_is_followed_from_another(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str
) -> None:
    a = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    b = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    spec = CallSpec(inbound=generate_tone(3.0), outbound=generate_tone(3.0, freq_hz=600), call_sid="CA" + "4" * 32)
    on_a, on_b = Subscriber(), Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(a.url("/twilio"), spec, speed=2.0))
        await wait_until_live(b, spec.call_sid)  # listed by the other process
        inner.start_soon(subscribe, a, spec.call_sid, on_a)
        inner.start_soon(subscribe, b, spec.call_sid, on_b)
    (session,) = fake_deepgram.sessions
    for subscriber in (on_a, on_b):
        assert subscriber.types.count("Results") == session.results_sent
        assert subscriber.types[-1] == "Metadata"  # in order, the end last
        assert (subscriber.close_code, subscriber.close_reason) == (1000, "call ended")
    assert on_a.messages == on_b.messages
    async with trio_websocket.open_websocket_url(b.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == []  # gone from the shared registry
    await _stop(a, b)


async def test_notices_and_unknown_calls_across_processes(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str
) -> None:
    fake_deepgram.behaviour.reject_status = 401
    a = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    b = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    spec = CallSpec(inbound=generate_tone(2.0), call_sid="CA" + "5" * 32)
    late = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(a.url("/twilio"), spec, speed=2.0))
        await wait_until_live(b, spec.call_sid)
        await trio.sleep(0.3)  # the refusal has happened: the subscriber joins after it
        inner.start_soon(subscribe, b, spec.call_sid, late)
    (error,) = [json.loads(m) for m in late.messages]
    assert "HTTP 401" in error["message"] and late.close_code == 1000
    unknown = await subscribe(b, "CA-nowhere", Subscriber(), wait_for_call=False)
    assert unknown.close_code == 1008
    await _stop(a, b)


async def test_calls_of_a_dead_process_drop_out_after_the_lease(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str
) -> None:
    server = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        await client.zadd("callscribe:calls", {"CA-stale": time.time() - 120, "CA-fresh": time.time()})
    async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == ["CA-fresh"]
    await _stop(server)


async def test_calls_go_on_while_redis_is_down_and_the_hub_recovers(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(nursery, fake_deepgram, redis_url=redis_server.url)
    spec = CallSpec(inbound=generate_tone(3.0), outbound=generate_tone(3.0, freq_hz=600), call_sid="CA" + "6" * 32)
    subscriber = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=1.5))
        await wait_until_live(server, spec.call_sid)
        inner.start_soon(subscribe, server, spec.call_sid, subscriber)
        with trio.fail_after(10):
            while not subscriber.messages:
                await trio.sleep(0.01)
        await redis_server.kill()  # mid-call: results are still coming
    (session,) = fake_deepgram.sessions
    assert bytes(session.audio_by_channel[0]) == spec.inbound  # the call itself never noticed
    assert bytes(session.audio_by_channel[1]) == spec.outbound
    # This process's subscriber was served directly while Redis was down, to the end.
    assert subscriber.types[-1] == "Metadata"
    assert (subscriber.close_code, subscriber.close_reason) == (1000, "call ended")
    assert "Redis is unavailable" in caplog.text
    async with httpx.AsyncClient() as client:
        health = await client.get(server.http_url + "/healthz")
    assert health.status_code == 200 and health.json()["active_calls"] == 0

    # A new subscriber cannot be served meanwhile, and is told so.
    async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
        error = json.loads(await ws.get_message())
        assert error["type"] == "Error" and "subscriptions are unavailable" in error["message"]
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason.code == 1013

    await redis_server.start()  # same port, empty: the hub reconnects by itself
    again = CallSpec(inbound=generate_tone(4.0), call_sid="CA" + "7" * 32)
    follower = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), again, speed=1.0))
        await wait_until_live(server, again.call_sid)
        # Joining may wait for the pub/sub connection's own reconnection (retried every <= 2 s);
        # what was published before the subscription took effect is not replayed, as for anyone.
        inner.start_soon(subscribe, server, again.call_sid, follower)
    assert 0 < follower.types.count("Results") <= fake_deepgram.sessions[-1].results_sent
    assert (follower.types[-1], follower.close_code) == ("Metadata", 1000)
    assert "Redis is back" in caplog.text
    await _stop(server)
