"""Tests for callscribe.testing.simulator: its public names and the ``callscribe simulate-call`` command."""

from __future__ import annotations

import argparse
import base64
import json
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from callscribe.core import audio as mulaw
from callscribe.testing import simulator as sim
from conftest import free_port


def test_the_public_names_are_importable_from_the_simulator() -> None:
    from callscribe.testing import call_plan, call_runner, twilio_playback

    assert sim.CallSpec is call_plan.CallSpec and sim.call_messages is call_plan.call_messages
    assert sim.twilio_media_event is call_plan.twilio_media_event
    assert sim.run_call is call_runner.run_call and sim.CallConnectionError is call_runner.CallConnectionError
    assert sim.Playback is twilio_playback.Playback
    assert all(hasattr(sim, name) for name in sim.__all__)


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


async def test_cli_calls(
    start_recorder: Callable[..., Awaitable[Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder = await start_recorder()
    port = recorder.port
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


async def test_cli_two_way_by_default_for_an_inbound_stream_with_keys_and_what_was_heard(
    start_websocket_server: Callable[..., Awaitable[int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like Twilio's <Connect><Stream>: the server's audio is played in real time, its mark echoed
    once played; keys are pressed when asked; what the caller heard is saved, placed in time."""
    received: list[dict[str, Any]] = []

    async def talk_back(request: Any) -> None:
        ws = await request.accept()
        while True:
            message = json.loads(await ws.get_message())
            received.append(message)
            sid = message.get("streamSid")
            if message["event"] == "dtmf" and message["dtmf"]["digit"] == "4":  # answer the first key
                payload = base64.b64encode(mulaw.generate_tone(0.3, 500)).decode()
                await ws.send_message(json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}}))
                await ws.send_message(json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "said"}}))
            elif message["event"] == "stop":
                await ws.aclose(1000, "call ended")
                return

    port = await start_websocket_server(talk_back, ssl_context=None)
    heard = tmp_path / "heard.wav"
    args = parse(
        "--url", f"ws://127.0.0.1:{port}/twilio", "--duration", "1.2", "--tracks", "inbound",
        "--dtmf", "4@0.2,2,#@0.9", "--save-heard", str(heard),
    )  # fmt: skip
    with trio.fail_after(10):
        assert await trio.to_thread.run_sync(sim.run_from_cli, args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("tracks inbound, two-way, 1x real time")
    assert "keys pressed: 42#; 0.3 s of audio played, 1 marks echoed" in out[1]
    assert out[2] == f"what the caller heard: {heard} (0.5 s)"
    assert [m["dtmf"]["digit"] for m in received if m["event"] == "dtmf"] == ["4", "2", "#"]
    assert [m["mark"]["name"] for m in received if m["event"] == "mark"] == ["said"]
    with wave.open(str(heard)) as wav:
        samples = mulaw.encode(wav.readframes(wav.getnframes()))
    silence_until = samples.index(mulaw.generate_tone(0.3, 500)[1:20])
    assert 0.15 < silence_until / 8000 < 0.4  # the answer came after the first key, at ~0.2 s
    assert set(samples[: silence_until - 1]) == {0xFF}


async def test_cli_one_way_never_answers_the_server(
    start_websocket_server: Callable[..., Awaitable[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    received: list[str] = []

    async def asks_for_a_mark(request: Any) -> None:
        ws = await request.accept()
        while True:
            message = json.loads(await ws.get_message())
            received.append(message["event"])
            if message["event"] == "start":
                await ws.send_message(
                    json.dumps({"event": "mark", "streamSid": message["streamSid"], "mark": {"name": "m"}})
                )
            elif message["event"] == "stop":
                await ws.aclose(1000, "call ended")
                return

    port = await start_websocket_server(asks_for_a_mark, ssl_context=None)
    for argv, marks in ((["--one-way"], 0), ([], 1)):
        received.clear()
        args = parse("--url", f"ws://127.0.0.1:{port}/twilio", "--duration", "0.3", "--tracks", "inbound", *argv)
        with trio.fail_after(10):
            assert await trio.to_thread.run_sync(sim.run_from_cli, args) == 0
        assert received.count("mark") == marks
        assert ("two-way" in capsys.readouterr().out) is not bool(argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtmf", "4,x"], "--dtmf: DTMF keys are one of 0123456789*# each"),
        (["--dtmf", "4@soon"], "--dtmf: a DTMF time is seconds since the stream started, not 'soon'"),
        (["--dtmf", "4", "--tracks", "both"], "--dtmf: Twilio sends dtmf on bidirectional streams"),
        (["--save-heard", "/no/such/dir/heard.wav", "--tracks", "inbound"], "--save-heard: no such directory"),
        (["--save-heard", "heard.wav", "--tracks", "both"], "--save-heard needs a two-way stream"),
    ],
)
def test_cli_bad_keys_and_save_heard_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim.run_from_cli(parse(*argv)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
