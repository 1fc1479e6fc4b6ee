"""Tests for callscribe.testing.simulator: the sans-IO call planner and the trio call runner."""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
import re
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core import audio as mulaw
from callscribe.testing import simulator as sim
from conftest import LocalTls, free_port, local_tls

# ----------------------------------------------------------------------------- helpers


def counting_audio(n: int, salt: int = 0) -> bytes:
    """Audio whose bytes identify their position, so misplaced bytes are caught."""
    return bytes((i * 7 + salt) % 251 for i in range(n))


def track_frames(frames: list[sim.PlannedFrame], track: str) -> list[sim.PlannedFrame]:
    return [f for f in frames if f.track == track]


def check_track(frames: list[sim.PlannedFrame], audio: bytes, start_ms: int, spec: sim.CallSpec) -> None:
    """Every frame is the audio at offset (timestamp - start) * 8; frames do not overlap;
    filling the gaps (lost frames) from the input rebuilds the input exactly."""
    assert [f.chunk for f in frames] == list(range(1, len(frames) + 1))
    rebuilt = bytearray()
    for frame in frames:
        offset = (frame.timestamp_ms - start_ms) * 8
        assert offset >= len(rebuilt), "frames overlap or go backwards"
        assert frame.payload, "empty payload"
        assert audio[offset : offset + len(frame.payload)] == frame.payload
        rebuilt += audio[len(rebuilt) : offset]  # reinsert the bytes of lost frames
        rebuilt += frame.payload
        assert frame.send_at >= frame.timestamp_ms / 1000
        assert frame.send_at <= frame.timestamp_ms / 1000 + spec.jitter_ms / 1000 + 1e-9
    rebuilt += audio[len(rebuilt) :]
    assert bytes(rebuilt) == audio
    sends = [f.send_at for f in frames]
    assert sends == sorted(sends)
    if spec.loss == 0:
        assert b"".join(f.payload for f in frames) == audio
    if spec.loss == 0 and spec.off_size == 0:
        size = spec.frame_ms * 8
        assert [len(f.payload) for f in frames] == [min(size, len(audio) - i) for i in range(0, len(audio), size)]


