"""The call store end to end: a real server, the fake Deepgram, simulated calls, the REST API,
late subscribers, webhooks, a killed server and a database that goes away."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import srt
import trio
import webvtt

import pg
from callscribe.core import webhooks
from callscribe.core.audio import generate_tone
from callscribe.core.webhooks import RetryPolicy
from callscribe.server import store_writer
from callscribe.server.store import StoreSettings, open_engine
from callscribe.server.store_sqlite import SqliteEngine
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour, FakeDeepgramSession
from callscribe.testing.simulator import CallSpec, run_call
from conftest import API_KEY, Subscriber, free_port, start_server, subscribe
from redis_server import needs_redis
from webhook_receiver import Receiver

TOKEN_SECRET = "0123456789abcdef0123456789abcdef"


class RecordingDeepgram(FakeDeepgram):
    """The fake Deepgram, keeping every final it sent."""

    def __init__(self, **behaviour: Any) -> None:
        super().__init__(FakeDeepgramBehaviour(api_key=API_KEY, **behaviour), on_send=self._sent)
        self.finals: list[str] = []

    def _sent(self, session: FakeDeepgramSession, text: str) -> None:
        message = json.loads(text)
        if message.get("type") == "Results" and message.get("is_final"):
            self.finals.append(text)

    @property
    def spoken(self) -> list[str]:
        """The finals that say something (not CloseStream's empty ones): a call's utterances."""
        return [f for f in self.finals if json.loads(f)["channel"]["alternatives"][0]["transcript"]]


@pytest.fixture
async def deepgram(nursery: trio.Nursery) -> RecordingDeepgram:
    fake = RecordingDeepgram(transcript="please cancel my order", result_every_s=0.5)
    await nursery.start(fake.serve)
    return fake


def finals_of(subscriber: Subscriber) -> list[str]:
    return [m for m in subscriber.messages if json.loads(m).get("type") == "Results" and json.loads(m).get("is_final")]


async def get_json(http: httpx.AsyncClient, url: str, status: int = 200, **kwargs: Any) -> Any:
    response = await http.get(url, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


async def wait_for_call(
    http: httpx.AsyncClient, base: str, call_sid: str, headers: dict[str, str] | None = None, **expected: Any
) -> dict[str, Any]:
    """Poll the call's summary in /api/calls until it has the `expected` values."""
    with trio.fail_after(15):
        while True:
            response = await http.get(base + "/api/calls", headers=headers, timeout=10)
            if response.status_code == 503:  # the database is not back yet
                await trio.sleep(0.05)
                continue
            assert response.status_code == 200, response.text
            calls = response.json()["calls"]
            found = [c for c in calls if c["callSid"] == call_sid]
            if found and all(found[0][key] == value for key, value in expected.items()):
                return found[0]
            await trio.sleep(0.05)


async def wait_for_utterances(http: httpx.AsyncClient, url: str, count: int) -> list[dict[str, Any]]:
    """Poll a call (404 until it is written) until it has `count` utterances; returns them."""
    with trio.fail_after(15):
        while True:
            response = await http.get(url)
            if response.status_code == 200 and len(utterances := response.json()["utterances"]) >= count:
                return list(utterances)
            await trio.sleep(0.05)


async def test_a_call_is_listed_live_then_ended_and_its_transcript_is_what_deepgram_said(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, store_location: str
) -> None:
    server = await start_server(nursery, deepgram, store=StoreSettings(location=store_location))
    base = server.http_url
    async with httpx.AsyncClient() as http:
        twiml = await http.post(base + "/twiml", data={"From": "+15550100", "To": "+15550199", "Direction": "inbound"})
        stream = ElementTree.fromstring(twiml.text).find("./Start/Stream")
        assert stream is not None
        parameters = {p.get("name", ""): p.get("value", "") for p in stream}
        spec = CallSpec(
            inbound=generate_tone(3.0), outbound=generate_tone(3.0, freq_hz=700), custom_parameters=parameters
        )
        async with trio.open_nursery() as calls:
            calls.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=2.0))
            live = await wait_for_call(http, base, spec.call_sid, live=True)
        assert (live["from"], live["to"], live["endedAt"], live["outcome"]) == ("+15550100", "+15550199", None, None)
        ended = await wait_for_call(http, base, spec.call_sid, live=False)
        assert ended["outcome"] == "ended" and ended["durationS"] > 0 and ended["snippet"] == "please cancel my order"

        call = await get_json(http, f"{base}/api/calls/{spec.call_sid}")
        (session,) = deepgram.sessions
        assert call["direction"] == "inbound" and call["tracks"] == ["inbound", "outbound"]
        assert call["deepgramRequestIds"] == [session.request_id] and call["deepgramConnections"] == 1
        assert call["audioS"] == 3.0 and call["reason"] == "call ended"
        sent = [json.loads(f) for f in deepgram.spoken]
        assert len(sent) >= 12
        assert [(u["channel"], u["speaker"], u["start"]) for u in call["utterances"]] == [
            (m["channel_index"][0], ["Caller", "Other party"][m["channel_index"][0]], m["start"]) for m in sent
        ]

        jsonl = await http.get(f"{base}/api/calls/{spec.call_sid}/transcript.json")
        assert jsonl.text.splitlines() == deepgram.finals  # Deepgram's finals as it sent them
        vtt = await http.get(f"{base}/api/calls/{spec.call_sid}/transcript.vtt")
        assert vtt.headers["content-type"].startswith("text/vtt")
        cues = list(webvtt.WebVTT.from_buffer(io.StringIO(vtt.text)))
        assert [(c.voice, c.text) for c in cues] == [(u["speaker"], u["text"]) for u in call["utterances"]]
        subtitles = list(srt.parse((await http.get(f"{base}/api/calls/{spec.call_sid}/transcript.srt")).text))
        assert [s.start.total_seconds() for s in subtitles] == [u["start"] for u in call["utterances"]]
        text = (await http.get(f"{base}/api/calls/{spec.call_sid}/transcript.txt")).text
        assert text.splitlines()[0] == "[00:00] Caller: please cancel my order"

        found = await get_json(http, base + "/api/calls", params={"q": "CANCEL order"})
        assert [c["callSid"] for c in found["calls"]] == [spec.call_sid] and found["next"] is None
        assert (await get_json(http, base + "/api/calls", params={"q": "refund"}))["calls"] == []
        metrics = (await http.get(base + "/metrics")).text
        assert (
            f"callscribe_store_writes_total {2 + len(deepgram.finals)}.0" in metrics
            and "callscribe_store_up 1.0" in metrics
        )
    server.stop.set()


