"""The shared engine: PostgreSQL, for several callscribe processes on one or many machines.

psycopg 3's synchronous API with psycopg-pool, run in worker threads (psycopg's async API is for
asyncio and does not run under Trio). Every statement has a deadline (`statement_timeout`) and so
has every connection attempt and every wait for a pooled connection: a database that is down or
hangs raises `StoreUnavailable` within seconds, and the writer retries.

Full-text search: a generated `tsvector` column over each final's text (the `simple`
configuration: words as they are, any case, no stemming, like SQLite's FTS5) with a GIN index.
Symbols are made spaces first, as FTS5 and the search's own words take them: PostgreSQL's parser
would otherwise keep `3.50`, `john@example.com` or `example.org/help` as single tokens, which no
search (its words are letters and digits) could find. Accents are folded as FTS5 folds them, with
an immutable `translate()` of call_query's table (no `unaccent` extension): `cafe` finds `café`.

Processes sharing the database each have a lease: their heartbeat (`instances.heartbeat_at`, on
the database's clock) is refreshed every few seconds; a process whose heartbeat is older than
the lease is gone, and any other process closes its open calls as interrupted and takes over its
undelivered webhook events. Migrations run under an advisory lock, so processes starting together
apply them once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool

from callscribe.core.call_query import ACCENTED, DIACRITICS, UNACCENTED
from callscribe.core.transcript import DEFAULT_LABELS, SpeakerLabels
from callscribe.server.store import StoreError, StoreUnavailable
from callscribe.server.store_reads import Db
from callscribe.server.store_sql import SqlEngine, calls_table, outbox_table

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 10_000
CHECKOUT_TIMEOUT_S = 2.0
RECONNECT_S = 5.0
"""psycopg-pool retries a lost connection with a backoff that keeps doubling (a database back after a
minute could wait another minute); it gives up after this instead, and the next request starts
afresh, so that the store is back within seconds of the database."""
POOL_SIZE = 4
MIGRATION_LOCK = 0x63616C6C  # "call": one advisory lock id for callscribe's migrations
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)
_DB_NOW = "EXTRACT(EPOCH FROM clock_timestamp())"
_SYMBOLS = "'[!-/:-@[-`{-~\u2018\u2019\u201c\u201d\u2013\u2014\u2026]'"
_FOLDED = f"translate(text, '{ACCENTED}{DIACRITICS}', '{UNACCENTED}')"


def _searched(text: str) -> str:
    """What search finds of a final's text: its words, every ASCII symbol (and typographic quote,
    dash and ellipsis) a space. (Character ranges, so that the statement holds no `?` or `%`.)"""
    return f"to_tsvector('simple', regexp_replace({text}, {_SYMBOLS}, ' ', 'g'))"


def _search_column(searched: str) -> list[str]:
    """The statements that rebuild the search column and its index (rewriting the finals table)."""
    return [
        "ALTER TABLE finals DROP COLUMN text_search",
        f"ALTER TABLE finals ADD COLUMN text_search TSVECTOR GENERATED ALWAYS AS ({searched}) STORED",
        "CREATE INDEX finals_search ON finals USING GIN (text_search)",
    ]


MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE instances (
            id TEXT PRIMARY KEY, started_at DOUBLE PRECISION NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL
        )""",
        *calls_table("DOUBLE PRECISION"),
        """CREATE TABLE finals (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            call_sid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            channel INTEGER NOT NULL,
            speaker TEXT NOT NULL,
            start_s DOUBLE PRECISION NOT NULL,
            end_s DOUBLE PRECISION NOT NULL,
            text TEXT NOT NULL,
            confidence DOUBLE PRECISION NOT NULL,
            request_id TEXT NOT NULL,
            raw TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            text_search TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED,
            UNIQUE (call_sid, seq)
        )""",
        "CREATE INDEX finals_search ON finals USING GIN (text_search)",
        *outbox_table("DOUBLE PRECISION", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    ],
    _search_column(_searched("text")),  # 2: symbols are spaces in the search index (see above)
    _search_column(_searched(_FOLDED)),  # 3: and accents are folded (call_query.fold_accents)
]
"""Schema versions 1, 2, ...: the statements that bring the previous version to each."""


