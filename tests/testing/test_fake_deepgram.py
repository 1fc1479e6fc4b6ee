"""Tests for the fake Deepgram live STT server (handshake, connections, results, command line), driven over
loopback with trio-websocket clients. The pure parts have their own tests (test_fake_deepgram_*.py)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from callscribe.testing import fake_deepgram, fake_deepgram_connection
from callscribe.testing.fake_deepgram import (
    FakeDeepgram,
    FakeDeepgramBehaviour,
    add_cli_arguments,
    behaviour_from_args,
    run_from_cli,
)
from conftest import local_tls

AUTH = [(b"Authorization", b"Token test-key")]
MULAW = "?encoding=mulaw&sample_rate=8000"
STEREO = MULAW + "&channels=2&multichannel=true"
CHUNK = 800  # 100 ms of 8 kHz mu-law, one channel
TIMEOUT = 5.0  # bound on every test (real or virtual seconds)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeDeepgram:
    server = FakeDeepgram()
    port = await nursery.start(server.serve)
    assert port == server.port != 0
    return server


@pytest.fixture
def virtual_clock(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Virtual time that jumps only once everything has been idle for a little real time.

    With real sockets a zero threshold would jump while loopback data is still in flight.
    """
    autojump_clock.autojump_threshold = 0.05
    return autojump_clock


def connect(
    fake: FakeDeepgram,
    query: str = MULAW,
    headers: list[tuple[bytes, bytes]] | None = AUTH,
    **kwargs: Any,
) -> AbstractAsyncContextManager[WebSocketConnection]:
    return open_websocket_url(
        fake.url + query, extra_headers=headers, connect_timeout=2, disconnect_timeout=2, **kwargs
    )


async def send_all(ws: WebSocketConnection, audio: bytes, chunk: int = CHUNK) -> None:
    for offset in range(0, len(audio), chunk):
        await ws.send_message(audio[offset : offset + chunk])


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    return decoded


async def read_until_closed(ws: WebSocketConnection) -> tuple[list[dict[str, Any]], CloseReason]:
    messages = []
    while True:
        try:
            messages.append(await receive(ws))
        except ConnectionClosed as closed:
            assert closed.reason is not None
            return messages, closed.reason


async def closed_as_idle(ws: WebSocketConnection) -> float:
    """Read until the fake closes `ws` for idleness (1011 NET-0001, having said nothing); returns when."""
    messages, closed = await read_until_closed(ws)
    assert messages == []
    assert (closed.code, closed.reason) == (1011, "NET-0001")
    return trio.current_time()


def spans(messages: Iterable[dict[str, Any]]) -> list[tuple[int, float, float, bool]]:
    """(channel, start, duration, is_final) of each Results message."""
    return [
        (m["channel_index"][0], m["start"], m["duration"], m["is_final"]) for m in messages if m["type"] == "Results"
    ]


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode()
    return None


# ---- handshake ---------------------------------------------------------------------------------


async def test_token_header_accepted_and_session_recorded(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake, MULAW + "&interim_results=false&model=nova-3") as ws:
            await ws.send_message('{"type":"CloseStream"}')
            messages, closed = await read_until_closed(ws)
        assert [m["type"] for m in messages] == ["Metadata"]
        assert closed.code == 1000
        (session,) = fake.sessions
        await session.closed.wait()
        assert fake.url == f"ws://127.0.0.1:{fake.port}/v1/listen"
        assert session.path == "/v1/listen"
        assert session.query == {
            "encoding": "mulaw",
            "sample_rate": "8000",
            "interim_results": "false",
            "model": "nova-3",
        }
        assert session.channels == 1
        assert header(ws.handshake_headers, b"dg-request-id") == session.request_id == messages[0]["request_id"]
        assert session.close_code == 1000
        assert fake.rejected == 0


async def test_token_subprotocol_accepted(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake, headers=None, subprotocols=["token", "test-key"]) as ws:
            assert ws.subprotocol == "token"
        await (await fake.wait_for_sessions(1))[0].closed.wait()


