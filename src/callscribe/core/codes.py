"""Game codes: a pool of codes for games, and finding a code in what a caller says or keys in.

Pure and synchronous (no trio, no I/O apart from :meth:`CodePool.from_file`).

Codes
=====
A :class:`CodePool` holds the codes games can get: ``"0"`` .. ``"99"`` by default, or the
``"game_codes"`` list of a JSON file. Entries may be numbers (``42``), digit strings (``"007"``),
words or phrases (``"banana"``, ``"Red Fox"``, ``"forty two"``). A code is compared with speech
through its *normalized form* (:func:`normalize`), so two entries with the same normalized
form (``42`` and ``"forty-two"``) are the same code and a file holding both is refused. The code
handed to a game and returned by the matchers is always the entry as written (whitespace
collapsed, numbers as decimal strings).

Normalization (:func:`normalize`)
=================================
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
   their leading zeros (``007`` is not ``7``).
5. A number directly followed by an ordinal word (``first`` .. ``ninetieth``, ``hundredth``...)
   becomes one token with it (``forty second`` -> ``40second``, ``one second`` -> ``1second``),
   which no plain code matches: the caller did not say 40 or 1. (``42nd`` is one word anyway.)

Matching (:func:`find_code`, :class:`CodeMatcher`)
===================================================
The transcript and every active code are normalized; a code matches where its tokens equal a
run of consecutive transcript tokens.

* **Whole tokens, whole numbers.** A code never matches part of a token or part of a number:
  ``4`` does not match ``42``, ``42`` does not match ``4``, ``banana`` does not match ``bananas``.
  A number is what the caller said as a whole, so spoken ``forty two`` is 42 and matches neither
  ``40`` nor ``2`` even when those are the only active codes (just as ``42`` never matches ``4``);
  likewise ``four two`` is 42, never ``4``. Matching a part would risk patching a caller into the
  wrong game, while a miss only makes them say it again.
* **Repetition.** The one extra reading of a number: when it is the same cardinal of two or
  more digits said repeatedly (``42 42``, ``forty two forty two``), it also matches that cardinal
  (42), after its concatenated reading (4242). Single digits are not repetitions: ``four four``
  is 44 only.
* **First spoken wins.** Among several active codes in one transcript, the one starting at the
  earliest token wins: ``"is it red fox or 42"`` -> ``red fox``.
* **Longest at the same position.** With ``red`` and ``red fox`` active, ``red fox`` wins on
  ``"red fox"``. At equal length, the plain reading of a number beats its repetition reading.
* **Case and punctuation never matter** for words: ``"Red, Fox!"`` matches ``red fox``.
* **Codes are compared by value.** ``one`` and ``1``, ``twelve`` and ``one two`` normalize alike:
  they are one code.

Known, accepted limits: a number word used as another word is still a number (``"the one with"``
contains 1); homophones (``for``, ``to``, ``won``) are not numbers; a number broken by
punctuation is several numbers (``"4, 2"`` is 4 then 2, as Deepgram writes a pause).

Deepgram results (:func:`code_from_results`)
============================================
Only final results (``is_final: true``) of the caller's channel (``channel_index[0] == 0``) are
matched; interim results never are. Each final result is matched on its own.

Keypad (:class:`DtmfCollector`)
===============================
Digits pressed on the keypad (Twilio ``dtmf`` events) accumulate; ``#`` submits them, ``*``
clears them. The shell handles a pause by calling :meth:`DtmfCollector.submit` or
:meth:`DtmfCollector.reset`. The collector also submits on its own as soon as the digits equal
the digit form of an active code and no longer active code starts with them (``4`` with codes
``4`` and ``42`` active waits; ``42`` then submits at once). Only codes whose normalized form is
one all-digit token can be keyed in. A submission is the digit string; pass it to
:func:`find_code` to get the code.
"""

from __future__ import annotations

import json
import os
import random
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

