"""The whole relay over loopback: real Hypercorn and app, the fake Deepgram, the Twilio simulator, subscribers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket
import trustme

from callscribe.core.audio import generate_tone
from callscribe.server.websocket import ServedWebSocket
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallConnectionError, CallSpec, PlannedFrame, run_call
from conftest import RunningServer, Subscriber, start_server, subscribe, wait_until_live

WINDOW = 800  # bytes per channel of a 100 ms window


def expected_track(frames: list[PlannedFrame], track: str, length: int) -> bytes:
    """A track as the mixer should rebuild it: each frame at its timestamp, silence everywhere else."""
    audio = bytearray(b"\xff" * length)
    for frame in frames:
        if frame.track == track:
            start = frame.timestamp_ms * 8
            audio[start : start + len(frame.payload)] = frame.payload
    return bytes(audio)


def speech(seconds: float, freq: float) -> bytes:
    return generate_tone(seconds, freq_hz=freq)


async def test_both_tracks_exact_audio_windows_and_results_to_several_subscribers(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    spec = CallSpec(inbound=speech(3.0, 300), outbound=speech(3.0, 700), call_sid="CA" + "1" * 32)
    subscribers = [Subscriber() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for subscriber in subscribers:
            nursery.start_soon(subscribe, server, spec.call_sid, subscriber)
        report = await run_call(server.url("/twilio"), spec, speed=3.0)

    assert (report.close_code, report.close_reason) == (1000, "call ended")
    (session,) = fake_deepgram.sessions
    assert session.channels == 2 and session.query["multichannel"] == "true"
    assert bytes(session.audio_by_channel[0]) == spec.inbound
    assert bytes(session.audio_by_channel[1]) == spec.outbound
    assert set(session.message_sizes[:-1]) == {2 * WINDOW}  # 100 ms windows; only the last may be short
    assert session.control[-1] == "CloseStream"
    for subscriber in subscribers:
        assert subscriber.types.count("Results") == session.results_sent > 0
        assert subscriber.types[-1] == "Metadata"  # the final results and Metadata came before the close frame
        assert (subscriber.close_code, subscriber.close_reason) == (1000, "call ended")
        assert subscriber.messages == subscribers[0].messages


async def test_gaps_and_a_late_outbound_track_are_padded_exactly(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    spec = CallSpec(
        inbound=speech(2.0, 300),
        outbound=speech(1.5, 700),
        outbound_start_ms=500,
        loss=0.1,
        seed=7,
        call_sid="CA" + "2" * 32,
    )
    report = await run_call(server.url("/twilio"), spec, speed=0)
    (session,) = fake_deepgram.sessions
    await session.closed.wait()
    length = len(session.audio_by_channel[0])
    assert len(session.audio_by_channel[1]) == length
    assert length == max(f.timestamp_ms * 8 + len(f.payload) for f in report.frames)
    assert bytes(session.audio_by_channel[0]) == expected_track(report.frames, "inbound", length)
    assert bytes(session.audio_by_channel[1]) == expected_track(report.frames, "outbound", length)
    assert session.audio_by_channel[1][:4000] == b"\xff" * 4000  # the first 500 ms, before the outbound leg began


async def test_off_size_chunks_arrive_unchanged(server: RunningServer, fake_deepgram: FakeDeepgram) -> None:
    spec = CallSpec(inbound=speech(2.0, 440), off_size=0.3, seed=3, call_sid="CA" + "3" * 32)
    report = await run_call(server.url("/twilio"), spec, speed=0)
    assert len({len(f.payload) for f in report.frames}) > 1
    (session,) = fake_deepgram.sessions
    await session.closed.wait()
    assert session.channels == 1
    assert bytes(session.audio_by_channel[0]) == spec.inbound
    assert set(session.message_sizes[:-1]) == {WINDOW}


async def test_twilio_hanging_up_without_stop_still_flushes_and_closes_deepgram(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    spec = CallSpec(inbound=speech(1.03, 440), call_sid="CA" + "4" * 32)
    await run_call(server.url("/twilio"), spec, speed=0, send_stop=False)
    (session,) = await fake_deepgram.wait_for_sessions(1)
    with trio.fail_after(5):
        await session.closed.wait()
    assert bytes(session.audio_by_channel[0]) == spec.inbound  # including the last 30 ms partial window
    assert session.message_sizes[-1] == len(spec.inbound) % WINDOW
    assert session.control == ["CloseStream"]


async def test_unknown_call_sid_gets_an_error_and_1008(server: RunningServer) -> None:
    subscriber = await subscribe(server, "CA-no-such-call", Subscriber(), wait_for_call=False)
    assert subscriber.calls_listed == []
    (error,) = [json.loads(m) for m in subscriber.messages]
    assert error["type"] == "Error" and "CA-no-such-call" in error["message"]
    assert (subscriber.close_code, subscriber.close_reason) == (1008, "unknown callSid")


async def test_health_reports_live_calls_and_subscribers(server: RunningServer) -> None:
    spec = CallSpec(inbound=speech(2.0, 440), call_sid="CA" + "5" * 32)
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.http_url + "/healthz")).json() == {
            "status": "ok",
            "active_calls": 0,
            "subscribers": 0,
            "games": 0,
        }
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=2.0))
            await nursery.start(subscribe, server, spec.call_sid, Subscriber())
            with trio.fail_after(5):
                while (health := (await http.get(server.http_url + "/healthz")).json())["subscribers"] < 1:
                    await trio.sleep(0.02)
            assert health == {"status": "ok", "active_calls": 1, "subscribers": 1, "games": 0}


async def test_metrics_count_calls_frames_and_audio(server: RunningServer) -> None:
    spec = CallSpec(inbound=speech(2.0, 440), outbound=speech(2.0, 550), call_sid="CA" + "c" * 32)
    await run_call(server.url("/twilio"), spec, speed=0)
    async with httpx.AsyncClient() as http:
        with trio.fail_after(5):
            while True:
                text = (await http.get(server.http_url + "/metrics")).text
                if 'callscribe_calls_total{outcome="ok"} 1.0' in text:
                    break
                await trio.sleep(0.02)
    assert "callscribe_twilio_frames_total 200.0" in text
    assert "callscribe_audio_seconds_sent_total 2.0" in text
    assert "callscribe_active_calls 0.0" in text and "callscribe_deepgram_connections_total 1.0" in text


async def test_a_killed_subscriber_and_a_malformed_call_harm_nobody(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    good = CallSpec(inbound=speech(2.0, 300), outbound=speech(2.0, 500), call_sid="CA" + "6" * 32)
    steady = Subscriber()

    async def killed_subscriber() -> None:
        async with trio_websocket.open_websocket_url(server.url("/client"), connect_timeout=5) as ws:
            await ws.get_message()
            await ws.send_message(good.call_sid)
            await ws.get_message()
            await ws._stream.aclose()  # vanish without a close handshake, like a killed process

    async def malformed_call() -> None:
        async with trio_websocket.open_websocket_url(server.url("/twilio"), connect_timeout=5) as ws:
            bad = CallSpec(inbound=speech(0.5, 200), call_sid="CA" + "7" * 32)
            from callscribe.testing.simulator import call_messages

            for n, (_, message) in enumerate(call_messages(bad)):
                await ws.send_message(message)
                if n % 5 == 2:
                    await ws.send_message("{not json")
                    await ws.send_message(b"\x00\x01 binary junk")
                    await ws.send_message(
                        '{"event":"media","media":{"track":"inbound","timestamp":"0","payload":"***"}}'
                    )
            with trio.fail_after(5):
                while True:
                    try:
                        await ws.get_message()
                    except trio_websocket.ConnectionClosed:
                        break

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe, server, good.call_sid, steady)
        nursery.start_soon(malformed_call)
        nursery.start_soon(lambda: run_call(server.url("/twilio"), good, speed=3.0))
        await wait_until_live(server, good.call_sid)
        await killed_subscriber()

    sessions = {s.channels: s for s in fake_deepgram.sessions}
    assert bytes(sessions[2].audio_by_channel[0]) == good.inbound
    assert bytes(sessions[2].audio_by_channel[1]) == good.outbound
    assert steady.types.count("Results") == sessions[2].results_sent and steady.types[-1] == "Metadata"
    assert steady.close_code == 1000
    # The malformed call's good frames still got through, whole.
    with trio.fail_after(5):
        await sessions[1].closed.wait()
    assert len(sessions[1].audio_by_channel[0]) == 4000


async def test_deepgram_refusing_us_is_reported_and_twilio_is_read_to_the_end(
    server: RunningServer, fake_deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    fake_deepgram.behaviour.reject_status = 401
    spec = CallSpec(inbound=speech(2.0, 440), call_sid="CA" + "8" * 32)
    subscriber = Subscriber()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe, server, spec.call_sid, subscriber)
        report = await run_call(server.url("/twilio"), spec, speed=4.0)
    assert (report.close_code, report.close_reason) == (1000, "call ended")
    assert len(report.frames) == 100
    (error,) = [json.loads(m) for m in subscriber.messages]
    assert error["type"] == "Error" and "HTTP 401" in error["message"] and "Invalid credentials" in error["message"]
    assert subscriber.close_code == 1000
    assert any("HTTP 401" in r.getMessage() and spec.call_sid in r.getMessage() for r in caplog.records)


async def test_shutdown_finishes_the_call_and_closes_subscribers_with_1001(
    server: RunningServer, fake_deepgram: FakeDeepgram
) -> None:
    spec = CallSpec(inbound=speech(10.0, 440), call_sid="CA" + "9" * 32)
    subscriber = Subscriber()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=1.0))
        await nursery.start(subscribe, server, spec.call_sid, subscriber)
        with trio.fail_after(10):  # mid-call: transcripts are flowing
            while "Results" not in subscriber.types:
                await trio.sleep(0.05)
        server.stop.set()
        with trio.fail_after(8):
            await server.done.wait()
    (session,) = fake_deepgram.sessions
    assert session.control[-1] == "CloseStream"
    assert subscriber.types.count("Results") == session.results_sent >= 1
    assert subscriber.types[-1] == "Metadata"
    assert (subscriber.close_code, subscriber.close_reason) == (1001, "server shutting down")


@pytest.mark.skipif(
    shutil.which("websocat") is None and not (Path(sys.executable).parent / "websocat").exists(),
    reason="websocat is installed by scripts/setup",
)
async def test_websocat_as_a_subscriber(server: RunningServer, fake_deepgram: FakeDeepgram) -> None:
    websocat = shutil.which("websocat") or str(Path(sys.executable).parent / "websocat")
    spec = CallSpec(inbound=speech(3.0, 440), call_sid="CA" + "a" * 32)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=2.0))
        await wait_until_live(server, spec.call_sid)
        result = await trio.run_process(
            [websocat, "--text", "--no-close", server.url("/client")],
            stdin=(spec.call_sid + "\n").encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = result.stdout.decode().splitlines()
    assert json.loads(lines[0]) == [spec.call_sid]
    types = [json.loads(line)["type"] for line in lines[1:]]
    (session,) = fake_deepgram.sessions
    assert types.count("Results") == session.results_sent and types[-1] == "Metadata"


async def test_tls_end_to_end(nursery: trio.Nursery, fake_deepgram: FakeDeepgram, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_ssl = __import__("ssl").create_default_context()
    ca.configure_trust(client_ssl)
    server = await start_server(
        nursery, fake_deepgram, certfile=str(certfile), keyfile=str(keyfile), client_ssl=client_ssl
    )
    assert server.ws_url.startswith("wss://")
    spec = CallSpec(inbound=speech(2.0, 440), call_sid="CA" + "b" * 32)
    subscriber = Subscriber()
    async with trio.open_nursery() as inner:
        inner.start_soon(subscribe, server, spec.call_sid, subscriber)
        report = await run_call(server.url("/twilio"), spec, speed=3.0, ssl_context=client_ssl)
    assert report.close_code == 1000
    (session,) = fake_deepgram.sessions
    assert bytes(session.audio_by_channel[0]) == spec.inbound
    assert subscriber.types[-1] == "Metadata" and subscriber.close_code == 1000
    # A client that does not trust the CA is refused at the TLS handshake.
    with pytest.raises(CallConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await run_call(server.url("/twilio"), spec, speed=0, connect_timeout=2)
    server.stop.set()
    with trio.fail_after(10):
        await server.done.wait()


async def test_calls_read_on_a_shared_tick_arrive_whole(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, read_tick_ms=20)
    specs = [CallSpec(inbound=speech(1.0, 440 + 10 * n), outbound=speech(1.0, 660 + 10 * n)) for n in range(3)]
    async with trio.open_nursery() as calls:
        for spec in specs:
            calls.start_soon(lambda spec=spec: run_call(server.url("/twilio"), spec, speed=2.0))
    received = sorted((bytes(s.audio_by_channel[0]), bytes(s.audio_by_channel[1])) for s in fake_deepgram.sessions)
    assert received == sorted((spec.inbound, spec.outbound) for spec in specs)
    server.stop.set()


async def test_a_real_time_call_on_plain_tcp_is_read_about_once_a_window(
    server: RunningServer, fake_deepgram: FakeDeepgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server lets the Twilio socket wake its reader once a window's frames have come
    # (ServedWebSocket.wake_after): 40 windows of both tracks take about 40 reads, where the
    # timer-paced reader took two a window and a reader woken by every frame five.
    reads = 0
    read = ServedWebSocket._read

    async def counted(self: ServedWebSocket, not_before: float = 0.0) -> bytes:
        nonlocal reads
        reads += 1  # the call's Twilio socket is the only WebSocket this server serves here
        return await read(self, not_before)

    monkeypatch.setattr(ServedWebSocket, "_read", counted)
    spec = CallSpec(inbound=speech(4.0, 300), outbound=speech(4.0, 700), call_sid="CA" + "7" * 32)
    report = await run_call(server.url("/twilio"), spec, speed=1.0)
    assert (report.close_code, report.close_reason) == (1000, "call ended")
    assert bytes(fake_deepgram.sessions[0].audio_by_channel[0]) == spec.inbound
    assert reads <= 60, reads
