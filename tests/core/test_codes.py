"""Tests for callscribe.core.codes: matching rules, Deepgram results, the pool."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core import keypad, numbers
from callscribe.core.codes import (
    DEFAULT_CODES,
    CodeMatcher,
    CodePool,
    DtmfCollector,
    code_from_results,
    code_key,
    find_code,
    normalize,
)

# --- An independent speller of English numbers, used to check the parser ------------------------

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def cardinal(n: int, *, hyphen: bool = True, and_: bool = True, a: bool = False) -> str:
    """English cardinal for 0 <= n <= 999."""
    if n < 10:
        return ONES[n]
    if n < 20:
        return TEENS[n - 10]
    if n < 100:
        tens, unit = divmod(n, 10)
        return TENS[tens] + (("-" if hyphen else " ") + ONES[unit] if unit else "")
    hundreds, rest = divmod(n, 100)
    head = ("a" if a and hundreds == 1 else ONES[hundreds]) + " hundred"
    if rest:
        head += (" and " if and_ else " ") + cardinal(rest, hyphen=hyphen)
    return head


def digit_by_digit(n: int, zero: str = "zero") -> str:
    return " ".join(zero if d == "0" else ONES[int(d)] for d in str(n))


def spoken_forms(n: int) -> list[str]:
    """Ways a caller (or Deepgram's formatting) might say n."""
    forms = {
        str(n),
        f"{n}.",
        cardinal(n),
        cardinal(n, hyphen=False),
        cardinal(n, and_=False),
        cardinal(n, a=True),
        digit_by_digit(n),
        " ".join(str(n)),  # "4 2"
    }
    if n != 0:
        forms.add(digit_by_digit(n, "oh"))  # "one oh five"; a lone "oh" is not zero
    if n >= 100 and n % 100 >= 10:
        forms.add(f"{ONES[n // 100]} {cardinal(n % 100)}")  # "nine ninety-nine"
    return sorted(forms)


ALL_1000 = [str(n) for n in range(1000)]
FILLER = ["game", "code", "is", "please", "i", "want", "the", "number", "hello", "yes", "it's", "my", "um", "Okay"]


# --- matching rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transcript", "active", "expected"),
    [
        # Spoken forms of 42.
        ("42", ["42"], "42"),
        ("forty two", ["42"], "42"),
        ("forty-two", ["42"], "42"),
        ("four two", ["42"], "42"),
        ("number 42.", ["42"], "42"),
        ("My code is 42, please.", ["42"], "42"),
        # Whole numbers only: never part of one.
        ("42", ["4"], None),
        ("42", ["2"], None),
        ("4", ["42"], None),
        ("four two", ["4", "2"], None),
        ("forty two", ["40", "2"], None),
        ("forty two", ["40", "42"], "42"),
        ("four", ["4", "42"], "4"),
        ("one hundred", ["100", "1"], "100"),
        ("142", ["42", "14"], None),
        ("forty second", ["40", "42"], None),
        ("wait one second, it's 7", ["1", "7"], "7"),
        ("7", ["07"], None),
        ("oh seven", ["07", "7"], "07"),
        # Repetition.
        ("42 42", ["42"], "42"),
        ("forty two forty two", ["42"], "42"),
        ("42 42", ["4242", "42"], "4242"),
        ("four four", ["4"], None),
        ("four four", ["44"], "44"),
        # First spoken wins.
        ("is it red fox or 42", ["42", "red fox"], "red fox"),
        ("42 or red fox", ["red fox", "42"], "42"),
        ("seven, no, eight", ["8", "7"], "7"),
        ("the fox is red", ["red", "fox"], "fox"),
        # Longest at the same position.
        ("red fox", ["red", "red fox"], "red fox"),
        ("red dog", ["red", "red fox"], "red"),
        ("red four", ["red", "red 4"], "red 4"),
        ("red forty", ["red", "red 4"], "red"),
        # Words: whole tokens, case and punctuation ignored.
        ("Banana!", ["banana"], "banana"),
        ("bananas", ["banana"], None),
        ("BANANA-split", ["banana"], "banana"),
        ("Red, Fox.", ["red fox"], "red fox"),
        ("fox red", ["red fox"], None),
        ("the seven seas", ["7 seas"], "7 seas"),
        ("nothing here", ["42", "banana"], None),
        ("", ["42"], None),
        ("42", [], None),
    ],
)
def test_find_code(transcript: str, active: list[str], expected: str | None) -> None:
    assert find_code(transcript, active) == expected