async def test_a_subscriber_joining_mid_call_gets_every_final_exactly_once(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, tmp_path: Path
) -> None:
    server = await start_server(nursery, deepgram, store=StoreSettings(location=str(tmp_path / "calls.db")))
    spec = CallSpec(inbound=generate_tone(10.0), outbound=generate_tone(10.0, freq_hz=700))
    early, late, live_only, with_ids = Subscriber(), Subscriber(), Subscriber(), Subscriber()
    async with trio.open_nursery() as calls:
        calls.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=2.0))
        await calls.start(subscribe, server, spec.call_sid, early)
        with trio.fail_after(10):  # second 5 of the call: the early subscriber has its finals up to there
            while not any(json.loads(m)["start"] >= 5.0 for m in finals_of(early)):
                await trio.sleep(0.01)
        calls.start_soon(subscribe, server, spec.call_sid, late)
        calls.start_soon(lambda: subscribe(server, spec.call_sid, live_only, query="?history=0"))
        calls.start_soon(lambda: subscribe(server, spec.call_sid, with_ids, query="?after=0-0"))
    everything = finals_of(early)
    assert len(everything) == len(deepgram.finals) >= 38
    assert finals_of(late) == everything  # the first half from the store, the rest live: no gap, no repeat
    assert late.types[-1] == "Metadata" and late.close_code == 1000
    only_live = finals_of(live_only)
    assert 0 < len(only_live) < len(everything) and only_live == everything[-len(only_live) :]
    # One that asks for ids replays the hub's history instead (which carries them), also once each.
    ids = [json.loads(final)["id"] for final in finals_of(with_ids)]
    assert [
        final.replace(f'{{"id": "{id_}", ', "{", 1) for final, id_ in zip(finals_of(with_ids), ids, strict=True)
    ] == ["{" + final.lstrip()[1:].lstrip() for final in everything]
    assert len(set(ids)) == len(ids)