def walk_leaves(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in walk_leaves(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [leaf for item in value for leaf in walk_leaves(item, f"{path}[]")]
    return [(path, value)]


NUMERIC_LEAVES = {".start.mediaFormat.sampleRate": 8000, ".start.mediaFormat.channels": 1}


def check_messages(spec: sim.CallSpec, texts: list[str]) -> None:
    """The messages look exactly like Twilio's (protocols.md section 1.2)."""
    messages = [json.loads(t) for t in texts]
    for message in messages:
        for path, value in walk_leaves(message):
            if path in NUMERIC_LEAVES:
                assert value == NUMERIC_LEAVES[path] and type(value) is int
            else:
                assert isinstance(value, str), (path, value)
    connected, start, *media, stop = messages
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": spec.stream_sid,
        "start": {
            "accountSid": spec.account_sid,
            "streamSid": spec.stream_sid,
            "callSid": spec.call_sid,
            "tracks": spec.tracks,
            "customParameters": spec.custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    frames = sim.plan_frames(spec)
    assert len(media) == len(frames)
    for number, (message, frame) in enumerate(zip(media, frames, strict=True), start=2):
        assert message == {
            "event": "media",
            "sequenceNumber": str(number),
            "streamSid": spec.stream_sid,
            "media": {
                "track": frame.track,
                "chunk": str(frame.chunk),
                "timestamp": str(frame.timestamp_ms),
                "payload": base64.b64encode(frame.payload).decode(),
            },
        }
    assert stop == {
        "event": "stop",
        "sequenceNumber": str(len(media) + 2),
        "streamSid": spec.stream_sid,
        "stop": {"accountSid": spec.account_sid, "callSid": spec.call_sid},
    }


specs = st.builds(
    sim.CallSpec,
    inbound=st.binary(max_size=1500),
    outbound=st.none() | st.binary(max_size=1500),
    outbound_start_ms=st.integers(0, 300),
    frame_ms=st.sampled_from([1, 10, 20, 25]),
    loss=st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0]),
    off_size=st.sampled_from([0.0, 0.0, 0.2, 1.0]),
    jitter_ms=st.sampled_from([0.0, 0.0, 5.0, 100.0]),
    seed=st.integers(0, 2**32),
    custom_parameters=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


# ----------------------------------------------------------------------------- planning


@settings(max_examples=150, deadline=None)
@given(specs)
def test_plan_frames_properties(spec: sim.CallSpec) -> None:
    frames = sim.plan_frames(spec)
    sends = [f.send_at for f in frames]
    assert sends == sorted(sends)
    check_track(track_frames(frames, "inbound"), spec.inbound, 0, spec)
    if spec.outbound is None:
        assert not track_frames(frames, "outbound")
    else:
        check_track(track_frames(frames, "outbound"), spec.outbound, spec.outbound_start_ms, spec)
    assert sim.plan_frames(spec) == frames  # deterministic


@settings(max_examples=50, deadline=None)
@given(specs)
def test_call_messages_are_twilio_shaped(spec: sim.CallSpec) -> None:
    calls = sim.call_messages(spec)
    check_messages(spec, [text for _, text in calls])
    times = [at for at, _ in calls]
    assert times == sorted(times)
    assert times[0] == times[1] == 0.0
    assert times[-1] == pytest.approx(max([spec.duration_s, *times[:-1]]))


def test_plain_plan() -> None:
    spec = sim.CallSpec(inbound=counting_audio(1000))
    frames = sim.plan_frames(spec)
    assert [(f.timestamp_ms, f.chunk, len(f.payload), f.send_at) for f in frames] == [
        (0, 1, 160, 0.0),
        (20, 2, 160, 0.02),
        (40, 3, 160, 0.04),
        (60, 4, 160, 0.06),
        (80, 5, 160, 0.08),
        (100, 6, 160, 0.1),
        (120, 7, 40, 0.12),
    ]
    assert spec.tracks == ["inbound"] and spec.duration_s == 0.125


def test_default_sids() -> None:
    spec = sim.CallSpec(inbound=b"")
    for sid, prefix in ((spec.call_sid, "CA"), (spec.account_sid, "AC"), (spec.stream_sid, "MZ")):
        assert len(sid) == 34 and sid.startswith(prefix) and int(sid[2:], 16) >= 0
    assert sim.CallSpec(inbound=b"").call_sid != spec.call_sid


def test_both_tracks_interleave_and_outbound_offset() -> None:
    spec = sim.CallSpec(inbound=counting_audio(1600), outbound=counting_audio(800, 3), outbound_start_ms=100)
    frames = sim.plan_frames(spec)
    outbound = track_frames(frames, "outbound")
    assert [f.timestamp_ms for f in outbound] == [100, 120, 140, 160, 180]
    assert [f.chunk for f in outbound] == [1, 2, 3, 4, 5]
    # Interleaved in time; on equal send times inbound goes first.
    assert [(f.track, f.timestamp_ms) for f in frames[5:9]] == [
        ("inbound", 100),
        ("outbound", 100),
        ("inbound", 120),
        ("outbound", 120),
    ]
    assert spec.tracks == ["inbound", "outbound"] and spec.duration_s == 0.2


def test_loss_is_deterministic_per_seed_and_near_its_rate() -> None:
    spec = sim.CallSpec(inbound=counting_audio(160 * 1000), loss=0.3, seed=7)
    frames = sim.plan_frames(spec)
    assert frames == sim.plan_frames(replace(spec))
    assert 600 <= len(frames) <= 800
    assert frames != sim.plan_frames(replace(spec, seed=8))
    # The loss pattern does not depend on the jitter setting.
    jittered = sim.plan_frames(replace(spec, jitter_ms=10))
    assert [f.timestamp_ms for f in jittered] == [f.timestamp_ms for f in frames]
    # The receiver sees gaps in timestamps but consecutive chunk numbers.
    gaps = [b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(frames)]
    assert max(gaps) > 20 and min(gaps) == 20
    assert [f.chunk for f in frames] == list(range(1, len(frames) + 1))


def test_off_size_chunks_keep_exact_bytes_and_timestamps() -> None:
    audio = counting_audio(160 * 200)
    spec = sim.CallSpec(inbound=audio, off_size=0.5, seed=1)
    frames = sim.plan_frames(spec)
    sizes = {len(f.payload) for f in frames}
    assert any(s < 160 for s in sizes) and 320 in sizes and 160 in sizes
    assert b"".join(f.payload for f in frames) == audio
    assert all(f.timestamp_ms * 8 == sum(len(g.payload) for g in frames[: f.chunk - 1]) for f in frames)
    check_track(frames, audio, 0, spec)


def test_jitter_changes_send_times_only() -> None:
    spec = sim.CallSpec(inbound=counting_audio(8000), outbound=counting_audio(8000), jitter_ms=30, seed=5)
    jittered = sim.plan_frames(spec)
    plain = sim.plan_frames(replace(spec, jitter_ms=0))
    key = lambda f: (f.track, f.chunk)  # noqa: E731
    assert sorted((key(f), f.timestamp_ms, f.payload) for f in jittered) == sorted(
        (key(f), f.timestamp_ms, f.payload) for f in plain
    )
    assert any(j.send_at != j.timestamp_ms / 1000 for j in jittered)
    for track in ("inbound", "outbound"):
        assert [f.chunk for f in track_frames(jittered, track)] == list(range(1, 51))


def test_total_loss_still_makes_a_call() -> None:
    spec = sim.CallSpec(inbound=counting_audio(800), loss=1.0)
    assert sim.plan_frames(spec) == []
    calls = sim.call_messages(spec)
    assert [json.loads(t)["event"] for _, t in calls] == ["connected", "start", "stop"]
    assert calls[-1][0] == 0.1  # stop when the audio would have ended


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": 1.5},
        {"off_size": -0.1},
        {"jitter_ms": -1.0},
        {"frame_ms": 0},
        {"outbound_start_ms": -5},
    ],
)
def test_call_spec_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sim.CallSpec(inbound=b"\xff", **kwargs)