@pytest.mark.parametrize(
    "headers",
    [None, [(b"Authorization", b"Token wrong")], [(b"Authorization", b"Bearer test-key")]],
    ids=["missing", "wrong-key", "bearer-not-a-jwt"],
)
async def test_bad_credentials_rejected_401(fake: FakeDeepgram, headers: list[tuple[bytes, bytes]] | None) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConnectionRejected) as caught:
            async with connect(fake, headers=headers):
                pytest.fail("handshake should have been refused")
    rejection = caught.value
    assert rejection.status_code == 401
    assert header(rejection.headers, b"dg-error") == "Invalid credentials."
    request_id = header(rejection.headers, b"dg-request-id")
    assert request_id
    assert rejection.body is not None
    assert json.loads(rejection.body) == {
        "err_code": "INVALID_AUTH",
        "err_msg": "Invalid credentials.",
        "request_id": request_id,
    }
    assert fake.rejected == 1
    assert fake.sessions == []


async def test_reject_status_refuses_every_handshake_until_changed(fake: FakeDeepgram) -> None:
    fake.behaviour.reject_status = 429
    with trio.fail_after(TIMEOUT):
        for _ in range(2):
            with pytest.raises(ConnectionRejected) as caught:
                async with connect(fake):
                    pass
            assert caught.value.status_code == 429
            assert header(caught.value.headers, b"dg-error")
            assert caught.value.body is not None
            assert json.loads(caught.value.body)["err_code"] == "TOO_MANY_REQUESTS"
        assert fake.rejected == 2
        fake.behaviour.reject_status = None
        async with connect(fake):
            pass
    assert len(fake.sessions) == 1


