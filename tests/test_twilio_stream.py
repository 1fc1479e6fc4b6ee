"""Parsing Twilio Media Streams messages and enforcing their order."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.twilio_stream import (
    Connected,
    Dtmf,
    Mark,
    Media,
    Rejected,
    Start,
    Stop,
    TwilioState,
    TwilioStream,
)

CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start(tracks: list[str] = ["inbound", "outbound"], **fmt: object) -> dict:
    media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **fmt}
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": tracks,
            "customParameters": {"route": "game"},
            "mediaFormat": media_format,
        },
    }


def media(track: str = "inbound", timestamp: str = "20", payload: bytes = b"\x01\x02", **extra: object) -> dict:
    body = {"track": track, "chunk": "2", "timestamp": timestamp, "payload": base64.b64encode(payload).decode()}
    return {"event": "media", "sequenceNumber": "3", "streamSid": "MZ1", "media": body, **extra}


def streaming(tracks: list[str] = ["inbound", "outbound"]) -> TwilioStream:
    stream = TwilioStream()
    assert isinstance(stream.receive(json.dumps(CONNECTED)), Connected)
    assert isinstance(stream.receive(json.dumps(start(tracks))), Start)
    return stream


def test_a_whole_stream_in_order() -> None:
    stream = streaming()
    assert stream.state is TwilioState.STREAMING
    assert stream.tracks == ("inbound", "outbound")
    assert stream.start is not None and stream.start.call_sid == "CA1"
    assert stream.start.custom_parameters == {"route": "game"}

    event = stream.receive(json.dumps(media(payload=b"\xff\x00\x7f")))
    assert isinstance(event, Media)
    assert event.media.payload == b"\xff\x00\x7f"
    assert event.media.timestamp == 20 and event.media.chunk == 2 and event.sequence_number == 3

    mark = stream.receive(json.dumps({"event": "mark", "sequenceNumber": "4", "streamSid": "MZ1", "mark": {"name": "m1"}}))
    assert isinstance(mark, Mark) and mark.mark.name == "m1"
    dtmf = stream.receive(json.dumps({"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "7"}}))
    assert isinstance(dtmf, Dtmf) and dtmf.dtmf.digit == "7"
    stop = stream.receive(json.dumps({"event": "stop", "sequenceNumber": "6", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}}))
    assert isinstance(stop, Stop)
    assert stream.state is TwilioState.STOPPED
    assert stream.media_frames == 1 and stream.rejected == 0


def test_bytes_frames_parse_like_text() -> None:
    stream = streaming()
    assert isinstance(stream.receive(json.dumps(media()).encode()), Media)


def test_inbound_only_stream_has_one_track() -> None:
    assert streaming(["inbound"]).tracks == ("inbound",)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (None, "empty frame"),
        ("", "empty frame"),
        ("{not json", "malformed message"),
        ('{"event": "bogus"}', "Invalid value 'bogus'"),
        ('{"event": "media", "media": {"track": "inbound", "timestamp": "x", "payload": ""}}', "$.media.timestamp"),
        (json.dumps(media() | {"media": {"track": "inbound", "timestamp": "1", "payload": "!!!"}}), "base64"),
        ('{"event": "media"}', "missing required field `media`"),
        ("[1, 2, 3]", "malformed message"),
        (json.dumps(media(track="sideways")), "not announced"),
        (json.dumps(media(payload=b"")), "empty payload"),
        (json.dumps(media(payload=b"\x00" * 9000)), "exceeds"),
        (json.dumps(media(timestamp="-5")), "negative"),
        (json.dumps(media(streamSid="MZ-other")), "not this stream's"),
        (json.dumps(start()), "second 'start'"),
        (json.dumps(CONNECTED), "'connected' while streaming"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason_and_the_stream_goes_on(frame: str | None, reason: str) -> None:
    stream = streaming()
    event = stream.receive(frame)
    assert isinstance(event, Rejected) and not event.fatal
    assert reason in event.reason
    assert stream.rejected == 1
    assert isinstance(stream.receive(json.dumps(media())), Media)


def test_media_before_start_is_rejected() -> None:
    stream = TwilioStream()
    event = stream.receive(json.dumps(media()))
    assert isinstance(event, Rejected) and "'media' while awaiting start" in event.reason
    assert stream.state is TwilioState.AWAITING_START


def test_messages_after_stop_are_rejected() -> None:
    stream = streaming()
    stream.receive(json.dumps({"event": "stop", "streamSid": "MZ1"}))
    event = stream.receive(json.dumps(media()))
    assert isinstance(event, Rejected) and "stopped" in event.reason


@pytest.mark.parametrize(
    "bad_start",
    [
        start(encoding="audio/l16"),
        start(sampleRate=16000),
        start(tracks=["inbound", "sideways"]),
        start(tracks=[]),
        start(tracks=["inbound", "inbound"]),
    ],
)
def test_an_unusable_start_is_fatal(bad_start: dict) -> None:
    stream = TwilioStream()
    event = stream.receive(json.dumps(bad_start))
    assert isinstance(event, Rejected) and event.fatal
    assert stream.state is TwilioState.STOPPED


@settings(max_examples=500, deadline=None)
@given(frame=st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_frames_never_raise(frame: str | bytes | None) -> None:
    for stream in (TwilioStream(), streaming()):
        event = stream.receive(frame)
        assert isinstance(event, (Connected, Start, Media, Mark, Dtmf, Stop, Rejected))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(
    event=st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "other"]),
    fields=st.dictionaries(st.sampled_from(["media", "start", "mark", "dtmf", "streamSid", "sequenceNumber"]), json_values),
)
def test_structurally_wrong_messages_are_rejected_not_raised(event: str, fields: dict) -> None:
    stream = streaming()
    result = stream.receive(json.dumps({"event": event, **fields}))
    assert isinstance(result, (Connected, Start, Media, Mark, Dtmf, Stop, Rejected))


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(min_size=1, max_size=8000), timestamp=st.integers(0, 10**9), track=st.sampled_from(["inbound", "outbound"]))
def test_valid_media_round_trips(payload: bytes, timestamp: int, track: str) -> None:
    event = streaming().receive(json.dumps(media(track=track, timestamp=str(timestamp), payload=payload)))
    assert isinstance(event, Media)
    assert (event.media.track, event.media.timestamp, event.media.payload) == (track, timestamp, payload)
