"""Tests for callscribe.testing.fake_deepgram_results: what the fake Deepgram says, and when."""

from __future__ import annotations

import math

import pytest

from callscribe.testing.fake_deepgram_results import (
    MODEL_UUID,
    DueResult,
    ResultSchedule,
    VoiceEvents,
    metadata_message,
    results_message,
    scripted_transcript,
    segment_samples,
)


def test_results_message_shape() -> None:
    message = results_message(
        request_id="rid", channel=1, channels=2, start=2.0, end=3.0, is_final=True, transcript="a b"
    )
    assert message == {
        "type": "Results",
        "channel_index": [1, 2],
        "duration": 1.0,
        "start": 2.0,
        "is_final": True,
        "speech_final": True,
        "from_finalize": False,
        "channel": {
            "alternatives": [
                {
                    "transcript": "a b",
                    "confidence": 0.99,
                    "words": [
                        {"word": "a", "start": 2.0, "end": 2.5, "confidence": 0.99, "punctuated_word": "a"},
                        {"word": "b", "start": 2.5, "end": 3.0, "confidence": 0.99, "punctuated_word": "b"},
                    ],
                }
            ]
        },
        "metadata": {
            "request_id": "rid",
            "model_info": {"name": "fake", "version": "0", "arch": "fake"},
            "model_uuid": MODEL_UUID,
        },
    }


def test_an_empty_transcript_has_no_words_and_no_confidence() -> None:
    alternative = results_message(
        request_id="r", channel=0, channels=1, start=0.0, end=1.0, is_final=False, transcript=""
    )
    assert alternative["channel"]["alternatives"] == [{"transcript": "", "confidence": 0.0, "words": []}]


def test_metadata_message_rounds_the_duration() -> None:
    message = metadata_message(
        request_id="r", sha256="ab", created="2024-01-01T00:00:00.000Z", duration=0.1 + 0.2, channels=2
    )
    assert message["duration"] == 0.3 and message["channels"] == 2 and message["models"] == [MODEL_UUID]
    assert (message["type"], message["sha256"], message["request_id"]) == ("Metadata", "ab", "r")


@pytest.mark.parametrize(
    ("every", "expected"), [(1.0, 8000), (0.25, 2000), (0.0, 0), (-1.0, 0), (math.inf, 0), (math.nan, 0)]
)
def test_segment_samples(every: float, expected: int) -> None:
    assert segment_samples(every, 8000) == expected


def test_one_final_per_segment_each_covering_only_new_audio() -> None:
    schedule = ResultSchedule(2, 100, interim_results=False)
    assert schedule.on_audio([99, 0]) == []
    assert schedule.on_audio([250, 100]) == [
        DueResult(0, 0, 100, is_final=True),
        DueResult(0, 100, 200, is_final=True),
        DueResult(1, 0, 100, is_final=True),
    ]
    assert schedule.on_audio([299, 100]) == []
    assert schedule.on_audio([300, 100]) == [DueResult(0, 200, 300, is_final=True)]


def test_one_interim_half_way_through_each_segment() -> None:
    schedule = ResultSchedule(1, 100, interim_results=True)
    assert schedule.on_audio([49]) == []
    assert schedule.on_audio([50]) == [DueResult(0, 0, 50, is_final=False)]
    assert schedule.on_audio([80]) == []  # one interim per segment
    assert schedule.on_audio([160]) == [DueResult(0, 0, 100, is_final=True), DueResult(0, 100, 160, is_final=False)]


def test_flush_finalises_what_is_pending_once() -> None:
    schedule = ResultSchedule(2, 100, interim_results=True)
    schedule.on_audio([130, 60])
    assert schedule.flush([130, 60], closing=False) == [
        DueResult(0, 100, 130, is_final=True, from_finalize=True),
        DueResult(1, 0, 60, is_final=True, from_finalize=True),
    ]
    assert schedule.flush([130, 60], closing=False) == []
    # The next segment starts where the flush ended, with its own interim.
    assert schedule.on_audio([180, 60]) == [DueResult(0, 130, 180, is_final=False)]