def test_codes_are_returned_as_written() -> None:
    assert find_code("number 42", ["forty-two"]) == "forty-two"
    assert find_code("Fox", ["  Red   Fox ", "FOX"]) == "FOX"
    assert find_code("Red fox", ["  Red   Fox ", "FOX"]) == "  Red   Fox "


def test_matcher_refuses_codes_that_sound_the_same() -> None:
    with pytest.raises(ValueError, match="'42' and 'forty two' are the same code"):
        CodeMatcher(["42", "forty two"])
    with pytest.raises(ValueError, match="no letters or digits"):
        CodeMatcher(["42", "..."])
    assert CodeMatcher(["42", "42"]).codes == frozenset({"42"})


def test_every_number_below_1000_matches_in_all_its_spoken_forms() -> None:
    matcher = CodeMatcher(ALL_1000)
    for n in range(1000):
        for form in spoken_forms(n):
            assert matcher.find(form) == str(n), form
            assert matcher.find(f"Game number {form}, please.") == str(n), form


def test_no_spoken_number_below_1000_matches_any_other_code() -> None:
    # The same forms against every other code at once: nothing may match.
    forms = {n: spoken_forms(n) for n in range(1000)}
    for n in range(1000):
        others = CodeMatcher(ALL_1000[:n] + ALL_1000[n + 1 :])
        for form in forms[n]:
            assert others.find(f"um {form} please") is None, form


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 999),
    m=st.integers(0, 999),
    form_index=st.integers(0, 20),
    before=st.lists(st.sampled_from(FILLER), max_size=4),
    after=st.lists(st.sampled_from(FILLER), max_size=4),
    end=st.sampled_from(["", ".", "?", "!", ","]),
    upper=st.booleans(),
)
def test_a_spoken_number_matches_itself_and_no_other(
    n: int, m: int, form_index: int, before: list[str], after: list[str], end: str, upper: bool
) -> None:
    forms = spoken_forms(n)
    form = forms[form_index % len(forms)]
    text = " ".join([*before, form + end, *after])
    if upper:
        text = text.upper()
    assert find_code(text, [str(n)]) == str(n)
    if m != n:
        assert find_code(text, [str(m)]) is None
        assert find_code(text, [str(m), str(n)]) == str(n)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 999), digit=st.integers(0, 9))
def test_a_single_digit_never_matches_inside_a_longer_number(n: int, digit: int) -> None:
    if str(digit) == str(n):
        return
    for form in spoken_forms(n):
        assert find_code(f"it is {form}", [str(digit)]) is None


@settings(max_examples=200, deadline=None)
@given(
    a=st.integers(0, 99),
    b=st.integers(0, 99),
    middle=st.lists(st.sampled_from(FILLER), min_size=1, max_size=3),
    spell_a=st.booleans(),
    spell_b=st.booleans(),
)
def test_the_first_spoken_code_wins(a: int, b: int, middle: list[str], spell_a: bool, spell_b: bool) -> None:
    if a == b:
        return
    say_a = cardinal(a) if spell_a else str(a)
    say_b = cardinal(b) if spell_b else str(b)
    text = f"{say_a}, {' '.join(middle)} {say_b}"
    assert find_code(text, DEFAULT_CODES) == str(a)
    assert find_code(text, [str(b), str(a)]) == str(a)
    assert find_code(text, [str(b)]) == str(b)


