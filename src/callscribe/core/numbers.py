"""Spoken numbers and words as tokens: how game codes and transcripts are compared.

Pure and synchronous. :func:`normalize` turns text into tokens; two codes with the same tokens
(:func:`code_key`) are the same code. :mod:`callscribe.core.codes` matches codes on these tokens.

Text becomes a list of tokens:

1. Unicode NFKC, case-folded; apostrophes are removed (``it's`` -> ``its``); a comma between
   digits followed by exactly three digits is a thousands separator (``1,000`` -> ``1000``).
2. Tokens are runs of letters and digits. Whitespace, ``-`` and ``_`` only separate tokens
   (``forty-two`` is ``forty two``). Every other character (``, . ? ! : ; # ( )`` ...) also
   separates tokens and in addition ends a *number* (see 4): ``"42, 43"`` is two numbers.
   Letters and digits in one token stay one word (``42nd`` and ``code42`` are words, not 42).
3. Number words: ``zero``..``nine``, ``ten``..``nineteen``, ``twenty``..``ninety``,
   ``hundred``, ``thousand``, ``million``, and digit strings. In context also: ``a`` right before
   ``hundred``/``thousand``/``million`` (``a hundred`` = 100); ``and`` between such a scale word
   and a following ``one``..``ninety`` word (``one hundred and five``); ``oh``/``o`` as the digit 0
   when next to a single digit (``one oh one`` = 101, ``four oh`` = 40; ``oh`` alone or ``oh forty
   two`` stays the interjection); ``double``/``triple`` before a single digit (``double four`` =
   44, ``double oh seven`` = 007).
4. Consecutive number words and digit strings form one *number*, which becomes one token. The
   number is cut into English cardinals, each as long as grammar allows (``forty two`` = 42,
   ``one hundred twenty three`` = 123, ``two thousand and five`` = 2005), and the cardinals' digit
   strings are **concatenated**: spoken digits ``four two`` = 42, ``one twenty three`` = 123,
   ``nineteen ninety nine`` = 1999, ``zero zero seven`` = 007, ``4 2`` = 42. Digit strings keep
   their leading zeros (``007`` is not ``7``). The one extra reading: a number that is the same
   cardinal of two or more digits said repeatedly (``42 42``, ``forty two forty two``) also reads
   as that cardinal (42), after its concatenated reading (4242). Single digits are not
   repetitions: ``four four`` is 44 only.
5. A number directly followed by an ordinal word (``first`` .. ``ninetieth``, ``hundredth``...)
   becomes one token with it (``forty second`` -> ``40second``, ``one second`` -> ``1second``),
   which no plain code matches: the caller did not say 40 or 1. (``42nd`` is one word anyway.)

Known, accepted limits: a number word used as another word is still a number (``"the one with"``
contains 1); homophones (``for``, ``to``, ``won``) are not numbers; a number broken by
punctuation is several numbers (``"4, 2"`` is 4 then 2, as Deepgram writes a pause).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

__all__ = ["Token", "code_key", "normalize", "tokenize"]

_APOSTROPHES = re.compile("['\u2019\u02bc\u2018`]")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A word (letters/digits), a separator that keeps numbers together, or any other character.
_LEXEME = re.compile(r"([^\W_]+)|([\s_\-\u2010\u2011]+)|(.)", re.DOTALL)

_UNITS: Final = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS: Final = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS: Final = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_SCALES: Final = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_ZERO_WORDS: Final = frozenset({"oh", "o"})
_ORDINALS: Final = frozenset(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth "
    "thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth hundredth thousandth "
    "millionth".split()
)
_REPEATERS: Final = {"double": 2, "triple": 3}

# Kinds of number items.
_DIGITS, _UNIT, _TEEN, _TENS_KIND, _SCALE, _A, _AND = "digits", "unit", "teen", "tens", "scale", "a", "and"


@dataclass(frozen=True, slots=True)
class _Raw:
    """A word of the text; ``cut`` is true when punctuation separates it from the previous word."""

    text: str
    cut: bool


@dataclass(frozen=True, slots=True)
class _Item:
    """A word that is part of a number."""

    kind: str
    value: int = 0
    text: str = ""  # digit strings only (keeps leading zeros)


@dataclass(frozen=True, slots=True)
class Token:
    """A normalized token and its readings, the normal one first.

    A number said as the same cardinal of two or more digits repeatedly (``42 42``) has two
    readings: the concatenation (``"4242"``) and the cardinal (``"42"``). Every other token has one.
    """

    readings: tuple[str, ...]


def _lex(text: str) -> list[_Raw]:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _APOSTROPHES.sub("", text)
    text = _THOUSANDS_COMMA.sub("", text)
    words: list[_Raw] = []
    cut = False
    for match in _LEXEME.finditer(text):
        word, _separator, other = match.groups()
        if word is not None:
            words.append(_Raw(word, cut))
            cut = False
        elif other is not None:
            cut = True
    return words


def _ascii_digits(word: str) -> str | None:
    """``word`` as ASCII digits if it is all decimal digits (any script), else None."""
    if not word.isdecimal():
        return None
    return "".join(str(unicodedata.decimal(ch)) for ch in word)


def _single_digit(word: str) -> bool:
    return word in _UNITS or (len(word) == 1 and word.isdecimal())


def _classify(words: Sequence[_Raw]) -> list[_Item | None]:
    """The number item of each word (None for ordinary words), deciding context words."""
    n = len(words)

    def joined(i: int) -> bool:  # words i-1 and i are not separated by punctuation
        return 0 < i < n and not words[i].cut

    items: list[_Item | None] = [None] * n
    for i, raw in enumerate(words):
        w = raw.text
        digits = _ascii_digits(w)
        if digits is not None:
            items[i] = _Item(_DIGITS, int(digits), digits)
        elif w in _UNITS:
            items[i] = _Item(_UNIT, _UNITS[w])
        elif w in _TEENS:
            items[i] = _Item(_TEEN, _TEENS[w])
        elif w in _TENS:
            items[i] = _Item(_TENS_KIND, _TENS[w])
        elif w in _SCALES:
            items[i] = _Item(_SCALE, _SCALES[w])
        elif w == "a" and joined(i + 1) and words[i + 1].text in _SCALES:
            items[i] = _Item(_A, 1)
    # "and" between a scale word and a following one..ninety word.
    for i, raw in enumerate(words):
        if raw.text == "and" and joined(i) and joined(i + 1):
            before, after = items[i - 1], items[i + 1]
            if (
                before is not None
                and before.kind == _SCALE
                and after is not None
                and (after.kind in (_TEEN, _TENS_KIND) or (after.kind == _UNIT and after.value > 0))
            ):
                items[i] = _Item(_AND)
    # "oh"/"o": a run of them is zeros when a single digit is joined to either end of the run.
    i = 0
    while i < n:
        if words[i].text not in _ZERO_WORDS:
            i += 1
            continue
        j = i
        while j + 1 < n and joined(j + 1) and words[j + 1].text in _ZERO_WORDS:
            j += 1
        digit_before = joined(i) and _single_digit(words[i - 1].text)
        digit_after = joined(j + 1) and _single_digit(words[j + 1].text)
        if digit_before or digit_after:
            for k in range(i, j + 1):
                items[k] = _Item(_UNIT, 0)
        i = j + 1
    return items


def _expand_repeaters(words: Sequence[_Raw], items: list[_Item | None]) -> tuple[list[_Raw], list[_Item | None]]:
    """Replace "double"/"triple" + single digit by the digit two or three times."""
    out_words: list[_Raw] = []
    out_items: list[_Item | None] = []
    i, n = 0, len(words)
    while i < n:
        w = words[i]
        nxt = items[i + 1] if i + 1 < n and not words[i + 1].cut else None
        if (
            w.text in _REPEATERS
            and nxt is not None
            and (nxt.kind == _UNIT or (nxt.kind == _DIGITS and len(nxt.text) == 1))
        ):
            copies = _REPEATERS[w.text]
            out_words.append(w)  # the first copy takes the repeater's place (and its cut)
            out_items.append(nxt)
            out_words.extend(_Raw(words[i + 1].text, False) for _ in range(copies - 1))
            out_items.extend(nxt for _ in range(copies - 1))
            i += 2
            continue
        out_words.append(w)
        out_items.append(items[i])
        i += 1
    return out_words, out_items


def _parse_cardinal(items: Sequence[_Item], i: int) -> tuple[str, int]:
    """The longest English cardinal starting at ``items[i]``: its digit string and end index.

    Always consumes at least one item. A digit string is a cardinal of its own unless a scale
    word follows it (``5 hundred``). Units follow only a tens word, ``hundred``, a bigger scale
    or ``and``; teens and tens only the start, ``hundred``, a bigger scale or ``and``; ``hundred``
    follows the start or a one..ninety-nine number; ``thousand``/``million`` follow any number
    and must come in decreasing order.
    """
    n = len(items)
    first = items[i]
    if first.kind == _DIGITS and not (
        i + 1 < n and items[i + 1].kind == _SCALE and first.value >= 1 and not first.text.startswith("0")
    ):
        return first.text, i + 1
    if first.kind == _UNIT and first.value == 0:
        return "0", i + 1
    if first.kind == _AND:  # only reachable through malformed input; skip it
        return "", i + 1
    total = current = 0
    last: str | None = None
    big = 10**18  # the last thousand/million scale used; the next must be smaller
    has_hundred = False
    j = i
    while j < n:
        item = items[j]
        kind = item.kind
        if kind in (_DIGITS, _A):
            if last is not None:
                break
            current, last = item.value, "mult"  # always followed by a scale word here
        elif kind == _UNIT:
            if item.value == 0 or last not in (None, _TENS_KIND, "hundred", "big", _AND):
                break
            current += item.value
            last = _UNIT
        elif kind in (_TEEN, _TENS_KIND):
            if last not in (None, "hundred", "big", _AND):
                break
            current += item.value
            last = kind
        elif kind == _SCALE and item.value == 100:
            if has_hundred or last in ("hundred", "big", _AND):
                break
            current = (current if last is not None else 1) * 100
            has_hundred, last = True, "hundred"
        elif kind == _SCALE:
            if item.value >= big or last == _AND:
                break
            total += (current if last is not None else 1) * item.value
            current, big, has_hundred, last = 0, item.value, False, "big"
        else:  # _AND
            if last not in ("hundred", "big"):
                break
            last = _AND
        j += 1
    if last == _AND:  # cannot end on "and" (classification guarantees a number follows)
        j -= 1
    return str(total + current), j


def _number_token(items: Sequence[_Item]) -> Token:
    cardinals: list[str] = []
    i, n = 0, len(items)
    while i < n:  # bounded: every step consumes at least one item
        text, i = _parse_cardinal(items, i)
        if text:
            cardinals.append(text)
    joined = "".join(cardinals)
    readings = [joined]
    if len(cardinals) >= 2 and len(cardinals[0]) >= 2 and all(c == cardinals[0] for c in cardinals):
        readings.append(cardinals[0])
    return Token(tuple(readings))


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text`` with their readings (see the module documentation for the rules)."""
    words = _lex(text)
    words, items = _expand_repeaters(words, _classify(words))
    tokens: list[Token] = []
    run: list[_Item] = []
    for raw, item in zip(words, items, strict=False):
        if run and item is None and not raw.cut and raw.text in _ORDINALS:
            # "forty second", "one second": an ordinal or a phrase, never the bare number.
            tokens.append(Token((_number_token(run).readings[0] + raw.text,)))
            run = []
            continue
        if run and (item is None or raw.cut):
            tokens.append(_number_token(run))
            run = []
        if item is None:
            tokens.append(Token((raw.text,)))
        else:
            run.append(item)
    if run:
        tokens.append(_number_token(run))
    return [t for t in tokens if t.readings[0]]


def normalize(text: str) -> list[str]:
    """Normalize ``text`` into tokens (see the module documentation for the rules).

    >>> normalize("Number forty-two, please.")
    ['number', '42', 'please']
    >>> normalize("four two"), normalize("one hundred"), normalize("Red Fox!")
    (['42'], ['100'], ['red', 'fox'])
    """
    return [token.readings[0] for token in tokenize(text)]


@lru_cache(maxsize=8192)
def code_key(code: str) -> tuple[str, ...]:
    """The normalized tokens of a code: codes with equal keys are the same code.

    Raises :class:`ValueError` if the code has no letters or digits.
    """
    key = tuple(normalize(code))
    if not key:
        raise ValueError(f"game code {code!r} has no letters or digits")
    return key
