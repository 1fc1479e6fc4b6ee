"""Tests for callscribe.testing.call_plan: what a simulated Twilio call sends, and when."""

from __future__ import annotations

import base64
import itertools
import json
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.testing import call_plan as plan

# ----------------------------------------------------------------------------- helpers


def counting_audio(n: int, salt: int = 0) -> bytes:
    """Audio whose bytes identify their position, so misplaced bytes are caught."""
    return bytes((i * 7 + salt) % 251 for i in range(n))


def track_frames(frames: list[plan.PlannedFrame], track: str) -> list[plan.PlannedFrame]:
    return [f for f in frames if f.track == track]


def check_track(frames: list[plan.PlannedFrame], audio: bytes, start_ms: int, spec: plan.CallSpec) -> None:
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


def check_messages(spec: plan.CallSpec, texts: list[str]) -> None:
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
    frames = plan.plan_frames(spec)
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
    plan.CallSpec,
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
def test_plan_frames_properties(spec: plan.CallSpec) -> None:
    frames = plan.plan_frames(spec)
    sends = [f.send_at for f in frames]
    assert sends == sorted(sends)
    check_track(track_frames(frames, "inbound"), spec.inbound, 0, spec)
    if spec.outbound is None:
        assert not track_frames(frames, "outbound")
    else:
        check_track(track_frames(frames, "outbound"), spec.outbound, spec.outbound_start_ms, spec)
    assert plan.plan_frames(spec) == frames  # deterministic


@settings(max_examples=50, deadline=None)
@given(specs)
def test_call_messages_are_twilio_shaped(spec: plan.CallSpec) -> None:
    calls = plan.call_messages(spec)
    check_messages(spec, [text for _, text in calls])
    times = [at for at, _ in calls]
    assert times == sorted(times)
    assert times[0] == times[1] == 0.0
    assert times[-1] == pytest.approx(max([spec.duration_s, *times[:-1]]))


def test_plain_plan() -> None:
    spec = plan.CallSpec(inbound=counting_audio(1000))
    frames = plan.plan_frames(spec)
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
    spec = plan.CallSpec(inbound=b"")
    for sid, prefix in ((spec.call_sid, "CA"), (spec.account_sid, "AC"), (spec.stream_sid, "MZ")):
        assert len(sid) == 34 and sid.startswith(prefix) and int(sid[2:], 16) >= 0
    assert plan.CallSpec(inbound=b"").call_sid != spec.call_sid


def test_both_tracks_interleave_and_outbound_offset() -> None:
    spec = plan.CallSpec(inbound=counting_audio(1600), outbound=counting_audio(800, 3), outbound_start_ms=100)
    frames = plan.plan_frames(spec)
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
    spec = plan.CallSpec(inbound=counting_audio(160 * 1000), loss=0.3, seed=7)
    frames = plan.plan_frames(spec)
    assert frames == plan.plan_frames(replace(spec))
    assert 600 <= len(frames) <= 800
    assert frames != plan.plan_frames(replace(spec, seed=8))
    # The loss pattern does not depend on the jitter setting.
    jittered = plan.plan_frames(replace(spec, jitter_ms=10))
    assert [f.timestamp_ms for f in jittered] == [f.timestamp_ms for f in frames]
    # The receiver sees gaps in timestamps but consecutive chunk numbers.
    gaps = [b.timestamp_ms - a.timestamp_ms for a, b in itertools.pairwise(frames)]
    assert max(gaps) > 20 and min(gaps) == 20
    assert [f.chunk for f in frames] == list(range(1, len(frames) + 1))


def test_off_size_chunks_keep_exact_bytes_and_timestamps() -> None:
    audio = counting_audio(160 * 200)
    spec = plan.CallSpec(inbound=audio, off_size=0.5, seed=1)
    frames = plan.plan_frames(spec)
    sizes = {len(f.payload) for f in frames}
    assert any(s < 160 for s in sizes) and 320 in sizes and 160 in sizes
    assert b"".join(f.payload for f in frames) == audio
    assert all(f.timestamp_ms * 8 == sum(len(g.payload) for g in frames[: f.chunk - 1]) for f in frames)
    check_track(frames, audio, 0, spec)


