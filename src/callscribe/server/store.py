"""The call store's interface: what the call pipeline tells it, and what an engine does.

The call pipeline sees a `Recorder`, three methods that return at once (none waits for a database):
`call_started`, `final` (each Deepgram final as subscribers received it) and `call_ended`. Behind
it, `--store` picks:

- `NoRecorder` (`--store none`): nothing is kept.
- `StoreRecorder` (store_writer.py) over an `Engine`: SQLite (store_sqlite.py, the embedded
  default: a file) or PostgreSQL (store_postgres.py, `postgresql://...`, shared by several
  processes). One bounded writer per process batches the writes into transactions run in a worker
  thread; engines are synchronous code made to run in worker threads.

An engine's methods raise `StoreUnavailable` when the database cannot be reached or answered too
late (the writer keeps the writes and retries); anything else they raise is a bug.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, Protocol

import trio

from callscribe.core.call_query import CallQuery, Cursor
from callscribe.core.call_record import CallEnd, CallStart, StoredCall, outcome_of
from callscribe.core.mixer import SAMPLES_PER_MS
from callscribe.core.transcript import DEFAULT_LABELS, SpeakerLabels, Utterance
from callscribe.core.twilio import TwilioState
from callscribe.core.webhooks import RetryPolicy

if TYPE_CHECKING:
    from callscribe.server.call import Call

SCHEME_POSTGRES = ("postgresql://", "postgres://")
NO_STORE = "none"
DEFAULT_DATA_DIR = "./data"
STORE_FILE = "callscribe.db"
"""The default store: this file in the data directory (`CALLSCRIBE_DATA_DIR`)."""


class StoreUnavailable(Exception):
    """The database cannot be reached, or did not answer in time; the text says why."""


class StoreError(Exception):
    """The store cannot be used as configured (start-up); one line for the person starting it."""


# -- what the pipeline tells the store -----------------------------------------------------------


class Recorder(Protocol):
    """What the call pipeline tells the store. None of it waits: each is at most a queue append."""

    def call_started(self, start: CallStart) -> None: ...

    def final(self, call_sid: str, message: str) -> None:
        """A final `Results` of the call, exactly as its subscribers get it."""

    def call_ended(self, call_sid: str, end: CallEnd) -> None: ...

    async def history(self, call_sid: str) -> list[str]:
        """The call's finals so far, in order (for a subscriber who joins late)."""
        ...

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The store's own tasks; started before any call, cancelled after the last."""

    async def flush(self) -> None:
        """Wait until every write handed over so far is kept (the caller bounds the wait)."""


class NoRecorder:
    """`--store none`: nothing is kept, late subscribers get live messages only."""

    def call_started(self, start: CallStart) -> None:
        pass

    def final(self, call_sid: str, message: str) -> None:
        pass

    def call_ended(self, call_sid: str, end: CallEnd) -> None:
        pass

    async def history(self, call_sid: str) -> list[str]:
        return []

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def flush(self) -> None:
        pass


NO_RECORDER = NoRecorder()


def call_end_of(call: Call, *, crashed: bool, now: float | None = None) -> CallEnd:
    """How `call` ended, from what its tasks saw (`crashed`: its run raised)."""
    mixer, deepgram, game = call.mixer, call.deepgram, call.game
    channels = mixer.channels if mixer else 1
    return CallEnd(
        ended_at=time.time() if now is None else now,
        outcome=outcome_of(
            stop_received=call.stream.state is TwilioState.STOPPED,
            close_code=call.close_code,
            deepgram_failed=bool(call.deepgram_error),
            crashed=crashed,
        ),
        reason=call.deepgram_error or call.close_reason,
        audio_s=round(call.audio_bytes_sent / (SAMPLES_PER_MS * 1000 * channels), 3),
        padding_s=round(sum(mixer.padded) / (SAMPLES_PER_MS * 1000), 3) if mixer else 0.0,
        deepgram_connections=len(deepgram.streams) if deepgram else 0,
        game_code=game.patched_code if game else None,
        request_ids=tuple(stream.request_id for stream in deepgram.streams if stream.request_id) if deepgram else (),
    )


# -- what the writer hands an engine -------------------------------------------------------------


class StartWrite(NamedTuple):
    start: CallStart


class FinalWrite(NamedTuple):
    call_sid: str
    seq: int
    raw: str
    received_at: float


