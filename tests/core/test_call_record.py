"""A call's record: how it ended, what its start says, how the API shows it."""

from __future__ import annotations

import pytest

from callscribe.core.call_record import Outcome, StoredCall, call_start, digits, iso_time, outcome_of, stored_call_of


@pytest.mark.parametrize(
    ("stop", "code", "deepgram_failed", "crashed", "outcome"),
    [
        (True, 1000, False, False, Outcome.ENDED),
        (False, 1000, False, False, Outcome.HUNG_UP),
        (True, 1000, True, False, Outcome.DEEPGRAM_FAILED),
        (False, 1001, True, False, Outcome.DEEPGRAM_FAILED),
        (False, 1001, False, False, Outcome.SHUTDOWN),
        (True, 1001, False, False, Outcome.SHUTDOWN),
        (False, 1003, False, False, Outcome.STREAM_ERROR),
        (False, 1008, False, False, Outcome.STREAM_ERROR),
        (True, 1000, True, True, Outcome.ERROR),
    ],
)
def test_the_most_telling_outcome(
    stop: bool, code: int, deepgram_failed: bool, crashed: bool, outcome: Outcome
) -> None:
    assert outcome_of(stop_received=stop, close_code=code, deepgram_failed=deepgram_failed, crashed=crashed) is outcome


def test_a_start_takes_from_to_and_direction_from_the_stream_parameters() -> None:
    start = call_start(
        call_sid="CA1",
        stream_sid="MZ1",
        account_sid="AC1",
        tracks=["inbound", "outbound"],
        parameters={"From": " +15550100 ", "To": "", "Direction": "outbound-dial", "route": "game"},
        now=1_700_000_000.5,
    )
    assert (start.from_number, start.to_number, start.direction) == ("+15550100", None, "outbound-dial")
    assert start.tracks == ("inbound", "outbound") and start.channels == 2 and start.parameters["route"] == "game"
    bare = call_start(call_sid="CA2", stream_sid="MZ2", account_sid="", tracks=["inbound"], parameters={}, now=0)
    assert (bare.from_number, bare.to_number, bare.direction, bare.channels) == (None, None, None, 1)


def test_the_api_shapes() -> None:
    start = call_start(
        call_sid="CA1",
        stream_sid="MZ1",
        account_sid="AC1",
        tracks=["inbound"],
        parameters={"From": "+1"},
        now=1_700_000_000.25,
    )
    live = stored_call_of(start)
    assert live.summary() == {
        "callSid": "CA1",
        "from": "+1",
        "to": None,
        "startedAt": "2023-11-14T22:13:20.250Z",
        "endedAt": None,
        "durationS": None,
        "live": True,
        "outcome": None,
        "snippet": "",
    }
    ended = StoredCall(**{**live.__dict__, "ended_at": 1_700_000_061.75, "outcome": "ended", "request_ids": ("r1",)})
    details = ended.json()
    assert details["durationS"] == 61.5 and details["live"] is False and details["deepgramRequestIds"] == ["r1"]
    assert "snippet" not in details and details["tracks"] == ["inbound"]


def test_times_and_numbers() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert digits("+1 (555) 010-0") == "15550100" and digits(None) == ""
