"""The fan-out wire format between processes, message ids, and resuming without gap or duplicate."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.fanout import (
    DROPPABLE,
    END,
    MALFORMED,
    MESSAGE,
    IdClock,
    Resume,
    end_text,
    id_key,
    parse_end,
    parse_wire,
    resume_request,
    valid_id,
    wire,
    with_id,
)

ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
origins = st.text(alphabet="0123456789abcdef", min_size=8, max_size=8)


@given(st.sampled_from([MESSAGE, END]), origins, ids, st.text())
def test_kept_messages_travel_unchanged(kind: str, origin: str, message_id: str, text: str) -> None:
    if kind == END:
        text = end_text(1000, text)
    parsed = parse_wire(wire(kind, origin, text, message_id))
    assert (parsed.kind, parsed.origin, parsed.message_id, parsed.text) == (kind, origin, message_id, text)


@given(origins, st.text())
def test_droppable_messages_have_no_id(origin: str, text: str) -> None:
    parsed = parse_wire(wire(DROPPABLE, origin, text))
    assert (parsed.kind, parsed.message_id, parsed.text) == (DROPPABLE, "", text)


@given(st.one_of(st.text(), st.binary(), st.none(), st.integers()))
def test_anything_else_never_raises(data: object) -> None:
    parsed = parse_wire(data)
    assert parsed is MALFORMED or parsed.kind in (MESSAGE, DROPPABLE, END)


def test_what_is_malformed() -> None:
    for data in ["", "m", "m1234567", "x12345678 1-0 hi", "m12345678 hi", "m123456781-x hi", "m1234567801-0 hi"]:
        assert parse_wire(data) is MALFORMED, data
    assert parse_wire('e123456781-0 {"code": "1000", "reason": "x"}') is MALFORMED
    assert parse_wire('e123456781-0 {"code": true, "reason": "x"}') is MALFORMED
    assert parse_wire("e123456781-0 [1000]") is MALFORMED
    assert parse_wire('e123456781-0 {"code": 1000, "reason": "x"}').kind == END
    assert parse_end(end_text(1011, "gone")) == (1011, "gone")
    # Codes and reasons no close frame can carry (from anyone who can write to the Redis):
    for code in (99999, 999, 1005, 1006, 2000, 5000):
        assert parse_wire(f'e123456781-0 {{"code": {code}, "reason": "x"}}') is MALFORMED, code
    assert parse_wire('e123456781-0 {"code": 1000, "reason": "\\ud800"}') is MALFORMED
    assert parse_end(end_text(4001, "custom")) == (4001, "custom")


def test_ids_order_as_numbers_not_strings() -> None:
    assert id_key("10-0") > id_key("9-5") > id_key("9-0")
    assert id_key("nonsense") < id_key("0-0")
    assert not valid_id(f"{2**64}-0") and valid_id(f"{2**64 - 1}-0")
    assert not valid_id("01-0") and not valid_id("1-") and not valid_id(" 1-0")


def test_with_id_adds_the_id_first_and_keeps_the_rest_byte_for_byte() -> None:
    text = '{"type": "Results", "channel_index": [0, 1],  "x":"\\u00e9"}'
    tagged = with_id(text, "17-3")
    assert tagged == '{"id": "17-3", ' + text[1:]
    assert json.loads(tagged) == {"id": "17-3", **json.loads(text)}
    assert with_id("{}", "1-0") == '{"id": "1-0"}'
    assert with_id("{ }", "1-0") == '{"id": "1-0" }'
    assert with_id("not json", "1-0") == "not json"


@given(st.lists(st.integers(0, 50), min_size=1), st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60))))
def test_history_and_live_messages_overlapping_any_way_pass_once_in_order(
    history: list[int], replays: list[tuple[int, int]]
) -> None:
    """Whatever arrives -- the history read back, then live messages that repeat any stretch of it --
    every kept message passes exactly once, in id order, and nothing before the resume point."""
    kept = [f"5-{n}" for n in sorted(set(history))]
    after = kept[len(kept) // 2]
    arrivals = list(kept)
    for start, stop in replays:
        arrivals += kept[start:stop]
    resume = Resume(after)
    passed = [message_id for message_id in arrivals if resume.admit(message_id)]
    assert passed == [m for m in kept if id_key(m) > id_key(after)]
    assert resume.last == (passed[-1] if passed else after)


def test_skip_to_only_moves_forward() -> None:
    resume = Resume()
    resume.skip_to("5-0")
    assert not resume.admit("4-9") and resume.admit("5-1")
    resume.skip_to("1-0")
    assert resume.last == "5-1"


def test_id_clock_grows_even_when_the_wall_clock_goes_back() -> None:
    clock = IdClock()
    made = [clock.next(ms) for ms in (1000, 1000, 999, 1001, 500)]
    assert made == ["1000-0", "1000-1", "1000-2", "1001-0", "1001-1"]
    assert [id_key(m) for m in made] == sorted(id_key(m) for m in made)


def test_resume_requests() -> None:
    assert resume_request("") == resume_request("token=x")
    assert not resume_request("").ids and resume_request("").after is None
    assert resume_request("ids=1").ids
    assert resume_request("after=12-3") == resume_request("after=12-3&ids=0")
    assert resume_request("after=12-3").ids and resume_request("after=12-3").after == "12-3"
    assert "after must be" in resume_request("after=latest").error
    assert "after must be" in resume_request("after=").error
    assert "ids must be" in resume_request("ids=yes").error
    assert "at most once" in resume_request("after=1-0&after=2-0").error