class EndWrite(NamedTuple):
    call_sid: str
    end: CallEnd
    finals: int
    """Finals the call had (its `call.ended` event's sequence is this + 1)."""


Write = StartWrite | FinalWrite | EndWrite


@dataclass(frozen=True)
class EventSettings:
    """What an engine needs to write webhook events beside the call's rows."""

    receivers: tuple[str, ...] = ()
    policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class OutboxEvent:
    id: int
    call_sid: str
    sequence: int
    event_id: str
    kind: str
    body: str
    attempts: int
    created_at: float


@dataclass(frozen=True)
class OutboxState:
    pending: int = 0
    oldest_created_at: float | None = None
    next_due_at: float | None = None
    """When the earliest event that may be sent now (the first undelivered of its call) is due."""


@dataclass(frozen=True)
class Settlement:
    """A delivery round's results, written in one transaction. Events are known by their row's `id`
    and their `event_id` both: SQLite may give a new row the `id` of one deleted meanwhile (its call
    erased while the round was under way)."""

    delivered: Sequence[OutboxEvent] = ()
    retry: Sequence[tuple[OutboxEvent, int, float, str]] = ()
    """(the event, failures so far, when to try again, the last error)"""
    dropped: Sequence[OutboxEvent] = ()


class Deleted(enum.Enum):
    DELETED = "deleted"
    LIVE = "live"
    UNKNOWN = "unknown"


class Engine(Protocol):
    """A database behind the store; every method is blocking and runs in a worker thread."""

    kind: str
    where: str
    """The database as logs may show it (no credentials)."""
    labels: SpeakerLabels
    """What channels 0 and 1 are called in its transcripts."""
    exclusive: bool
    """Only one process uses it (SQLite): at start every call left open was this store's and is over."""

    def open(self, *, migrate: bool = True) -> None:
        """Connect and bring the schema up to date (or, `migrate=False`, check that it is)."""

    def close(self) -> None: ...

    def register(self, instance: str, now: float) -> None:
        """This process is `instance` (its calls and events are written as its own) and is alive now."""

    def heartbeat(self, instance: str, now: float) -> None: ...

    def reap(self, instance: str, now: float, lease_s: float, events: EventSettings) -> list[str]:
        """Close, as interrupted, the open calls of processes that are gone; adopt their undelivered
        events. Returns the callSids closed."""
        ...

    def write(self, batch: Sequence[Write], events: EventSettings) -> int:
        """One transaction of calls, finals and ends (and their webhook events); returns the events written."""
        ...

    def history(self, call_sid: str) -> list[tuple[int, str]]: ...

    def list_calls(self, query: CallQuery) -> tuple[list[StoredCall], Cursor | None]: ...

    def get_call(self, call_sid: str) -> StoredCall | None: ...

    def utterances(self, call_sid: str) -> list[Utterance]: ...

    def delete_call(self, call_sid: str) -> Deleted: ...

    def delete_ended_before(self, cutoff: float) -> int: ...

    def outbox_heads(self, instance: str, receiver: str, now: float, limit: int) -> list[OutboxEvent]: ...

    def outbox_state(self, instance: str, receiver: str) -> OutboxState: ...

    def outbox_settle(self, settlement: Settlement) -> None: ...


@dataclass(frozen=True)
class StoreSettings:
    """`--store` and what goes with it. `location` None: no store."""

    location: str | None = None
    """A file path (SQLite) or a postgresql:// URL."""
    queue_size: int = 10_000
    retention_days: float = 0.0
    """0: keep calls forever."""
    speaker_labels: SpeakerLabels = field(default_factory=SpeakerLabels)
    webhook_urls: tuple[str, ...] = ()
    webhook_secret: str | None = None
    webhook_retry: RetryPolicy = field(default_factory=RetryPolicy)


def open_engine(location: str, labels: SpeakerLabels = DEFAULT_LABELS, *, shared: bool = False) -> Engine:
    """The engine for `location` (not yet opened): PostgreSQL for a postgresql:// URL, else SQLite
    (`shared`: a SQLite file used by the workers of one `serve --workers N`)."""
    if location.startswith(SCHEME_POSTGRES):
        from callscribe.server.store_postgres import PostgresEngine

        return PostgresEngine(location, labels)
    from callscribe.server.store_sqlite import SqliteEngine

    return SqliteEngine(location, labels, shared=shared)
