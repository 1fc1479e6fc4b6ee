"""Tests for callscribe.testing.fake_deepgram_handshake: what the fake Deepgram accepts on the upgrade."""

from __future__ import annotations

import json

import pytest

from callscribe.testing.fake_deepgram_handshake import AudioFormat, Rejection, audio_format, offered_key


def test_audio_format_defaults_and_parameters() -> None:
    assert audio_format({}) == AudioFormat(None, 8000, 1, multichannel=False, interim_results=False)
    parsed = audio_format(
        {
            "encoding": " Linear16 ",
            "sample_rate": "16000",
            "channels": "2",
            "multichannel": "true",
            "interim_results": "1",
        }
    )
    assert parsed == AudioFormat("linear16", 16000, 2, multichannel=True, interim_results=True)
    assert (parsed.bytes_per_sample, parsed.result_channels) == (2, 2)
    assert audio_format({"channels": "2"}).result_channels == 1  # mixed
    assert audio_format({}).endpointing and audio_format({"endpointing": "300"}).endpointing
    assert not audio_format({"endpointing": "false"}).endpointing
    assert (audio_format({}).vad_events, audio_format({}).utterance_end_ms) == (False, None)
    events = audio_format({"vad_events": "true", "utterance_end_ms": "1000", "interim_results": "true"})
    assert (events.vad_events, events.utterance_end_ms) == (True, 1000)
    assert audio_format({"utterance_end_ms": "1000"}).utterance_end_ms is None  # needs interim results


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"encoding": "mulaw"}, "sample_rate must be specified"),
        ({"encoding": "opus", "sample_rate": "8000"}, "Unsupported encoding 'opus'"),
        ({"channels": "0"}, "Invalid value for channels"),
        ({"sample_rate": "fast"}, "Invalid value for sample_rate"),
        ({"multichannel": "maybe"}, "Invalid value for multichannel"),
        ({"utterance_end_ms": "soon"}, "Invalid value for utterance_end_ms"),
    ],
)
def test_bad_audio_parameters_are_a_400(query: dict[str, str], message: str) -> None:
    with pytest.raises(Rejection) as caught:
        audio_format(query)
    assert caught.value.status == 400 and message in caught.value.message


def test_the_key_comes_as_a_token_header_or_as_subprotocols() -> None:
    assert offered_key([(b"Authorization", b" token  k1 ")], []) == ("k1", None)
    assert offered_key([(b"authorization", b"Bearer k1")], ["token", "k2"]) == ("k2", "token")
    assert offered_key([], ["token"]) == (None, None)
    assert offered_key([(b"x-other", b"Token k")], []) == (None, None)


def test_a_rejection_carries_deepgrams_codes() -> None:
    rejection = Rejection(429)
    assert (rejection.err_code, rejection.message) == (
        "TOO_MANY_REQUESTS",
        "Too many requests. Please try again later.",
    )
    assert (b"dg-request-id", b"rid") in rejection.headers("rid")
    assert json.loads(rejection.body("rid")) == {
        "err_code": "TOO_MANY_REQUESTS",
        "err_msg": "Too many requests. Please try again later.",
        "request_id": "rid",
    }
    assert (Rejection(418).err_code, Rejection(418).message) == ("I'm a Teapot", "I'm a Teapot.")
    assert Rejection(599).message == "Error."