class _DemoteToDebug(logging.Filter):
    """psycopg-pool logs every failed reconnection; the store logs an outage once."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


logging.getLogger("psycopg.pool").addFilter(_DemoteToDebug())


def without_credentials(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rsplit("@", 1)[-1]


class PostgresEngine(SqlEngine):
    kind = "postgresql"
    exclusive = False

    def __init__(self, url: str, labels: SpeakerLabels = DEFAULT_LABELS) -> None:
        super().__init__(without_credentials(url), labels)
        self._url = url
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._sql: dict[str, str] = {}

    def open(self, *, migrate: bool = True) -> None:
        options = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        }
        try:  # one plain connection first: its error says why (the pool's would only say "timed out")
            psycopg.connect(self._url, **options).close()  # type: ignore[arg-type]
        except (psycopg.Error, ValueError) as error:
            raise StoreError(f"cannot reach PostgreSQL at {self.where}: {_first_line(error)}") from None
        self._pool = psycopg_pool.ConnectionPool(
            self._url,
            min_size=1,
            max_size=POOL_SIZE,
            timeout=CHECKOUT_TIMEOUT_S,
            reconnect_timeout=RECONNECT_S,
            kwargs=options,
            check=psycopg_pool.ConnectionPool.check_connection,
            open=False,
            name="callscribe-store",
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            with self._transaction() as db:
                db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                self._migrate(db, MIGRATIONS, migrate)
        except (StoreUnavailable, psycopg_pool.PoolTimeout) as error:
            self.close()
            raise StoreError(f"cannot open the store at {self.where}: {_first_line(error)}") from None
        except StoreError:
            self.close()
            raise
        except psycopg.Error as error:  # e.g. no CREATE on schema public (PostgreSQL 15), a read-only standby
            self.close()
            raise StoreError(f"cannot open the store at {self.where}: {_first_line(error)}") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close(timeout=2.0)
            self._pool = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Db]:
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            with self._pool.connection() as connection, connection.transaction():
                yield _PostgresDb(connection, self._sql)
        except _UNAVAILABLE as error:
            raise StoreUnavailable(_first_line(error)) from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Db]:
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            with self._pool.connection() as connection:
                yield _PostgresDb(connection, self._sql)
        except _UNAVAILABLE as error:
            raise StoreUnavailable(_first_line(error)) from None

    def _match(self, words: Sequence[str]) -> tuple[str, list[object]]:
        return "f.text_search @@ plainto_tsquery('simple', ?)", [" ".join(words)]

    # Leases on the database's clock, so that the machines' clocks need not agree.

    def register(self, instance: str, now: float) -> None:
        self.instance = instance
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?, {_DB_NOW}, {_DB_NOW})", (instance,)
            )

    def heartbeat(self, instance: str, now: float) -> None:
        with self._transaction() as db:
            updated = db.execute(f"UPDATE instances SET heartbeat_at = {_DB_NOW} WHERE id = ?", (instance,))
            if not updated.rowcount:  # declared gone after a long outage: its calls were closed; it lives on
                db.execute(
                    f"INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?, {_DB_NOW}, {_DB_NOW})"
                    " ON CONFLICT (id) DO NOTHING",  # (unless a write, starting a call, did so meanwhile)
                    (instance,),
                )

    def _ensure_registered(self, db: Db) -> None:
        db.execute(
            f"INSERT INTO instances (id, started_at, heartbeat_at) VALUES (?, {_DB_NOW}, {_DB_NOW})"
            " ON CONFLICT (id) DO NOTHING",
            (self.instance,),
        )

    def _dead_instances(self, db: Db, instance: str, now: float, lease_s: float) -> list[tuple[str, float]]:
        rows = db.execute(
            f"SELECT id, heartbeat_at FROM instances WHERE id <> ? AND heartbeat_at < {_DB_NOW} - ? FOR UPDATE",
            (instance, lease_s),
        ).fetchall()
        return [(row[0], float(row[1])) for row in rows]


class _PostgresDb:
    def __init__(self, connection: psycopg.Connection[Any], cache: dict[str, str]) -> None:
        self._connection = connection
        self._cache = cache

    def execute(self, sql: str, params: Sequence[object] = ()) -> psycopg.Cursor[Any]:
        converted = self._cache.get(sql)
        if converted is None:
            converted = self._cache[sql] = sql.replace("?", "%s")
        return self._connection.execute(converted, params)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
