"""Tests for callscribe.core.numbers: spoken numbers and words as tokens."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.numbers import code_key, normalize, tokenize

# --- normalize -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("42", ["42"]),
        ("42.", ["42"]),
        ("Number 42.", ["number", "42"]),
        ("forty-two", ["42"]),
        ("forty two", ["42"]),
        ("Forty Two!", ["42"]),
        ("four two", ["42"]),
        ("4 2", ["42"]),
        ("one hundred", ["100"]),
        ("a hundred", ["100"]),
        ("one hundred and five", ["105"]),
        ("one hundred five", ["105"]),
        ("one hundred twenty-three", ["123"]),
        ("one twenty three", ["123"]),
        ("nineteen ninety nine", ["1999"]),
        ("twenty twenty", ["2020"]),
        ("twenty-five hundred", ["2500"]),
        ("two thousand and five", ["2005"]),
        ("a thousand", ["1000"]),
        ("two million three hundred thousand", ["2300000"]),
        ("5 hundred", ["500"]),
        ("1,000", ["1000"]),
        ("one oh one", ["101"]),
        ("four oh", ["40"]),
        ("oh seven", ["07"]),
        ("zero zero seven", ["007"]),
        ("double oh seven", ["007"]),
        ("triple 3", ["333"]),
        ("double four", ["44"]),
        ("oh", ["oh"]),
        ("oh forty two", ["oh", "42"]),
        ("oh, four", ["oh", "4"]),
        ("double trouble", ["double", "trouble"]),
        ("a cat", ["a", "cat"]),
        ("you and me", ["you", "and", "me"]),
        ("one hundred and then", ["100", "and", "then"]),
        ("42, 43", ["42", "43"]),
        ("forty, two", ["40", "2"]),
        ("4.2", ["4", "2"]),
        ("#42", ["42"]),
        ("It's the Red-Fox...", ["its", "the", "red", "fox"]),
        ("42nd street", ["42nd", "street"]),
        ("code42", ["code42"]),
        ("forty second street", ["40second", "street"]),
        ("hold on one second", ["hold", "on", "1second"]),
        ("one, second", ["1", "second"]),
        ("the second game", ["the", "second", "game"]),
        ("\uff14\uff12", ["42"]),  # full-width digits
        ("\u0664\u0662", ["42"]),  # Arabic-Indic digits
        ("", []),
        ("?!  ...", []),
        ("under_score", ["under", "score"]),
    ],
)
def test_normalize(text: str, tokens: list[str]) -> None:
    assert normalize(text) == tokens


def test_code_key_rejects_codes_without_letters_or_digits() -> None:
    assert code_key("Red  Fox") == ("red", "fox")
    with pytest.raises(ValueError, match="no letters or digits"):
        code_key("?!")


def test_a_repeated_cardinal_has_a_second_reading() -> None:
    assert [t.readings for t in tokenize("42 42 please")] == [("4242", "42"), ("please",)]
    assert [t.readings for t in tokenize("four four")] == [("44",)]  # single digits are not repetitions
    assert [t.readings for t in tokenize("forty two, forty two")] == [("42",), ("42",)]


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80))
def test_normalize_never_raises_and_gives_nonempty_tokens(text: str) -> None:
    tokens = normalize(text)
    assert all(tokens)
    assert tokens == [t.readings[0] for t in tokenize(text)]
