"""Tests for callscribe.testing.call_runner: playing a simulated call to a real WebSocket server."""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio_websocket

from callscribe.core import audio as mulaw
from callscribe.testing.call_plan import CallSpec, call_messages, plan_frames
from callscribe.testing.call_runner import CallConnectionError, run_call
from conftest import LocalTls, free_port, local_tls


def small_spec(**kwargs: Any) -> CallSpec:
    defaults: dict[str, Any] = {
        "inbound": mulaw.generate_tone(0.3),
        "outbound": mulaw.generate_tone(0.2, 660),
        "outbound_start_ms": 100,
        "custom_parameters": {"caller": "+15550001111"},
        "seed": 3,
    }
    return CallSpec(**{**defaults, **kwargs})


async def test_run_call_as_fast_as_possible(start_recorder: Callable[..., Awaitable[Any]]) -> None:
    recorder = await start_recorder(reply_on_start='{"event":"mark","streamSid":"x","mark":{"name":"hi"}}')
    spec = small_spec(loss=0.1, off_size=0.2, jitter_ms=5)
    with trio.fail_after(5):
        report = await run_call(
            f"ws://127.0.0.1:{recorder.port}/twilio", spec, speed=0, headers=[("X-Twilio-Signature", "abc=")]
        )
        await recorder.done.wait()
    assert recorder.messages == [text for _, text in call_messages(spec)]
    assert recorder.headers["x-twilio-signature"] == "abc="
    assert report.call_sid == spec.call_sid
    assert report.frames == plan_frames(spec)
    assert len(report.sent_at) == len(report.frames)
    assert report.sent_at == sorted(report.sent_at) and report.sent_at[0] >= report.started_at
    for track in spec.tracks:
        assert report.bytes_by_track[track] == sum(len(f.payload) for f in report.frames if f.track == track)
    assert report.stop_sent
    assert (report.close_code, report.close_reason) == (1000, "call ended")
    assert report.received == [recorder.reply_on_start, '{"event":"bye"}']


async def test_run_call_without_stop(start_recorder: Callable[..., Awaitable[Any]]) -> None:
    recorder = await start_recorder()
    spec = small_spec(outbound=None)
    with trio.fail_after(5):
        report = await run_call(f"ws://127.0.0.1:{recorder.port}/", spec, speed=0, send_stop=False)
        await recorder.done.wait()
    assert recorder.client_closed.is_set()
    events = [json.loads(m)["event"] for m in recorder.messages]
    assert events == ["connected", "start"] + ["media"] * len(plan_frames(spec))
    assert not report.stop_sent
    assert report.close_code is None
    assert report.bytes_by_track == {"inbound": len(spec.inbound)}


async def test_run_call_server_does_not_close(start_recorder: Callable[..., Awaitable[Any]]) -> None:
    recorder = await start_recorder(close_after_stop=False)
    with trio.fail_after(5):
        report = await run_call(f"ws://127.0.0.1:{recorder.port}/", small_spec(), speed=0, close_wait=0.2)
        await recorder.done.wait()
    assert report.stop_sent and report.close_code is None
    assert recorder.client_closed.is_set()


async def test_run_call_server_closes_mid_call(start_recorder: Callable[..., Awaitable[Any]]) -> None:
    recorder = await start_recorder(close_after_media=5)
    spec = small_spec(inbound=mulaw.generate_tone(2.0), outbound=None)
    with trio.fail_after(5):
        report = await run_call(f"ws://127.0.0.1:{recorder.port}/", spec, speed=20)
    assert (report.close_code, report.close_reason) == (4000, "go away")
    assert 5 <= len(report.frames) < len(plan_frames(spec))
    assert not report.stop_sent


async def test_run_call_real_time_pacing(
    start_recorder: Callable[..., Awaitable[Any]], autojump_clock: trio.abc.Clock
) -> None:
    recorder = await start_recorder()
    spec = small_spec(
        inbound=mulaw.generate_tone(2.0),
        outbound=mulaw.generate_tone(1.0),
        outbound_start_ms=500,
        jitter_ms=7,
    )
    for speed in (1.0, 4.0):
        recorder.messages.clear()
        recorder.times.clear()
        begin = trio.current_time()
        with trio.fail_after(10):  # virtual seconds
            report = await run_call(f"ws://127.0.0.1:{recorder.port}/", spec, speed=speed)
        assert trio.current_time() - begin == pytest.approx(2.0 / speed, abs=0.01)
        for frame, sent in zip(report.frames, report.sent_at, strict=True):
            assert sent - report.started_at == pytest.approx(frame.send_at / speed, abs=1e-6)
        stop_at = recorder.times[-1] - report.started_at
        assert stop_at == pytest.approx(2.0 / speed, abs=1e-6)
        assert report.close_code == 1000


