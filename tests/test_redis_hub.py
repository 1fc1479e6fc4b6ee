"""The Redis hub: two callscribe servers sharing one Redis behave as one."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator

import coredis
import pytest
import trio
import trio_websocket

from callscribe.fake_deepgram import FakeDeepgram
from callscribe.mulaw import generate_tone
from callscribe.simulator import CallSpec, run_call

from conftest import RunningServer, Subscriber, start_server, subscribe, wait_until_live

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is installed by scripts/setup")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    port = _free_port()
    process = await trio.lowlevel.open_process(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    try:
        with trio.fail_after(10):
            while True:
                try:
                    async with coredis.Redis.from_url(url) as client:
                        await client.ping()
                    break
                except (coredis.exceptions.ConnectionError, OSError):
                    await trio.sleep(0.05)
        yield url
    finally:
        process.kill()
        await process.wait()


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


async def test_notices_and_unknown_calls_across_processes(nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str) -> None:
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


async def test_calls_of_a_dead_process_drop_out_after_the_lease(nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str) -> None:
    server = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        await client.zadd("callscribe:calls", {"CA-stale": time.time() - 120, "CA-fresh": time.time()})
    async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == ["CA-fresh"]
    await _stop(server)
