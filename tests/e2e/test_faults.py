"""Injected faults, each checked for what must not be lost: Deepgram drops, stalled subscribers,
duplicate streams, hostile input, and SIGTERM in the middle of a call."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from callscribe.server.websocket_client import connect_websocket
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour
from callscribe.testing.simulator import CallSpec, call_messages, run_call
from conftest import (
    API_KEY,
    RunningServer,
    Subscriber,
    free_port,
    local_tls,
    noise,
    start_server,
    subscribe,
    wait_until_live,
)


def finals_by_channel(subscriber: Subscriber) -> dict[int, list[tuple[float, float]]]:
    spans: dict[int, list[tuple[float, float]]] = {}
    for message in map(json.loads, subscriber.messages):
        if message.get("type") == "Results" and message.get("is_final"):
            spans.setdefault(message["channel_index"][0], []).append(
                (message["start"], message["start"] + message["duration"])
            )
    return spans


async def test_deepgram_dropping_several_times_loses_no_audio_and_keeps_one_timeline(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    fake_deepgram.behaviour.drop_after_audio_s = 1.5
    fake_deepgram.behaviour.result_every_s = 0.5
    server = await start_server(nursery, fake_deepgram, backoff_initial_s=0.05, backoff_max_s=0.2, replay_rate=4.0)
    spec = CallSpec(inbound=noise(6.0, 1), outbound=noise(6.0, 2), call_sid="CA" + "d" * 32)
    subscriber = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(subscribe, server, spec.call_sid, subscriber)
        report = await run_call(server.url("/twilio"), spec, speed=2.0, close_wait=15)
    assert report.close_code == 1000
    sessions = fake_deepgram.sessions
    assert len(sessions) >= 4  # it really dropped, several times
    # Per channel, every connection got a stretch of the call's audio; together they are all of it.
    for channel, sent in enumerate((spec.inbound, spec.outbound)):
        covered = 0
        for session in sessions:
            received = bytes(session.audio_by_channel[channel])
            start = sent.find(received[:32])
            assert start >= 0 and received == sent[start : start + len(received)]
            assert start <= covered  # no hole: a connection starts within what was already delivered
            covered = max(covered, start + len(received))
        assert covered == len(sent)
    # Subscribers see one monotonic timeline that reaches the end of the call.
    for spans in finals_by_channel(subscriber).values():
        starts = [start for start, _ in spans]
        assert starts == sorted(starts)
        assert all(b[0] >= a[1] - 1e-6 for a, b in itertools.pairwise(spans))
        assert spans[-1][1] == pytest.approx(6.0, abs=0.01)
    # Each drop is announced once and its recovery too; nothing else from callscribe itself.
    notices = [json.loads(m)["type"] for m in subscriber.messages if '"source":"callscribe"' in m.replace(" ", "")]
    assert notices and notices == ["Reconnecting", "Resumed"] * (len(notices) // 2)
    assert subscriber.types[-1] == "Metadata" and subscriber.close_code == 1000
    server.stop.set()


async def test_an_untrusted_deepgram_certificate_is_reported_as_such(nursery: trio.Nursery, tmp_path: Path) -> None:
    server_ssl = local_tls().server  # a CA nobody trusts
    fake = FakeDeepgram(FakeDeepgramBehaviour(api_key=API_KEY))
    await nursery.start(lambda task_status: fake.serve(ssl_context=server_ssl, task_status=task_status))
    server = await start_server(nursery, fake, max_reconnects=0, connect_timeout_s=2.0)
    spec = CallSpec(inbound=noise(1.0, 3), call_sid="CA" + "e" * 32)
    subscriber = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(subscribe, server, spec.call_sid, subscriber)
        await run_call(server.url("/twilio"), spec, speed=2.0)
    (error,) = [json.loads(m) for m in subscriber.messages]
    assert "TLS error: CERTIFICATE_VERIFY_FAILED (unable to get local issuer certificate)" in error["message"]
    server.stop.set()


class _WhenLogged(logging.Handler):
    """Notes the trio time at which a message containing `text` is first logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None and self.text in record.getMessage():
            self.at = trio.current_time()


