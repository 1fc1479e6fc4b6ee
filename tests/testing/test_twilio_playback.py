"""Tests for callscribe.testing.twilio_playback: Twilio's side of a bidirectional stream."""

from __future__ import annotations

import base64
import json

from callscribe.testing.twilio_playback import Playback


def media(audio: bytes, stream_sid: str = "MZ1") -> str:
    payload = base64.b64encode(audio).decode()
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark(name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": "MZ1", "mark": {"name": name}})


def test_a_mark_is_echoed_once_the_audio_before_it_has_played() -> None:
    playback = Playback("MZ1")
    playback.receive(media(b"\xff" * 8000), now=10.0)  # 1 s of audio, playing 10.0 .. 11.0
    playback.receive(mark("one"), now=10.2)
    playback.receive(media(b"\xff" * 4000), now=10.4)  # queued behind: plays 11.0 .. 11.5
    playback.receive(mark("two"), now=10.4)
    assert playback.next_due() == 11.0
    assert playback.due(10.99) == []
    assert [json.loads(text) for text in playback.due(11.0)] == [
        {"event": "mark", "streamSid": "MZ1", "mark": {"name": "one"}}
    ]
    assert playback.next_due() == 11.5
    assert [json.loads(text)["mark"]["name"] for text in playback.due(12.0)] == ["two"]
    assert playback.next_due() is None
    assert playback.marks == ["one", "two"]
    assert bytes(playback.audio) == b"\xff" * 12000
    assert playback.bad_messages == []


def test_a_mark_with_nothing_playing_is_due_at_once() -> None:
    playback = Playback("MZ1")
    playback.receive(media(b"\xff" * 800), now=1.0)
    playback.receive(mark("late"), now=5.0)  # the audio finished long ago
    assert playback.next_due() == 5.0


def test_clear_drops_the_queue_and_echoes_pending_marks_at_once() -> None:
    playback = Playback("MZ1")
    playback.receive(media(b"\xff" * 16000), now=0.0)  # plays until 2.0
    playback.receive(mark("a"), now=0.1)
    playback.receive(mark("b"), now=0.1)
    playback.receive(json.dumps({"event": "clear", "streamSid": "MZ1"}), now=0.5)
    assert playback.clears == 1
    assert [json.loads(text)["mark"]["name"] for text in playback.due(0.5)] == ["a", "b"]
    playback.receive(mark("c"), now=0.6)  # nothing is playing any more
    assert playback.next_due() == 0.6


def test_messages_twilio_would_reject_are_recorded_not_raised() -> None:
    playback = Playback("MZ1")
    for text in (
        "not json",
        media(b"\xff", stream_sid="MZ2"),
        json.dumps({"event": "dance", "streamSid": "MZ1"}),
        json.dumps({"event": "media", "streamSid": "MZ1", "media": {"payload": "%%%"}}),
        json.dumps({"event": "mark", "streamSid": "MZ1"}),
    ):
        playback.receive(text, now=0.0)
    assert len(playback.bad_messages) == 5
    assert "wrong streamSid" in playback.bad_messages[1] and "unknown event 'dance'" in playback.bad_messages[2]
    assert playback.audio == bytearray() and playback.next_due() is None


def test_what_was_heard_is_placed_when_it_played_and_a_clear_cuts_it() -> None:
    playback = Playback("MZ1", origin=100.0)
    playback.receive(media(b"\x01" * 800), now=100.5)  # heard 0.5 .. 0.6 s
    playback.receive(media(b"\x02" * 800), now=100.55)  # queued: 0.6 .. 0.7 s
    assert bytes(playback.heard) == b"\xff" * 4000 + b"\x01" * 800 + b"\x02" * 800
    playback.receive(media(b"\x03" * 8000), now=101.0)  # 1.0 .. 2.0 s, cut at 1.5 s
    playback.receive(json.dumps({"event": "clear", "streamSid": "MZ1"}), now=101.5)
    assert len(playback.heard) == 12000 and bytes(playback.heard[8000:]) == b"\x03" * 4000
    playback.receive(media(b"\x04" * 80), now=101.6)  # after the clear: at once
    assert bytes(playback.heard[12000:]) == b"\xff" * 800 + b"\x04" * 80
    assert len(playback.audio) == 800 + 800 + 8000 + 80  # every payload, as received