async def test_encoding_without_sample_rate_rejected_400(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        with pytest.raises(ConnectionRejected) as caught:
            async with connect(fake, "?encoding=mulaw"):
                pass
    assert caught.value.status_code == 400
    assert "sample_rate" in (header(caught.value.headers, b"dg-error") or "")


async def test_tls_url_and_handshake(nursery: trio.Nursery) -> None:
    tls = local_tls()
    server_context, client_context = tls.server, tls.client
    fake = FakeDeepgram()
    await nursery.start(lambda task_status: fake.serve(ssl_context=server_context, task_status=task_status))
    assert fake.url.startswith("wss://127.0.0.1:")
    with trio.fail_after(TIMEOUT):
        async with open_websocket_url(fake.url + MULAW, client_context, extra_headers=AUTH, connect_timeout=2) as ws:
            await ws.send_message(b"\xff" * CHUNK)
            await ws.send_message('{"type":"CloseStream"}')
            messages, closed = await read_until_closed(ws)
    assert [m["type"] for m in messages] == ["Results", "Metadata"]
    assert closed.code == 1000


# ---- audio and results -------------------------------------------------------------------------


async def test_stereo_audio_deinterleaved_exactly(fake: FakeDeepgram) -> None:
    audio = os.urandom(2 * 8000 + 7)  # 1 s of stereo, plus an odd tail
    sizes = [1, 3, 1600, 999, 4000, 5000]
    sizes.append(len(audio) - sum(sizes))
    with trio.fail_after(TIMEOUT):
        async with connect(fake, STEREO) as ws:
            offset = 0
            for size in sizes:
                await ws.send_message(audio[offset : offset + size])
                offset += size
            await ws.send_message('{"type":"CloseStream"}')
            messages, closed = await read_until_closed(ws)
    session = fake.sessions[0]
    assert session.channels == 2
    assert session.audio_by_channel[0] == audio[0::2]
    assert session.audio_by_channel[1] == audio[1::2]
    assert session.message_sizes == sizes
    metadata = messages[-1]
    assert metadata["type"] == "Metadata"
    assert metadata["sha256"] == hashlib.sha256(audio).hexdigest()
    assert metadata["channels"] == 2
    assert metadata["transaction_key"] == "deprecated"
    assert metadata["created"].endswith("Z")
    assert metadata["duration"] == pytest.approx(len(audio) / 2 / 8000, abs=1e-4)
    assert closed.code == 1000


async def test_results_per_channel(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake, STEREO) as ws:
            await send_all(ws, b"\x7f" * 2 * 16000, chunk=2 * CHUNK)  # 2 s of stereo
            results = [await receive(ws) for _ in range(4)]
            await ws.send_message('{"type":"CloseStream"}')
            rest, closed = await read_until_closed(ws)
    assert spans(results) == [(0, 0.0, 1.0, True), (1, 0.0, 1.0, True), (0, 1.0, 1.0, True), (1, 1.0, 1.0, True)]
    first = results[0]
    assert first["channel_index"] == [0, 2]
    assert first["speech_final"] is True and first["from_finalize"] is False
    alternative = first["channel"]["alternatives"][0]
    assert alternative["transcript"] == "audio 0.00 to 1.00"
    assert [(w["word"], w["start"], w["end"]) for w in alternative["words"]] == [
        ("audio", 0.0, 0.25),
        ("0.00", 0.25, 0.5),
        ("to", 0.5, 0.75),
        ("1.00", 0.75, 1.0),
    ]
    assert first["metadata"]["model_info"] == {"name": "fake", "version": "0", "arch": "fake"}
    assert first["metadata"]["request_id"] == fake.sessions[0].request_id
    # Nothing was pending at CloseStream: an empty final per channel, then Metadata.
    assert [m["type"] for m in rest] == ["Results", "Results", "Metadata"]
    assert spans(rest) == [(0, 2.0, 0.0, True), (1, 2.0, 0.0, True)]
    assert rest[2]["duration"] == 2.0
    assert closed.code == 1000
    assert fake.sessions[0].results_sent == 6


async def test_channels_without_multichannel_are_mixed(fake: FakeDeepgram) -> None:
    fake.behaviour.transcript = "Hello, world."
    with trio.fail_after(TIMEOUT):
        async with connect(fake, MULAW + "&channels=2") as ws:
            await send_all(ws, b"\xff" * 2 * 8000, chunk=2 * CHUNK)
            result = await receive(ws)
    assert result["channel_index"] == [0, 1]
    assert (result["start"], result["duration"]) == (0.0, 1.0)
    alternative = result["channel"]["alternatives"][0]
    assert alternative["transcript"] == "Hello, world."
    assert [(w["word"], w["punctuated_word"]) for w in alternative["words"]] == [
        ("hello", "Hello,"),
        ("world", "world."),
    ]


async def test_interim_results_half_way_through_each_segment(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake, MULAW + "&interim_results=true") as ws:
            await send_all(ws, b"\xff" * 16000)
            messages = [await receive(ws) for _ in range(4)]
    assert spans(messages) == [
        (0, 0.0, 0.5, False),
        (0, 0.0, 1.0, True),
        (0, 1.0, 0.5, False),
        (0, 1.0, 1.0, True),
    ]
    assert messages[0]["speech_final"] is False


async def test_vad_events_and_utterance_ends(fake: FakeDeepgram) -> None:
    fake.behaviour.result_every_s = 0.5
    fake.behaviour.lines = (("hello there", "", ""),)
    query = MULAW + "&interim_results=true&vad_events=true&utterance_end_ms=1000"
    with trio.fail_after(TIMEOUT):
        async with connect(fake, query) as ws:
            await send_all(ws, b"\xff" * 12000)  # 1.5 s: a line, then 1 s without words
            await ws.send_message('{"type":"CloseStream"}')
            messages, _ = await read_until_closed(ws)
    kinds = [m["type"] if m["type"] != "Results" else ("final" if m["is_final"] else "interim") for m in messages]
    assert kinds == [
        "SpeechStarted", "interim", "final", "interim", "final", "interim", "final", "UtteranceEnd", "final", "Metadata"
    ]  # fmt: skip
    # `channel`, not `channel_index` as in Results
    assert messages[0] == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.0}
    assert messages[7] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.5}


