"""The webhook outbox, for both engines: the events that may be sent now (the first undelivered one
of each call and receiver, if due), what waits, and a delivery round's results."""

from __future__ import annotations

from callscribe.server.store import OutboxEvent, OutboxState, Settlement
from callscribe.server.store_reads import SqlReads

HEADS = (
    "FROM outbox o WHERE o.receiver = ? AND o.instance = ? AND NOT EXISTS"
    " (SELECT 1 FROM outbox p WHERE p.receiver = o.receiver AND p.call_sid = o.call_sid AND p.id < o.id)"
)
"""The events that may be sent now: the first undelivered of each call."""


class SqlOutbox(SqlReads):
    """The outbox's statements (its rows are written with the calls', in store_sql.py)."""

    def outbox_heads(self, instance: str, receiver: str, now: float, limit: int) -> list[OutboxEvent]:
        with self._reading() as db:
            rows = db.execute(
                f"SELECT o.id, o.call_sid, o.seq, o.event_id, o.kind, o.body, o.attempts, o.created_at {HEADS}"
                " AND o.next_at <= ? ORDER BY o.id LIMIT ?",
                (receiver, instance, now, limit),
            ).fetchall()
        return [OutboxEvent(*row) for row in rows]

    def outbox_state(self, instance: str, receiver: str) -> OutboxState:
        with self._reading() as db:
            pending, oldest = db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE receiver = ? AND instance = ?", (receiver, instance)
            ).fetchone()
            (due,) = db.execute(f"SELECT MIN(o.next_at) {HEADS}", (receiver, instance)).fetchone()
        return OutboxState(int(pending), oldest, due)

    def outbox_settle(self, settlement: Settlement) -> None:
        with self._transaction() as db:
            for event in (*settlement.delivered, *settlement.dropped):
                db.execute("DELETE FROM outbox WHERE id = ? AND event_id = ?", (event.id, event.event_id))
            for event, attempts, next_at, error in settlement.retry:
                db.execute(
                    "UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE id = ? AND event_id = ?",
                    (attempts, next_at, error[:500], event.id, event.event_id),
                )
