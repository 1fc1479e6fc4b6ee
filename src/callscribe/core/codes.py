"""Game codes: the pool of codes games hold, and finding a code in what a caller says.

Pure and synchronous (no I/O apart from :meth:`CodePool.from_file`). Spoken numbers and words
become tokens by the rules of :mod:`callscribe.core.numbers`; keyed-in codes are collected by
:class:`callscribe.core.keypad.DtmfCollector` (both re-exported here).

Codes
=====
A :class:`CodePool` holds the codes games can get: ``"0"`` .. ``"99"`` by default, or the
``"game_codes"`` list of a JSON file. Entries may be numbers (``42``), digit strings (``"007"``),
words or phrases (``"banana"``, ``"Red Fox"``, ``"forty two"``). A code is compared with speech
through its *normalized form* (:func:`normalize`), so two entries with the same normalized
form (``42`` and ``"forty-two"``) are the same code and a file holding both is refused. The code
handed to a game and returned by the matchers is always the entry as written (whitespace
collapsed, numbers as decimal strings).

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
* **Repetition.** A number that is the same cardinal of two or more digits said repeatedly
  (``42 42``, ``forty two forty two``) also matches that cardinal (42), after its concatenated
  reading (4242). Single digits are not repetitions: ``four four`` is 44 only.
* **First spoken wins.** Among several active codes in one transcript, the one starting at the
  earliest token wins: ``"is it red fox or 42"`` -> ``red fox``.
* **Longest at the same position.** With ``red`` and ``red fox`` active, ``red fox`` wins on
  ``"red fox"``. At equal length, the plain reading of a number beats its repetition reading.
* **Case and punctuation never matter** for words: ``"Red, Fox!"`` matches ``red fox``.
* **Codes are compared by value.** ``one`` and ``1``, ``twelve`` and ``one two`` normalize alike:
  they are one code.

Deepgram results (:func:`code_from_results`)
============================================
Only final results (``is_final: true``) of the caller's channel (``channel_index[0] == 0``) are
matched; interim results never are. Each final result is matched on its own.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from callscribe.core.keypad import DtmfCollector
from callscribe.core.numbers import code_key, normalize, tokenize

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
        tokens = tokenize(transcript)
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

    def hold_exactly(self, codes: Iterable[str]) -> None:
        """Make exactly ``codes`` the held ones (codes not in the pool are ignored): for a pool that
        mirrors codes held elsewhere, e.g. by games on other processes."""
        known = set(self._codes)
        wanted = dict.fromkeys(code for code in codes if code in known)
        if wanted.keys() == self._held.keys():
            return
        self._held = wanted
        self._free = [code for code in self._codes if code not in wanted]
        self._matcher = None

    def find_code(self, transcript: str) -> str | None:
        """:func:`find_code` among the active codes (the matcher is cached between changes)."""
        if self._matcher is None:
            self._matcher = CodeMatcher(self._held)
        return self._matcher.find(transcript)