@needs_redis
async def test_a_subscriber_joining_another_processes_call_mid_call_gets_every_final_exactly_once(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, redis_url: str, postgres_url: str, monkeypatch: Any
) -> None:
    """Two processes share Redis and PostgreSQL; the call is on A, the late subscriber on B. A's store
    commits only every 3 s here, so at B's join some finals are published but in no store yet."""
    monkeypatch.setattr(store_writer, "BATCH_WINDOW_S", 3.0)
    a, b = [
        await start_server(nursery, deepgram, store=StoreSettings(location=postgres_url), redis_url=redis_url)
        for _ in range(2)
    ]
    spec = CallSpec(inbound=generate_tone(10.0), outbound=generate_tone(10.0, freq_hz=700))
    early, late = Subscriber(), Subscriber()
    async with trio.open_nursery() as calls:
        calls.start_soon(lambda: run_call(a.url("/twilio"), spec, speed=2.0))
        await calls.start(subscribe, a, spec.call_sid, early)
        with trio.fail_after(10):  # second 5 of the call
            while not any(json.loads(m)["start"] >= 5.0 for m in finals_of(early)):
                await trio.sleep(0.01)
        calls.start_soon(subscribe, b, spec.call_sid, late)
    everything = finals_of(early)
    assert len(everything) == len(deepgram.finals) >= 38
    assert finals_of(late) == everything  # no gap, no repeat
    assert late.types[-1] == "Metadata" and late.close_code == 1000
    assert all('"id"' not in message for message in late.messages)  # a plain subscriber: Deepgram's JSON


@pytest.mark.parametrize("grace_s", [5.0, 0.0])
async def test_outcomes_hung_up_and_shut_down_are_kept(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, tmp_path: Path, grace_s: float
) -> None:
    """A call still live at shutdown ends as `shutdown`: told to end (1001) within the grace, or cut
    off when there is none left, its end must still reach the store (not be left live, to be taken
    for a crash's `interrupted` at the next start)."""
    path = str(tmp_path / "calls.db")
    server = await start_server(nursery, deepgram, store=StoreSettings(location=path), shutdown_grace_s=grace_s)
    hung_up, cut = CallSpec(inbound=generate_tone(1.0)), CallSpec(inbound=generate_tone(20.0))
    await run_call(server.url("/twilio"), hung_up, speed=0, send_stop=False)
    async with httpx.AsyncClient() as http, trio.open_nursery() as calls:
        calls.start_soon(lambda: run_call(server.url("/twilio"), cut, speed=1.0))
        await wait_for_call(http, server.http_url, cut.call_sid, live=True)
        await wait_for_call(http, server.http_url, hung_up.call_sid, live=False)
        server.stop.set()
        with trio.fail_after(10):
            await server.done.wait()
    reader = open_engine(path)
    reader.open(migrate=False)
    try:
        assert reader.get_call(hung_up.call_sid).outcome == "hung_up"  # type: ignore[union-attr]
        stopped = reader.get_call(cut.call_sid)
        assert stopped is not None and not stopped.live
        assert (stopped.outcome, stopped.reason) == ("shutdown", "server shutting down")
    finally:
        reader.close()


async def test_api_access_is_that_of_client_and_errors_are_json(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, tmp_path: Path
) -> None:
    server = await start_server(
        nursery, deepgram, token_secret=TOKEN_SECRET, store=StoreSettings(location=str(tmp_path / "calls.db"))
    )
    from callscribe.core.access import TokenCheck

    tokens = TokenCheck(secret=TOKEN_SECRET)
    everyone = {"Authorization": f"Bearer {tokens.issue(ttl_s=60)}"}
    base = server.http_url
    first, second = CallSpec(inbound=generate_tone(1.0)), CallSpec(inbound=generate_tone(4.0))
    async with httpx.AsyncClient() as http, trio.open_nursery() as calls:
        await run_call(server.url("/twilio"), first, speed=0)
        calls.start_soon(lambda: run_call(server.url("/twilio"), second, speed=2.0))
        await wait_for_call(http, base, second.call_sid, headers=everyone, live=True)
        one = {"token": tokens.issue(ttl_s=60, call_sid=first.call_sid)}

        assert await get_json(http, base + "/api/calls", 401) == {"error": "a bearer token is required"}
        assert (await get_json(http, base + "/api/calls", 401, params={"token": "x.y.z"}))["error"]
        listed = await get_json(http, base + "/api/calls", params=one)
        assert [c["callSid"] for c in listed["calls"]] == [first.call_sid]
        assert await get_json(http, f"{base}/api/calls/{second.call_sid}", 403, params=one) == {
            "error": "this token is not valid for that call"
        }
        assert (await get_json(http, f"{base}/api/calls/{first.call_sid}", params=one))["outcome"] == "ended"
        page = await get_json(http, base + "/api/calls", headers=everyone, params={"limit": "1"})
        assert [c["callSid"] for c in page["calls"]] == [second.call_sid] and page["next"]
        rest = await get_json(http, base + "/api/calls", headers=everyone, params={"cursor": page["next"]})
        assert [c["callSid"] for c in rest["calls"]] == [first.call_sid] and rest["next"] is None
        bad = await get_json(http, base + "/api/calls", 400, headers=everyone, params={"since": "last week"})
        assert "since must be an ISO 8601 time" in bad["error"]
        nested = base64.urlsafe_b64encode(b"[" * 5000).decode()  # json.loads: RecursionError, not ValueError
        assert await get_json(http, base + "/api/calls", 400, headers=everyone, params={"cursor": nested}) == {
            "error": "cursor is not one this server gave out"
        }
        assert (await get_json(http, base + "/api/calls/CAnone", 404, headers=everyone))["error"].startswith(
            "unknown call"
        )
        assert (await get_json(http, base + "/api/calls/CAnone/transcript.txt", 404, headers=everyone))["error"]
        for no_call in ("CA%00", "CA" + "f" * 70):  # ids no call can have (a NUL: PostgreSQL refuses it)
            assert (await get_json(http, f"{base}/api/calls/{no_call}", 404, headers=everyone))["error"]
        assert (await get_json(http, f"{base}/api/calls/{first.call_sid}/transcript.doc", 404, headers=everyone))[
            "error"
        ].startswith("no transcript format")
        assert (await get_json(http, base + "/api/nothing", 404, headers=everyone))["error"]

        viewer = await http.delete(f"{base}/api/calls/{first.call_sid}", params=one)  # its own call, but a viewer's
        assert viewer.status_code == 403 and viewer.json() == {"error": "a token limited to one call cannot erase it"}
        live = await http.delete(f"{base}/api/calls/{second.call_sid}", headers=everyone)
        assert live.status_code == 409 and live.json()["error"].startswith("the call is live")
        erased = await http.delete(f"{base}/api/calls/{first.call_sid}", headers=everyone)
        assert erased.status_code == 204
        assert (await http.get(f"{base}/api/calls/{first.call_sid}", headers=everyone)).status_code == 404
    server.stop.set()