async def test_finalize_flushes_only_new_audio(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake) as ws:
            await send_all(ws, b"\xff" * 3 * CHUNK)
            await ws.send_message('{"type":"Finalize"}')
            first = await receive(ws)
            await send_all(ws, b"\xff" * 2 * CHUNK)
            await ws.send_message('{"type":"Finalize"}')
            second = await receive(ws)
            await ws.send_message('{"type":"Finalize"}')  # nothing pending: no result
            await ws.send_message('{"type":"CloseStream"}')
            rest, closed = await read_until_closed(ws)
    assert spans([first, second]) == [(0, 0.0, 0.3, True), (0, 0.3, 0.2, True)]
    assert first["from_finalize"] is True and second["from_finalize"] is True
    assert [m["type"] for m in rest] == ["Results", "Metadata"]
    assert spans(rest) == [(0, 0.5, 0.0, True)]  # CloseStream with nothing pending: an empty final
    assert rest[1]["duration"] == 0.5
    assert closed.code == 1000
    assert fake.sessions[0].control == ["Finalize", "Finalize", "Finalize", "CloseStream"]


async def test_close_stream_sends_finals_then_metadata_then_closes_1000(fake: FakeDeepgram) -> None:
    audio = os.urandom(12000)  # 1.5 s
    with trio.fail_after(TIMEOUT):
        async with connect(fake) as ws:
            await send_all(ws, audio)
            await ws.send_message('{"type":"CloseStream"}')
            messages, closed = await read_until_closed(ws)
        session = fake.sessions[0]
        await session.closed.wait()
    assert [m["type"] for m in messages] == ["Results", "Results", "Metadata"]
    assert spans(messages) == [(0, 0.0, 1.0, True), (0, 1.0, 0.5, True)]
    assert messages[0]["from_finalize"] is False and messages[0]["speech_final"] is True
    assert messages[1]["from_finalize"] is True and messages[1]["speech_final"] is False  # the flush
    metadata = messages[2]
    assert metadata["sha256"] == hashlib.sha256(audio).hexdigest()
    assert metadata["duration"] == 1.5
    assert metadata["channels"] == 1
    assert metadata["request_id"] == session.request_id
    assert (closed.code, session.close_code) == (1000, 1000)
    assert session.results_sent == 2
    assert bytes(session.audio_by_channel[0]) == audio


async def test_close_stream_with_nothing_pending_sends_an_empty_final(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake, STEREO) as ws:
            await send_all(ws, b"\xff" * 16000)  # 1 s on each channel: a final each, nothing left
            await ws.send_message('{"type":"CloseStream"}')
            messages, closed = await read_until_closed(ws)
    assert [m["type"] for m in messages] == ["Results"] * 4 + ["Metadata"]
    assert spans(messages[2:4]) == [(0, 1.0, 0.0, True), (1, 1.0, 0.0, True)]
    for empty in messages[2:4]:
        assert empty["from_finalize"] is True and empty["channel"]["alternatives"][0]["transcript"] == ""
    assert closed.code == 1000


async def test_control_messages_recorded_and_bad_ones_ignored(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake) as ws:
            for text in ('{"type":"KeepAlive"}', "not json", '{"type":"Bogus"}', "[1, 2]", '{"kind":"x"}'):
                await ws.send_message(text)
            await ws.send_message(b"")  # a protocol error for Deepgram: recorded, ignored
            await ws.send_message('{"type":"CloseStream"}')
            messages, closed = await read_until_closed(ws)
    session = fake.sessions[0]
    assert session.control == ["KeepAlive", "<invalid>", "Bogus", "<invalid>", "<invalid>", "CloseStream"]
    assert session.message_sizes == [0]
    assert [m["type"] for m in messages] == ["Metadata"]
    assert messages[0]["sha256"] == hashlib.sha256(b"").hexdigest()
    assert closed.code == 1000


