"""The store's writer: calls hand over without waiting, batches land, outages are ridden out, and a
late subscriber's history is whole while writes are still queued."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from callscribe.core.call_record import CallEnd, Outcome
from callscribe.server import store_writer
from callscribe.server.store import EventSettings, StoreSettings, StoreUnavailable, Write, open_engine
from callscribe.server.store_sqlite import SqliteEngine
from callscribe.server.store_writer import StoreRecorder, open_store
from store_records import final_text, start

ENDED = CallEnd(ended_at=2_000_000.0, outcome=Outcome.ENDED, reason="call ended")


class FlakyEngine(SqliteEngine):
    """A SQLite engine whose writes fail while `down`, and wait while `held` is clear."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.down = False
        self.refused = 0
        """Writes refused while `down`."""
        self.held = threading.Event()
        self.held.set()
        self.batches: list[int] = []

    def write(self, batch: Sequence[Write], events: EventSettings) -> int:
        if self.down:
            self.refused += 1
            raise StoreUnavailable("connection refused")
        self.held.wait(10)
        self.batches.append(len(batch))
        return super().write(batch, events)


@asynccontextmanager
async def running(engine: SqliteEngine, **options: Any) -> AsyncIterator[StoreRecorder]:
    """`engine` opened and registered as "me", its recorder running until the block ends; then closed."""
    engine.open()
    engine.register("me", time.time())
    recorder = StoreRecorder(engine, instance="me", **options)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            yield recorder
            nursery.cancel_scope.cancel()
    finally:
        engine.close()


@pytest.fixture
async def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StoreRecorder]:
    monkeypatch.setattr(store_writer, "RETRY_FIRST_S", 0.02)
    engine = FlakyEngine(str(tmp_path / "callscribe.db"))
    async with running(engine, queue_size=50) as recorder:
        try:
            yield recorder
        finally:
            engine.held.set()


def flaky(recorder: StoreRecorder) -> FlakyEngine:
    assert isinstance(recorder.engine, FlakyEngine)
    return recorder.engine


def record_call(recorder: StoreRecorder, texts: list[str]) -> None:
    """Hands over a whole call CA1: its start, a final of each text (the nth at n s), its end."""
    recorder.call_started(start("CA1").start)
    for n, text in enumerate(texts):
        recorder.final("CA1", final_text(text, at=n))
    recorder.call_ended("CA1", ENDED)


async def settled(recorder: StoreRecorder) -> None:
    with trio.fail_after(10):
        await recorder.flush()


async def test_a_call_is_written_in_few_batches(recorder: StoreRecorder) -> None:
    record_call(recorder, [f"words {n}" for n in range(20)])
    await settled(recorder)
    assert flaky(recorder).batches == [22]  # handed over at once: one transaction
    assert [u.text for u in recorder.engine.utterances("CA1")] == [f"words {n}" for n in range(20)]
    assert recorder.engine.get_call("CA1").outcome == "ended"  # type: ignore[union-attr]
    assert recorder.written == 22 and recorder.dropped == 0


async def test_finals_of_unknown_calls_and_extra_streams(recorder: StoreRecorder) -> None:
    recorder.final("CA-never-started", final_text("lost"))
    recorder.call_started(start("CA1").start)
    recorder.call_started(start("CA1").start)  # Twilio forked the call twice
    recorder.final("CA1", final_text("one"))
    recorder.call_ended("CA1", ENDED)  # one stream ends: the call goes on
    recorder.final("CA1", final_text("two", at=1))
    await settled(recorder)
    assert recorder.engine.get_call("CA1").live  # type: ignore[union-attr]
    recorder.call_ended("CA1", ENDED)
    await settled(recorder)
    assert [u.text for u in recorder.engine.utterances("CA1")] == ["one", "two"]
    assert not recorder.engine.get_call("CA1").live  # type: ignore[union-attr]
    assert recorder.engine.get_call("CA-never-started") is None


async def test_an_outage_is_ridden_out_and_logged_once(
    recorder: StoreRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callscribe.server.store_writer")
    flaky(recorder).down = True
    recorder.call_started(start("CA1").start)
    recorder.final("CA1", final_text("during the outage"))
    with trio.fail_after(5):
        while recorder.up:
            await trio.sleep(0.01)
    for n in range(5):  # the calls go on handing over, nothing waits
        recorder.final("CA1", final_text(f"more {n}", at=n + 1))
    retried = flaky(recorder).refused + 3
    with trio.fail_after(5):
        while flaky(recorder).refused < retried:  # several retries fail meanwhile
            await trio.sleep(0.01)
    assert recorder.engine.get_call("CA1") is None and recorder.queued == 7
    flaky(recorder).down = False
    await settled(recorder)
    assert recorder.up and len(recorder.engine.utterances("CA1")) == 6
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in messages) == 1
    assert sum("is back after" in m for m in messages) == 1