async def test_a_call_whose_sid_holds_a_slash_or_quote_can_be_read_exported_and_erased(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, tmp_path: Path
) -> None:
    # Twilio's callSids never do, but the server keeps any printable one: every call it lists
    # can be addressed (%2F), and its export's file name stays one quoted header value.
    server = await start_server(nursery, deepgram, store=StoreSettings(location=str(tmp_path / "calls.db")))
    odd = 'CA/1"x'
    async with httpx.AsyncClient() as http:
        await run_call(server.url("/twilio"), CallSpec(inbound=generate_tone(1.0), call_sid=odd), speed=0)
        await wait_for_call(http, server.http_url, odd, live=False)
        path = f"{server.http_url}/api/calls/CA%2F1%22x"
        assert (await get_json(http, path))["callSid"] == odd
        export = await http.get(path + "/transcript.srt")
        assert export.status_code == 200
        assert export.headers["content-disposition"] == 'inline; filename="CA_1_x.srt"'
        assert (await http.delete(path)).status_code == 204
        assert (await http.get(path)).status_code == 404
    server.stop.set()


async def test_without_a_store_the_api_says_so(nursery: trio.Nursery, deepgram: RecordingDeepgram) -> None:
    server = await start_server(nursery, deepgram)
    async with httpx.AsyncClient() as http:
        answer = await get_json(http, server.http_url + "/api/calls", 404)
    assert answer == {"error": "no call store: this server runs with --store none"}
    server.stop.set()


async def test_webhooks_get_every_event_of_a_call_in_order_through_a_flaky_receiver(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, tmp_path: Path
) -> None:
    receiver = Receiver(fail_first=3)
    await nursery.start(receiver.serve)
    store = StoreSettings(
        location=str(tmp_path / "calls.db"),
        webhook_urls=(receiver.url,),
        webhook_secret="hook-secret",
        webhook_retry=RetryPolicy(first_s=0.05),
    )
    server = await start_server(nursery, deepgram, store=store)
    spec = CallSpec(inbound=generate_tone(2.0))
    await run_call(server.url("/twilio"), spec, speed=0)
    await receiver.wait_for(len(deepgram.finals) + 2)
    events = receiver.accepted
    assert [e["type"] for e in events] == ["call.started", *["transcript.final"] * len(deepgram.finals), "call.ended"]
    assert [e["sequence"] for e in events] == list(range(len(events)))
    assert [json.dumps(e["data"]["result"], separators=(",", ":")) for e in events[1:-1]] == deepgram.finals
    assert events[-1]["data"]["outcome"] == "ended" and len(events[-1]["data"]["utterances"]) == len(deepgram.spoken)
    assert all(
        webhooks.verify(b"hook-secret", d.headers["callscribe-signature"], d.body, time.time())
        for d in receiver.deliveries
    )
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(server.http_url + "/metrics")).text
    assert f'callscribe_webhook_deliveries_total{{receiver="{receiver.url}",result="failed"}} 3.0' in metrics
    server.stop.set()


