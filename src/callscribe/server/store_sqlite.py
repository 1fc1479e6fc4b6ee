"""The embedded engine: one SQLite file, in WAL mode, searched with FTS5.

One server serves a file: `callscribe serve` holds an exclusive lock on `<file>.lock` while it runs
(a second server on the same file stops at start-up; several machines share a PostgreSQL store
instead). So at start every call still open in the file was left by an earlier process that is
gone, and is closed as interrupted. The workers of one `serve --workers N` share the file: each
holds a shared lock (which still keeps any other server out), and the calls of a worker that dies
are closed by the others once its lease runs out, as with PostgreSQL. `callscribe calls ...` reads
the file beside a running server (WAL lets readers and the writer work at once).

Connections come from a small pool, each used by one worker thread at a time; writes are
`BEGIN IMMEDIATE` transactions that wait up to `BUSY_TIMEOUT_S` for the lock. `synchronous=NORMAL`:
a transaction is durable once the WAL is checkpointed, and a crash of the process never corrupts
the file (only a power cut can lose the last transactions).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from callscribe.core.transcript import DEFAULT_LABELS, SpeakerLabels
from callscribe.server.store import StoreError, StoreUnavailable
from callscribe.server.store_reads import Db
from callscribe.server.store_sql import SqlEngine, calls_table, outbox_table

BUSY_TIMEOUT_S = 5.0
CACHE_KIB = 512
"""SQLite's page cache per connection (its default is 2 MiB): writes append at the end of the
tables, and reads have the operating system's file cache."""

MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE instances (id TEXT PRIMARY KEY, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL)",
        *calls_table("REAL"),
        """CREATE TABLE finals (
            id INTEGER PRIMARY KEY,
            call_sid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            channel INTEGER NOT NULL,
            speaker TEXT NOT NULL,
            start_s REAL NOT NULL,
            end_s REAL NOT NULL,
            text TEXT NOT NULL,
            confidence REAL NOT NULL,
            request_id TEXT NOT NULL,
            raw TEXT NOT NULL,
            received_at REAL NOT NULL,
            UNIQUE (call_sid, seq)
        )""",
        "CREATE VIRTUAL TABLE finals_fts USING fts5 (text, content='finals', content_rowid='id')",
        """CREATE TRIGGER finals_indexed AFTER INSERT ON finals BEGIN
            INSERT INTO finals_fts (rowid, text) VALUES (new.id, new.text);
        END""",
        """CREATE TRIGGER finals_unindexed AFTER DELETE ON finals BEGIN
            INSERT INTO finals_fts (finals_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END""",
        *outbox_table("REAL", "INTEGER PRIMARY KEY"),
    ],
]
"""Schema versions 1, 2, ...: the statements that bring the previous version to each."""


class SqliteEngine(SqlEngine):
    kind = "sqlite"

    def __init__(self, path: str, labels: SpeakerLabels = DEFAULT_LABELS, *, shared: bool = False) -> None:
        super().__init__(path, labels)
        self.exclusive = not shared
        self.path = Path(path)
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock: IO[str] | None = None
        self._guard = threading.Lock()
        """Guards `_all`, `_closed` and the file lock between the worker threads and `close`."""
        self._closed = False

    def open(self, *, migrate: bool = True) -> None:
        """`migrate` (a server): create the file if need be, take the lock, upgrade the schema.
        Otherwise (a reader): the file must exist with the current schema."""
        if migrate:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StoreError(f"cannot create the directory of the store {self.path}: {error.strerror}") from None
            self._take_lock()
        elif not self.path.is_file():
            raise StoreError(f"no store at {self.path} (callscribe serve creates it; --store or CALLSCRIBE_STORE)")
        try:
            with self._transaction() as db:
                self._migrate(db, MIGRATIONS, migrate)
        except StoreUnavailable as error:
            raise StoreError(f"cannot open the store {self.path}: {error}") from None
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path} is not a callscribe store: {error}") from None

    def _take_lock(self) -> None:
        real = self.path.resolve()  # one lock for the file, whatever link it is opened through
        lock_path = real.with_name(real.name + ".lock")
        try:
            lock = open(lock_path, "a+")  # held open while the server runs
        except OSError as error:
            raise StoreError(f"cannot open {lock_path}: {error.strerror}") from None
        try:
            fcntl.flock(lock.fileno(), (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise StoreError(
                f"the store {self.path} is in use by another callscribe server (pid {holder}): give each server"
                " its own --store, or share a PostgreSQL store between them"
            ) from None
        if self.exclusive:  # (workers, holding it shared, leave the file as they find it)
            lock.truncate(0)
            lock.write(str(os.getpid()))
            lock.flush()
        self._lock = lock

    def close(self) -> None:
        """Close the idle connections now and each busy one when its thread is done with it: a read
        abandoned by a cancelled task may still run in a worker thread, and closing a connection
        under it crashes the process. The file lock goes with the last connection."""
        with self._guard:
            self._closed = True
            while not self._idle.empty():
                self._drop(self._idle.get_nowait())
            self._release_if_unused()

    def _drop(self, connection: sqlite3.Connection) -> None:  # with _guard held
        connection.close()
        self._all.remove(connection)

    def _release_if_unused(self) -> None:  # with _guard held
        if self._closed and not self._all and self._lock is not None:
            self._lock.close()
            self._lock = None

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        return connection

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._guard:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            connection = None if self._idle.empty() else self._idle.get_nowait()
        if connection is None:
            try:
                connection = self._connect()
            except sqlite3.OperationalError as error:
                raise StoreUnavailable(str(error)) from None
            with self._guard:
                self._all.append(connection)
        try:
            yield connection
        finally:
            with self._guard:
                if self._closed:
                    self._drop(connection)
                    self._release_if_unused()
                else:
                    self._idle.put(connection)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Db]:
        with self._connection() as connection:
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield _SqliteDb(connection)
                except BaseException:
                    connection.rollback()
                    raise
                connection.execute("COMMIT")
            except sqlite3.OperationalError as error:
                if connection.in_transaction:
                    connection.rollback()
                raise StoreUnavailable(str(error)) from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Db]:
        with self._connection() as connection:
            try:
                yield _SqliteDb(connection)
            except sqlite3.OperationalError as error:
                raise StoreUnavailable(str(error)) from None

    def _match(self, words: Sequence[str]) -> tuple[str, list[object]]:
        return "f.id IN (SELECT rowid FROM finals_fts WHERE finals_fts MATCH ?)", [
            " ".join(f'"{word}"' for word in words)
        ]

    def _dead_instances(self, db: Db, instance: str, now: float, lease_s: float) -> list[tuple[str, float]]:
        """Alone on the file (the exclusive lock): every other process. A worker: those whose lease ran out."""
        if self.exclusive:
            rows = db.execute("SELECT id, heartbeat_at FROM instances WHERE id <> ?", (instance,)).fetchall()
        else:
            rows = db.execute(
                "SELECT id, heartbeat_at FROM instances WHERE id <> ? AND heartbeat_at < ?", (instance, now - lease_s)
            ).fetchall()
        return [(row[0], float(row[1])) for row in rows]


class _SqliteDb:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def execute(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        return self._connection.execute(sql, params)