def test_without_a_segment_results_come_only_on_flush() -> None:
    schedule = ResultSchedule(1, 0, interim_results=True)
    assert schedule.on_audio([10_000]) == []
    assert schedule.flush([10_000], closing=True) == [DueResult(0, 0, 10_000, is_final=True, from_finalize=True)]


def test_a_script_gives_each_channel_its_lines_one_per_segment_cycling() -> None:
    lines = (("Hello there, how are you?", "", "Bye."), ("", "Fine."))
    say = lambda channel, start, final=True: scripted_transcript(  # noqa: E731
        lines, DueResult(channel, start, start + 10, is_final=final), segment=10
    )
    assert [say(0, start) for start in (0, 10, 20, 30)] == [
        "Hello there, how are you?",
        "",
        "Bye.",
        "Hello there, how are you?",
    ]
    assert [say(1, start) for start in (0, 10, 20)] == ["", "Fine.", ""]
    assert say(0, 0, final=False) == "Hello there, how"  # an interim: the first half of the words
    assert say(1, 10, final=False) == "Fine."
    assert say(2, 0) == ""  # a channel without a script says nothing
    assert scripted_transcript(lines, DueResult(0, 25, 27, is_final=True), segment=0) == "Hello there, how are you?"


def test_close_stream_flushes_from_finalize_and_says_nothing_where_nothing_is_pending() -> None:
    # protocols.md, gotcha 15: finals after CloseStream may be empty (duration 0, from_finalize: true).
    schedule = ResultSchedule(3, 100, interim_results=False)
    schedule.on_audio([130, 100, 0])
    assert schedule.flush([130, 100, 0], closing=True) == [
        DueResult(0, 100, 130, is_final=True, from_finalize=True),
        DueResult(1, 100, 100, is_final=True, from_finalize=True),  # covers no audio
    ]  # a channel that never had audio gets nothing
    assert schedule.flush([130, 100, 0], closing=False) == []  # Finalize with nothing pending: no answer


def test_speech_final_only_where_endpointing_cut_the_final() -> None:
    def speech_final(**options: bool) -> bool:
        message = results_message(request_id="r", channel=0, channels=1, start=0.0, end=1.0, **options)
        return bool(message["speech_final"])

    assert speech_final(is_final=True)
    assert not speech_final(is_final=False)
    assert not speech_final(is_final=True, from_finalize=True)  # cut by the client's flush, not by a pause
    assert not speech_final(is_final=True, endpointing=False)  # no endpointing, no end of speech


def test_a_result_covering_no_audio_says_nothing() -> None:
    message = results_message(request_id="r", channel=0, channels=1, start=1.5, end=1.5, is_final=True)
    assert message["duration"] == 0
    assert message["channel"]["alternatives"] == [{"transcript": "", "confidence": 0.0, "words": []}]


def test_speech_starts_after_silence_and_an_utterance_ends_after_utterance_end_ms_without_words() -> None:
    events = VoiceEvents(2, vad_events=True, utterance_end_s=1.0)
    assert events.before(0, 0.0, spoken=True) == [{"type": "SpeechStarted", "channel": [0, 2], "timestamp": 0.0}]
    assert events.before(0, 0.0, spoken=True) == []  # still speaking
    assert events.after_final(0, 0.5, spoken=True) == []
    assert events.before(1, 0.0, spoken=False) == []  # silence starts nothing
    assert events.after_final(0, 1.0, spoken=False) == []  # 0.5 s without words: not yet
    assert events.after_final(0, 1.5, spoken=False) == [
        {"type": "UtteranceEnd", "channel": [0, 2], "last_word_end": 0.5}
    ]
    assert events.after_final(0, 2.5, spoken=False) == []  # once per utterance
    assert events.before(0, 2.5, spoken=True)[0]["timestamp"] == 2.5  # speech again after silence


def test_no_voice_events_unless_asked() -> None:
    events = VoiceEvents(1, vad_events=False, utterance_end_s=None)
    assert events.before(0, 0.0, spoken=True) == []
    assert events.after_final(0, 0.5, spoken=True) == []
    assert events.after_final(0, 9.0, spoken=False) == []