__all__ = [
    "DEFAULT_CODES",
    "CodeMatcher",
    "CodePool",
    "DtmfCollector",
    "code_from_results",
    "code_key",
    "find_code",
    "normalize",
]

#: The default codes: ``"0"`` .. ``"99"``, like the reference game distributor.
DEFAULT_CODES: Final[tuple[str, ...]] = tuple(str(n) for n in range(100))

# ---------------------------------------------------------------------------------------------
# Tokenizing
# ---------------------------------------------------------------------------------------------

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
class _Token:
    """A normalized token and its readings, the normal one first (numbers may have two)."""

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


def _number_token(items: Sequence[_Item]) -> _Token:
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
    return _Token(tuple(readings))


def _tokens(text: str) -> list[_Token]:
    words = _lex(text)
    words, items = _expand_repeaters(words, _classify(words))
    tokens: list[_Token] = []
    run: list[_Item] = []
    for raw, item in zip(words, items, strict=False):
        if run and item is None and not raw.cut and raw.text in _ORDINALS:
            # "forty second", "one second": an ordinal or a phrase, never the bare number.
            tokens.append(_Token((_number_token(run).readings[0] + raw.text,)))
            run = []
            continue
        if run and (item is None or raw.cut):
            tokens.append(_number_token(run))
            run = []
        if item is None:
            tokens.append(_Token((raw.text,)))
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
    return [token.readings[0] for token in _tokens(text)]


@lru_cache(maxsize=8192)
def code_key(code: str) -> tuple[str, ...]:
    """The normalized tokens of a code: codes with equal keys are the same code.

    Raises :class:`ValueError` if the code has no letters or digits.
    """
    key = tuple(normalize(code))
    if not key:
        raise ValueError(f"game code {code!r} has no letters or digits")
    return key


def _digit_form(code: str) -> str | None:
    """The digits to key in for ``code``, or None if it cannot be keyed in."""
    key = code_key(code)
    if len(key) == 1 and key[0].isdecimal() and key[0].isascii():
        return key[0]
    return None


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


class CodeMatcher:
    """Finds the first spoken of a fixed set of active codes in transcripts.

    Raises :class:`ValueError` if a code has no letters or digits, or two codes normalize alike
    (they could not be told apart).
    """

    def __init__(self, active_codes: Iterable[str]) -> None:
        by_key: dict[tuple[str, ...], str] = {}
        for code in active_codes:
            key = code_key(code)
            other = by_key.get(key)
            if other is not None and other != code:
                raise ValueError(
                    f"game codes {other!r} and {code!r} are the same code once normalized ({' '.join(key)!r})"
                )
            by_key[key] = code
        # First token -> (key, code), longest key first.
        self._by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for key, code in sorted(by_key.items(), key=lambda kv: -len(kv[0])):
            self._by_first.setdefault(key[0], []).append((key, code))
        self._codes = frozenset(by_key.values())

    @property
    def codes(self) -> frozenset[str]:
        """The active codes this matcher looks for."""
        return self._codes

    def find(self, transcript: str) -> str | None:
        """The first spoken active code in ``transcript`` (longest at the same position), or None."""
        if not self._by_first:
            return None
        tokens = _tokens(transcript)
        n = len(tokens)
        for i, token in enumerate(tokens):
            best: tuple[tuple[int, ...], str] | None = None  # (rank, code)
            for first_rank, first in enumerate(token.readings):
                for key, code in self._by_first.get(first, ()):
                    length = len(key)
                    if i + length > n:
                        continue
                    ranks = [first_rank]
                    for offset in range(1, length):
                        readings = tokens[i + offset].readings
                        if key[offset] not in readings:
                            break
                        ranks.append(readings.index(key[offset]))
                    else:
                        rank = (-length, *ranks)
                        if best is None or rank < best[0]:
                            best = (rank, code)
            if best is not None:
                return best[1]
        return None