def test_message_builders() -> None:
    spec = sim.CallSpec(
        inbound=b"\x01\x02", call_sid="CA1", account_sid="AC1", stream_sid="MZ1", custom_parameters={"k": "v"}
    )
    frame = sim.PlannedFrame("inbound", 40, 3, b"\x01\x02", 0.04)
    assert json.loads(sim.media_message(spec, frame, 9)) == {
        "event": "media",
        "sequenceNumber": "9",
        "media": {"track": "inbound", "chunk": "3", "timestamp": "40", "payload": "AQI="},
        "streamSid": "MZ1",
    }
    assert json.loads(sim.stop_message(spec, 4))["stop"] == {"accountSid": "AC1", "callSid": "CA1"}
    assert json.loads(sim.start_message(spec, 1))["start"]["customParameters"] == {"k": "v"}
    assert "sequenceNumber" not in json.loads(sim.connected_message())


# ----------------------------------------------------------------------------- run_call


@dataclass
class Recorder:
    """A tiny Twilio-facing test server: records messages; optionally replies and closes."""

    close_after_stop: bool = True
    close_after_media: int | None = None  # close (4000) after this many media messages
    reply_on_start: str | None = None
    messages: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    client_closed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        self.headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        ws = await request.accept()
        media = 0
        try:
            while True:
                text = await ws.get_message()
                assert isinstance(text, str)
                self.messages.append(text)
                self.times.append(trio.current_time())
                event = json.loads(text)["event"]
                if event == "start" and self.reply_on_start:
                    await ws.send_message(self.reply_on_start)
                if event == "media":
                    media += 1
                    if media == self.close_after_media:
                        await ws.aclose(4000, "go away")
                        return
                if event == "stop" and self.close_after_stop:
                    await ws.send_message('{"event":"bye"}')
                    await ws.aclose(1000, "call ended")
                    return
        except trio_websocket.ConnectionClosed:
            self.client_closed.set()
        finally:
            self.done.set()


async def start_server(nursery: trio.Nursery, handler: Callable[..., Awaitable[None]], **kwargs: Any) -> int:
    serve = functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, **kwargs)
    server = await nursery.start(serve)
    return server.port


def small_spec(**kwargs: Any) -> sim.CallSpec:
    defaults: dict[str, Any] = {
        "inbound": mulaw.generate_tone(0.3),
        "outbound": mulaw.generate_tone(0.2, 660),
        "outbound_start_ms": 100,
        "custom_parameters": {"caller": "+15550001111"},
        "seed": 3,
    }
    return sim.CallSpec(**{**defaults, **kwargs})


async def test_run_call_as_fast_as_possible(nursery: trio.Nursery) -> None:
    recorder = Recorder(reply_on_start='{"event":"mark","streamSid":"x","mark":{"name":"hi"}}')
    port = await start_server(nursery, recorder.handler, ssl_context=None)
    spec = small_spec(loss=0.1, off_size=0.2, jitter_ms=5)
    with trio.fail_after(5):
        report = await sim.run_call(
            f"ws://127.0.0.1:{port}/twilio", spec, speed=0, headers=[("X-Twilio-Signature", "abc=")]
        )
        await recorder.done.wait()
    assert recorder.messages == [text for _, text in sim.call_messages(spec)]
    check_messages(spec, recorder.messages)
    assert recorder.headers["x-twilio-signature"] == "abc="
    assert report.call_sid == spec.call_sid
    assert report.frames == sim.plan_frames(spec)
    assert len(report.sent_at) == len(report.frames)
    assert report.sent_at == sorted(report.sent_at) and report.sent_at[0] >= report.started_at
    for track in spec.tracks:
        assert report.bytes_by_track[track] == sum(len(f.payload) for f in track_frames(report.frames, track))
    assert report.stop_sent
    assert (report.close_code, report.close_reason) == (1000, "call ended")
    assert report.received == [recorder.reply_on_start, '{"event":"bye"}']