word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=8).filter(
    lambda w: w not in {"and", "double", "triple", *ONES, *TEENS, *TENS, "hundred", "thousand", "million"}
)


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(word, min_size=1, max_size=3),
    before=st.lists(st.sampled_from(FILLER), max_size=3),
    separator=st.sampled_from([" ", "-", ", ", "  "]),
    upper=st.booleans(),
)
def test_word_codes_match_as_whole_token_sequences(
    words: list[str], before: list[str], separator: str, upper: bool
) -> None:
    code = " ".join(words)
    said = separator.join(words)
    text = " ".join([*before, (said.upper() if upper else said) + "!"])
    assert find_code(text, [code]) == code
    # Dropping the last word or gluing a letter on never matches.
    glued = " ".join([*before, said + "s"])
    assert find_code(glued, [code]) is None
    if len(words) > 1:
        assert find_code(" ".join([*before, *words[:-1]]), [code]) is None


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60), codes=st.lists(st.sampled_from([*ALL_1000[:120], "red fox", "banana"]), max_size=8))
def test_find_code_returns_an_active_code_or_none_for_any_text(text: str, codes: list[str]) -> None:
    found = find_code(text, codes)
    assert found is None or found in codes
    assert find_code(text, []) is None
    normalize(text)  # never raises


# --- Deepgram results ----------------------------------------------------------------------------


def results(transcript: str = "forty two", *, is_final: object = True, channel: object = (0, 2)) -> dict[str, object]:
    message: dict[str, object] = {
        "type": "Results",
        "is_final": is_final,
        "speech_final": is_final,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9, "words": []}]},
    }
    if channel is not None:
        message["channel_index"] = list(channel)  # type: ignore[call-overload]
    return message


def test_code_from_results_takes_final_caller_results_only() -> None:
    assert code_from_results(results()) == "forty two"
    assert code_from_results(results(channel=(0, 1))) == "forty two"
    assert code_from_results(results(channel=None)) == "forty two"
    assert code_from_results(results(is_final=False)) is None
    assert code_from_results(results(is_final="true")) is None
    assert code_from_results(results(channel=(1, 2))) is None
    assert code_from_results(results("   ")) is None
    assert code_from_results({"type": "UtteranceEnd", "channel": [0, 2], "last_word_end": 1.0}) is None
    assert code_from_results({"type": "Metadata"}) is None


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"type": "Results", "is_final": True},
        {"type": "Results", "is_final": True, "channel": None},
        {"type": "Results", "is_final": True, "channel": {"alternatives": []}},
        {"type": "Results", "is_final": True, "channel": {"alternatives": ["x"]}},
        {"type": "Results", "is_final": True, "channel": {"alternatives": [{"transcript": 42}]}},
        {"type": "Results", "is_final": True, "channel_index": "0", "channel": {"alternatives": [{"transcript": "x"}]}},
        {"type": "Results", "is_final": True, "channel_index": [], "channel": {"alternatives": [{"transcript": "x"}]}},
    ],
)
def test_code_from_results_ignores_malformed_messages(message: dict[str, object]) -> None:
    assert code_from_results(message) is None


def test_an_interim_result_never_patches_a_caller() -> None:
    pool = CodePool(["42"])
    assert pool.acquire() == "42"
    messages = [results("forty two", is_final=False), results("forty two", is_final=True)]
    matched = [
        pool.find_code(transcript) if (transcript := code_from_results(m)) is not None else None for m in messages
    ]
    assert matched == [None, "42"]


# --- the pool ------------------------------------------------------------------------------------


def test_default_pool_has_codes_0_to_99() -> None:
    pool = CodePool(rng=random.Random(1))
    assert pool.codes == tuple(str(n) for n in range(100))
    assert pool.free_count == 100 and pool.active == frozenset() and len(pool) == 100
    got = {pool.acquire() for _ in range(100)}
    assert got == set(pool.codes)
    assert pool.free_count == 0
    assert pool.acquire() is None
    assert pool.active == frozenset(pool.codes)


def test_acquire_is_random_but_deterministic_with_a_seeded_rng() -> None:
    first = [CodePool(rng=random.Random(7)).acquire() for _ in range(3)]
    assert len(set(first)) == 1
    a, b = CodePool(rng=random.Random(7)), CodePool(rng=random.Random(7))
    assert [a.acquire() for _ in range(50)] == [b.acquire() for _ in range(50)]
    sequences = {tuple(CodePool(rng=random.Random(seed)).acquire() for _ in range(5)) for seed in range(20)}
    assert len(sequences) > 1


