"""GET /api/calls's parameters and its cursors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.call_query import (
    DEFAULT_LIMIT,
    BadQuery,
    CallQuery,
    Cursor,
    decode_cursor,
    encode_cursor,
    fold_accents,
    parse_query,
    search_words,
)


def test_every_parameter() -> None:
    cursor = encode_cursor(Cursor(1_700_000_000.123, "CA9"))
    query = parse_query(
        {
            "q": "Cancel, my SUBSCRIPTION!",
            "number": " 1555 0100",
            "since": "2026-11-29",
            "until": "2026-11-29T10:00:00+01:00",
            "live": "False",
            "limit": "10",
            "cursor": cursor,
            "token": "ignored",
        },
        call_sid="CA1",
    )
    assert query == CallQuery(
        words=("cancel", "my", "subscription"),
        number_digits="15550100",
        since=1_795_910_400.0,
        until=1_795_942_800.0,
        live=False,
        limit=10,
        after=Cursor(1_700_000_000.123, "CA9"),
        call_sid="CA1",
    )
    assert parse_query({}) == CallQuery(limit=DEFAULT_LIMIT)
    assert parse_query({"live": "true", "q": " "}).live is True


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 200"),
        ({"limit": "201"}, "limit must be"),
        ({"limit": "ten"}, "limit must be"),
        ({"live": "yes"}, "live must be true or false"),
        ({"number": "abc"}, "number must be a phone number"),
        ({"q": "?!"}, "q has no words"),
        ({"q": "_ __"}, "q has no words"),  # symbols, like "?!"
        ({"since": "yesterday"}, "since must be an ISO 8601 time"),
        ({"until": "2026-13-01"}, "until must be an ISO 8601 time"),
        ({"cursor": "%%%"}, "cursor is not one this server gave out"),
        ({"cursor": "WyJhIiwxXQ"}, "cursor is not one"),  # ["a",1]
        ({"cursor": "e30"}, "cursor is not one"),  # {}
        ({"limit": "\u00b2"}, "limit must be"),  # a digit to isdigit(), not to int()
        ({"limit": "9" * 5000}, "limit must be"),  # beyond int()'s 4,300 digits
        (
            {
                "cursor": "WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwLCAiQ0ExIl0"
            },
            "cursor is not one",
        ),  # [1e400, "CA1"]: not a float
        ({"cursor": "WzEsICJcdWQ4MDAiXQ"}, "cursor is not one"),  # [1, "\ud800"]: cannot be encoded
        (
            {
                "cursor": "WzEsICJDQWZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmYiXQ"
            },
            "cursor is not one",
        ),  # a callSid no call can have
    ],
)
def test_bad_parameters_say_which_and_why(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        parse_query(params)


@given(
    st.floats(0, 4e9, allow_nan=False),
    st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF).filter(str.isprintable), max_size=40),
)
def test_cursors_round_trip(started_at: float, call_sid: str) -> None:
    assert decode_cursor(encode_cursor(Cursor(started_at, call_sid))) == Cursor(started_at, call_sid)


def test_a_cursor_of_deeply_nested_json_is_a_bad_query_not_a_recursion_error() -> None:
    cursor = base64.urlsafe_b64encode(b"[" * 5000).decode()
    with pytest.raises(BadQuery, match="cursor is not one this server gave out"):
        decode_cursor(cursor)


def test_search_words_fold_accents() -> None:
    assert search_words("Café CRÈME, İstanbul, São-Paulo") == ("cafe", "creme", "istanbul", "sao", "paulo")
    assert search_words("cafe\u0301 ș ạ ſ") == ("cafe", "s", "a", "s")  # decomposed; Romanian; Vietnamese; long s
    assert search_words("Straße æ ø Łódź ấ") == ("straße", "æ", "ø", "łodz", "ấ")  # no base letter; two diacritics
    assert fold_accents("Crème Brûlée") == "Creme Brulee"


@given(st.text())
def test_any_search_text_gives_plain_words(text: str) -> None:
    words = search_words(text)
    assert len(words) <= 16
    assert all(word.isalnum() for word in words)
    assert all('"' not in word and " " not in word for word in words)
