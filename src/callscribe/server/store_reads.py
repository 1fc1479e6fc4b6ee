"""The store's reads, for both engines: a call, its finals, the list of calls (filters, search,
pages, snippets). Statements use `?` placeholders (see store_sql.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from callscribe.core.call_query import CallQuery, Cursor
from callscribe.core.call_record import StoredCall
from callscribe.core.transcript import Utterance

SNIPPET_CHARS = 160
CALL_FIELDS = (
    "call_sid stream_sid account_sid from_number to_number direction tracks started_at ended_at outcome reason"
    " audio_s padding_s deepgram_connections request_ids game_code parameters"
).split()
"""The columns of `calls` a `StoredCall` is read from: each is named as the field it fills."""
CALL_COLUMNS = ", ".join(f"c.{name}" for name in CALL_FIELDS)
FINAL_COLUMNS = "seq, channel, speaker, start_s, end_s, text, confidence, request_id, raw"


class Cursorish(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """One connection, inside a transaction (or a read)."""

    def execute(self, sql: str, params: Sequence[object] = ()) -> Cursorish: ...


class SqlReads:
    """Reading calls and finals; an engine provides the connections and the search."""

    def _transaction(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _reading(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def _match(self, words: Sequence[str]) -> tuple[str, list[object]]:
        """SQL true for a final `f` whose text has every word, and its parameters."""
        raise NotImplementedError

    def history(self, call_sid: str) -> list[tuple[int, str]]:
        with self._reading() as db:
            rows = db.execute("SELECT seq, raw FROM finals WHERE call_sid = ? ORDER BY seq", (call_sid,)).fetchall()
        return [(int(seq), raw) for seq, raw in rows]

    def list_calls(self, query: CallQuery) -> tuple[list[StoredCall], Cursor | None]:
        where: list[str] = []
        params: list[object] = []
        if query.words:
            match, match_params = self._match(query.words)
            snippet = f"(SELECT f.text FROM finals f WHERE f.call_sid = c.call_sid AND {match} ORDER BY f.seq LIMIT 1)"
            params += match_params
            where.append(f"EXISTS (SELECT 1 FROM finals f WHERE f.call_sid = c.call_sid AND {match})")
            where_params: list[object] = list(match_params)
        else:
            snippet = (
                "(SELECT f.text FROM finals f WHERE f.call_sid = c.call_sid AND f.text <> '' ORDER BY f.seq LIMIT 1)"
            )
            where_params = []
        if query.call_sid is not None:
            where.append("c.call_sid = ?")
            where_params.append(query.call_sid)
        if query.number_digits:
            where.append("(c.from_digits = ? OR c.to_digits = ?)")
            where_params += [query.number_digits, query.number_digits]
        if query.since is not None:
            where.append("c.started_at >= ?")
            where_params.append(query.since)
        if query.until is not None:
            where.append("c.started_at < ?")
            where_params.append(query.until)
        if query.live is not None:
            where.append("c.ended_at IS NULL" if query.live else "c.ended_at IS NOT NULL")
        if query.after is not None:
            where.append("(c.started_at < ? OR (c.started_at = ? AND c.call_sid < ?))")
            where_params += [query.after.started_at, query.after.started_at, query.after.call_sid]
        sql = (
            f"SELECT {CALL_COLUMNS}, {snippet} FROM calls c WHERE {' AND '.join(where) or '1 = 1'}"
            " ORDER BY c.started_at DESC, c.call_sid DESC LIMIT ?"
        )
        with self._reading() as db:
            rows = db.execute(sql, [*params, *where_params, query.limit + 1]).fetchall()
        calls = [_stored_call(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return calls, Cursor(calls[-1].started_at, calls[-1].call_sid) if more else None

    def get_call(self, call_sid: str) -> StoredCall | None:
        with self._reading() as db:
            return self._get_call(db, call_sid)

    def _get_call(self, db: Db, call_sid: str) -> StoredCall | None:
        row = db.execute(f"SELECT {CALL_COLUMNS}, '' FROM calls c WHERE c.call_sid = ?", (call_sid,)).fetchone()
        return None if row is None else _stored_call(row)

    def utterances(self, call_sid: str) -> list[Utterance]:
        with self._reading() as db:
            return self._utterances(db, call_sid)

    def _utterances(self, db: Db, call_sid: str) -> list[Utterance]:
        rows = db.execute(f"SELECT {FINAL_COLUMNS} FROM finals WHERE call_sid = ? ORDER BY seq", (call_sid,)).fetchall()
        return [
            Utterance(
                seq=int(seq),
                channel=int(channel),
                speaker=speaker,
                start=float(start),
                end=float(end),
                text=text,
                confidence=float(confidence),
                request_id=request_id,
                raw=raw,
            )
            for seq, channel, speaker, start, end, text, confidence, request_id, raw in rows
        ]


def _stored_call(row: Sequence[Any]) -> StoredCall:
    """A row of `CALL_COLUMNS` and then the snippet; the columns kept as text or numbers are decoded."""
    *columns, snippet = row
    call = dict(zip(CALL_FIELDS, columns, strict=True))
    ended_at = call["ended_at"]
    decoded = {
        "tracks": decode_tracks(call["tracks"]),
        "started_at": float(call["started_at"]),
        "ended_at": None if ended_at is None else float(ended_at),
        "request_ids": tuple(json.loads(call["request_ids"] or "[]")),
        "parameters": json.loads(call["parameters"] or "{}"),
        "snippet": _shorten(snippet or ""),
    }
    return StoredCall(**(call | decoded))


def decode_tracks(text: str) -> tuple[str, ...]:
    """The `tracks` column (`inbound,outbound`): the call's tracks in channel order."""
    return tuple(text.split(",")) if text else ()


def _shorten(text: str) -> str:
    if len(text) <= SNIPPET_CHARS:
        return text
    cut = text[:SNIPPET_CHARS].rsplit(" ", 1)[0]
    return cut + " …"