async def test_a_full_queue_drops_finals_but_never_a_start_or_end(
    recorder: StoreRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callscribe.server.store_writer")
    flaky(recorder).down = True
    record_call(recorder, [f"f{n}" for n in range(60)])
    assert recorder.dropped == 11 and recorder.queued == 51  # 50 queued, then the end anyway
    assert sum("dropping transcript finals" in r.getMessage() for r in caplog.records) == 1
    flaky(recorder).down = False
    await settled(recorder)
    assert [u.seq for u in recorder.engine.utterances("CA1")] == list(range(1, 50))
    assert recorder.engine.get_call("CA1").outcome == "ended"  # type: ignore[union-attr]


async def test_history_has_every_final_whether_written_or_still_queued(recorder: StoreRecorder) -> None:
    recorder.call_started(start("CA1").start)
    raws = [final_text(f"f{n}", at=n) for n in range(6)]
    for raw in raws[:2]:
        recorder.final("CA1", raw)
    await settled(recorder)  # two written
    flaky(recorder).held.clear()  # the next batch hangs in its transaction
    recorder.final("CA1", raws[2])
    with trio.fail_after(5):
        while not recorder._in_flight:
            await trio.sleep(0.01)
    for raw in raws[3:]:
        recorder.final("CA1", raw)  # queued behind it
    assert await recorder.history("CA1") == raws
    flaky(recorder).held.set()
    await settled(recorder)
    assert await recorder.history("CA1") == raws
    assert await recorder.history("CA-unknown") == []


async def test_opening_a_store_closes_the_calls_a_crashed_process_left_open(tmp_path: Path) -> None:
    path = str(tmp_path / "callscribe.db")
    crashed = open_engine(path)
    crashed.open()
    crashed.register("crashed", time.time())
    crashed.write([start("CA1", time.time())], EventSettings())
    crashed.close()
    recorder = await open_store(StoreSettings(location=path))
    try:
        call = recorder.engine.get_call("CA1")
        assert call is not None and call.outcome == "interrupted"
    finally:
        recorder.engine.close()


async def test_history_of_a_reused_call_sid_is_the_new_calls_alone(recorder: StoreRecorder) -> None:
    record_call(recorder, [f"the old call {n}" for n in range(3)])
    await settled(recorder)
    flaky(recorder).held.clear()  # the new call's start has not reached the store yet
    recorder.call_started(start("CA1").start)
    new = final_text("the new call")
    recorder.final("CA1", new)
    assert await recorder.history("CA1") == [new]
    flaky(recorder).held.set()
    await settled(recorder)
    assert await recorder.history("CA1") == [new]


class StrainedEngine(SqliteEngine):
    """Its first heartbeat fails in a way the engine does not turn into StoreUnavailable; its reads
    of history wait until `released` (a slow API query holding a reader thread)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.beats = 0
        self.released = threading.Event()

    def heartbeat(self, instance: str, now: float) -> None:
        self.beats += 1
        if self.beats == 1:
            raise sqlite3.DatabaseError("database disk image is malformed")
        super().heartbeat(instance, now)

    def history(self, call_sid: str) -> list[tuple[int, str]]:
        self.released.wait(10)
        return super().history(call_sid)


@pytest.mark.logged_exceptions_expected
async def test_the_heartbeat_outlives_an_unexpected_error_and_readers_holding_every_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = StrainedEngine(str(tmp_path / "callscribe.db"))
    async with running(engine, lease_s=0.3) as recorder, trio.open_nursery() as readers:  # a heartbeat every 50 ms
        try:
            for n in range(store_writer.READERS):  # every reader thread busy with a slow query
                readers.start_soon(recorder.history, f"CA{n}")
            with trio.fail_after(5):
                while engine.beats < 4:
                    await trio.sleep(0.01)
        finally:
            engine.released.set()
    (failed,) = [r for r in caplog.records if "heartbeat failed unexpectedly" in r.getMessage()]
    assert failed.exc_info is not None and "malformed" in str(failed.exc_info[1])


class OneBadWrite(SqliteEngine):
    """Refuses (with an error it does not call "unavailable") any batch with a final of CA-bad."""

    def write(self, batch: Sequence[Write], events: EventSettings) -> int:
        if any(getattr(write, "call_sid", "") == "CA-bad" and hasattr(write, "seq") for write in batch):
            raise ValueError("a write the database refuses")
        return super().write(batch, events)


@pytest.mark.logged_exceptions_expected
async def test_a_write_the_database_refuses_costs_only_that_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = OneBadWrite(str(tmp_path / "callscribe.db"))
    async with running(engine) as recorder:
        for call_sid in ("CA-good", "CA-bad"):  # in one batch
            recorder.call_started(start(call_sid).start)
            recorder.final(call_sid, final_text(f"{call_sid} speaks"))
            recorder.call_ended(call_sid, ENDED)
        await settled(recorder)
        assert [u.text for u in engine.utterances("CA-good")] == ["CA-good speaks"]
        bad = engine.get_call("CA-bad")
        assert bad is not None and not bad.live and engine.utterances("CA-bad") == []
        assert recorder.dropped == 1
    (dropped,) = [r for r in caplog.records if "was dropped" in r.getMessage()]
    assert "final 1 of call CA-bad" in dropped.getMessage() and dropped.exc_info is not None