def test_release_frees_a_code_for_reuse() -> None:
    pool = CodePool(["x", "y"], rng=random.Random(0))
    a = pool.acquire()
    b = pool.acquire()
    assert {a, b} == {"x", "y"} and pool.acquire() is None
    assert a is not None and pool.release(a) is True
    assert pool.release(a) is False  # idempotent
    assert pool.active == frozenset({b}) and pool.free_count == 1
    assert pool.acquire() == a
    with pytest.raises(ValueError, match="'z' is not a code of this pool"):
        pool.release("z")


def test_pool_finds_only_active_codes() -> None:
    pool = CodePool(["4", "42", "banana"], rng=random.Random(0))
    assert pool.find_code("forty two") is None
    held = [pool.acquire() for _ in range(3)]
    assert sorted(held) == ["4", "42", "banana"]  # type: ignore[type-var]
    assert pool.find_code("forty two") == "42"
    assert pool.find_code("four") == "4"
    pool.release("42")
    assert pool.find_code("forty two") is None
    assert pool.find_code("Banana, 4") == "banana"


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.one_of(st.none(), st.integers(0, 9)), max_size=60), seed=st.integers(0, 2**32))
def test_pool_never_hands_out_a_held_code(ops: list[int | None], seed: int) -> None:
    codes = [str(n) for n in range(10)]
    pool = CodePool(codes, rng=random.Random(seed))
    held: set[str] = set()
    for op in ops:
        if op is None:
            code = pool.acquire()
            if len(held) == len(codes):
                assert code is None
            else:
                assert code is not None and code not in held and code in codes
                held.add(code)
        else:
            assert pool.release(codes[op]) is (codes[op] in held)
            held.discard(codes[op])
        assert pool.active == held
        assert pool.free_count == len(codes) - len(held)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([], "the list of game codes is empty"),
        (["42", "forty-two"], r'#2 \("forty-two"\) is the same code as #1 \("42"\)'),
        ([1, "one"], r"#2 \(\"one\"\) is the same code as #1 \(1\)"),
        (["Red Fox", "red  fox!"], "same code"),
        (["ok", "?!"], r'#2 \("\?!"\) has no letters or digits'),
        (["ok", "   "], r"#2 .* is empty"),
        ([True], "must be a whole number or a string"),
        ([4.5], "must be a whole number or a string"),
        ([None], "must be a whole number or a string"),
        ([["x"]], "must be a whole number or a string"),
        ([-5], "is negative"),
    ],
)
def test_pool_rejects_bad_code_lists(entries: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodePool(entries)  # type: ignore[arg-type]


def test_pool_from_file(tmp_path: Path) -> None:
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"game_codes": [7, "007", "Red Fox", "  banana  split "], "other": 1}))
    pool = CodePool.from_file(path, rng=random.Random(3))
    assert pool.codes == ("7", "007", "Red Fox", "banana split")
    while pool.acquire() is not None:
        pass
    assert pool.find_code("double oh seven") == "007"
    assert pool.find_code("seven") == "7"
    assert pool.find_code("a red fox") == "Red Fox"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2]", 'expected a JSON object with a "game_codes" list'),
        (b'{"codes": [1]}', 'expected a JSON object with a "game_codes" list'),
        (b'{"game_codes": "42"}', '"game_codes" must be a list, not str'),
        (b'{"game_codes": []}', "empty"),
        (b'{"game_codes": [42, "forty two"]}', "same code"),
        (b'{"game_codes": ["--"]}', "no letters or digits"),
    ],
)
def test_pool_from_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "codes.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as raised:
        CodePool.from_file(path)
    assert str(path) in str(raised.value)


def test_pool_from_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the game codes file"):
        CodePool.from_file(tmp_path / "missing.json")


def test_the_number_grammar_and_the_keypad_are_importable_from_codes() -> None:
    # Callers import these from callscribe.core.codes; they live in numbers and keypad.
    assert (normalize, code_key, DtmfCollector) == (numbers.normalize, numbers.code_key, keypad.DtmfCollector)
