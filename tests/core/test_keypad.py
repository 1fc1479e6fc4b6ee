"""Tests for callscribe.core.keypad: code entry on the phone's keypad."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.codes import find_code
from callscribe.core.keypad import DtmfCollector, digit_form


def press_all(collector: DtmfCollector, keys: str, active: list[str]) -> list[str | None]:
    return [collector.press(k, active) for k in keys]


def test_dtmf_hash_submits_and_star_clears() -> None:
    c = DtmfCollector()
    assert press_all(c, "12", ["123"]) == [None, None]
    assert c.pending == "12"
    assert c.press("#") == "12"
    assert c.pending == ""
    assert c.press("#") is None  # nothing keyed
    assert press_all(c, "9*5#", []) == [None, None, None, "5"]


def test_dtmf_submits_at_once_when_no_longer_code_starts_with_the_digits() -> None:
    active = ["4", "42", "7", "banana"]
    c = DtmfCollector()
    assert c.press("7", active) == "7"  # unambiguous
    assert c.press("4", active) is None  # 42 might follow
    assert c.press("2", active) == "42"
    assert c.press("4", active) is None
    assert c.press("#", active) == "4"  # or the shell submits after a pause
    assert find_code("4", active) == "4"


def test_dtmf_entry_maps_to_codes_written_as_words() -> None:
    active = ["forty two", "banana"]
    c = DtmfCollector()
    assert c.press("4", active) is None
    entry = c.press("2", active)
    assert entry == "42"
    assert find_code(entry, active) == "forty two"


def test_dtmf_reset_ignored_keys_and_bound() -> None:
    c = DtmfCollector(max_digits=3)
    assert press_all(c, "1A2w", []) == [None] * 4
    assert c.pending == "12"
    c.reset()
    assert c.pending == ""
    assert press_all(c, "12345", []) == [None] * 5
    assert c.pending == "345"
    assert c.press(" # ") == "345"
    with pytest.raises(ValueError):
        DtmfCollector(max_digits=0)


def test_dtmf_leading_zeros_are_kept() -> None:
    c = DtmfCollector()
    active = ["7", "007"]
    assert press_all(c, "00", active) == [None, None]
    assert c.press("7", active) == "007"
    assert c.press("7", active) == "7"


@settings(max_examples=200, deadline=None)
@given(keys=st.text(alphabet="0123456789*#", max_size=30), active=st.sets(st.integers(0, 120), max_size=10))
def test_dtmf_submissions_are_digit_strings(keys: str, active: set[int]) -> None:
    codes = [str(n) for n in active]
    c = DtmfCollector()
    for key in keys:
        entry = c.press(key, codes)
        if entry is not None:
            assert entry.isdigit()
            if key != "#":  # submitted on its own: it is an active code
                assert entry in codes
                assert not any(code != entry and code.startswith(entry) for code in codes)


def test_digit_form_is_the_keyed_form_of_a_one_number_code() -> None:
    assert [digit_form(c) for c in ["42", "forty two", "007", "double oh seven", "red fox", "42, 43"]] == [
        "42",
        "42",
        "007",
        "007",
        None,
        None,
    ]