# -- a server killed mid-call ---------------------------------------------------------------------------


@pytest.fixture
async def server_process(tmp_path: Path, deepgram: RecordingDeepgram) -> AsyncIterator[Any]:
    """Starts `callscribe serve` processes on one data directory: (base URL, process); kills what is
    left at the end."""
    processes: list[trio.Process] = []

    async def start() -> tuple[str, trio.Process]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CALLSCRIBE_", "PROXY_"))}
        env |= {
            "DEEPGRAM_API_KEY": API_KEY,
            "DEEPGRAM_URL": deepgram.url,
            "PROXY_URL": f"127.0.0.1:{port}",
            "CALLSCRIBE_DATA_DIR": str(tmp_path / "data"),
        }
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "callscribe", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            with trio.fail_after(15):
                while True:
                    try:
                        await http.get(base + "/healthz")
                        return base, process
                    except httpx.ConnectError:
                        await trio.sleep(0.05)

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_kill_9_mid_call_leaves_the_call_interrupted_with_its_finals(
    server_process: Any, deepgram: RecordingDeepgram
) -> None:
    base, process = await server_process()
    spec = CallSpec(inbound=generate_tone(30.0))
    async with httpx.AsyncClient() as http:
        async with trio.open_nursery() as calls:
            calls.start_soon(lambda: run_call(base.replace("http", "ws") + "/twilio", spec, speed=1.0))
            kept = await wait_for_utterances(http, f"{base}/api/calls/{spec.call_sid}", 3)
            process.send_signal(signal.SIGKILL)
            with trio.fail_after(10):
                await process.wait()
        base, _ = await server_process()
        call = await get_json(http, f"{base}/api/calls/{spec.call_sid}")
    assert call["outcome"] == "interrupted" and not call["live"] and call["endedAt"] is not None
    assert call["utterances"][: len(kept)] == kept
    assert len(call["utterances"]) <= len(deepgram.finals)


# -- the database stopped mid-call -------------------------------------------------------------------


async def test_postgresql_stopped_mid_call_harms_no_call_and_writes_land_when_it_returns(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, postgres_cluster: pg.Cluster, postgres_url: str
) -> None:
    server = await start_server(nursery, deepgram, store=StoreSettings(location=postgres_url))
    base = server.http_url
    spec = CallSpec(inbound=generate_tone(5.0), outbound=generate_tone(5.0, freq_hz=650))
    subscriber = Subscriber()
    try:
        async with httpx.AsyncClient() as http:
            async with trio.open_nursery() as calls:
                calls.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=2.0))
                await calls.start(subscribe, server, spec.call_sid, subscriber)
                await wait_for_utterances(http, f"{base}/api/calls/{spec.call_sid}", 2)
                await trio.to_thread.run_sync(postgres_cluster.stop)
                down = await http.get(base + "/api/calls", timeout=15)
                assert down.status_code == 503 and down.headers["retry-after"] == "5"
                # The database's own words (its host, port, user) stay in the server's log.
                assert down.json()["error"] == "the call store cannot answer now; try again later"
            (session,) = deepgram.sessions
            assert bytes(session.audio_by_channel[0]) == spec.inbound  # the call went on untouched
            assert finals_of(subscriber) == deepgram.finals and subscriber.close_code == 1000
            await trio.to_thread.run_sync(postgres_cluster.start)
            call = await wait_for_call(http, base, spec.call_sid, live=False)
            assert call["outcome"] == "ended"
            details = await get_json(http, f"{base}/api/calls/{spec.call_sid}")
            assert len(details["utterances"]) == len(deepgram.spoken)
    finally:
        if not _accepting(postgres_cluster):
            await trio.to_thread.run_sync(postgres_cluster.start)
    server.stop.set()


def _accepting(cluster: pg.Cluster) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", cluster.port)) == 0


@pytest.mark.logged_exceptions_expected
async def test_a_bug_behind_the_api_is_a_json_500_and_logged(
    nursery: trio.Nursery, deepgram: RecordingDeepgram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: object, query: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SqliteEngine, "list_calls", broken)
    server = await start_server(nursery, deepgram, store=StoreSettings(location=str(tmp_path / "calls.db")))
    async with httpx.AsyncClient() as http:
        answer = await get_json(http, server.http_url + "/api/calls", 500)
    assert answer == {"error": "Internal Server Error: GET /api/calls"}
    server.stop.set()