async def test_bidirectional_call_plays_what_comes_back_and_echoes_marks(
    start_websocket_server: Callable[..., Awaitable[int]], autojump_clock: trio.abc.Clock
) -> None:
    echoed: list[tuple[str, float]] = []

    async def speak_then_listen(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        spoke_at = 0.0
        while True:
            message = json.loads(await ws.get_message())
            sid = message.get("streamSid")
            if message["event"] == "start":
                payload = base64.b64encode(b"\xff" * 4000).decode()  # 0.5 s of audio
                await ws.send_message(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}}))
                await ws.send_message(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "said"}}))
                spoke_at = trio.current_time()
            elif message["event"] == "mark":
                echoed.append((message["mark"]["name"], trio.current_time() - spoke_at))
            elif message["event"] == "stop":
                await ws.aclose(1000)
                return

    port = await start_websocket_server(speak_then_listen, ssl_context=None)
    spec = small_spec(inbound=mulaw.generate_tone(1.0), outbound=None)
    with trio.fail_after(10):  # virtual seconds
        report = await run_call(f"ws://127.0.0.1:{port}/twilio", spec, bidirectional=True)
    assert echoed == [("said", pytest.approx(0.5, abs=0.01))]
    assert report.playback is not None
    assert report.playback.marks == ["said"] and bytes(report.playback.audio) == b"\xff" * 4000
    assert report.playback.bad_messages == [] and report.close_code == 1000


async def test_no_mark_is_echoed_after_stop(
    start_websocket_server: Callable[..., Awaitable[int]], autojump_clock: trio.abc.Clock
) -> None:
    """`stop` is the last message Twilio sends: a mark whose audio has not played by then is never echoed."""
    events: list[str] = []

    async def speak_past_the_end(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = json.loads(await ws.get_message())
                events.append(message["event"])
                if message["event"] == "start":
                    sid = message["streamSid"]
                    payload = base64.b64encode(b"\xff" * 16000).decode()  # 2 s of audio, longer than the call
                    await ws.send_message(
                        json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
                    )
                    await ws.send_message(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "late"}}))
        except trio_websocket.ConnectionClosed:
            pass

    port = await start_websocket_server(speak_past_the_end, ssl_context=None)
    spec = small_spec(inbound=mulaw.generate_tone(0.5), outbound=None)
    with trio.fail_after(20):  # virtual seconds
        report = await run_call(f"ws://127.0.0.1:{port}/twilio", spec, bidirectional=True, close_wait=5)
    assert events[-1] == "stop", events
    assert report.playback is not None and report.playback.marks == []


async def test_connection_refused() -> None:
    port = free_port()
    with (
        trio.fail_after(5),
        pytest.raises(ConnectionError, match=f"cannot connect to ws://127.0.0.1:{port}/twilio: .*refused"),
    ):
        await run_call(f"ws://127.0.0.1:{port}/twilio", small_spec(), speed=0)


async def test_handshake_rejected(start_websocket_server: Callable[..., Awaitable[int]]) -> None:
    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403, body=b"bad signature")

    port = await start_websocket_server(reject, ssl_context=None)
    with trio.fail_after(5), pytest.raises(CallConnectionError, match="HTTP 403: bad signature"):
        await run_call(f"ws://127.0.0.1:{port}/twilio", small_spec(), speed=0)


async def test_connect_timeout(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with (
        trio.fail_after(5),
        pytest.raises(
            CallConnectionError, match=re.escape("timed out after 0.2 s waiting for the WebSocket handshake")
        ),
    ):
        await run_call(f"ws://127.0.0.1:{port}/", small_spec(), speed=0, connect_timeout=0.2)


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ws://"):
        await run_call("http://127.0.0.1:1/", small_spec())
    with pytest.raises(ValueError, match="speed"):
        await run_call("ws://127.0.0.1:1/", small_spec(), speed=-1)


@pytest.fixture(scope="module")
def tls() -> LocalTls:
    return local_tls()


async def test_wss(start_recorder: Callable[..., Awaitable[Any]], tls: LocalTls) -> None:
    recorder = await start_recorder(ssl_context=tls.server)
    spec = small_spec()
    url = f"wss://127.0.0.1:{recorder.port}/twilio"
    with trio.fail_after(5):
        report = await run_call(url, spec, speed=0, ssl_context=tls.client)
    assert report.close_code == 1000 and len(report.frames) == len(plan_frames(spec))
    with trio.fail_after(5), pytest.raises(CallConnectionError, match="TLS error: CERTIFICATE_VERIFY_FAILED"):
        await run_call(url, spec, speed=0)


async def test_echoed_marks_carry_sequence_numbers_like_twilio(nursery: trio.Nursery) -> None:
    seen: list[dict] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        stream_sid = None
        try:
            while True:
                message = json.loads(await ws.get_message())
                seen.append(message)
                if message["event"] == "start":
                    stream_sid = message["streamSid"]
                    await ws.send_message(
                        json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": "m1"}})
                    )
                if message["event"] == "stop":
                    await ws.aclose()
                    return
        except trio_websocket.ConnectionClosed:
            pass

    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    url = f"ws://127.0.0.1:{server.port}/twilio"
    with trio.fail_after(20):
        report = await run_call(url, CallSpec(inbound=mulaw.generate_tone(0.5, 440.0)), speed=4, bidirectional=True)
    assert report.playback is not None and report.playback.marks == ["m1"]
    marks = [m for m in seen if m["event"] == "mark"]
    assert marks and "sequenceNumber" in marks[0], marks  # Twilio: {event, sequenceNumber, streamSid, mark}
    numbers = [int(m["sequenceNumber"]) for m in seen if m["event"] != "connected"]
    assert numbers == list(range(1, len(numbers) + 1))  # counts up from 1 across all messages


# -- 3. Twilio sends dtmf only on bidirectional streams (<Connect><Stream>, inbound only) ---------
