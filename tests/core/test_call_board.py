"""The board of live calls: which feed events each fact makes, and what a viewer limited to one call sees."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.call_board import ENDED_MEMORY_S, CallBoard, for_call
from callscribe.core.call_record import CallStart, Outcome, call_start

T0 = 1_700_000_000.0


def start(sid: str = "CA1", at: float = T0, tracks: tuple[str, ...] = ("inbound", "outbound")) -> CallStart:
    return call_start(
        call_sid=sid,
        stream_sid="MZ" + sid,
        account_sid="AC1",
        tracks=tracks,
        parameters={"From": "+15550100", "To": "+15550199"},
        now=at,
    )


def notice(kind: str, message: str = "why", source: str = "callscribe") -> str:
    return json.dumps({"type": kind, "source": source, "callSid": "CA1", "message": message})


def test_a_call_starts_and_ends_with_its_details_and_outcome() -> None:
    board = CallBoard()
    (started,) = board.started(start())
    assert started == {
        "type": "call.started",
        "call": {
            "callSid": "CA1",
            "from": "+15550100",
            "to": "+15550199",
            "tracks": ["inbound", "outbound"],
            "startedAt": "2023-11-14T22:13:20.000Z",
            "deepgram": "streaming",
            "deepgramMessage": None,
            "gameCode": None,
            "here": True,
        },
    }
    assert board.snapshot(T0 + 1)["calls"] == [started["call"]]
    assert board.ended("CA1", Outcome.HUNG_UP, T0 + 5) == [
        {"type": "call.ended", "callSid": "CA1", "outcome": "hung_up", "endedAt": "2023-11-14T22:13:25.000Z"}
    ]
    assert board.snapshot(T0 + 6)["calls"] == []


def test_a_call_with_two_streams_is_live_until_the_last_ends() -> None:
    board = CallBoard()
    assert len(board.started(start())) == 1
    assert board.started(start(at=T0 + 1)) == []
    assert board.ended("CA1", Outcome.ENDED, T0 + 2) == []
    assert [e["type"] for e in board.ended("CA1", Outcome.ENDED, T0 + 3)] == ["call.ended"]
    assert board.ended("CA1", Outcome.ENDED, T0 + 4) == []  # one end too many changes nothing


def test_notices_set_the_deepgram_state_once_per_change() -> None:
    board = CallBoard()
    board.started(start())
    (reconnecting,) = board.notice("CA1", notice("Reconnecting", "cannot reach Deepgram; reconnecting"))
    assert reconnecting["type"] == "call.updated"
    assert reconnecting["call"]["deepgram"] == "reconnecting"
    assert reconnecting["call"]["deepgramMessage"] == "cannot reach Deepgram; reconnecting"
    assert board.notice("CA1", notice("Reconnecting", "cannot reach Deepgram; reconnecting")) == []
    (resumed,) = board.notice("CA1", notice("Resumed", "transcription resumed"))
    assert resumed["call"]["deepgram"] == "streaming"
    (failed,) = board.notice("CA1", notice("Error", "not retrying"))
    assert failed["call"]["deepgram"] == "failed"


def test_what_is_not_a_notice_of_a_known_call_changes_nothing() -> None:
    board = CallBoard()
    board.started(start())
    for message in [
        "not json",
        "[]",
        '"Reconnecting"',
        notice("Reconnecting", source="deepgram"),
        notice("Metadata"),
        json.dumps({"type": 7, "source": "callscribe"}),
        json.dumps({"type": "Error", "source": "callscribe", "message": 5}),
    ]:
        if "Error" in message:
            assert board.notice("CA1", message)[0]["call"]["deepgramMessage"] is None
            board.notice("CA1", notice("Resumed", "back"))
        else:
            assert board.notice("CA1", message) == [], message
    assert board.notice("CA9", notice("Reconnecting")) == []
    assert board.ended("CA9", Outcome.ENDED, T0) == []


def test_game_patches_show_on_the_games_list_and_on_their_call() -> None:
    board = CallBoard()
    board.started(start())
    events = board.games({"7": None, "12": None})
    assert events == [{"type": "games", "games": [{"code": "12", "callSid": None}, {"code": "7", "callSid": None}]}]
    assert board.games({"12": None, "7": None}) == []
    games, updated = board.games({"7": "CA1", "12": None})
    assert games["games"] == [{"code": "12", "callSid": None}, {"code": "7", "callSid": "CA1"}]
    assert updated["type"] == "call.updated" and updated["call"]["gameCode"] == "7"
    games, updated = board.games({"12": None})  # game 7 left: the call goes on unpatched
    assert updated["call"]["gameCode"] is None
    # A call that ends frees its game at once (the registry says so too, a moment later).
    board.games({"12": "CA1"})
    ended, games = board.ended("CA1", Outcome.ENDED, T0 + 1)
    assert ended["type"] == "call.ended" and games == {"type": "games", "games": [{"code": "12", "callSid": None}]}
    assert board.games({"12": None}) == []
    # A call that starts while already patched (another stream) shows its code at once.
    board.games({"12": "CA2"})
    (started,) = board.started(start("CA2"))
    assert started["call"]["gameCode"] == "12"


def test_calls_of_other_processes_come_and_go_with_the_hubs_list() -> None:
    board = CallBoard()
    board.started(start("CA1"))
    (remote,) = board.listed(["CA1", "CA2"], T0 + 1)
    assert remote["type"] == "call.started"
    assert remote["call"] == {
        "callSid": "CA2",
        "from": None,
        "to": None,
        "tracks": [],
        "startedAt": "2023-11-14T22:13:21.000Z",
        "deepgram": "streaming",
        "deepgramMessage": None,
        "gameCode": None,
        "here": False,
    }
    assert board.listed(["CA1", "CA2"], T0 + 2) == []
    # A local call missing from the list (the shared hub lags) stays: it ends when it ends here.
    (gone,) = board.listed([], T0 + 3)
    assert gone == {"type": "call.ended", "callSid": "CA2", "outcome": None, "endedAt": "2023-11-14T22:13:23.000Z"}
    assert [call["callSid"] for call in board.snapshot(T0 + 3)["calls"]] == ["CA1"]


def test_a_call_that_ended_here_is_not_brought_back_by_a_lagging_list() -> None:
    board = CallBoard()
    board.started(start("CA1"))
    board.ended("CA1", Outcome.ENDED, T0 + 5)
    assert board.listed(["CA1"], T0 + 6) == []
    assert board.listed(["CA1"], T0 + 5 + ENDED_MEMORY_S - 1) == []
    # Long after, a listed call of that sid is someone else's stream of it.
    assert [e["type"] for e in board.listed(["CA1"], T0 + 5 + ENDED_MEMORY_S)] == ["call.started"]


def test_a_local_start_of_a_call_first_seen_elsewhere_brings_its_details() -> None:
    board = CallBoard()
    board.listed(["CA1"], T0)
    (updated,) = board.started(start("CA1", at=T0 + 2))
    assert updated["type"] == "call.updated"
    assert updated["call"]["here"] and updated["call"]["from"] == "+15550100"
    assert updated["call"]["startedAt"] == "2023-11-14T22:13:20.000Z"  # first seen, kept


def test_a_viewer_limited_to_one_call_sees_that_call_only() -> None:
    board = CallBoard()
    events = board.started(start("CA1")) + board.started(start("CA2"))
    events += board.games({"1": "CA1", "2": "CA2", "3": None})
    events += board.ended("CA2", Outcome.ENDED, T0 + 1) + board.ended("CA1", Outcome.ENDED, T0 + 2)
    seen = [e for e in (for_call(event, "CA1") for event in events) if e is not None]
    assert [e["type"] for e in seen] == ["call.started", "games", "call.updated", "games", "call.ended", "games"]
    assert seen[1]["games"] == seen[3]["games"] == [{"code": "1", "callSid": "CA1"}]
    assert seen[5]["games"] == []  # CA1 ended: code 1 waits for a caller, which is no business of CA1's
    assert all(for_call(event, None) is event for event in events)
    board.started(start("CA3"))
    snapshot = for_call(board.snapshot(T0), "CA3")
    assert snapshot is not None and [c["callSid"] for c in snapshot["calls"]] == ["CA3"] and snapshot["games"] == []
    assert for_call({"type": "something new"}, "CA1") is None


SIDS = st.sampled_from(["CA1", "CA2", "CA3"])
FACTS = st.one_of(
    st.tuples(st.just("started"), SIDS),
    st.tuples(st.just("ended"), SIDS),
    st.tuples(st.just("notice"), SIDS, st.sampled_from(["Reconnecting", "Resumed", "Error", "Results"])),
    st.tuples(st.just("listed"), st.frozensets(SIDS)),
    st.tuples(st.just("games"), st.dictionaries(st.sampled_from(["1", "2"]), st.none() | SIDS)),
    st.tuples(st.just("tick"), st.floats(0, 40)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FACTS, max_size=40))
def test_the_events_replayed_by_a_viewer_always_agree_with_the_board(facts: list[tuple[object, ...]]) -> None:
    """A viewer that applies the snapshot and then every event holds exactly the board's calls and
    games; a call is never started twice or ended while not live; nothing raises."""
    board = CallBoard()
    now = T0
    view_calls = {c["callSid"]: c for c in board.snapshot(now)["calls"]}
    view_games: list[dict[str, str | None]] = []
    for fact in facts:
        kind = fact[0]
        if kind == "started":
            events = board.started(start(str(fact[1]), at=now))
        elif kind == "ended":
            events = board.ended(str(fact[1]), Outcome.ENDED, now)
        elif kind == "notice":
            events = board.notice(str(fact[1]), notice(str(fact[2])))
        elif kind == "listed":
            events = board.listed(fact[1], now)  # type: ignore[arg-type]
        elif kind == "games":
            events = board.games(fact[1])  # type: ignore[arg-type]
        else:
            now += float(fact[1])  # type: ignore[arg-type]
            events = []
        for event in events:
            if event["type"] == "call.started":
                assert event["call"]["callSid"] not in view_calls
                view_calls[event["call"]["callSid"]] = event["call"]
            elif event["type"] == "call.updated":
                assert event["call"]["callSid"] in view_calls
                view_calls[event["call"]["callSid"]] = event["call"]
            elif event["type"] == "call.ended":
                assert view_calls.pop(event["callSid"], None) is not None
            else:
                view_games = event["games"]
    snapshot = board.snapshot(now)
    assert sorted(view_calls.values(), key=lambda c: c["callSid"]) == sorted(
        snapshot["calls"], key=lambda c: c["callSid"]
    )
    assert view_games == snapshot["games"]