def find_code(transcript: str, active_codes: Iterable[str]) -> str | None:
    """The first spoken of ``active_codes`` in ``transcript``, or None.

    See the module documentation for the rules. ``find_code("number 42.", ["4", "42"])`` is
    ``"42"``; ``find_code("forty two", ["40", "2"])`` is None.
    """
    return CodeMatcher(active_codes).find(transcript)


def code_from_results(message: Mapping[str, Any]) -> str | None:
    """The transcript of a Deepgram message worth matching, or None.

    Only a ``Results`` message with ``is_final: true`` for the caller's channel
    (``channel_index[0] == 0``; a missing ``channel_index`` counts as channel 0) and a non-blank
    first alternative qualifies. Interim results, the other party's channel, other message types
    and malformed messages give None.
    """
    if not isinstance(message, Mapping) or message.get("type", "Results") != "Results":
        return None
    if message.get("is_final") is not True:
        return None
    channel_index = message.get("channel_index", [0])
    if not isinstance(channel_index, list) or not channel_index or channel_index[0] != 0:
        return None
    channel = message.get("channel")
    if not isinstance(channel, Mapping):
        return None
    alternatives = channel.get("alternatives")
    if not isinstance(alternatives, list) or not alternatives or not isinstance(alternatives[0], Mapping):
        return None
    transcript = alternatives[0].get("transcript")
    if not isinstance(transcript, str) or not transcript.strip():
        return None
    return transcript


# ---------------------------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------------------------


def _describe(entry: object) -> str:
    text = json.dumps(entry, ensure_ascii=False) if isinstance(entry, (str, int, float, bool)) else repr(entry)
    return text if len(text) <= 60 else text[:57] + "..."


def _validate_codes(entries: Sequence[object], source: str) -> tuple[str, ...]:
    if not entries:
        raise ValueError(f"{source}: the list of game codes is empty")
    codes: list[str] = []
    seen: dict[tuple[str, ...], tuple[int, object]] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{source}: game code #{number} ({_describe(entry)})"
        if isinstance(entry, bool) or not isinstance(entry, (int, str)):
            raise ValueError(f"{where} must be a whole number or a string")
        if isinstance(entry, int):
            if entry < 0:
                raise ValueError(f"{where} is negative; codes must be sayable")
            code = str(entry)
        else:
            code = " ".join(entry.split())
            if not code:
                raise ValueError(f"{where} is empty")
        try:
            key = code_key(code)
        except ValueError:
            raise ValueError(f"{where} has no letters or digits") from None
        if key in seen:
            first_number, first_entry = seen[key]
            raise ValueError(
                f"{where} is the same code as #{first_number} ({_describe(first_entry)}) "
                f"once normalized ({' '.join(key)!r}); callers could not tell them apart"
            )
        seen[key] = (number, entry)
        codes.append(code)
    return tuple(codes)