async def test_a_stalled_subscriber_is_dropped_and_never_holds_up_the_others(nursery: trio.Nursery) -> None:
    sent_at: dict[str, float] = {}
    dropped = _WhenLogged("dropping subscriber")
    logging.getLogger("callscribe").addHandler(dropped)
    fake = FakeDeepgram(
        FakeDeepgramBehaviour(api_key=API_KEY, result_every_s=0.1, transcript=" ".join(["stall"] * 1500)),
        on_send=lambda session, text: sent_at.setdefault(text, trio.current_time()),
    )
    await nursery.start(fake.serve)
    server = await start_server(nursery, fake, stall_timeout_s=1.0)
    spec = CallSpec(inbound=noise(8.0, 4), call_sid="CA" + "f" * 32)
    healthy = Subscriber()

    async def stalled_subscriber(task_status: trio.TaskStatus[None]) -> None:
        # A client that stops reading: a tiny receive buffer, and it never asks for a message.
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", int(server.ws_url.rsplit(":", 1)[1])))
        async with trio.open_nursery() as own:
            ws = await trio_websocket.wrap_client_stream(
                own, trio.SocketStream(sock), "127.0.0.1", "/client", message_queue_size=1
            )
            await ws.get_message()
            await ws.send_message(spec.call_sid)
            task_status.started()
            await trio.sleep(30)

    async def healthy_subscriber() -> None:
        await subscribe(server, spec.call_sid, healthy)

    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=1.0))
        await wait_until_live(server, spec.call_sid)
        await inner.start(stalled_subscriber)
        inner.start_soon(healthy_subscriber)
        with trio.fail_after(20):
            while healthy.close_code is None:
                await trio.sleep(0.05)
        inner.cancel_scope.cancel()

    logging.getLogger("callscribe").removeHandler(dropped)
    assert dropped.at is not None
    # While the stalled subscriber held its connection (until it was dropped), every result
    # Deepgram sent reached the healthy one: nothing waited for the stalled peer. Only results
    # sent in the last half second before the drop may still have been on their way (this process
    # runs the fake Deepgram, the server and both clients: a loaded machine delays its reads; a
    # subscriber held up by the stalled one would get nothing for the whole second of the stall).
    arrived = dict(zip(healthy.messages, healthy.arrived_at, strict=True))
    during_the_stall = [m for m, t in sent_at.items() if t < dropped.at - 0.5]
    # About ten (1 s of stall timeout, a result every 0.1 s); fewer when a loaded machine slows
    # this process, which runs the fake Deepgram too: enough that the stall was under way.
    assert len(during_the_stall) >= 5
    assert all(m in arrived and arrived[m] < dropped.at for m in during_the_stall)
    assert all(m in arrived for m in sent_at)  # and nothing was lost afterwards
    assert healthy.types[-1] == "Metadata" and healthy.close_code == 1000
    server.stop.set()


async def test_two_streams_for_one_call_do_not_corrupt_each_other(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    call_sid = "CA" + "0" * 31 + "2"
    first = CallSpec(inbound=noise(2.0, 5), call_sid=call_sid)
    second = CallSpec(inbound=noise(3.0, 6), call_sid=call_sid)
    subscriber = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), first, speed=2.0))
        inner.start_soon(lambda: run_call(server.url("/twilio"), second, speed=2.0))
        await wait_until_live(server, call_sid)
        inner.start_soon(subscribe, server, call_sid, subscriber)
    received = sorted(bytes(s.audio_by_channel[0]) for s in fake_deepgram.sessions)
    assert received == sorted([first.inbound, second.inbound])
    assert subscriber.types.count("Metadata") == 2 and subscriber.close_code == 1000
    assert await _live_calls(server) == []


