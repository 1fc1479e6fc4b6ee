"""Several real server processes on one real Redis: every feature across processes, a process
killed mid-call, and `callscribe serve --workers 2`."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from callscribe.core.audio import generate_tone
from callscribe.core.fanout import id_key
from callscribe.testing.fake_aura import FakeAura
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour
from callscribe.testing.simulator import CallSpec, run_call
from conftest import API_KEY, RunningServer, Subscriber, subscribe, wait_until_live
from game_client import GameClient, game_call, play, say_when_connected
from redis_server import RedisServer, needs_redis
from server_process import ServerProcess

pytestmark = needs_redis

LEASE_S = 4.0
"""Short, so that a dead process is noticed quickly; vouching is every LEASE_S / 3."""
SLACK_S = 3.0
"""Beyond the lease, for a busy 2-core machine: the bound checked is the lease, loosely."""


@pytest.fixture
async def processes() -> AsyncIterator[list[ServerProcess]]:
    """Server processes the test starts; none outlives it."""
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for process in started:
            await process.close()


async def resuming_subscriber(a: RunningServer, b: RunningServer, call_sid: str, into: list[dict]) -> int:
    """Subscribe on `a` from the start of the call (`after=0-0`) with ids, drop after two messages,
    reconnect on `b` (any process) after the last id seen; collect everything. Returns the close code."""
    last = "0-0"
    for server, keep in ((a, 2), (b, None)):
        async with trio_websocket.open_websocket_url(server.url(f"/client?after={last}"), connect_timeout=5) as ws:
            await ws.get_message()  # the list of live calls
            await ws.send_message(call_sid)
            try:
                while keep is None or keep > 0:
                    message = json.loads(await ws.get_message())
                    into.append(message)
                    last = message.get("id", last)
                    keep = None if keep is None else keep - 1
            except trio_websocket.ConnectionClosed as closed:
                return closed.reason.code
    raise AssertionError("unreachable")


async def test_three_processes_one_redis(
    nursery: trio.Nursery,
    fake_deepgram: FakeDeepgram,
    fake_aura: FakeAura,
    redis_server: RedisServer,
    processes: list[ServerProcess],
    tmp_path: Path,
) -> None:
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"game_codes": ["42", "7"]}))
    env = {
        "DEEPGRAM_API_KEY": API_KEY,
        "DEEPGRAM_URL": fake_deepgram.url,
        "DEEPGRAM_SPEAK_URL": fake_aura.url,
        "CALLSCRIBE_SPEECH": "aura",
        "CALLSCRIBE_GAME_CODES": str(codes),
        "TWILIO_PHONE_NUMBER": "+15550003333",
        "CALLSCRIBE_REDIS_URL": redis_server.url,
        "CALLSCRIBE_REDIS_LEASE": str(LEASE_S),
    }
    async with trio.open_nursery() as starting:
        for name in "abc":
            process = ServerProcess(env, tmp_path / f"{name}.log")
            processes.append(process)
            starting.start_soon(process.start)
    a, b, c = (process.server for process in processes)
    fake_deepgram.behaviour.result_every_s = 0.5

    # A call on A, a game on C patched by the spoken code; subscribers on B and C, one resuming.
    game = GameClient()
    plain, resumed = Subscriber(), []
    async with trio.open_nursery() as inner:
        await inner.start(play, c, game, say_when_connected("Welcome to the game"))
        fake_deepgram.behaviour.transcript = f"number {game.code}"
        spec = game_call(5.0)
        reports = []

        async def call() -> None:
            reports.append(await run_call(a.url("/twilio"), spec, speed=1.5, bidirectional=True))

        inner.start_soon(call)
        await wait_until_live(b, spec.call_sid)
        inner.start_soon(subscribe, c, spec.call_sid, plain)
        resumed_close = await resuming_subscriber(b, c, spec.call_sid, resumed)
    session = fake_deepgram.sessions[0]
    assert [m["type"] for m in resumed].count("Results") == session.results_sent  # nothing missed
    ids = [id_key(m["id"]) for m in resumed if "id" in m]
    assert ids == sorted(set(ids))  # nothing twice
    assert resumed[-1]["type"] == "Metadata" and resumed_close == 1000
    assert plain.types[-1] == "Metadata" and plain.close_code == 1000
    assert game.types[:2] == ["CallConnected", "Results"] and game.types[-1] == "CallEnded"
    assert "SpeechDone" in game.types  # the mark came back from A's Twilio socket
    (report,) = reports
    assert report.playback is not None and report.playback.audio == fake_aura.expected_audio("Welcome to the game")

    # Keypad: a caller on A keys in the code of a game on C.
    keyed = GameClient()
    fake_deepgram.behaviour.transcript = "hello"
    async with trio.open_nursery() as inner:
        await inner.start(play, c, keyed)
        keys = [(0.3 + 0.1 * i, digit) for i, digit in enumerate(keyed.code)]
        spec = game_call(2.0, dtmf=[*keys, (1.2, "#"), (1.5, "9")])
        await run_call(a.url("/twilio"), spec, speed=2.0, bidirectional=True)
    assert keyed.messages[0] == {"type": "CallConnected", "callSid": spec.call_sid}
    assert {"type": "Dtmf", "digit": "9"} in keyed.messages

    # kill -9 of A mid-call: B's and C's clients are told within the lease; A's game code is freed.
    doomed, patched = GameClient(), GameClient()
    on_b, on_c = Subscriber(), Subscriber()
    async with trio.open_nursery() as inner:
        await inner.start(play, c, patched)
        await inner.start(play, a, doomed)
        fake_deepgram.behaviour.transcript = f"number {patched.code}"
        spec = game_call(30.0)

        async def doomed_call() -> None:
            try:
                await run_call(a.url("/twilio"), spec, speed=1.0, bidirectional=True)
            except Exception:
                pass

        inner.start_soon(doomed_call)
        await wait_until_live(b, spec.call_sid)
        inner.start_soon(subscribe, b, spec.call_sid, on_b)
        inner.start_soon(subscribe, c, spec.call_sid, on_c)
        with trio.fail_after(15):
            while not (on_b.messages and on_c.messages and "CallConnected" in patched.types):
                await trio.sleep(0.05)
        processes[0].kill()
        killed_at = trio.current_time()
        with trio.fail_after(LEASE_S + SLACK_S):
            while on_b.close_code is None or on_c.close_code is None or "CallEnded" not in patched.types:
                await trio.sleep(0.05)
        told_after = trio.current_time() - killed_at
        inner.cancel_scope.cancel()
    for subscriber in (on_b, on_c):
        assert subscriber.types[-1] == "Error" and "stopped answering" in json.loads(subscriber.messages[-1])["message"]
        assert subscriber.close_code == 1011
    assert patched.types[-2:] == ["Error", "CallEnded"]
    print(f"clients told {told_after:.1f} s after the kill (lease {LEASE_S:g} s)")
    with trio.fail_after(5):  # the game on C went away once told (as a game does on CallEnded)
        while f"with code {patched.code} left" not in processes[2].log:
            await trio.sleep(0.05)
    async with (  # both codes are free: the one A's game held too (A never released it)
        trio_websocket.open_websocket_url(b.url("/game"), connect_timeout=5) as one,
        trio_websocket.open_websocket_url(b.url("/game"), connect_timeout=5) as two,
    ):
        assert [await one.get_message(), await two.get_message()] == ["+15550003333"] * 2
        assert {await one.get_message(), await two.get_message()} == {doomed.code, patched.code}
    async with trio_websocket.open_websocket_url(b.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == []  # A's call is no longer listed
    for process in processes[1:]:
        assert await process.terminate() == 0


def readme_recipe() -> tuple[str, dict[str, str], list[str]]:
    """The README's "Several processes" recipe: the fake's API key, the server's environment and arguments."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("## Several processes")[1].split("```sh\n")[1].split("```")[0]
    fake_line, serve_line = block.strip().splitlines()
    fake_words, words = shlex.split(fake_line), shlex.split(serve_line)
    assert fake_words[:3] == ["callscribe", "fake-deepgram", "--api-key"] and fake_words[-1] == "&"
    env = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    return fake_words[3], env, words[len(env) :]