async def test_audio_without_encoding_is_undecodable(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake, "") as ws:
            await ws.send_message(b"\xff" * CHUNK)
            messages, closed = await read_until_closed(ws)
    assert messages == []
    assert (closed.code, closed.reason) == (1008, "DATA-0000")


# ---- timeouts and misbehaviour -----------------------------------------------------------------


async def test_idle_timeout_closes_net_0001(fake: FakeDeepgram, virtual_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(30):
        async with connect(fake) as ws:
            await ws.send_message(b"\xff" * CHUNK)
            sent_at = trio.current_time()
            closed_at = await closed_as_idle(ws)
    assert closed_at - sent_at == pytest.approx(10.0, abs=0.5)
    assert (fake.sessions[0].close_code, fake.sessions[0].close_reason) == (1011, "NET-0001")


async def test_keepalive_resets_idle_timer(fake: FakeDeepgram, virtual_clock: trio.testing.MockClock) -> None:
    fake.behaviour.idle_timeout_s = 2.0
    with trio.fail_after(30):
        async with connect(fake) as ws:
            for _ in range(5):  # 7.5 s, well past the 2 s timeout, kept open by KeepAlive
                await trio.sleep(1.5)
                await ws.send_message('{"type":"KeepAlive"}')
            last = trio.current_time()
            closed_at = await closed_as_idle(ws)
    assert closed_at - last == pytest.approx(2.0, abs=0.3)
    assert fake.sessions[0].control == ["KeepAlive"] * 5


async def test_drop_after_audio_closes_net_0000(fake: FakeDeepgram) -> None:
    fake.behaviour.drop_after_audio_s = 1.5
    with trio.fail_after(TIMEOUT):
        async with connect(fake) as ws:
            with contextlib.suppress(ConnectionClosed):  # the fake may hang up while we send
                await send_all(ws, b"\xff" * 24000)  # 3 s
            messages, closed = await read_until_closed(ws)
    assert spans(messages) == [(0, 0.0, 1.0, True)]
    assert (closed.code, closed.reason) == (1011, "NET-0000")
    session = fake.sessions[0]
    assert sum(session.message_sizes) == 12000
    assert session.close_code == 1011


async def test_response_delay_does_not_hold_up_audio(fake: FakeDeepgram, virtual_clock: trio.testing.MockClock) -> None:
    fake.behaviour.response_delay_s = 3.0
    with trio.fail_after(30):
        async with connect(fake) as ws:
            await send_all(ws, b"\xff" * 16000)  # 2 s of audio, two finals due at once
            sent_at = trio.current_time()
            await ws.send_message('{"type":"KeepAlive"}')
            first = await receive(ws)
            first_at = trio.current_time()
            session = fake.sessions[0]
            # Everything sent after the audio was received before the delayed result came out.
            assert session.message_sizes == [CHUNK] * 20
            assert session.control == ["KeepAlive"]
            second = await receive(ws)
            second_at = trio.current_time()
    assert spans([first, second]) == [(0, 0.0, 1.0, True), (0, 1.0, 1.0, True)]
    assert first_at - sent_at == pytest.approx(3.0, abs=0.3)
    assert second_at - first_at < 0.5  # each message is delayed, not the queue serialised


async def test_client_close_without_close_stream(fake: FakeDeepgram) -> None:
    with trio.fail_after(TIMEOUT):
        async with connect(fake) as ws:
            await send_all(ws, b"\xff" * 3 * CHUNK)
        session = (await fake.wait_for_sessions(1))[0]
        await session.closed.wait()
        assert session.close_code == 1000
        assert session.message_sizes == [CHUNK] * 3
        async with connect(fake) as ws:  # still serving
            await ws.send_message('{"type":"CloseStream"}')
            _, closed = await read_until_closed(ws)
    assert closed.code == 1000


@pytest.mark.logged_exceptions_expected  # the fake logs the failing connection with its traceback
async def test_handler_failure_ends_only_that_connection(
    fake: FakeDeepgram, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr(fake_deepgram_connection, "results_message", broken)
    with trio.fail_after(TIMEOUT), caplog.at_level(logging.ERROR, logger=fake_deepgram.__name__):
        async with connect(fake) as ws:
            await send_all(ws, b"\xff" * 8000)
            messages, closed = await read_until_closed(ws)
        assert messages == []
        assert (closed.code, closed.reason) == (1011, "NET-0000")
        assert "boom" in caplog.text
        monkeypatch.undo()
        # A client that is not speaking WebSocket at all does no harm either.
        stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
        await stream.send_all(b"hello\r\n\r\n")
        await stream.aclose()
        async with connect(fake) as ws:
            await send_all(ws, b"\xff" * 8000)
            assert (await receive(ws))["type"] == "Results"
    assert fake.sessions[0].closed.is_set()
    assert fake.sessions[0].close_code == 1011


async def test_cancelling_serve_ends_open_connections(nursery: trio.Nursery) -> None:
    fake = FakeDeepgram()
    serving = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[int]) -> None:
        with serving:
            await fake.serve(task_status=task_status)

    with trio.fail_after(TIMEOUT):
        await nursery.start(run)
        async with connect(fake) as ws:
            await ws.send_message(b"\xff" * CHUNK)
            session = (await fake.wait_for_sessions(1))[0]
            serving.cancel()
            await session.closed.wait()
            with pytest.raises(ConnectionClosed):
                await ws.get_message()
        with pytest.raises(OSError):  # no longer listening
            await trio.open_tcp_stream("127.0.0.1", fake.port)


async def _conversation(fake: FakeDeepgram, query: str, audio: bytes, sizes: list[int]) -> list[dict[str, Any]]:
    """Send `audio` in messages of `sizes` (cycling), a Finalize half-way, then CloseStream; what came back,
    with the connection's request id and creation time blanked out."""
    async with connect(fake, query) as ws:
        offset, turn = 0, 0
        while offset < len(audio):
            size = sizes[turn % len(sizes)]
            await ws.send_message(audio[offset : offset + size])
            if offset < len(audio) // 2 <= offset + size:
                await ws.send_message('{"type":"Finalize"}')
            offset, turn = offset + size, turn + 1
        await ws.send_message('{"type":"CloseStream"}')
        messages, closed = await read_until_closed(ws)
    assert closed.code == 1000
    request_id = fake.sessions[-1].request_id
    return [json.loads(json.dumps(m).replace(request_id, "<id>")) | {"created": None} for m in messages]


@pytest.mark.parametrize(
    "query",
    [
        STEREO + "&interim_results=true&vad_events=true&utterance_end_ms=1000",
        MULAW + "&channels=2&interim_results=true",  # mixed
        "?encoding=linear16&sample_rate=8000&channels=2&multichannel=true&interim_results=true",
    ],
)
async def test_without_keep_audio_results_are_the_same_and_no_audio_is_kept(
    nursery: trio.Nursery, virtual_clock: trio.testing.MockClock, query: str
) -> None:
    audio = os.urandom(2 * 2 * 8000 * 3 + 5)  # 3 s of stereo linear16 (6 s of mu-law), an odd tail
    sizes = [1, 3, 1600, 999, 4000, 5]
    behaviour = FakeDeepgramBehaviour(result_every_s=0.5, lines=(("one", "", "two"), ("", "three")))
    keeping = FakeDeepgram(behaviour)
    counting = FakeDeepgram(dataclasses.replace(behaviour), keep_audio=False)
    with trio.fail_after(60):
        for fake in (keeping, counting):
            await nursery.start(fake.serve)
        kept = await _conversation(keeping, query, audio, sizes)
        counted = await _conversation(counting, query, audio, sizes)
    assert len(kept) > 20
    assert counted == kept
    (full,), (light,) = keeping.sessions, counting.sessions
    assert light.audio_by_channel == [bytearray(), bytearray()]
    width = len(full.audio_by_channel[0]) // full.samples_by_channel[0]
    assert light.samples_by_channel == full.samples_by_channel == [len(c) // width for c in full.audio_by_channel]
    assert light.message_sizes == full.message_sizes


async def test_keep_sessions_keeps_the_last_ones_and_counts_every_one(nursery: trio.Nursery) -> None:
    fake = FakeDeepgram(keep_sessions=2)
    with trio.fail_after(TIMEOUT):
        await nursery.start(fake.serve)
        for number in range(5):
            async with connect(fake, MULAW + f"&number={number}") as ws:
                await ws.send_message(b"\xff" * CHUNK)
                await ws.send_message('{"type":"CloseStream"}')
                await read_until_closed(ws)
        sessions = await fake.wait_for_sessions(5)
    assert fake.accepted == 5
    assert sessions is fake.sessions
    assert [session.query["number"] for session in sessions] == ["3", "4"]
    with pytest.raises(ValueError, match="keep_sessions"):
        FakeDeepgram(keep_sessions=-1)


# ---- command line ------------------------------------------------------------------------------


def test_cli_arguments_build_behaviour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.host, defaults.port) == ("127.0.0.1", fake_deepgram.DEFAULT_PORT)
    assert behaviour_from_args(defaults) == FakeDeepgramBehaviour()
    args = parser.parse_args(
        [
            *("--port", "0", "--api-key", "k", "--reject-status", "429", "--drop-after", "2"),
            *("--delay", "0.5", "--result-every", "0.5", "--idle-timeout", "3", "--transcript", "hi there"),
        ]
    )
    assert behaviour_from_args(args) == FakeDeepgramBehaviour(
        api_key="k",
        reject_status=429,
        drop_after_audio_s=2.0,
        response_delay_s=0.5,
        result_every_s=0.5,
        transcript="hi there",
        idle_timeout_s=3.0,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--reject-status", "200"])


def test_cli_fake_keeps_no_audio_and_few_sessions() -> None:
    # It runs until Ctrl-C: what it keeps must not grow with the calls it has served.
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--api-key", "k", "--result-every", "0.5"])
    fake = fake_deepgram.fake_from_args(args)
    assert fake.behaviour == behaviour_from_args(args)
    assert fake.keep_audio is False
    assert fake.keep_sessions is not None and 0 < fake.keep_sessions <= 100


def test_cli_port_in_use_returns_1(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_from_cli(parser.parse_args(["--port", str(port)])) == 1
        assert f"cannot listen on 127.0.0.1:{port}: " in capsys.readouterr().err
        assert run_from_cli(parser.parse_args(["--port", "0", "--speak-port", str(port)])) == 1
        assert f"cannot listen on 127.0.0.1:{port}: " in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery")
def test_cli_runs_until_ctrl_c() -> None:
    code = (
        "import argparse, sys\n"
        "from callscribe.testing.fake_deepgram import add_cli_arguments, run_from_cli\n"
        "p = argparse.ArgumentParser(); add_cli_arguments(p)\n"
        "sys.exit(run_from_cli(p.parse_args(['--port', '0', '--speak-port', '0'])))\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        watchdog = threading.Timer(3 * TIMEOUT, process.kill)  # readline() below must not hang the run
        watchdog.start()
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.startswith("fake Deepgram listening on ws://127.0.0.1:")
            line = process.stdout.readline()
            assert re.fullmatch(r"fake Deepgram Aura listening on http://127\.0\.0\.1:\d+/v1/speak\n", line)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=TIMEOUT)
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_the_options_keep_the_names_argparse_gives_them_and_make_the_behaviour() -> None:
    # A program that adds the fake's options to its own parser reads them by their flags' names.
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args(["--api-key", "k", "--delay", "0.5", "--drop-after", "3", "--result-every", "2"])
    assert (args.delay, args.drop_after, args.result_every, args.idle_timeout) == (0.5, 3.0, 2.0, 10.0)
    behaviour = behaviour_from_args(args)
    assert (behaviour.response_delay_s, behaviour.drop_after_audio_s, behaviour.result_every_s) == (0.5, 3.0, 2.0)
