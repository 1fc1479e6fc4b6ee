"""The Redis hub: two callscribe servers sharing one Redis behave as one."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import coredis
import httpx
import pytest
import trio
import trio.testing
import trio_websocket

from callscribe.core.audio import generate_tone
from callscribe.server import redis_hub, redis_link
from callscribe.server.hub import CLOSE_TRY_AGAIN_LATER, HubUnavailable
from callscribe.server.redis_hub import COMMAND_TIMEOUT_S, PROBE_INTERVAL_S, RedisHub
from callscribe.server.redis_link import RedisLink
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour, FakeDeepgramSession
from callscribe.testing.simulator import CallSpec, run_call
from conftest import API_KEY, RunningServer, Subscriber, noise, start_server, stop_servers, subscribe, wait_until_live
from redis_server import RedisServer, needs_redis

pytestmark = needs_redis


@asynccontextmanager
async def running_hub(url: str, **options: float) -> AsyncIterator[RedisHub]:
    """A RedisHub of the test's own, its tasks running until the block ends."""
    async with trio.open_nursery() as nursery:
        hub = RedisHub(url, **options)  # type: ignore[arg-type]
        await nursery.start(hub.run)
        yield hub
        nursery.cancel_scope.cancel()


async def until_listed(hub: RedisHub, call_sid: str) -> None:
    with trio.fail_after(5):
        while call_sid not in await hub.active_calls():
            await trio.sleep(0.01)


async def until_logged(caplog: pytest.LogCaptureFixture, text: str, within_s: float) -> None:
    with trio.fail_after(within_s):
        while text not in caplog.text:
            await trio.sleep(0.02)


async def call_being_followed(nursery: trio.Nursery, server: RunningServer, spec: CallSpec) -> Subscriber:
    """Starts `spec` at 1.5x real time in `nursery` and a subscriber to it once it is live; returns the
    subscriber once the first message has reached it (the call is then mid-way)."""
    subscriber = Subscriber()
    nursery.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=1.5))
    await wait_until_live(server, spec.call_sid)
    nursery.start_soon(subscribe, server, spec.call_sid, subscriber)
    with trio.fail_after(10):
        while not subscriber.messages:
            await trio.sleep(0.01)
    return subscriber


def count_logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


@pytest.fixture
async def two_processes(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    """Two servers on one Redis, stopped after the test. Their Redis commands get 5 s instead of
    1 s: the two "processes" share the test's one Trio loop with their calls and subscribers, and on
    a loaded CI machine a reply can wait in that loop past 1 s; Redis is then taken as unavailable
    and messages are dropped, as designed (seen once), which is not what these tests are about."""
    monkeypatch.setitem(RedisLink.__init__.__kwdefaults__, "command_timeout_s", 5.0)
    a = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    b = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    yield a, b
    await stop_servers(a, b)


async def test_a_call_in_one_process_is_followed_from_another(
    fake_deepgram: FakeDeepgram, two_processes: tuple[RunningServer, RunningServer]
) -> None:
    a, b = two_processes
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


async def test_notices_and_unknown_calls_across_processes(
    fake_deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture, two_processes: tuple[RunningServer, RunningServer]
) -> None:
    fake_deepgram.behaviour.reject_status = 401
    a, b = two_processes
    spec = CallSpec(inbound=generate_tone(2.0), call_sid="CA" + "5" * 32)
    late = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(a.url("/twilio"), spec, speed=2.0))
        await wait_until_live(b, spec.call_sid)
        with trio.fail_after(10):  # the call has given up on Deepgram: the subscriber joins after that
            while not any("audio abandoned" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.02)
        inner.start_soon(subscribe, b, spec.call_sid, late)
    (error,) = [json.loads(m) for m in late.messages]
    assert "HTTP 401" in error["message"] and late.close_code == 1000
    unknown = await subscribe(b, "CA-nowhere", Subscriber(), wait_for_call=False)
    assert unknown.close_code == 1008


