"""The SQL both engines share: migrations, writing calls, finals and their webhook events, erasing,
retention, process leases (reads in store_reads.py, the outbox in store_outbox.py).

Tables (the same in SQLite and PostgreSQL; `calls` and `outbox` are created by `calls_table` and
`outbox_table` below, the rest by each engine's migrations):

- `calls`      one row per callSid; `ended_at` NULL while the call is live; `instance` is the process
               that records it
- `finals`     one row per final result: parsed fields for the API and exports, `raw` (the final as
               Deepgram sent it, words and all) for the JSON lines; `(call_sid, seq)` is unique, so a
               batch written twice (an answer lost in an outage) adds nothing
- `outbox`     webhook events not yet delivered, one row per event and receiver, delivered in `id`
               order per call and receiver
- `instances`  the processes writing to the store, with their last heartbeat
- `schema_version`  the migrations applied

Statements are written with `?` placeholders; each engine's connection runs them in its own
dialect. Search (`_match`) and how a process is known to be gone (`_dead_instances`) differ.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence

from callscribe.core import webhooks
from callscribe.core.call_record import CallStart, Outcome, digits, stored_call_of
from callscribe.core.transcript import SpeakerLabels, parse_final
from callscribe.server.store import Deleted, EndWrite, EventSettings, FinalWrite, StartWrite, StoreError, Write
from callscribe.server.store_outbox import SqlOutbox
from callscribe.server.store_reads import FINAL_COLUMNS, Db, decode_tracks

INTERRUPTED_REASON = "the process handling the call stopped (crash or kill) before the call ended"


def calls_table(real: str) -> list[str]:
    """The `calls` table and its indexes as schema version 1 creates them; `real` is the engine's
    floating-point type."""
    return [
        f"""CREATE TABLE calls (
            call_sid TEXT PRIMARY KEY,
            stream_sid TEXT NOT NULL,
            account_sid TEXT NOT NULL,
            from_number TEXT,
            to_number TEXT,
            from_digits TEXT NOT NULL DEFAULT '',
            to_digits TEXT NOT NULL DEFAULT '',
            direction TEXT,
            tracks TEXT NOT NULL,
            parameters TEXT NOT NULL DEFAULT '{{}}',
            started_at {real} NOT NULL,
            ended_at {real},
            outcome TEXT,
            reason TEXT,
            audio_s {real},
            padding_s {real},
            deepgram_connections INTEGER,
            request_ids TEXT NOT NULL DEFAULT '[]',
            game_code TEXT,
            instance TEXT NOT NULL
        )""",
        "CREATE INDEX calls_by_start ON calls (started_at, call_sid)",
        "CREATE INDEX calls_open ON calls (instance) WHERE ended_at IS NULL",
        "CREATE INDEX calls_from ON calls (from_digits)",
        "CREATE INDEX calls_to ON calls (to_digits)",
    ]


def outbox_table(real: str, key: str) -> list[str]:
    """The `outbox` table and its indexes as schema version 1 creates them; `real` is the engine's
    floating-point type, `key` its integer primary key that numbers rows in insertion order."""
    return [
        f"""CREATE TABLE outbox (
            id {key},
            receiver TEXT NOT NULL,
            instance TEXT NOT NULL,
            call_sid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at {real} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at {real} NOT NULL,
            last_error TEXT
        )""",
        "CREATE INDEX outbox_by_call ON outbox (receiver, call_sid, id)",
        "CREATE INDEX outbox_by_instance ON outbox (instance, receiver, next_at)",
    ]


class SqlEngine(SqlOutbox):
    """The statements of the store; subclasses connect (`_transaction`, `_reading`), search (`_match`),
    migrate and find the processes that are gone."""

    kind = "sql"
    exclusive = False

    def __init__(self, where: str, labels: SpeakerLabels) -> None:
        self.where = where
        self.labels = labels
        self.instance = ""

    # -- what a subclass provides --------------------------------------------------------------

    def _dead_instances(self, db: Db, instance: str, now: float, lease_s: float) -> list[tuple[str, float]]:
        """The other processes known to be gone, with their last sign of life."""
        raise NotImplementedError

    # -- migrations ----------------------------------------------------------------------------

    def _schema_version(self, db: Db) -> int:
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self, db: Db, migrations: Sequence[Sequence[str]], migrate: bool) -> None:
        """Apply the migrations after the version recorded (each a list of statements), in one transaction."""
        version = self._schema_version(db)
        if version > len(migrations):
            raise StoreError(
                f"the store at {self.where} has schema version {version}, newer than this callscribe knows"
                f" ({len(migrations)}): upgrade callscribe"
            )
        if version < len(migrations) and not migrate:
            raise StoreError(
                f"the store at {self.where} has schema version {version}, this callscribe needs {len(migrations)}:"
                " start `callscribe serve` once with it to upgrade it"
            )
        for number, statements in enumerate(migrations[version:], version + 1):
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))

    # -- processes -----------------------------------------------------------------------------

    def register(self, instance: str, now: float) -> None:
        self.instance = instance
        with self._transaction() as db:
            db.execute("INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?, ?, ?)", (instance, now, now))

    def heartbeat(self, instance: str, now: float) -> None:
        with self._transaction() as db:
            updated = db.execute("UPDATE instances SET heartbeat_at = ? WHERE id = ?", (now, instance))
            if not updated.rowcount:  # declared gone once (a missed lease): it lives on, so are its new calls
                db.execute(  # (unless a write, starting a call, did so meanwhile)
                    "INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (instance, now, now),
                )

    def reap(self, instance: str, now: float, lease_s: float, events: EventSettings) -> list[str]:
        closed: list[str] = []
        with self._transaction() as db:
            gone = self._dead_instances(db, instance, now, lease_s)
            orphans = db.execute(
                "SELECT DISTINCT instance FROM calls WHERE ended_at IS NULL AND instance <> ?"
                " AND instance NOT IN (SELECT id FROM instances)",
                (instance,),
            ).fetchall()
            for dead, last_seen in [*gone, *((row[0], 0.0) for row in orphans)]:
                rows = db.execute(
                    "SELECT call_sid, started_at FROM calls WHERE instance = ? AND ended_at IS NULL", (dead,)
                ).fetchall()
                for call_sid, started_at in rows:
                    ended = db.execute(
                        "UPDATE calls SET ended_at = ?, outcome = ?, reason = ? WHERE call_sid = ? AND ended_at IS NULL",
                        (max(started_at, last_seen), Outcome.INTERRUPTED.value, INTERRUPTED_REASON, call_sid),
                    )
                    if ended.rowcount:
                        closed.append(call_sid)
                        self._call_ended_event(db, call_sid, events, now)
                db.execute("UPDATE outbox SET instance = ? WHERE instance = ?", (instance, dead))
                db.execute("DELETE FROM instances WHERE id = ?", (dead,))
            db.execute("UPDATE outbox SET instance = ? WHERE instance NOT IN (SELECT id FROM instances)", (instance,))
        return closed

    # -- writing -------------------------------------------------------------------------------

    def _ensure_registered(self, db: Db) -> None:
        """This process is among `instances` again if another declared it gone (a missed lease):
        else that one would take a call it starts now, before its next heartbeat, for an orphan."""
        now = time.time()
        db.execute(
            "INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
            (self.instance, now, now),
        )

    def write(self, batch: Sequence[Write], events: EventSettings) -> int:
        written = 0
        with self._transaction() as db:
            if any(isinstance(item, StartWrite) for item in batch):
                self._ensure_registered(db)
            tracks: dict[str, tuple[str, ...] | None] = {}  # a call's, if this process started it: one query a call
            for item in batch:
                if isinstance(item, FinalWrite):
                    written += self._write_final(db, item, events, tracks)
                elif isinstance(item, StartWrite):
                    tracks.pop(item.start.call_sid, None)
                    written += self._write_start(db, item.start, events)
                else:
                    written += self._write_end(db, item, events)
        return written

    def _write_start(self, db: Db, start: CallStart, events: EventSettings) -> int:
        row = db.execute("SELECT ended_at FROM calls WHERE call_sid = ?", (start.call_sid,)).fetchone()
        if row is not None:
            if row[0] is None:
                return 0  # still open: another stream of the same call (Twilio may fork one twice)
            self._erase(db, start.call_sid)  # a callSid used again (a re-run simulation): the new call replaces it
        db.execute(
            "INSERT INTO calls (call_sid, stream_sid, account_sid, from_number, to_number, from_digits, to_digits,"
            " direction, tracks, parameters, started_at, instance) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                start.call_sid,
                start.stream_sid,
                start.account_sid,
                start.from_number,
                start.to_number,
                digits(start.from_number),
                digits(start.to_number),
                start.direction,
                ",".join(start.tracks),
                json.dumps(dict(start.parameters)),
                start.started_at,
                self.instance,
            ),
        )
        if not events.receivers:
            return 0
        data = webhooks.started_data(stored_call_of(start))
        return self._event(db, events, start.call_sid, 0, webhooks.CALL_STARTED, data, start.started_at)

    def _write_final(
        self, db: Db, item: FinalWrite, events: EventSettings, tracks: dict[str, tuple[str, ...] | None]
    ) -> int:
        # Only into a call this process started: a second stream of the call on another process
        # (which numbers its finals on its own) is transcribed live but not kept.
        if item.call_sid not in tracks:
            call = db.execute(
                "SELECT tracks FROM calls WHERE call_sid = ? AND instance = ?", (item.call_sid, self.instance)
            ).fetchone()
            tracks[item.call_sid] = None if call is None else decode_tracks(call[0])
        call_tracks = tracks[item.call_sid]
        if call_tracks is None:
            return 0
        utterance = parse_final(item.raw, item.seq, self.labels, call_tracks)  # channel i: track i
        if utterance is None:
            return 0
        inserted = db.execute(
            f"INSERT INTO finals (call_sid, {FINAL_COLUMNS}, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (call_sid, seq) DO NOTHING",
            (
                item.call_sid,
                utterance.seq,
                utterance.channel,
                utterance.speaker,
                utterance.start,
                utterance.end,
                utterance.text,
                utterance.confidence,
                utterance.request_id,
                utterance.raw,
                item.received_at,
            ),
        )
        if not inserted.rowcount or not events.receivers:
            return 0
        data = webhooks.final_data(utterance)
        return self._event(db, events, item.call_sid, item.seq, webhooks.TRANSCRIPT_FINAL, data, item.received_at)

    def _write_end(self, db: Db, item: EndWrite, events: EventSettings) -> int:
        end = item.end
        request_ids = [
            row[0]
            for row in db.execute(
                "SELECT request_id FROM finals WHERE call_sid = ? AND request_id <> ''"
                " GROUP BY request_id ORDER BY MIN(seq)",
                (item.call_sid,),
            ).fetchall()
        ]
        # In the order of the connections (those that told their id), then any other that a final carried.
        request_ids = [
            *end.request_ids,
            *(request_id for request_id in request_ids if request_id not in end.request_ids),
        ]
        ended = db.execute(
            "UPDATE calls SET ended_at = ?, outcome = ?, reason = ?, audio_s = ?, padding_s = ?,"
            " deepgram_connections = ?, game_code = ?, request_ids = ? WHERE call_sid = ? AND ended_at IS NULL"
            " AND instance = ?",  # the end of the stream that started it (see _write_final)
            (
                end.ended_at,
                end.outcome.value,
                end.reason,
                end.audio_s,
                end.padding_s,
                end.deepgram_connections,
                end.game_code,
                json.dumps(request_ids),
                item.call_sid,
                self.instance,
            ),
        )
        if not ended.rowcount:
            return 0
        return self._call_ended_event(db, item.call_sid, events, end.ended_at, item.finals + 1)

    def _call_ended_event(
        self, db: Db, call_sid: str, events: EventSettings, now: float, sequence: int | None = None
    ) -> int:
        if not events.receivers:
            return 0
        call = self._get_call(db, call_sid)
        if call is None:
            return 0
        utterances = self._utterances(db, call_sid)
        if sequence is None:
            sequence = max((u.seq for u in utterances), default=0) + 1
        data = webhooks.ended_data(call, utterances)
        return self._event(db, events, call_sid, sequence, webhooks.CALL_ENDED, data, now)

    def _event(
        self, db: Db, events: EventSettings, call_sid: str, sequence: int, kind: str, data: str, now: float
    ) -> int:
        if not events.receivers:
            return 0
        event_id = "evt_" + uuid.uuid4().hex
        body = webhooks.event_body(
            event_id=event_id, kind=kind, call_sid=call_sid, sequence=sequence, created_at=now, data=data
        )
        for receiver in events.receivers:
            db.execute(
                "INSERT INTO outbox (receiver, instance, call_sid, seq, event_id, kind, body, created_at, attempts,"
                " next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (receiver, self.instance, call_sid, sequence, event_id, kind, body, now, now),
            )
        return len(events.receivers)

    def _erase(self, db: Db, call_sid: str) -> None:
        db.execute("DELETE FROM finals WHERE call_sid = ?", (call_sid,))
        db.execute("DELETE FROM outbox WHERE call_sid = ?", (call_sid,))
        db.execute("DELETE FROM calls WHERE call_sid = ?", (call_sid,))

    def delete_call(self, call_sid: str) -> Deleted:
        with self._transaction() as db:
            row = db.execute("SELECT ended_at FROM calls WHERE call_sid = ?", (call_sid,)).fetchone()
            if row is None:
                return Deleted.UNKNOWN
            if row[0] is None:
                return Deleted.LIVE
            self._erase(db, call_sid)
        return Deleted.DELETED

    def delete_ended_before(self, cutoff: float) -> int:
        deleted = 0
        while True:  # bounded batches, so one transaction never holds the store for long
            with self._transaction() as db:
                rows = db.execute(
                    "SELECT call_sid FROM calls WHERE started_at < ? AND ended_at IS NOT NULL LIMIT 500", (cutoff,)
                ).fetchall()
                for (call_sid,) in rows:
                    self._erase(db, call_sid)
            deleted += len(rows)
            if len(rows) < 500:
                return deleted