def test_jitter_changes_send_times_only() -> None:
    spec = plan.CallSpec(inbound=counting_audio(8000), outbound=counting_audio(8000), jitter_ms=30, seed=5)
    jittered = plan.plan_frames(spec)
    plain = plan.plan_frames(replace(spec, jitter_ms=0))
    key = lambda f: (f.track, f.chunk)  # noqa: E731
    assert sorted((key(f), f.timestamp_ms, f.payload) for f in jittered) == sorted(
        (key(f), f.timestamp_ms, f.payload) for f in plain
    )
    assert any(j.send_at != j.timestamp_ms / 1000 for j in jittered)
    for track in ("inbound", "outbound"):
        assert [f.chunk for f in track_frames(jittered, track)] == list(range(1, 51))


def test_total_loss_still_makes_a_call() -> None:
    spec = plan.CallSpec(inbound=counting_audio(800), loss=1.0)
    assert plan.plan_frames(spec) == []
    calls = plan.call_messages(spec)
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
        plan.CallSpec(inbound=b"\xff", **kwargs)


def test_message_builders() -> None:
    spec = plan.CallSpec(
        inbound=b"\x01\x02", call_sid="CA1", account_sid="AC1", stream_sid="MZ1", custom_parameters={"k": "v"}
    )
    frame = plan.PlannedFrame("inbound", 40, 3, b"\x01\x02", 0.04)
    assert json.loads(plan.twilio_media_event(spec, frame, 9)) == {
        "event": "media",
        "sequenceNumber": "9",
        "media": {"track": "inbound", "chunk": "3", "timestamp": "40", "payload": "AQI="},
        "streamSid": "MZ1",
    }
    assert json.loads(plan.stop_message(spec, 4))["stop"] == {"accountSid": "AC1", "callSid": "CA1"}
    assert json.loads(plan.start_message(spec, 1))["start"]["customParameters"] == {"k": "v"}
    assert "sequenceNumber" not in json.loads(plan.connected_message())


def test_dtmf_events_take_their_place_in_time_and_in_the_sequence() -> None:
    spec = plan.CallSpec(inbound=counting_audio(800), dtmf=[(0.05, "4"), (0.0, "1")], stream_sid="MZ1")
    script = plan.call_script(spec)
    assert [(item.event, item.send_at) for item in script] == [
        ("connected", 0.0),
        ("start", 0.0),
        ("media", 0.0),
        ("dtmf", 0.0),  # on a tie, media first: media keeps its order, dtmf follows
        ("media", 0.02),
        ("media", 0.04),
        ("dtmf", 0.05),
        ("media", 0.06),
        ("media", 0.08),
        ("stop", 0.1),
    ]
    messages = [json.loads(item.text) for item in script[1:]]
    assert [m["sequenceNumber"] for m in messages] == [str(n) for n in range(1, len(messages) + 1)]
    assert messages[2] == {
        "event": "dtmf",
        "streamSid": "MZ1",
        "sequenceNumber": "3",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
    assert [item.frame for item in script if item.event == "media"] == plan.plan_frames(spec)
    assert [item.event for item in plan.call_script(spec, include_stop=False)][-1] == "media"


def test_parse_dtmf_keys_with_and_without_times() -> None:
    assert plan.parse_dtmf("4,2,#") == [(1.0, "4"), (1.5, "2"), (2.0, "#")]
    assert plan.parse_dtmf("4@3, 2 ,#@5,*") == [(3.0, "4"), (3.5, "2"), (5.0, "#"), (5.5, "*")]
    assert plan.parse_dtmf("0", first_at=0.0) == [(0.0, "0")]


@pytest.mark.parametrize("text", ["", "x", "44", "4,,2", "4@", "4@-1", "4@soon", "4@nan", "4@inf", "A"])
def test_parse_dtmf_refuses_what_twilio_would_never_send(text: str) -> None:
    with pytest.raises(ValueError, match="DTMF"):
        plan.parse_dtmf(text)


@pytest.mark.parametrize(
    ("dtmf", "outbound", "message"),
    [
        ([(1.0, "12")], None, "DTMF keys are one of"),  # one key a press
        ([(1.0, "x")], None, "DTMF keys are one of"),
        ([(math.inf, "1")], None, "a DTMF time is seconds since the stream started"),  # run_call would sleep for ever
        ([(-1.0, "1")], None, "a DTMF time is seconds since the stream started"),
        ([(1.0, "4")], bytes(800), "bidirectional streams, which carry the inbound track only"),
    ],
)
def test_dtmf_is_checked_as_the_command_line_checks_it(
    dtmf: list[tuple[float, str]], outbound: bytes | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        plan.CallSpec(inbound=bytes(800), outbound=outbound, dtmf=dtmf)
