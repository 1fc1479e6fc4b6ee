"""A late subscriber of another process's call: the store's finals, the hub's history after them, live."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.catch_up import CatchUp, without_id
from callscribe.core.fanout import GAP_NOTICE, with_id


def final(n: int) -> str:
    return json.dumps({"type": "Results", "is_final": True, "start": float(n), "channel": {"n": n}})


def other(n: int) -> str:
    return json.dumps({"type": "UtteranceEnd", "last_word_end": float(n)})


def ids(messages: list[str]) -> list[str]:
    return [with_id(text, f"1000-{n}") for n, text in enumerate(messages)]


def passed(catch_up: CatchUp, delivered: list[str]) -> list[str]:
    return [text for text in (catch_up.offer(message) for message in delivered) if text is not None]


def test_without_id_undoes_with_id_and_leaves_other_text_alone() -> None:
    for text in (final(1), "{}", '{"type": "x"}', '{ "spaced": 1}'):
        assert without_id(with_id(text, "1718000000000-3")) == text
    for text in ("not json", '{"id": "broken', '{"type": "Results"}', "[1]"):
        assert without_id(text) == text


def test_what_the_store_gave_is_skipped_then_everything_after_passes_once() -> None:
    call = [final(1), other(1), final(2), other(2), final(3), other(3), final(4)]
    stored = [final(1), final(2)]  # committed; final 3 was published since
    catch_up = CatchUp(stored)
    # The replay from the start, then live messages, which repeat nothing but may overlap the store.
    got = passed(catch_up, ids(call))
    assert got == [other(2), final(3), other(3), final(4)]
    assert catch_up.caught_up


def test_with_nothing_stored_everything_passes_from_the_start() -> None:
    call = [final(1), other(1), final(2)]
    assert passed(CatchUp([]), ids(call)) == call


def test_a_final_after_the_last_stored_one_catches_up_when_that_one_is_no_longer_kept() -> None:
    stored = [final(1), final(2), final(3)]
    replay = [other(3), final(4), other(4)]  # the hub kept only what followed final 3
    assert passed(CatchUp(stored), ids(replay)) == [final(4), other(4)]


def test_the_hubs_gap_notice_passes_and_catches_up() -> None:
    notice = json.dumps({"type": "Error", "source": "callscribe", "message": f"{GAP_NOTICE} 0-0: ..."})
    replay = [notice, other(5), final(2)]  # final 2 came back although the store had it: once only
    assert passed(CatchUp([final(1), final(2)]), [notice, *ids(replay[1:])]) == [notice, other(5)]


def test_the_last_stored_final_arriving_live_catches_up_too() -> None:
    catch_up = CatchUp([final(1)])
    assert passed(catch_up, [with_id(other(0), "1-0")]) == []  # the replay had not reached it yet
    assert passed(catch_up, [with_id(final(1), "2-0"), with_id(other(1), "3-0")]) == [other(1)]


def test_interims_and_unparsable_messages_before_catching_up_are_skipped() -> None:
    interim = json.dumps({"type": "Results", "is_final": False, "start": 9.0})
    assert passed(CatchUp([final(1)]), [interim, "garbage", with_id(final(1), "5-0"), interim]) == [interim]


@given(
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=12),
)
def test_every_final_reaches_the_subscriber_exactly_once(finals: int, committed: int, evicted: int) -> None:
    """Whatever the store had committed and however much of the start the hub dropped: the store's
    finals plus what passes are every final, in order, once (a dropped final the store did not
    have is announced by the gap notice instead)."""
    committed, evicted = min(committed, finals), min(evicted, finals)
    call = [text for n in range(1, finals + 1) for text in (final(n), other(n))]
    stored = [final(n) for n in range(1, committed + 1)]
    kept = call[2 * evicted :]
    notice = json.dumps({"type": "Error", "source": "callscribe", "message": f"{GAP_NOTICE} 0-0"})
    replay = ([notice] if evicted else []) + ids(kept)
    got = passed(CatchUp(stored), replay)
    finals_seen = stored + [text for text in got if '"is_final": true' in text]
    lost = range(committed + 1, evicted + 1)  # neither stored nor kept
    assert finals_seen == [final(n) for n in range(1, finals + 1) if n not in lost]
    if lost:
        assert notice in got