class CodePool:
    """The codes games can hold; each code is held by at most one game at a time.

    ``codes``: numbers or strings (default ``"0"`` .. ``"99"``), validated like a file's list.
    ``rng``: where :meth:`acquire`'s random choice comes from (seed it for deterministic tests).
    """

    def __init__(
        self,
        codes: Iterable[str | int] | None = None,
        *,
        rng: random.Random | None = None,
        source: str = "game codes",
    ) -> None:
        entries: Sequence[object] = DEFAULT_CODES if codes is None else list(codes)
        self._codes = _validate_codes(entries, source)
        self._rng = rng if rng is not None else random.Random()
        self._free: list[str] = list(self._codes)
        self._held: dict[str, None] = {}  # insertion-ordered set
        self._matcher: CodeMatcher | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, rng: random.Random | None = None) -> CodePool:
        """Load codes from a JSON file ``{"game_codes": [...]}`` (other keys are ignored).

        Every problem, including an unreadable file, raises :class:`ValueError` with one line
        naming the file: not UTF-8 or not JSON, no ``"game_codes"`` list, an empty list, an
        entry that is not a whole number or a string, that has no letters or digits, or that
        is the same code as an earlier entry once normalized.
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as f:
                raw = f.read()
        except OSError as error:
            raise ValueError(f"{name}: cannot read the game codes file: {error.strerror or error}") from None
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise ValueError(f"{name}: the game codes file is not UTF-8 text") from None
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{name}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
            ) from None
        if not isinstance(data, dict) or "game_codes" not in data:
            raise ValueError(f'{name}: expected a JSON object with a "game_codes" list')
        codes = data["game_codes"]
        if not isinstance(codes, list):
            raise ValueError(f'{name}: "game_codes" must be a list, not {type(codes).__name__}')
        return cls(codes, rng=rng, source=name)

    @property
    def codes(self) -> tuple[str, ...]:
        """Every code of the pool, in the order given."""
        return self._codes

    @property
    def active(self) -> frozenset[str]:
        """The codes held by games."""
        return frozenset(self._held)

    @property
    def free_count(self) -> int:
        """How many codes are free."""
        return len(self._free)

    def __len__(self) -> int:
        return len(self._codes)

    def acquire(self) -> str | None:
        """Hold a free code chosen at random and return it; None when every code is held."""
        if not self._free:
            return None
        index = self._rng.randrange(len(self._free))
        code = self._free[index]
        last = self._free.pop()
        if index < len(self._free):
            self._free[index] = last
        self._held[code] = None
        self._matcher = None
        return code

    def release(self, code: str) -> bool:
        """Free a held code. True if it was held; releasing a free code does nothing (False).

        Raises :class:`ValueError` for a code that is not in the pool.
        """
        if code not in self._held:
            if code in self._free:
                return False
            raise ValueError(f"{code!r} is not a code of this pool")
        del self._held[code]
        self._free.append(code)
        self._matcher = None
        return True

    def find_code(self, transcript: str) -> str | None:
        """:func:`find_code` among the active codes (the matcher is cached between changes)."""
        if self._matcher is None:
            self._matcher = CodeMatcher(self._held)
        return self._matcher.find(transcript)


# ---------------------------------------------------------------------------------------------
# Keypad
# ---------------------------------------------------------------------------------------------


class DtmfCollector:
    """Collects keypad digits into a code entry (see the module documentation).

    ``max_digits`` bounds the entry; further digits push out the oldest ones.
    """

    def __init__(self, *, max_digits: int = 12) -> None:
        if max_digits < 1:
            raise ValueError(f"max_digits must be at least 1, got {max_digits}")
        self._max = max_digits
        self._digits = ""

    @property
    def pending(self) -> str:
        """The digits collected so far."""
        return self._digits

    def press(self, key: str, active_codes: Iterable[str] = ()) -> str | None:
        """Handle one key (Twilio's ``dtmf.digit``). Returns a submitted entry, or None.

        ``0``-``9`` add a digit and submit at once when the digits equal an active code's digit
        form and no longer active code starts with them; ``#`` submits (None if nothing was
        keyed); ``*`` clears; anything else (``A``-``D``, ``w``) is ignored.
        """
        key = key.strip()
        if key == "#":
            return self.submit()
        if key == "*":
            self.reset()
            return None
        if len(key) != 1 or key not in "0123456789":
            return None
        self._digits = (self._digits + key)[-self._max :]
        forms = {form for code in active_codes if (form := _digit_form(code)) is not None}
        if self._digits in forms and not any(
            len(form) > len(self._digits) and form.startswith(self._digits) for form in forms
        ):
            return self.submit()
        return None

    def submit(self) -> str | None:
        """Submit the collected digits (None if there are none) and start over."""
        entry, self._digits = self._digits, ""
        return entry or None

    def reset(self) -> None:
        """Forget the collected digits."""
        self._digits = ""