async def _live_calls(server: RunningServer) -> list[str]:
    async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
        return json.loads(await ws.get_message())


def junk_frames(rng: random.Random, count: int) -> list[str | bytes]:
    """Frames a broken or hostile Twilio client might send, drawn from a seeded generator."""
    kinds = [
        lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 200))),
        lambda: rng.randbytes(rng.randrange(0, 300)),
        lambda: b"",
        lambda: json.dumps(
            {rng.choice(["event", "media", "start", "streamSid"]): rng.choice([1, None, [], "media", {"x": 1}])}
        ),
        lambda: '{"event":"media","media":{"track":"inbound","timestamp":"99999999999999","payload":"//8="}}',
        lambda: '{"event":"media","media":{"track":"inbound","timestamp":"-1","payload":"//8="}}',
        lambda: '{"event":"media","media":{"track":"outbound","timestamp":"0","payload":"not base64!"}}',
        lambda: '{"event":"media","media":{"track":"inbound","timestamp":1.5,"payload":"//8="}}',
        lambda: (
            '{"event":"start","start":{"callSid":"CAx","streamSid":"MZx","tracks":["inbound"],'
            '"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}'
        ),
        lambda: '{"event":"stop","streamSid":"MZ-someone-else"}',
        lambda: "[" * 1000,
        lambda: json.dumps(
            {"event": "media", "media": {"track": "inbound", "timestamp": "0", "payload": "A" * 40_000}}
        ),
    ]
    return [rng.choice(kinds)() for _ in range(count)]