async def test_run_call_without_stop(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    port = await start_server(nursery, recorder.handler, ssl_context=None)
    spec = small_spec(outbound=None)
    with trio.fail_after(5):
        report = await sim.run_call(f"ws://127.0.0.1:{port}/", spec, speed=0, send_stop=False)
        await recorder.done.wait()
    assert recorder.client_closed.is_set()
    events = [json.loads(m)["event"] for m in recorder.messages]
    assert events == ["connected", "start"] + ["media"] * len(sim.plan_frames(spec))
    assert not report.stop_sent
    assert report.close_code is None
    assert report.bytes_by_track == {"inbound": len(spec.inbound)}


async def test_run_call_server_does_not_close(nursery: trio.Nursery) -> None:
    recorder = Recorder(close_after_stop=False)
    port = await start_server(nursery, recorder.handler, ssl_context=None)
    with trio.fail_after(5):
        report = await sim.run_call(f"ws://127.0.0.1:{port}/", small_spec(), speed=0, close_wait=0.2)
        await recorder.done.wait()
    assert report.stop_sent and report.close_code is None
    assert recorder.client_closed.is_set()


async def test_run_call_server_closes_mid_call(nursery: trio.Nursery) -> None:
    recorder = Recorder(close_after_media=5)
    port = await start_server(nursery, recorder.handler, ssl_context=None)
    spec = small_spec(inbound=mulaw.generate_tone(2.0), outbound=None)
    with trio.fail_after(5):
        report = await sim.run_call(f"ws://127.0.0.1:{port}/", spec, speed=20)
    assert (report.close_code, report.close_reason) == (4000, "go away")
    assert 5 <= len(report.frames) < len(sim.plan_frames(spec))
    assert not report.stop_sent


async def test_run_call_real_time_pacing(nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    recorder = Recorder()
    port = await start_server(nursery, recorder.handler, ssl_context=None)
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
            report = await sim.run_call(f"ws://127.0.0.1:{port}/", spec, speed=speed)
        assert trio.current_time() - begin == pytest.approx(2.0 / speed, abs=0.01)
        for frame, sent in zip(report.frames, report.sent_at, strict=True):
            assert sent - report.started_at == pytest.approx(frame.send_at / speed, abs=1e-6)
        stop_at = recorder.times[-1] - report.started_at
        assert stop_at == pytest.approx(2.0 / speed, abs=1e-6)
        assert report.close_code == 1000


async def test_connection_refused() -> None:
    port = free_port()
    with (
        trio.fail_after(5),
        pytest.raises(ConnectionError, match=f"cannot connect to ws://127.0.0.1:{port}/twilio: .*refused"),
    ):
        await sim.run_call(f"ws://127.0.0.1:{port}/twilio", small_spec(), speed=0)


async def test_handshake_rejected(nursery: trio.Nursery) -> None:
    async def reject(request: trio_websocket.WebSocketRequest) -> None:
        await request.reject(403, body=b"bad signature")

    port = await start_server(nursery, reject, ssl_context=None)
    with trio.fail_after(5), pytest.raises(sim.CallConnectionError, match="HTTP 403: bad signature"):
        await sim.run_call(f"ws://127.0.0.1:{port}/twilio", small_spec(), speed=0)


async def test_connect_timeout(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with (
        trio.fail_after(5),
        pytest.raises(
            sim.CallConnectionError, match=re.escape("timed out after 0.2 s waiting for the WebSocket handshake")
        ),
    ):
        await sim.run_call(f"ws://127.0.0.1:{port}/", small_spec(), speed=0, connect_timeout=0.2)


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ws://"):
        await sim.run_call("http://127.0.0.1:1/", small_spec())
    with pytest.raises(ValueError, match="speed"):
        await sim.run_call("ws://127.0.0.1:1/", small_spec(), speed=-1)


@pytest.fixture(scope="module")
def tls() -> LocalTls:
    return local_tls()


async def test_wss(nursery: trio.Nursery, tls: LocalTls) -> None:
    server_context, client_context = tls.server, tls.client
    recorder = Recorder()
    port = await start_server(nursery, recorder.handler, ssl_context=server_context)
    spec = small_spec()
    with trio.fail_after(5):
        report = await sim.run_call(f"wss://127.0.0.1:{port}/twilio", spec, speed=0, ssl_context=client_context)
    assert report.close_code == 1000 and len(report.frames) == len(sim.plan_frames(spec))
    with (
        trio.fail_after(5),
        pytest.raises(sim.CallConnectionError, match="TLS error: CERTIFICATE_VERIFY_FAILED"),
    ):
        await sim.run_call(f"wss://127.0.0.1:{port}/twilio", spec, speed=0)


# ----------------------------------------------------------------------------- CLI


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="callscribe simulate-call")
    sim.add_cli_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults() -> None:
    args = parse()
    assert args.url == sim.DEFAULT_URL and args.speed == 1.0 and args.tracks is None and not args.no_stop


@pytest.mark.parametrize(
    "argv",
    [
        ["--loss", "2"],
        ["--speed", "-1"],
        ["--param", "novalue"],
        ["--wav", "a", "--mulaw", "b"],
        ["--tracks", "x"],
    ],
)
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(*argv)
    assert info.value.code == 2


def test_cli_bad_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav")
    raw = tmp_path / "in.ulaw"
    raw.write_bytes(b"\xff" * 800)
    cases = [
        (["--wav", str(bad)], "not a WAV file"),
        (["--mulaw", str(tmp_path / "missing.ulaw")], "cannot read mu-law file"),
        (["--mulaw", str(raw), "--tracks", "both"], "--tracks both needs outbound audio"),
        (["--ca-file", str(raw)], "only applies to wss://"),
        (["--url", "http://x/"], "ws://"),
    ]
    for argv, message in cases:
        assert sim.run_from_cli(parse(*argv)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_unreachable_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert sim.run_from_cli(parse("--url", f"ws://127.0.0.1:{port}/twilio", "--speed", "0", "--duration", "0.1")) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to ws://127.0.0.1:{port}/twilio" in err and err.count("\n") == 1


def write_stereo_wav(path: Path, seconds: float) -> Path:
    left = mulaw.decode(mulaw.generate_tone(seconds, 440))
    right = mulaw.decode(mulaw.generate_tone(seconds, 660))
    frames = bytearray()
    for i in range(0, len(left), 2):
        frames += left[i : i + 2] + right[i : i + 2]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(frames))
    return path


async def test_cli_calls(nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder()
    port = await start_server(nursery, recorder.handler, ssl_context=None)
    url = f"ws://127.0.0.1:{port}/twilio"
    wav = write_stereo_wav(tmp_path / "call.wav", 0.2)
    runs: list[tuple[list[str], list[str], int]] = [
        (
            [
                "--tracks",
                "both",
                "--duration",
                "0.3",
                "--outbound-start-ms",
                "100",
                "--call-sid",
                "CAtest",
                "--param",
                "a=b=c",
            ],
            ["inbound", "outbound"],
            15 + 10,
        ),
        (["--wav", str(wav)], ["inbound", "outbound"], 20),
        (["--wav", str(wav), "--tracks", "inbound", "--no-stop"], ["inbound"], 10),
    ]
    for argv, tracks, media_count in runs:
        recorder.messages.clear()
        recorder.done = trio.Event()
        args = parse("--url", url, "--speed", "0", *argv)
        with trio.fail_after(5):
            code = await trio.to_thread.run_sync(sim.run_from_cli, args)
            await recorder.done.wait()
        assert code == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert len(lines) == 2 and lines[0].startswith("call CA") and f"-> {url}" in lines[0]
        start = json.loads(recorder.messages[1])["start"]
        assert start["tracks"] == tracks
        assert sum(json.loads(m)["event"] == "media" for m in recorder.messages) == media_count
        if "--no-stop" in argv:
            assert "simulator hung up" in lines[1]
        else:
            assert "server closed with code 1000 (call ended)" in lines[1]
        if "--call-sid" in argv:
            assert start["callSid"] == "CAtest" and start["customParameters"] == {"a": "b=c"}
            assert "15 inbound frames (2400 bytes), 10 outbound frames (1600 bytes)" in lines[1]


def test_stereo_wav_helper_shape(tmp_path: Path) -> None:
    channels = mulaw.read_wav_as_mulaw(write_stereo_wav(tmp_path / "s.wav", 0.1))
    assert [len(c) for c in channels] == [800, 800]
    assert channels[0] == mulaw.generate_tone(0.1, 440) and channels[1] == mulaw.generate_tone(0.1, 660)
