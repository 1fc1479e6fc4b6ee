"""Deepgram finals as utterances, and the exports, each parsed back with a library."""

from __future__ import annotations

import html
import io
import json

import pytest
import srt
import webvtt
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.transcript import (
    DEFAULT_LABELS,
    SpeakerLabels,
    Utterance,
    clock,
    export,
    parse_final,
    to_json_lines,
    to_srt,
    to_text,
    to_webvtt,
)
from callscribe.testing.fake_deepgram_results import compact_json, results_message


def final(text: str, *, channel: int = 0, start: float = 1.0, end: float = 2.5, **overrides: object) -> str:
    message = results_message(
        request_id="req-7", channel=channel, channels=2, start=start, end=end, is_final=True, transcript=text
    )
    message.update(overrides)
    return compact_json(message)


def utterance(seq: int, text: str, start: float, end: float, channel: int = 0) -> Utterance:
    return Utterance(seq, channel, DEFAULT_LABELS.for_channel(channel), start, end, text, 0.9, "r", f'{{"seq":{seq}}}')


def test_a_final_with_word_timings_is_cut_to_its_words() -> None:
    message = json.loads(final("hello big world", start=1.0, end=4.0))
    message["channel"]["alternatives"][0]["words"][0]["start"] = 1.5  # speech began after the final's start
    message["channel"]["alternatives"][0]["words"][-1]["end"] = 3.25
    parsed = parse_final(json.dumps(message), 4)
    assert parsed is not None
    assert (parsed.seq, parsed.channel, parsed.speaker) == (4, 0, "Caller")
    assert (parsed.start, parsed.end, parsed.text, parsed.confidence, parsed.request_id) == (
        1.5,
        3.25,
        "hello big world",
        0.99,
        "req-7",
    )
    assert parsed.raw == json.dumps(message)


def test_a_final_without_words_keeps_start_and_duration() -> None:
    message = json.loads(final("no timings", channel=1, start=2.0, end=3.5))
    message["channel"]["alternatives"][0]["words"] = []
    parsed = parse_final(json.dumps(message), 1, SpeakerLabels("Customer", "Agent"))
    assert parsed is not None
    assert (parsed.speaker, parsed.start, parsed.end, parsed.text) == ("Agent", 2.0, 3.5, "no timings")


@pytest.mark.parametrize(
    "text",
    [
        final("interim", is_final=False),
        '{"type":"Metadata","request_id":"x"}',
        '{"type":"UtteranceEnd","channel":[0,1],"last_word_end":2.0}',
        '{"type":"Results","is_final":true,"channel":"not an object"}',
        "not json",
        "[]",
        "",
    ],
)
def test_anything_but_a_final_is_none(text: str) -> None:
    assert parse_final(text, 1) is None


@given(st.one_of(st.text(), st.binary()))
def test_parsing_never_raises(text: str | bytes) -> None:
    parse_final(text, 1)


def test_an_inbound_only_call_is_the_caller_alone() -> None:
    parsed = parse_final(final("just me", channel_index=[0, 1]), 1)
    assert parsed is not None and parsed.speaker == "Caller"


def test_the_speaker_of_a_channel_is_the_calls_track_of_that_index() -> None:
    # <Stream track="outbound_track">: Deepgram's channel 0 is the other party; nothing is renumbered.
    parsed = parse_final(final("hello", channel_index=[0, 1]), 1, SpeakerLabels("Customer", "Agent"), ("outbound",))
    assert parsed is not None and (parsed.channel, parsed.speaker) == (0, "Agent")
    both = ("inbound", "outbound")
    assert [DEFAULT_LABELS.for_channel(channel, both) for channel in (0, 1)] == ["Caller", "Other party"]
    assert DEFAULT_LABELS.for_channel(0, ("inbound",)) == DEFAULT_LABELS.for_channel(0) == "Caller"


@given(st.integers(-(2**31), 2**31), st.sampled_from([(), ("inbound",), ("outbound",), ("inbound", "outbound")]))
def test_an_utterances_speaker_is_that_of_the_channel_it_is_kept_on(channel: int, tracks: tuple[str, ...]) -> None:
    # A channel index below 0 is kept as channel 0: its speaker must be channel 0's, which in an
    # outbound-only call is the other party.
    parsed = parse_final(final("hello", channel_index=[channel, 1]), 1, DEFAULT_LABELS, tracks)
    assert parsed is not None and parsed.speaker == DEFAULT_LABELS.for_channel(parsed.channel, tracks)


def test_speaker_labels_are_two_names() -> None:
    assert SpeakerLabels.parse(" Customer , Agent ") == SpeakerLabels("Customer", "Agent")
    for bad in ("Caller", "A,B,C", "A,", "<v>,B", "A&B,C", "x" * 41 + ",y"):
        with pytest.raises(ValueError, match="speaker label"):
            SpeakerLabels.parse(bad)


