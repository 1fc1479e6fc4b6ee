"""Parsing Twilio Media Streams messages and enforcing their order."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.twilio import (
    MAX_TIMESTAMP_LEAD_MS,
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


def start(tracks: Sequence[str] = ("inbound", "outbound"), **fmt: object) -> dict:
    media_format = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1, **fmt}
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ1",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ1",
            "callSid": "CA1",
            "tracks": list(tracks),
            "customParameters": {"route": "game"},
            "mediaFormat": media_format,
        },
    }


def media(
    track: str = "inbound", timestamp: str = "20", payload: bytes = b"\x01\x02", sequence: str = "3", **extra: object
) -> dict:
    body = {"track": track, "chunk": "2", "timestamp": timestamp, "payload": base64.b64encode(payload).decode()}
    return {"event": "media", "sequenceNumber": sequence, "streamSid": "MZ1", "media": body, **extra}


MARK = {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ1", "mark": {"name": "m1"}}
DTMF = {"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "5", "dtmf": {"track": "inbound_track", "digit": "7"}}
STOP = {"event": "stop", "sequenceNumber": "6", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"}}
EVENTS = (Connected, Start, Media, Mark, Dtmf, Stop, Rejected)


def streaming(tracks: Sequence[str] = ("inbound", "outbound")) -> TwilioStream:
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

    mark = stream.receive(json.dumps(MARK))
    assert isinstance(mark, Mark) and mark.mark.name == "m1"
    dtmf = stream.receive(json.dumps(DTMF))
    assert isinstance(dtmf, Dtmf) and dtmf.dtmf.digit == "7"
    stop = stream.receive(json.dumps(STOP))
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
        # Invalid UTF-8 in a string of a binary frame; a lone surrogate in a text frame.
        (json.dumps(media(track="XX")).replace("XX", "\udcff").encode("utf-8", "surrogateescape"), "not valid UTF-8"),
        (json.dumps(MARK).replace("m1", "\udcff").encode("utf-8", "surrogateescape"), "not valid UTF-8"),
        (json.dumps(MARK).replace("m1", "\ud800"), "not valid UTF-8"),
        # Nesting deeper than the interpreter's recursion limit, in a field that is otherwise ignored.
        (json.dumps(media(extra="XX")).replace('"XX"', "[" * 100_000 + "]" * 100_000), "nested too deeply"),
        # Wrong types at any depth.
        (json.dumps(media() | {"media": [1, 2]}), "$.media"),
        (json.dumps(media(track=1)), "$.media.track"),
        (json.dumps(media(timestamp=[])), "$.media.timestamp"),
        (json.dumps(media(timestamp="NaN")), "$.media.timestamp"),
        (json.dumps(media()).replace('"20"', "NaN"), "malformed"),
        (json.dumps(media(timestamp="9" * 5000)), "out of range"),
        (json.dumps(media(streamSid={"a": [None]})), "$.streamSid"),
        (json.dumps(MARK | {"mark": {"name": {"x": 1}}}), "$.mark.name"),
        (json.dumps(start() | {"start": "CA1"}), "$.start"),
        # Out of range, or going backwards.
        (json.dumps(media(timestamp=str(2**63 - 1))), "more than an hour ahead of the stream (at 0 ms)"),
        (json.dumps(media(timestamp=str(MAX_TIMESTAMP_LEAD_MS + 1))), "is more than an hour ahead"),
        (json.dumps(media(sequence="1")), "sequenceNumber 1 after 1"),
        (json.dumps(media(sequence="-3")), "sequenceNumber -3 after 1"),
        (json.dumps(MARK | {"sequenceNumber": "1"}), "sequenceNumber 1 after 1"),
        (json.dumps(STOP | {"sequenceNumber": "1"}), "sequenceNumber 1 after 1"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason_and_the_stream_goes_on(frame: str | bytes | None, reason: str) -> None:
    stream = streaming()
    event = stream.receive(frame)
    assert isinstance(event, Rejected) and not event.fatal
    assert reason in event.reason
    assert stream.rejected == 1
    assert isinstance(stream.receive(json.dumps(media())), Media)


def test_a_rejection_quotes_the_frame_without_control_characters() -> None:
    # Rejections are logged with their reason, which quotes the bad value: a newline in it forged
    # a log line of its own.
    event = streaming().receive(json.dumps({"event": "x\nINFO callscribe: forged\x1b[2K\u2028"}))
    assert isinstance(event, Rejected)
    assert (
        event.reason == "malformed message: Invalid value 'x\\nINFO callscribe: forged\\x1b[2K\\u2028' - at `$.event`"
    )


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
        start(sampleRate=2**80),
        {**start(), "start": {**start()["start"], "callSid": "CA" + "f" * 63}},
        {**start(), "start": {**start()["start"], "callSid": "CA\u0000"}},
        {**start(), "start": {**start()["start"], "streamSid": "MZ\n1"}},
        {**start(), "start": {**start()["start"], "accountSid": "AC" + "x" * 100}},
        {**start(), "streamSid": "MZ2"},  # the message's streamSid is not the one it starts
    ],
)
def test_an_unusable_start_is_fatal(bad_start: dict) -> None:
    stream = TwilioStream()
    event = stream.receive(json.dumps(bad_start))
    assert isinstance(event, Rejected) and event.fatal
    assert stream.state is TwilioState.STOPPED


def test_media_more_than_an_hour_ahead_of_the_stream_is_rejected() -> None:
    hour = MAX_TIMESTAMP_LEAD_MS
    stream = streaming()
    assert stream.receive(json.dumps(media(timestamp=str(10**12)))) == Rejected(
        "media timestamp 1000000000000 ms is more than an hour ahead of the stream (at 0 ms)"
    )
    assert isinstance(stream.receive(json.dumps(media(timestamp=str(hour), sequence="2"))), Media)
    # The timeline is the highest timestamp accepted on any track; another track may lag behind it.
    assert isinstance(stream.receive(json.dumps(media("outbound", timestamp="20", sequence="3"))), Media)
    assert isinstance(stream.receive(json.dumps(media("outbound", timestamp=str(2 * hour), sequence="4"))), Media)
    assert stream.receive(json.dumps(media(timestamp=str(3 * hour + 1), sequence="5"))) == Rejected(
        "media timestamp 10800001 ms is more than an hour ahead of the stream (at 7200000 ms)"
    )
    assert isinstance(stream.receive(json.dumps(media(timestamp=str(3 * hour), sequence="5"))), Media)
    assert stream.rejected == 2 and stream.media_frames == 4


def test_sequence_numbers_only_count_up() -> None:
    stream = TwilioStream()
    assert stream.receive(json.dumps(start() | {"sequenceNumber": "-1"})) == Rejected("sequenceNumber -1 after 0")
    assert stream.state is TwilioState.AWAITING_START
    assert isinstance(stream.receive(json.dumps(start())), Start)
    assert isinstance(stream.receive(json.dumps(media(sequence="9"))), Media)  # numbers may be skipped
    assert stream.receive(json.dumps(media(sequence="5"))) == Rejected("sequenceNumber 5 after 9")
    assert stream.receive(json.dumps(media(sequence="9"))) == Rejected("sequenceNumber 9 after 9")
    unnumbered = media()
    del unnumbered["sequenceNumber"]
    assert isinstance(stream.receive(json.dumps(unnumbered)), Media)  # missing: accepted, and 9 stays the last
    assert stream.receive(json.dumps(MARK | {"sequenceNumber": "7"})) == Rejected("sequenceNumber 7 after 9")
    assert stream.receive(json.dumps(DTMF | {"sequenceNumber": "8"})) == Rejected("sequenceNumber 8 after 9")
    assert stream.receive(json.dumps(STOP | {"sequenceNumber": "9"})) == Rejected("sequenceNumber 9 after 9")
    assert stream.state is TwilioState.STREAMING
    assert isinstance(stream.receive(json.dumps(media(track="sideways", sequence="20"))), Rejected)
    assert isinstance(
        stream.receive(json.dumps(MARK | {"sequenceNumber": "10"})), Mark
    )  # rejected frames count for nothing
    assert isinstance(stream.receive(json.dumps(STOP | {"sequenceNumber": "11"})), Stop)
    assert stream.rejected == 7 and stream.media_frames == 2


def stream_in(state: TwilioState) -> TwilioStream:
    stream = TwilioStream()
    if state is not TwilioState.AWAITING_START:
        stream.receive(json.dumps(CONNECTED))
        stream.receive(json.dumps(start()))
    if state is TwilioState.STOPPED:
        stream.receive(json.dumps(STOP))
    assert stream.state is state and stream.rejected == 0
    return stream


@settings(max_examples=500, deadline=None)
@given(state=st.sampled_from(TwilioState), frame=st.one_of(st.none(), st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_frames_never_raise(state: TwilioState, frame: str | bytes | None) -> None:
    event = stream_in(state).receive(frame)
    assert isinstance(event, EVENTS)
    assert not isinstance(event, Rejected) or event.reason.isprintable(), event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)

RAW = "\x00raw\x00"
"""Stands for a value whose JSON text is drawn as bytes (see `raw_json`)."""

raw_json = st.one_of(
    st.sampled_from(
        [
            b"NaN",
            b"-Infinity",
            b"1e400",
            b"-0",
            b"2.5",
            b"1e3",
            b'"1e3"',
            b'"0x10"',
            b'" 7"',
            b'"\\ud800"',
            b'"\\u0000"',
            b"9" * 4300,
            b'"' + b"9" * 4300 + b'"',
            b"9" * 4301,
            b'"-' + b"9" * 19 + b'"',
            b"18446744073709551616",
            b"[" * 5000 + b"]" * 5000,
            b'{"a":' * 5000 + b"1" + b"}" * 5000,
            b"[" * 5000,
        ]
    ),
    st.integers().map(lambda n: b'"%d"' % n),  # a number as a string, as Twilio writes them
    # Any bytes in a string: invalid UTF-8, lone surrogates (CESU), overlong forms.
    st.binary(max_size=12).map(lambda b: b'"' + bytes(c for c in b if c >= 0x20 and c not in b'"\\') + b'"'),
)


def _places(value: object, path: tuple = ()) -> list[tuple]:
    """Every path to a value in a JSON document (the document itself is `()`)."""
    places = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            places += _places(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            places += _places(child, (*path, index))
    return places


@st.composite
def mutated_messages(draw: st.DrawFn) -> str | bytes:
    """A valid Twilio message with a few values replaced, removed or added, as a text or binary frame."""
    message: object = copy.deepcopy(
        draw(st.sampled_from([CONNECTED, start(), start(["inbound"]), media(), MARK, DTMF, STOP]))
    )
    raws = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_places(message)))
        new = RAW if draw(st.booleans()) else draw(json_values)
        if new == RAW:
            raws.append(draw(raw_json))
        if not path:
            message = new
            continue
        *parents, last = path
        holder = message
        for key in parents:
            holder = holder[key]  # type: ignore[index]
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "remove":
            del holder[last]  # type: ignore[attr-defined]
        elif action == "add" and isinstance(holder, dict):
            holder[draw(st.text(max_size=8))] = new
        else:
            holder[last] = new  # type: ignore[index]
    text = json.dumps(message).encode()
    for raw in raws:
        text = text.replace(json.dumps(RAW).encode(), raw, 1)
    if draw(st.booleans()):
        return text
    return text.decode("utf-8", "surrogateescape")  # a text frame; invalid UTF-8 becomes lone surrogates


@settings(max_examples=1000, deadline=None)
@given(state=st.sampled_from(TwilioState), frame=mutated_messages())
def test_mutated_messages_never_raise_and_a_rejected_one_changes_nothing(
    state: TwilioState, frame: str | bytes
) -> None:
    stream = stream_in(state)
    event = stream.receive(frame)
    assert isinstance(event, EVENTS)
    assert stream.rejected == isinstance(event, Rejected)
    if isinstance(event, Rejected):
        assert event.reason.isprintable(), event.reason
    if isinstance(event, Rejected) and not event.fatal:
        assert stream.state is state
        if state is TwilioState.STREAMING:
            assert isinstance(stream.receive(json.dumps(media(sequence="2"))), Media)


@settings(max_examples=500, deadline=None)
@given(
    event=st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "other"]),
    fields=st.dictionaries(
        st.sampled_from(["media", "start", "mark", "dtmf", "streamSid", "sequenceNumber"]), json_values
    ),
)
def test_structurally_wrong_messages_are_rejected_not_raised(event: str, fields: dict) -> None:
    stream = streaming()
    result = stream.receive(json.dumps({"event": event, **fields}))
    assert isinstance(result, EVENTS)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=8000),
    timestamp=st.integers(0, MAX_TIMESTAMP_LEAD_MS),
    track=st.sampled_from(["inbound", "outbound"]),
)
def test_valid_media_round_trips(payload: bytes, timestamp: int, track: str) -> None:
    event = streaming().receive(json.dumps(media(track=track, timestamp=str(timestamp), payload=payload)))
    assert isinstance(event, Media)
    assert (event.media.track, event.media.timestamp, event.media.payload) == (track, timestamp, payload)