async def test_workers_share_the_port_and_every_call(
    nursery: trio.Nursery, redis_server: RedisServer, processes: list[ServerProcess], tmp_path: Path
) -> None:
    """Run as the README says (its Redis and fake Deepgram at this test's own addresses)."""
    api_key, env, argv = readme_recipe()
    fake_deepgram = FakeDeepgram(FakeDeepgramBehaviour(api_key=api_key))
    await nursery.start(fake_deepgram.serve)
    assert env["CALLSCRIBE_REDIS_URL"] == "redis://127.0.0.1:6379" and argv[:2] == ["callscribe", "serve"]
    assert env["DEEPGRAM_URL"] == "ws://127.0.0.1:8765/v1/listen" and "--workers" in argv
    env |= {"CALLSCRIBE_REDIS_URL": redis_server.url, "DEEPGRAM_URL": fake_deepgram.url}
    supervisor = ServerProcess(env, tmp_path / "workers.log", *argv[2:])
    processes.append(supervisor)
    await supervisor.start(ready_line="2 workers listening")
    server = supervisor.server
    specs = [CallSpec(inbound=generate_tone(3.0), outbound=generate_tone(3.0, freq_hz=600)) for _ in range(16)]
    subscribers = {spec.call_sid: (Subscriber(), Subscriber()) for spec in specs}
    async with trio.open_nursery() as inner:
        for spec in specs:  # waiting for their calls, which start after
            for subscriber in subscribers[spec.call_sid]:
                inner.start_soon(subscribe, server, spec.call_sid, subscriber)
        for spec in specs:
            inner.start_soon(lambda spec=spec: run_call(server.url("/twilio"), spec, speed=1.0))
    (results,) = {session.results_sent for session in fake_deepgram.sessions}  # the same audio in each call
    assert len(fake_deepgram.sessions) == 16 and results > 0
    for pair in subscribers.values():
        for subscriber in pair:  # every call transcribed, and seen whole from either worker
            assert subscriber.types[-1] == "Metadata" and subscriber.close_code == 1000
            assert subscriber.types.count("Results") == results
    log = supervisor.log
    call_pid = {sid: pid for pid, sid in re.findall(r"\[(\d+)\] callscribe\.server\.call: call (CA\w+) started", log)}
    assert len(call_pid) == 16 and len(set(call_pid.values())) == 2, log  # the kernel spread the calls
    joined = re.findall(r"\[(\d+)\] callscribe\.server\.subscribers: call (CA\w+): subscriber", log)
    assert any(call_pid[sid] != pid for pid, sid in joined)  # followed from the other worker
    # Both workers keep their calls in the one SQLite file (the default store), each API lists all.
    async with httpx.AsyncClient() as http:
        with trio.fail_after(10):
            while True:
                listed = (await http.get(server.http_url + "/api/calls?limit=50")).json()["calls"]
                if len([call for call in listed if call["outcome"] == "ended"]) == 16:
                    break
                await trio.sleep(0.1)
    assert {call["callSid"] for call in listed} == set(call_pid)

    # A worker that dies is restarted.
    victim = int(next(iter(call_pid.values())))
    os.kill(victim, signal.SIGKILL)
    with trio.fail_after(20):
        while supervisor.log.count("callscribe listening on") < 3:
            await trio.sleep(0.1)
    assert f"(pid {victim}) died (signal SIGKILL)" in supervisor.log

    # SIGTERM drains both workers: live calls are finished, their finals delivered.
    long_calls = [CallSpec(inbound=generate_tone(4.0)) for _ in range(4)]
    followers = [Subscriber() for _ in long_calls]
    async with trio.open_nursery() as inner:
        for spec, follower in zip(long_calls, followers, strict=True):
            inner.start_soon(lambda spec=spec: run_call(server.url("/twilio"), spec, speed=1.0))
            await wait_until_live(server, spec.call_sid)
            await inner.start(subscribe, server, spec.call_sid, follower)
        with trio.fail_after(10):  # every follower subscribed (not only its callSid sent) before SIGTERM
            while not all(follower.messages for follower in followers):
                await trio.sleep(0.05)
        assert await supervisor.terminate() == 0
    for follower in followers:
        assert follower.types[-1] == "Metadata", follower.types
        assert follower.close_code == 1001
    assert "draining 2 workers" in supervisor.log


async def test_workers_of_a_killed_supervisor_drain_and_exit(
    fake_deepgram: FakeDeepgram, redis_server: RedisServer, processes: list[ServerProcess], tmp_path: Path
) -> None:
    env = {"DEEPGRAM_API_KEY": API_KEY, "DEEPGRAM_URL": fake_deepgram.url, "CALLSCRIBE_REDIS_URL": redis_server.url}
    supervisor = ServerProcess(env, tmp_path / "workers.log", "--workers", "2")
    processes.append(supervisor)
    await supervisor.start(ready_line="2 workers listening")
    pids = [int(pid) for pid in re.findall(r"\(pids (\d+), (\d+)\)", supervisor.log)[0]]
    supervisor.kill()
    with trio.fail_after(15):
        while any("zombie" not in _state(pid) for pid in pids):
            await trio.sleep(0.1)
    assert supervisor.log.count("is gone; draining") == 2


def _state(pid: int) -> str:
    """The process's state from /proc ("zombie" once it has exited, reaped or not)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