async def test_hostile_twilio_streams_never_hurt_concurrent_calls(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    rng = random.Random(2026)
    goods = [
        CallSpec(inbound=noise(1.0, 20 + n), outbound=noise(1.0, 40 + n), call_sid="CA%032x" % (0xA00 + n))
        for n in range(3)
    ]
    outcomes: list[int | None] = []

    async def hostile_stream(n: int) -> None:
        spec = CallSpec(inbound=noise(0.4, 60 + n), call_sid="CA%032x" % (0xB00 + n))
        script: list[str | bytes] = [m for _, m in call_messages(spec)]
        position = rng.randrange(0, len(script))  # junk before start, mid-stream or after stop
        script[position:position] = junk_frames(rng, rng.randrange(1, 40))
        async with trio.open_nursery() as own:
            ws = await connect_websocket(own, server.url("/twilio"), connect_timeout=5)
            try:
                for message in script:
                    await ws.send_message(message)
                with trio.fail_after(10):
                    while True:
                        await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                outcomes.append(closed.reason.code)
            own.cancel_scope.cancel()

    async with trio.open_nursery() as inner:
        for n in range(20):
            inner.start_soon(hostile_stream, n)
        reports = [None] * len(goods)

        async def good_call(n: int) -> None:
            reports[n] = await run_call(server.url("/twilio"), goods[n], speed=2.0)

        for n in range(len(goods)):
            inner.start_soon(good_call, n)
    assert len(outcomes) == 20 and all(code in (1000, 1003, 1008) for code in outcomes)
    for spec, report in zip(goods, reports, strict=False):
        assert report.close_code == 1000
        (session,) = [s for s in fake_deepgram.sessions if bytes(s.audio_by_channel[0]) == spec.inbound]
        assert bytes(session.audio_by_channel[1]) == spec.outbound
    async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == []  # nothing left behind in the registry


async def test_oversized_frames_and_floods_get_clear_close_codes(server: RunningServer) -> None:
    async with trio_websocket.open_websocket_url(server.url("/twilio"), connect_timeout=5) as ws:
        await ws.send_message("x" * 100_000)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(5):
                await ws.get_message()
        assert closed.value.reason.code == 1009  # message too big
    spec = CallSpec(inbound=noise(0.1, 9))
    async with trio_websocket.open_websocket_url(server.url("/twilio"), connect_timeout=5) as ws:
        for _, message in call_messages(spec)[:2]:
            await ws.send_message(message)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed:
            with trio.fail_after(10):
                for _ in range(5000):
                    await ws.send_message("{}")
                await ws.get_message()
        assert closed.value.reason.code == 1008 and "too many invalid frames" in closed.value.reason.reason


async def test_sigterm_mid_call_delivers_final_results_before_closing_subscribers(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CERT_", "KEY_", "CALLSCRIBE_"))}
    env |= {"DEEPGRAM_API_KEY": API_KEY, "DEEPGRAM_URL": fake_deepgram.url, "PROXY_URL": f"127.0.0.1:{port}"}
    env["CALLSCRIBE_DATA_DIR"] = str(tmp_path)  # the default store, not in the working directory
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "callscribe", "serve"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        server = RunningServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", trio.Event(), trio.Event())
        with trio.fail_after(15):
            while True:
                try:
                    await _live_calls(server)
                    break
                except (OSError, trio_websocket.HandshakeError):
                    await trio.sleep(0.05)
        spec = CallSpec(inbound=noise(20.0, 10), call_sid="CA" + "5" * 31 + "1")
        subscriber = Subscriber()
        reports = []

        async def call() -> None:
            reports.append(await run_call(server.url("/twilio"), spec, speed=1.0))

        async with trio.open_nursery() as inner:
            inner.start_soon(call)
            await inner.start(subscribe, server, spec.call_sid, subscriber)
            with trio.fail_after(10):  # mid-call: transcripts are flowing
                while subscriber.types.count("Results") < 2:
                    await trio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await process.wait() == 0
        (session,) = fake_deepgram.sessions
        assert session.control[-1] == "CloseStream"
        assert subscriber.types.count("Results") == session.results_sent >= 2
        assert subscriber.types[-1] == "Metadata"
        assert (subscriber.close_code, subscriber.close_reason) == (1001, "server shutting down")
        (report,) = reports
        assert (report.close_code, report.close_reason) == (1001, "server shutting down")  # Twilio is told too
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_hostile_subscribers_games_and_http_requests_get_clear_answers(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    from callscribe.server.games import GameSettings

    server = await start_server(nursery, fake_deepgram, games=GameSettings(phone_number="+1555"))
    good = CallSpec(inbound=noise(2.0, 11), call_sid="CA" + "7" * 32)
    steady = Subscriber()
    rng = random.Random(7)

    async def junk_subscriber(reply: str | bytes) -> tuple[int, str | None]:
        async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
            await ws.get_message()
            await ws.send_message(reply)
            try:
                with trio.fail_after(5):
                    while True:
                        await ws.get_message()
            except trio_websocket.ConnectionClosed as closed:
                return closed.reason.code, closed.reason.reason
        raise AssertionError("not closed")

    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), good, speed=2.0))
        await wait_until_live(server, good.call_sid)
        inner.start_soon(subscribe, server, good.call_sid, steady)
        for reply in (b"\x00\xff" * 10, "", "x" * 60_000, '{"callSid": "CA1"}', rng.randbytes(100)):
            assert (await junk_subscriber(reply))[0] == 1008
        async with trio_websocket.open_websocket_url(server.url("/game"), connect_timeout=5) as game:
            await game.get_message(), await game.get_message()
            for junk in ("{not json", '{"type": "Explode"}', b"\x01\x02", '{"type": "Say"}', "speak without a call"):
                await game.send_message(junk)
                reply = json.loads(await game.get_message())
                assert reply["type"] == "Error" and reply["message"]
        async with httpx.AsyncClient() as http:
            assert (await http.post(server.http_url + "/twiml", content=rng.randbytes(500))).status_code == 200
            assert (await http.delete(server.http_url + "/healthz")).status_code == 405
            assert (await http.get(server.http_url + "/nowhere")).status_code == 404
            assert (await http.get(server.http_url + "/healthz")).json()["status"] == "ok"
    assert steady.types[-1] == "Metadata" and steady.close_code == 1000
    server.stop.set()
