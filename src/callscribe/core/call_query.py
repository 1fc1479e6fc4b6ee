"""What `GET /api/calls` (and `callscribe calls list`) asks for, checked; and its page cursors.

Parameters, all optional:

- `q`       words that must all occur in the call's transcript (full-text search; whole words,
            any case, accents folded as SQLite's FTS5 does: `cafe` finds `café` and `café` finds
            `cafe`; no operators: quotes and symbols are taken as spaces)
- `number`  a phone number, matched against From and To by its digits (`+1 555-0100` = `15550100`)
- `since`, `until`  ISO 8601 times (`2026-11-29`, `2026-11-29T10:00:00Z`, with an offset or
            without: then UTC); the calls that started in [since, until)
- `live`    `true` (calls going on) or `false` (calls that ended)
- `limit`   1 to 200 calls per page (default 50)
- `cursor`  the `next` of the previous page

Pages are newest first (by start time, then callSid). A cursor is opaque to clients: the position
of the last call of the page, so pages stay consistent while new calls arrive.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from callscribe.core.call_record import digits
from callscribe.core.twilio import MAX_SID_LENGTH

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_QUERY_WORDS = 16
_WORD = re.compile(r"[^\W_]+")
"""Letters and digits; the underscore is a symbol like any other."""


def _base_letter(letter: str) -> str | None:
    """The ASCII letter under `letter` when it bears one diacritic (é, Ç, ő, ș, ạ), else None."""
    decomposed = unicodedata.normalize("NFKD", letter)
    base, marks = decomposed[0], decomposed[1:]
    if base.isascii() and base.isalpha() and len(marks) <= 1 and all(unicodedata.combining(m) for m in marks):
        return base
    return None


_LATIN = [chr(c) for block in (range(0xC0, 0x250), range(0x1E00, 0x1F00)) for c in block]
ACCENTED = "".join(letter for letter in _LATIN if _base_letter(letter))
UNACCENTED = "".join(_base_letter(letter) or "" for letter in ACCENTED)
DIACRITICS = "".join(sorted({mark for letter in ACCENTED for mark in unicodedata.normalize("NFKD", letter)[1:]}))
"""What search folds, as SQLite's FTS5 (unicode61) does: each letter of `ACCENTED` (those of Latin-1
Supplement, Latin Extended-A and -B and Latin Extended Additional with one diacritic) is the
letter of `UNACCENTED` at its place, and `DIACRITICS` (their combining marks, as in decomposed
text) are dropped. Not ß, æ, ø, ł, đ, œ (no base letter) nor ấ, ǖ (two diacritics). PostgreSQL's
search column is built from them: changing them needs a new schema version (store_postgres.py)."""
_FOLD = str.maketrans(ACCENTED, UNACCENTED, DIACRITICS)


def fold_accents(text: str) -> str:
    """`text` without the diacritics search ignores: `Crème brûlée` is `Creme brulee`."""
    return text.translate(_FOLD)


class BadQuery(ValueError):
    """A parameter is wrong; the message says which and why (the API answers 400 with it)."""


@dataclass(frozen=True)
class Cursor:
    started_at: float
    call_sid: str


@dataclass(frozen=True)
class CallQuery:
    words: tuple[str, ...] = ()
    number_digits: str = ""
    since: float | None = None
    until: float | None = None
    live: bool | None = None
    limit: int = DEFAULT_LIMIT
    after: Cursor | None = None
    call_sid: str | None = None
    """Only this call (a token limited to one call sees only it)."""


def search_words(text: str) -> tuple[str, ...]:
    """The words of a search, lower-cased, accents folded, without operators (at most `MAX_QUERY_WORDS`)."""
    return tuple(word.lower() for word in _WORD.findall(fold_accents(text)))[:MAX_QUERY_WORDS]


def parse_time(text: str, name: str) -> float:
    """An ISO 8601 date or time as seconds since the epoch (UTC when no offset is given)."""
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 time like 2026-11-29T10:00:00Z, not {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def encode_cursor(cursor: Cursor) -> str:
    text = json.dumps([cursor.started_at, cursor.call_sid], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        started_at, call_sid = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError):  # RecursionError: "[[[[..." nested deep
        raise BadQuery("cursor is not one this server gave out") from None
    if not isinstance(started_at, (int, float)) or isinstance(started_at, bool) or not isinstance(call_sid, str):
        raise BadQuery("cursor is not one this server gave out")
    try:
        at = float(started_at)
    except OverflowError:  # an integer too large for a float
        at = math.inf
    if not math.isfinite(at) or len(call_sid) > MAX_SID_LENGTH or not call_sid.isprintable():
        raise BadQuery("cursor is not one this server gave out")
    return Cursor(at, call_sid)


def parse_query(params: Mapping[str, str], *, call_sid: str | None = None) -> CallQuery:
    """The query of `params` (a request's query string, one value each); `BadQuery` for a wrong one.
    Unknown parameters are ignored (`token` among them)."""
    limit_text = params.get("limit", "").strip()
    if limit_text:
        if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6) or not (
            1 <= int(limit_text) <= MAX_LIMIT
        ):
            raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit_text[:20]!r}")
        limit = int(limit_text)
    else:
        limit = DEFAULT_LIMIT
    live_text = params.get("live", "").strip().lower()
    if live_text not in ("", "true", "false"):
        raise BadQuery(f"live must be true or false, not {live_text[:20]!r}")
    number = params.get("number", "")
    if number.strip() and not digits(number):
        raise BadQuery(f"number must be a phone number, not {number[:30]!r}")
    q = params.get("q", "")
    words = search_words(q)
    if q.strip() and not words:
        raise BadQuery("q has no words to search for")
    since = parse_time(params["since"], "since") if params.get("since", "").strip() else None
    until = parse_time(params["until"], "until") if params.get("until", "").strip() else None
    cursor = params.get("cursor", "").strip()
    return CallQuery(
        words=words,
        number_digits=digits(number),
        since=since,
        until=until,
        live=None if not live_text else live_text == "true",
        limit=limit,
        after=decode_cursor(cursor) if cursor else None,
        call_sid=call_sid,
    )
