"""The call store at its edges: NUL characters in PostgreSQL, a worker that missed its lease on a
shared SQLite file, a user without CREATE on PostgreSQL, one SQLite file through a symlink."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import trio

from callscribe.core.call_record import CallEnd, Outcome, call_start
from callscribe.server.store import EventSettings, StoreError, StoreSettings
from callscribe.server.store_sqlite import SqliteEngine
from callscribe.server.store_writer import StoreRecorder, open_store
from store_records import final_text, start

NO_EVENTS = EventSettings()
ENDED = CallEnd(ended_at=2_000_000.0, outcome=Outcome.ENDED, reason="call ended")
SRC = str(Path(__file__).resolve().parents[2] / "src")


# -- 1. PostgreSQL: a NUL in a caller's parameter loses the whole call; in a transcript, the final ---------


async def _record(recorder: StoreRecorder, from_number: str, texts: list[str]) -> None:
    # What Call._begin hands over for a Twilio `start` whose customParameters hold "\u0000"
    # (msgspec decodes it; TwilioStream accepts it: only the sids are checked for printability).
    recorder.call_started(
        call_start(
            call_sid="CA1",
            stream_sid="MZ1",
            account_sid="AC1",
            tracks=("inbound",),
            parameters={"From": from_number},
            now=time.time(),
        )
    )
    for n, text in enumerate(texts):
        recorder.final("CA1", final_text(text, at=n))
    recorder.call_ended("CA1", ENDED)
    with trio.fail_after(10):
        await recorder.flush()


async def test_postgresql_a_nul_in_from_keeps_the_call(postgres_url: str) -> None:
    recorder = await open_store(StoreSettings(location=postgres_url))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            await _record(recorder, "+1555\x000100", ["hello", "goodbye"])
            nursery.cancel_scope.cancel()
        call = recorder.engine.get_call("CA1")
        assert call is not None, f"the call was not kept at all (writes dropped: {recorder.dropped})"
        assert [u.text for u in recorder.engine.utterances("CA1")] == ["hello", "goodbye"]
        assert call.from_number == "+1555\ufffd0100"  # NUL shown as U+FFFD
    finally:
        recorder.engine.close()


async def test_postgresql_a_nul_in_a_transcript_keeps_the_final(postgres_url: str) -> None:
    recorder = await open_store(StoreSettings(location=postgres_url))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            await _record(recorder, "+15550100", ["hello", "bad\x00word", "goodbye"])
            nursery.cancel_scope.cancel()
        assert len(recorder.engine.history("CA1")) == 3, f"kept {recorder.engine.history('CA1')}"
    finally:
        recorder.engine.close()


# -- 2. SQLite shared by --workers: a worker once declared gone has every later call closed as interrupted --


def test_sqlite_worker_declared_gone_once_keeps_its_new_calls(tmp_path: Path) -> None:
    path = str(tmp_path / "callscribe.db")
    a, b = SqliteEngine(path, shared=True), SqliteEngine(path, shared=True)
    a.open()
    b.open()
    try:
        t = time.time()
        a.register("A", t)
        b.register("B", t)
        # A misses its lease once (a stall, a suspended machine, a busy file under a short --redis-lease):
        # B closes A's calls and deletes A's row.
        b.heartbeat("B", t + 31)
        b.reap("B", t + 31, 30.0, NO_EVENTS)
        # A lives on: it heartbeats (SqlEngine.heartbeat updates 0 rows, unlike PostgresEngine's, which
        # inserts the row again) and takes a new call.
        a.heartbeat("A", t + 32)
        a.write([start("CA2", t + 33)], NO_EVENTS)
        # B's next heartbeat round (5 s later) reaps A's live call as an orphan.
        b.heartbeat("B", t + 36)
        closed = b.reap("B", t + 36, 30.0, NO_EVENTS)
        call = a.get_call("CA2")
        assert call is not None
        assert call.live and closed == [], f"A's live call was closed by B: {call.outcome}"
    finally:
        a.close()
        b.close()


# -- 3. PostgreSQL without CREATE privilege (PostgreSQL 15+: a user not owning the database) -> traceback --


def _limited_url(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("DO $$ BEGIN CREATE ROLE limited LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        db.execute("GRANT CONNECT ON DATABASE " + postgres_url.rsplit("/", 1)[1] + " TO limited")
    return postgres_url.replace("://callscribe@", "://limited@")


def test_postgresql_without_create_privilege_is_one_line_and_status_2(postgres_url: str) -> None:
    url = _limited_url(postgres_url)
    result = subprocess.run(
        [sys.executable, "-m", "callscribe", "serve", "--store", url, "--listen", "127.0.0.1:0"],
        env={**os.environ, "PYTHONPATH": SRC, "DEEPGRAM_API_KEY": "key"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode == 2


def test_calls_command_as_a_read_only_postgresql_user_is_one_line_and_status_2(postgres_url: str) -> None:
    # The database is set up by a server (the owner); a reporting user may only read it.
    from callscribe.server.store_postgres import PostgresEngine

    owner = PostgresEngine(postgres_url)
    owner.open()
    owner.close()
    url = _limited_url(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO limited")
    result = subprocess.run(
        [sys.executable, "-m", "callscribe", "calls", "--store", url, "list"],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert result.returncode in (0, 2)


# -- 4. two servers on one SQLite file through a symlink: the second starts and reaps the first's live calls --


def test_a_second_server_on_the_same_file_through_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "callscribe.db"
    link = tmp_path / "link.db"
    first = SqliteEngine(str(real))
    first.open()
    first.register("first", time.time())
    first.write([start("CA1", time.time())], NO_EVENTS)  # a live call of the first server
    link.symlink_to(real)
    second = SqliteEngine(str(link))
    try:
        with pytest.raises(StoreError):
            second.open()
        # (what happens instead: the second server's start-up closes the first's live call)
    finally:
        if second._lock is not None:
            second.register("second", time.time())
            second.reap("second", time.time(), 30.0, NO_EVENTS)
            print("CA1 after the second server started:", first.get_call("CA1"))
            second.close()
        first.close()


# -- 5. a number setting with a non-ASCII digit is a traceback, not a ConfigError -------------------------