async def test_calls_of_a_dead_process_drop_out_after_the_lease(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_url: str
) -> None:
    server = await start_server(nursery, fake_deepgram, redis_url=redis_url)
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        await client.zadd("callscribe:calls", {"CA-stale": time.time() - 120, "CA-fresh": time.time()})
    async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == ["CA-fresh"]
    await stop_servers(server)


async def test_calls_go_on_while_redis_is_down_and_the_hub_recovers(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(nursery, fake_deepgram, redis_url=redis_server.url)
    spec = CallSpec(inbound=generate_tone(3.0), outbound=generate_tone(3.0, freq_hz=600), call_sid="CA" + "6" * 32)
    async with trio.open_nursery() as inner:
        subscriber = await call_being_followed(inner, server, spec)
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
        metrics = (await client.get(server.http_url + "/metrics")).text
    assert health.status_code == 200 and health.json()["active_calls"] == 0
    assert "callscribe_hub_up 0.0" in metrics  # an outage an operator can alert on

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
    async with httpx.AsyncClient() as client:
        assert "callscribe_hub_up 1.0" in (await client.get(server.http_url + "/metrics")).text
    await stop_servers(server)


async def test_publish_register_and_unregister_never_wait_for_a_hung_redis(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_hub(redis_server.url, outbox_size=8) as hub:
        await hub.register_call("CA1")
        await until_listed(hub, "CA1")
        async with hub.subscribe("CA1") as subscription:
            redis_server.pause()
            began = trio.current_time()
            with trio.fail_after(1):
                for n in range(50):
                    await hub.publish("CA1", f"m{n}", droppable=n % 10 == 9)
                await hub.register_call("CA2")
                await hub.unregister_call("CA2")
                await hub.unregister_call("CA1")
            assert trio.current_time() - began < COMMAND_TIMEOUT_S / 2  # none of them waited for Redis's deadline
            with trio.fail_after(COMMAND_TIMEOUT_S + 1):
                received = [message async for message in subscription]
        # This process's subscriber of its own call got everything, ended included.
        assert received == [f"m{n}" for n in range(50)]
        assert (subscription.close_code, subscription.close_reason) == (1000, "call ended")
        # Writes beyond the outbox were dropped (logged once); then the hang is noticed, once.
        await until_logged(caplog, "Redis is unavailable", COMMAND_TIMEOUT_S + 1)
        assert count_logged(caplog, "not keeping up") == 1
        assert count_logged(caplog, "Redis is unavailable") == 1
        redis_server.resume()
        await until_logged(caplog, "Redis is back", PROBE_INTERVAL_S + COMMAND_TIMEOUT_S + 1)


async def test_a_dead_processs_unfollowed_calls_and_the_process_leave_the_registry(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nobody followed the dead process's call, so nobody buried it: the live processes' lease
    # renewals forget it (and the process) once its history could no longer be resumed.
    monkeypatch.setattr(redis_link, "FORGOTTEN_AFTER_S", 0.0)  # from a lease after the last vouch
    async with running_hub(redis_server.url, lease_s=1.0) as a:
        await a.register_call("CA-dead")
        await a.written()
        dead = a.link.origin
    async with (
        running_hub(redis_server.url, lease_s=1.0) as b,
        coredis.Redis.from_url(redis_server.url, decode_responses=True) as client,
    ):
        with trio.fail_after(10):
            while (
                await client.zscore("callscribe:calls", "CA-dead") is not None
                or await client.zscore("callscribe:processes", dead) is not None
            ):
                await trio.sleep(0.1)
        assert await client.zscore("callscribe:processes", b.link.origin) is not None  # the living stay


async def test_messages_that_never_reached_redis_are_told_to_subscribers_elsewhere(
    redis_server: RedisServer,
) -> None:
    # The call's process drops its writes while Redis hangs; a subscriber on another process used
    # to see the call end normally with a hole in it. Once Redis is back it is told.
    async with running_hub(redis_server.url) as a, running_hub(redis_server.url) as b:
        await a.register_call("CA1")
        await a.written()
        got: list[str] = []
        async with b.subscribe("CA1", ids=True) as subscription:
            messages = aiter(subscription)
            await a.publish("CA1", json.dumps({"type": "Results", "n": 0}))
            with trio.fail_after(5):
                got.append(await anext(messages))
            redis_server.pause()
            await a.publish("CA1", json.dumps({"type": "Results", "n": 1}))  # its write times out
            await until_logged_down(a)
            await a.publish("CA1", json.dumps({"type": "Results", "n": 2}))  # Redis down: dropped
            redis_server.resume()
            with trio.fail_after(10):
                while a.link.down or b.link.down:
                    await trio.sleep(0.02)
            await a.publish("CA1", json.dumps({"type": "Results", "n": 3}))
            await a.unregister_call("CA1")
            with trio.fail_after(10):
                got += [message async for message in messages]
    parsed = [json.loads(m) for m in got]
    errors = [m["message"] for m in parsed if m.get("type") == "Error"]
    assert [m.get("n") for m in parsed if m.get("type") == "Results"][-1] == 3
    assert errors and "did not reach Redis while it was unavailable" in errors[0], parsed


async def until_logged_down(hub: RedisHub) -> None:
    with trio.fail_after(COMMAND_TIMEOUT_S + 5):
        while not hub.link.down:
            await trio.sleep(0.02)


async def test_a_hung_redis_never_delays_a_call(
    nursery: trio.Nursery, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long Redis deadline, so that waiting for it stands out from a busy machine's own delays.
    deadline_s = 4.0
    monkeypatch.setattr(redis_hub, "RedisHub", functools.partial(RedisHub, command_timeout_s=deadline_s))
    arrivals: dict[int, list[float]] = {}

    def on_audio(session: FakeDeepgramSession, data: bytes) -> None:
        arrivals.setdefault(id(session), []).append(trio.current_time())

    fake = FakeDeepgram(FakeDeepgramBehaviour(api_key=API_KEY), on_audio=on_audio)
    await nursery.start(fake.serve)
    server = await start_server(nursery, fake, redis_url=redis_server.url)
    first = CallSpec(inbound=noise(3.0, 1), outbound=noise(3.0, 2), call_sid="CA" + "8" * 32)
    async with trio.open_nursery() as inner:
        subscriber = await call_being_followed(inner, server, first)
        redis_server.pause()  # mid-call: every later publish, and the call's end, meet a hung Redis
    second = CallSpec(inbound=noise(2.0, 3), call_sid="CA" + "9" * 32)
    began = trio.current_time()
    with trio.fail_after(10):
        await run_call(server.url("/twilio"), second, speed=1.5)  # starts while Redis hangs
    sessions = fake.sessions
    assert len(sessions) == 2
    assert bytes(sessions[0].audio_by_channel[0]) == first.inbound
    assert bytes(sessions[0].audio_by_channel[1]) == first.outbound
    assert bytes(sessions[1].audio_by_channel[0]) == second.inbound
    on_time = 0.75 * deadline_s  # waiting for Redis would take the whole deadline
    assert arrivals[id(sessions[1])][0] - began < on_time  # registering did not hold the start up
    for session in sessions:
        times = arrivals[id(session)]
        assert max(later - earlier for earlier, later in itertools.pairwise(times)) < on_time  # never held up
    # The local subscriber was served directly, to the end.
    assert subscriber.types.count("Results") == sessions[0].results_sent
    assert (subscriber.types[-1], subscriber.close_code, subscriber.close_reason) == ("Metadata", 1000, "call ended")
    redis_server.resume()
    await stop_servers(server)


async def test_redis_back_is_logged_as_soon_as_it_answers_and_coredis_stays_quiet(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    accepted = 0

    async def never_answer(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        async for _ in stream:
            pass

    async with running_hub(redis_server.url, command_timeout_s=0.5) as hub:
        await redis_server.kill()
        with pytest.raises(HubUnavailable):
            await hub.active_calls()
        async with trio.open_nursery() as hung:  # a Redis that accepts connections and never answers
            await hung.start(functools.partial(trio.serve_tcp, never_answer, redis_server.port, host="127.0.0.1"))
            with trio.fail_after(10):
                while accepted < 2:  # it is probed again and again
                    await trio.sleep(0.02)
            hung.cancel_scope.cancel()
        await redis_server.start()
        await until_logged(caplog, "Redis is back", 3 * PROBE_INTERVAL_S)  # noticed without any use
        await hub.register_call("CA1")
        await until_listed(hub, "CA1")
        async with hub.subscribe("CA1") as subscription:
            await hub.unregister_call("CA1")
            with trio.fail_after(2):
                assert [message async for message in subscription] == []
    assert count_logged(caplog, "Redis is unavailable") == 1
    assert count_logged(caplog, "Redis is back") == 1
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith("coredis") and r.levelno > logging.DEBUG]
    assert chatter == []


async def test_malformed_pubsub_messages_are_skipped(
    fake_deepgram: FakeDeepgram,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    two_processes: tuple[RunningServer, RunningServer],
) -> None:
    a, b = two_processes
    spec = CallSpec(inbound=generate_tone(3.0), call_sid="CA" + "3" * 32)
    on_a, on_b = Subscriber(), Subscriber()
    garbage = [
        b"\xff\xfe not UTF-8",
        b"",
        b"x",
        b"m",
        b"m12345678no id",
        b"m123456781-x text",
        b"e{not json",
        b"e12345678 1-0 {not json",
        b'e123456781-0 {"code": "x"}',
    ]
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(a.url("/twilio"), spec, speed=1.5))
        await wait_until_live(b, spec.call_sid)
        inner.start_soon(subscribe, a, spec.call_sid, on_a)
        inner.start_soon(subscribe, b, spec.call_sid, on_b)
        with trio.fail_after(10):
            while not (on_a.messages and on_b.messages):
                await trio.sleep(0.01)
        async with coredis.Redis.from_url(redis_url) as raw:
            for data in garbage:
                await raw.publish(f"callscribe:fanout:{spec.call_sid}", data)
    (session,) = fake_deepgram.sessions
    for subscriber in (on_a, on_b):  # the call, and both hubs, went on
        assert subscriber.types.count("Results") == session.results_sent
        assert (subscriber.types[-1], subscriber.close_code) == ("Metadata", 1000)
    assert count_logged(caplog, "malformed") == 2  # once by each process, however many


async def test_a_process_that_cannot_keep_up_drops_its_pubsub_backlog(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel = "callscribe:fanout:CA-elsewhere"
    async with (
        running_hub(redis_server.url, pubsub_backlog=20) as hub,
        coredis.Redis.from_url(redis_server.url, decode_responses=True) as raw,
    ):
        await raw.zadd("callscribe:calls", {"CA-elsewhere": time.time()})  # a call of another process
        async with hub.subscribe("CA-elsewhere") as behind:
            async with raw.pipeline(transaction=False) as burst:  # arrives faster than it is dispatched
                for n in range(500):
                    burst.publish(channel, f"m000000001-{n} m{n}")
            with trio.fail_after(5):
                received = [message async for message in behind]
        assert len(received) < 500
        assert behind.close_code == CLOSE_TRY_AGAIN_LATER
        assert count_logged(caplog, "cannot keep up") == 1
        async with hub.subscribe("CA-elsewhere") as fresh:  # reconnected
            await raw.publish(channel, "m000000002-0 after")
            await raw.publish(channel, 'e000000002-1 {"code": 1000, "reason": "call ended"}')
            with trio.fail_after(5):
                assert [message async for message in fresh] == ["after"]


async def test_two_streams_of_one_call_on_two_processes_are_one_call(
    fake_deepgram: FakeDeepgram, two_processes: tuple[RunningServer, RunningServer]
) -> None:
    """Twilio's second stream for a call may reach another process: as on one process, both are
    transcribed, every subscriber gets both, and the call ends when its last stream does."""
    a, b = two_processes
    call_sid = "CA" + "2" * 32
    first, second = (
        CallSpec(inbound=noise(1.5, 7), call_sid=call_sid),
        CallSpec(inbound=noise(3.0, 8), call_sid=call_sid),
    )
    on_a, on_b = Subscriber(), Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(a.url("/twilio"), first, speed=1.0))
        inner.start_soon(lambda: run_call(b.url("/twilio"), second, speed=1.0))
        await wait_until_live(a, call_sid)
        await inner.start(subscribe, a, call_sid, on_a)
        await inner.start(subscribe, b, call_sid, on_b)
    assert sorted(bytes(s.audio_by_channel[0]) for s in fake_deepgram.sessions) == sorted(
        [first.inbound, second.inbound]
    )
    for subscriber in (on_a, on_b):
        assert subscriber.types.count("Metadata") == 2 and subscriber.close_code == 1000
    assert sorted(on_a.messages) == sorted(on_b.messages)  # (each process has its own stream first)
    async with trio_websocket.open_websocket_url(b.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == []


def test_a_hub_given_its_link_refuses_link_options_it_would_not_use() -> None:
    # Constructing does no IO: the address is never connected to.
    link = RedisLink("redis://127.0.0.1:1/0")
    with pytest.raises(TypeError, match="lease_s would not be used"):
        RedisHub("redis://127.0.0.1:1/0", link=link, lease_s=5.0)
    with pytest.raises(TypeError):
        RedisHub("redis://127.0.0.1:1/0", lease=5.0)  # type: ignore[call-arg]  # a typo is no option


def test_the_hub_and_the_app_keep_annotations_that_resolve_at_run_time() -> None:
    # Tools that read type hints (documentation, dependency injection) need the names at run time.
    from callscribe.server.app import create_app
    from callscribe.server.store_writer import StoreRecorder  # imported for type checking only there

    assert typing.get_type_hints(RedisHub.__init__)["url"] is str
    assert "settings" in typing.get_type_hints(create_app, localns={"StoreRecorder": StoreRecorder})


async def test_a_late_subscriber_gets_a_long_history_of_another_processs_call(redis_server: RedisServer) -> None:
    """A call elsewhere with more kept messages than a subscriber's queue holds (older versions'
    XADD MAXLEN ~ kept whole nodes, so past `HISTORY`): a subscriber from its start (the late subscriber's ?after=0-0)
    gets them all, then the live ones, instead of being ended as too slow at once."""
    call_sid, count = "CA-long", 1050
    async with (
        running_hub(redis_server.url) as hub,
        coredis.Redis.from_url(redis_server.url, decode_responses=True) as raw,
    ):
        await raw.zadd("callscribe:calls", {call_sid: time.time()})  # a call of another process
        async with raw.pipeline(transaction=False) as pipe:
            for n in range(count):
                pipe.xadd(f"callscribe:history:{call_sid}", {"k": "m", "o": "elsewher", "t": f'{{"n": {n}}}'})
        async with hub.subscribe(call_sid, ids=True, after="0-0") as late:
            await raw.publish(
                f"callscribe:fanout:{call_sid}", 'eelsewher9999999999999-0 {"code": 1000, "reason": "call ended"}'
            )
            with trio.fail_after(5):
                received = [message async for message in late]
        assert (late.close_code, late.close_reason) == (1000, "call ended")
        assert len(received) == count


async def test_when_the_first_subscribe_to_a_call_fails_the_others_waiting_on_it_fail_too(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two subscribers of a call join at once: the first subscribes this process to the call's
    channel, the second waits for it. When that SUBSCRIBE fails, the second must not go on as if
    the channel were subscribed (it would get the history, then nothing live, not even the end)."""
    async with running_hub(redis_server.url) as hub:
        await hub.register_call("CA1")
        attempted = trio.Event()

        async def failing_subscribe(channel: str) -> None:
            attempted.set()
            await trio.sleep(0.1)  # the second subscriber is waiting by now
            raise coredis.exceptions.ConnectionError("connection lost while subscribing")

        monkeypatch.setattr(hub._listener, "subscribe", failing_subscribe)
        outcomes: list[str] = []

        async def subscriber() -> None:
            try:
                async with hub.subscribe("CA1"):
                    outcomes.append("subscribed")
            except HubUnavailable:
                outcomes.append("unavailable")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscriber)
                await attempted.wait()
                nursery.start_soon(subscriber)
        assert outcomes == ["unavailable", "unavailable"]


async def test_when_the_first_subscriber_leaves_while_subscribing_the_next_one_subscribes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first subscriber of another process's call goes (its client hung up) while its SUBSCRIBE
    is under way: the one waiting for it subscribes itself and gets the call's messages."""
    async with running_hub(redis_server.url) as streaming, running_hub(redis_server.url) as hub:
        await streaming.register_call("CA1")
        await streaming.written()  # the registration reaches Redis before another process looks
        subscribe = hub._listener.subscribe
        hanging = trio.Event()

        async def first_hangs(channel: str) -> None:
            if not hanging.is_set():
                hanging.set()
                await trio.sleep_forever()
            await subscribe(channel)

        monkeypatch.setattr(hub._listener, "subscribe", first_hangs)
        first = trio.CancelScope()
        subscribed = trio.Event()
        received: list[str] = []

        async def leaves() -> None:
            with first:
                async with hub.subscribe("CA1"):
                    raise AssertionError("subscribed through a SUBSCRIBE that never answered")

        async def stays() -> None:
            async with hub.subscribe("CA1") as second:
                subscribed.set()
                received.extend([message async for message in second])

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(leaves)
                await hanging.wait()
                nursery.start_soon(stays)
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the second waits for the first
                first.cancel()
                await subscribed.wait()
                await streaming.publish("CA1", "hello")
                await streaming.unregister_call("CA1")
        assert received == ["hello"]


async def test_a_pubsub_connection_closing_under_an_unsubscribe_is_not_an_error(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """coredis's pub/sub raises anyio's ClosedResourceError when its connection goes while in use:
    the last subscriber of a call leaving then must not fail (the reconnection subscribes afresh)."""
    async with running_hub(redis_server.url) as streaming, running_hub(redis_server.url) as hub:
        await streaming.register_call("CA1")
        await streaming.written()  # the registration reaches Redis before another process looks
        async with hub.subscribe("CA1"):
            pubsub = hub._listener._pubsub
            assert pubsub is not None

            async def closing(*channels: str) -> None:
                raise anyio.ClosedResourceError

            monkeypatch.setattr(pubsub, "unsubscribe", closing)
        await streaming.unregister_call("CA1")


async def test_a_pubsub_connection_closing_under_a_subscribe_is_redis_unavailable(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_hub(redis_server.url) as streaming, running_hub(redis_server.url) as hub:
        await streaming.register_call("CA1")
        await streaming.written()  # the registration reaches Redis before another process looks
        pubsub = hub._listener._pubsub
        assert pubsub is not None

        async def closing(*channels: str) -> None:
            raise anyio.ClosedResourceError

        monkeypatch.setattr(pubsub, "subscribe", closing)
        with pytest.raises(HubUnavailable):
            async with hub.subscribe("CA1"):
                pass