def test_plain_text_has_a_clock_and_a_speaker_per_line() -> None:
    lines = [
        utterance(1, "hello", 5.2, 6.0),
        utterance(2, "", 6.0, 6.0),
        utterance(3, "hi, who's this?", 65.9, 67.0, channel=1),
        utterance(4, "later", 3725.0, 3726.0),
    ]
    assert to_text(lines) == "[00:05] Caller: hello\n[01:05] Other party: hi, who's this?\n[62:05] Caller: later\n"
    assert clock(-1) == "00:00"


def test_webvtt_has_voice_spans_and_reads_back() -> None:
    lines = [
        utterance(1, "Tom & Jerry <3 --> ok", 0.25, 1.5),
        utterance(2, "", 2.0, 2.0),
        utterance(3, "right", 2.0, 2.0, channel=1),
    ]
    document = webvtt.WebVTT.from_buffer(io.StringIO(to_webvtt(lines)))
    cues = list(document)
    # webvtt-py strips the tags and leaves character references to the player: &amp; is "&".
    assert [(c.voice, html.unescape(c.text)) for c in cues] == [
        ("Caller", "Tom & Jerry <3 --> ok"),
        ("Other party", "right"),
    ]
    assert (cues[0].start, cues[0].end) == ("00:00:00.250", "00:00:01.500")
    assert (cues[1].start, cues[1].end) == ("00:00:02.000", "00:00:02.001")  # no duration: still a valid cue


def test_srt_reads_back() -> None:
    lines = [utterance(1, "hello", 0.25, 1.5), utterance(2, "there", 3601.0, 3602.125, channel=1)]
    subtitles = list(srt.parse(to_srt(lines)))
    assert [(s.index, s.content) for s in subtitles] == [(1, "Caller: hello"), (2, "Other party: there")]
    assert subtitles[1].start.total_seconds() == 3601.0 and subtitles[1].end.total_seconds() == 3602.125


def test_json_lines_are_every_final_as_sent() -> None:
    raws = [final("one", start=0, end=1), final("", start=1, end=1)]
    lines = [parse_final(raw, n) for n, raw in enumerate(raws, 1)]
    assert all(lines)
    text = to_json_lines([u for u in lines if u])
    assert [json.loads(line) for line in text.splitlines()] == [json.loads(raw) for raw in raws]


def test_json_lines_keep_unicode_line_separators_inside_strings() -> None:
    # JSON lets U+2028, U+2029 and U+0085 stand raw in a string (Deepgram's JSON and msgspec, which
    # rebases, write them so): only a real newline may be taken out to keep one final a line.
    raw = final("one\u2028two\u2029three\x85four").replace("\\u2028", "\u2028")
    raw = raw.replace("\\u2029", "\u2029").replace("\\u0085", "\x85")
    assert "\u2028" in raw and "\x85" in raw
    line = parse_final(raw, 1)
    assert line is not None
    text = to_json_lines([line])
    assert text.count("\n") == 1
    assert json.loads(text) == json.loads(raw)


def test_export_by_extension() -> None:
    lines = [utterance(1, "x", 0, 1)]
    assert export(lines, "txt") == to_text(lines) and export(lines, "srt") == to_srt(lines)
    with pytest.raises(ValueError, match="unknown transcript format"):
        export(lines, "docx")


speech = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40).map(
    lambda text: " ".join(text.split())
)


@given(
    st.lists(
        st.tuples(speech, st.floats(0, 7200, allow_nan=False), st.floats(0, 30, allow_nan=False), st.integers(0, 1)),
        max_size=12,
    )
)
def test_every_final_with_words_is_one_cue_in_every_caption_format(
    rows: list[tuple[str, float, float, int]],
) -> None:
    lines = [
        utterance(n, text, round(start, 3), round(start + length, 3), ch)
        for n, (text, start, length, ch) in enumerate(rows, 1)
    ]
    spoken = sorted((u for u in lines if u.text), key=lambda u: u.start)  # cues by start, ties as they came
    cues = list(webvtt.WebVTT.from_buffer(io.StringIO(to_webvtt(lines))))
    assert [(c.voice, " ".join(html.unescape(c.text).split())) for c in cues] == [(u.speaker, u.text) for u in spoken]
    subtitles = list(srt.parse(to_srt(lines)))
    assert [s.content for s in subtitles] == [f"{u.speaker}: {u.text}" for u in spoken]
    assert len(to_text(lines).splitlines()) == len(spoken)


def test_caption_cues_follow_start_time_when_a_short_reply_arrives_first() -> None:
    # Each channel's finals arrive on their own: the caller's short reply (5-6 s) came back before
    # the other party's longer turn that began at 3 s. WebVTT wants cues in start order.
    finals = [
        utterance(1, "yes", 5.0, 6.0, 0),
        utterance(2, "so as I was saying about your order", 3.0, 8.0, 1),
    ]
    cues = list(webvtt.WebVTT.from_buffer(io.StringIO(to_webvtt(finals))))
    assert [c.start_in_seconds for c in cues] == [3, 5]
    subtitles = list(srt.parse(to_srt(finals)))
    assert [(s.index, s.start.total_seconds()) for s in subtitles] == [(1, 3.0), (2, 5.0)]
