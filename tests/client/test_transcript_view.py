"""What a person sees of a call's messages: lines for finals and notices, interims in place."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from callscribe.client.transcript_view import Interim, Line, TranscriptView, clock, close_description


def results(words: str, *, channel: int = 0, channels: int = 2, start: float = 0.0, final: bool = True) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, channels],
            "start": start,
            "is_final": final,
            "channel": {"alternatives": [{"transcript": words}]},
        }
    )


def test_a_final_is_a_line_with_the_time_into_the_call_and_the_speaker() -> None:
    view = TranscriptView()
    assert view.receive(results("Hello there.", start=3.4)) == [Line("00:03  Caller       Hello there.", "caller")]
    assert view.receive(results("Hi!", channel=1, start=65.0)) == [Line("01:05  Other party  Hi!", "other")]
    assert view.receive(results("Mono.", channel=0, channels=1)) == [Line("00:00  Caller       Mono.", "caller")]


def test_an_outbound_only_calls_channel_0_is_the_other_party() -> None:
    view = TranscriptView(tracks=("outbound",))
    assert view.receive(results("Hello.", channels=1)) == [Line("00:00  Other party  Hello.", "other")]
    assert view.receive(results("Hel", channels=1, final=False)) == [
        Interim("0", "00:00  Other party  Hel ...", "other")
    ]
    both = TranscriptView(tracks=("inbound", "outbound"))
    assert both.receive(results("Hi.")) == [Line("00:00  Caller       Hi.", "caller")]


def test_an_interim_is_shown_in_place_until_its_final_replaces_it() -> None:
    view = TranscriptView()
    assert view.receive(results("Hello", final=False)) == [Interim("0", "00:00  Caller       Hello ...", "caller")]
    assert view.receive(results("Hello th", final=False)) == [
        Interim("0", "00:00  Caller       Hello th ...", "caller")
    ]
    assert view.receive(results("Hello there.")) == [
        Interim("0", "", "caller"),
        Line("00:00  Caller       Hello there.", "caller"),
    ]


def test_each_speaker_has_an_interim_of_their_own() -> None:
    view = TranscriptView(label="[CA..123456] ")
    caller = view.receive(results("one", final=False))
    other = view.receive(results("two", channel=1, final=False))
    assert caller[0].key != other[0].key  # type: ignore[union-attr]
    assert view.receive(results("", channel=1)) == [Interim("[CA..123456] 1", "", "other")]


def test_finals_without_words_and_other_events_show_nothing() -> None:
    view = TranscriptView()
    assert view.receive(results("   ")) == []
    assert view.receive(results("", final=False)) == []
    for kind in ("SpeechStarted", "UtteranceEnd", "Metadata"):
        assert view.receive(json.dumps({"type": kind, "channel": [0]})) == []
    for junk in ("not json", "[1, 2]", "null", '{"type": "Results", "channel_index": "x"}', b"\xff\xfe"):
        assert view.receive(junk) == []


def test_callscribe_notices_stand_out_and_errors_most() -> None:
    view = TranscriptView()
    notice = {"type": "Reconnecting", "source": "callscribe", "message": "cannot reach Deepgram; reconnecting"}
    assert view.receive(json.dumps(notice)) == [Line("!! Reconnecting: cannot reach Deepgram; reconnecting", "notice")]
    error = {"type": "Error", "source": "callscribe", "message": "unknown callSid: 'CAx'"}
    assert view.receive(json.dumps(error)) == [Line("!! Error: unknown callSid: 'CAx'", "error")]


def test_the_end_says_how_the_subscription_closed_and_clears_what_was_in_place() -> None:
    view = TranscriptView()
    view.receive(results("half a sen", final=False))
    assert view.closed(1000, "call ended") == [
        Interim("0", "", "info"),
        Line("-- call ended (1000 call ended)", "info"),
    ]
    assert TranscriptView().closed(1001, "server shutting down") == [
        Line("-- closed: 1001 server shutting down", "error")
    ]
    assert TranscriptView().closed(None, None) == [Line("-- closed: connection lost (no close frame)", "error")]
    assert close_description(1008, "") == "1008"


def test_clock() -> None:
    assert [clock(s) for s in (0, 0.99, 59.9, 60, 3599, 3600, 3723, -1)] == [
        "00:00",
        "00:00",
        "00:59",
        "01:00",
        "59:59",
        "1:00:00",
        "1:02:03",
        "00:00",
    ]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["type", "channel_index", "start", "is_final", "channel", "source", "message"]), JSON
    )
)
def test_any_message_shows_something_or_nothing_and_never_raises(message: dict[str, object]) -> None:
    for shown in TranscriptView().receive(json.dumps(message)):
        assert isinstance(shown, Line | Interim)
