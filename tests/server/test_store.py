"""The store's engines, SQLite and a real PostgreSQL, through one test suite: calls, finals, search,
pages, erasing, retention, crash recovery, the webhook outbox and migrations."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from callscribe.core.call_query import CallQuery, parse_query, search_words
from callscribe.core.call_record import Outcome
from callscribe.core.transcript import SpeakerLabels, export
from callscribe.core.webhooks import RetryPolicy
from callscribe.server import store_postgres, store_sqlite
from callscribe.server.store import (
    Deleted,
    Engine,
    EventSettings,
    OutboxEvent,
    Settlement,
    StoreError,
    StoreUnavailable,
    Write,
    open_engine,
)
from store_records import end, final, start

RECEIVERS = EventSettings(("http://a.example/hook", "http://b.example/hook"), RetryPolicy())
NO_EVENTS = EventSettings()


@pytest.fixture
def engine(store_location: str) -> Iterator[Engine]:
    engine = open_engine(store_location, SpeakerLabels("Customer", "Agent"))
    engine.open()
    engine.register("this-process", time.time())
    try:
        yield engine
    finally:
        engine.close()


def call_with_finals(
    engine: Engine, call_sid: str, texts: list[str], *, at: float = 1_000_000.0, ended: bool = True
) -> None:
    batch = [start(call_sid, at), *(final(call_sid, n, text, channel=(n - 1) % 2) for n, text in enumerate(texts, 1))]
    if ended:
        batch.append(end(call_sid, len(texts), at=at + 60))
    engine.write(batch, NO_EVENTS)


def test_a_call_its_finals_and_its_end_are_kept(engine: Engine) -> None:
    call_with_finals(engine, "CA1", ["hello there", "good morning", ""])
    call = engine.get_call("CA1")
    assert call is not None
    assert (call.from_number, call.to_number, call.direction, call.tracks) == (
        "+15550100",
        "+15550199",
        "inbound",
        ("inbound", "outbound"),
    )
    assert (call.outcome, call.reason, call.duration_s, call.deepgram_connections) == ("ended", "call ended", 60.0, 1)
    assert call.request_ids == ("req-1",) and call.parameters == {"From": "+15550100", "route": "transcribe"}
    utterances = engine.utterances("CA1")
    assert [(u.seq, u.speaker, u.text) for u in utterances] == [
        (1, "Customer", "hello there"),
        (2, "Agent", "good morning"),
        (3, "Customer", ""),
    ]
    assert utterances[0].start == 0.0 and utterances[0].end == 1.0 and utterances[0].confidence == 0.99
    assert [raw for _, raw in engine.history("CA1")] == [u.raw for u in utterances]
    assert json.loads(utterances[1].raw)["channel"]["alternatives"][0]["transcript"] == "good morning"


def test_request_ids_follow_the_connections_also_those_without_finals(engine: Engine) -> None:
    closing = end("CA1", 2)
    closing = closing._replace(end=dataclasses.replace(closing.end, deepgram_connections=3, request_ids=("r0", "r1")))
    batch = [start("CA1"), final("CA1", 1, "one", request_id="r1"), final("CA1", 2, "two", request_id="r2"), closing]
    engine.write(batch, NO_EVENTS)  # r0 sent no final; r2's connection did not tell its id (a lost Metadata)
    call = engine.get_call("CA1")
    assert call is not None and call.request_ids == ("r0", "r1", "r2")


def test_a_second_stream_of_a_call_on_another_process_leaves_the_record_to_the_first(store_location: str) -> None:
    first, second = open_engine(store_location, shared=True), open_engine(store_location, shared=True)
    for engine, name in ((first, "first"), (second, "second")):
        engine.open()
        engine.register(name, time.time())
    try:
        first.write([start("CA1"), final("CA1", 1, "from the first stream")], NO_EVENTS)
        second.write([start("CA1"), final("CA1", 1, "from the second"), final("CA1", 2, "again")], NO_EVENTS)
        second.write([end("CA1", 2, at=1_000_010.0)], NO_EVENTS)  # the second stream ends first
        call = first.get_call("CA1")
        assert call is not None and call.live
        first.write([final("CA1", 2, "still the first"), end("CA1", 2)], NO_EVENTS)
        call = first.get_call("CA1")
        assert call is not None and not call.live and call.ended_at == 1_000_060.0
        assert [u.text for u in first.utterances("CA1")] == ["from the first stream", "still the first"]
    finally:
        first.close()
        second.close()


def test_writing_a_batch_again_adds_nothing(engine: Engine) -> None:
    batch = [start("CA1"), final("CA1", 1, "once"), final("CA1", 2, "twice")]
    engine.write(batch, RECEIVERS)
    assert engine.write(batch, RECEIVERS) == 0  # an answer lost in an outage: the writer sends it again
    assert [u.text for u in engine.utterances("CA1")] == ["once", "twice"]
    assert engine.outbox_state("this-process", RECEIVERS.receivers[0]).pending == 3


def test_a_second_stream_joins_an_open_call_and_a_reused_call_sid_replaces_an_ended_one(engine: Engine) -> None:
    engine.write([start("CA1", 100.0), final("CA1", 1, "first")], NO_EVENTS)
    engine.write([start("CA1", 200.0)], NO_EVENTS)  # a second stream while the call is open
    assert engine.get_call("CA1").started_at == 100.0  # type: ignore[union-attr]
    engine.write([end("CA1", 1, at=300.0)], NO_EVENTS)
    engine.write([start("CA1", 400.0), final("CA1", 1, "again")], NO_EVENTS)  # a re-run simulation
    call = engine.get_call("CA1")
    assert call is not None and call.started_at == 400.0 and call.live
    assert [u.text for u in engine.utterances("CA1")] == ["again"]


def test_list_is_newest_first_in_pages_that_neither_repeat_nor_skip(engine: Engine) -> None:
    for n in range(7):
        call_with_finals(engine, f"CA{n}", [f"call number {n}"], at=1_000_000.0 + (n // 2))  # pairs start together
    seen: list[str] = []
    query = CallQuery(limit=3)
    pages = 0
    while True:
        calls, after = engine.list_calls(query)
        seen += [c.call_sid for c in calls]
        pages += 1
        if after is None:
            break
        query = CallQuery(limit=3, after=after)
    assert pages == 3
    assert seen == ["CA6", "CA5", "CA4", "CA3", "CA2", "CA1", "CA0"]
    calls, _ = engine.list_calls(CallQuery())
    assert calls[0].snippet == "call number 6"


def test_filters_by_number_time_and_liveness(engine: Engine) -> None:
    engine.write([start("CA1", 100.0, from_number="+1 555 0100"), end("CA1", 0, at=160.0)], NO_EVENTS)
    engine.write([start("CA2", 200.0, from_number="+15550111", to_number="+15550100")], NO_EVENTS)
    engine.write([start("CA3", 300.0, from_number="+15550122", to_number=None), end("CA3", 0, at=310.0)], NO_EVENTS)

    def sids(**params: str) -> list[str]:
        return [c.call_sid for c in engine.list_calls(parse_query(params))[0]]

    assert sids(number="15550100") == ["CA2", "CA1"]  # From of one, To of the other, in any format
    assert sids(number=" 1555-0122") == ["CA3"]  # a `+` that a query string made a space
    assert sids(live="true") == ["CA2"] and sids(live="false") == ["CA3", "CA1"]
    assert sids(since="1970-01-01T00:03:20Z") == ["CA3", "CA2"]
    assert sids(until="1970-01-01T00:03:20Z") == ["CA1"]
    assert [c.call_sid for c in engine.list_calls(CallQuery(call_sid="CA3"))[0]] == ["CA3"]


def found(engine: Engine, q: str) -> list[str]:
    """The calls a search for `q` finds."""
    return [c.call_sid for c in engine.list_calls(parse_query({"q": q}))[0]]


def test_search_finds_words_anywhere_in_a_transcript(engine: Engine) -> None:
    call_with_finals(engine, "CA1", ["I would like to cancel my subscription", "Sure, let me help"], at=100.0)
    call_with_finals(engine, "CA2", ["What's the weather like?", "Sunny, I'd say"], at=200.0)
    call_with_finals(engine, "CA3", ["Nothing to see"], at=300.0)

    def snippets(q: str) -> list[tuple[str, str]]:
        return [(c.call_sid, c.snippet) for c in engine.list_calls(parse_query({"q": q}))[0]]

    assert snippets("subscription") == [("CA1", "I would like to cancel my subscription")]
    assert snippets("CANCEL subscription") == [("CA1", "I would like to cancel my subscription")]
    assert snippets("sunny") == [("CA2", "Sunny, I'd say")]
    assert snippets("like") == [("CA2", "What's the weather like?"), ("CA1", "I would like to cancel my subscription")]
    assert snippets('help) ("*') == [("CA1", "Sure, let me help")]  # no operators: symbols are spaces
    assert snippets("cancel OR weather") == []  # every word must be there
    assert snippets("absent") == []


def test_an_underscore_is_a_symbol_in_a_search_like_any_other(engine: Engine) -> None:
    call_with_finals(engine, "CA1", ["I would like to cancel my subscription"], at=100.0)

    assert found(engine, "subscription cancel") == ["CA1"]
    assert found(engine, "subscription-cancel") == ["CA1"]
    assert found(engine, "subscription_cancel") == ["CA1"]  # as the two words, in any order, not as a phrase


def test_erasing_a_call_leaves_nothing_of_it(engine: Engine) -> None:
    call_with_finals(engine, "CA1", ["secret words"])
    engine.write([start("CA2"), final("CA2", 1, "still going")], RECEIVERS)
    assert engine.delete_call("CA2") is Deleted.LIVE
    assert engine.delete_call("CA1") is Deleted.DELETED
    assert engine.get_call("CA1") is None and engine.utterances("CA1") == [] and engine.history("CA1") == []
    assert engine.list_calls(parse_query({"q": "secret"}))[0] == []
    assert engine.delete_call("CA1") is Deleted.UNKNOWN


def test_retention_deletes_ended_calls_started_before_the_cutoff(engine: Engine) -> None:
    call_with_finals(engine, "CAold", ["old"], at=100.0)
    call_with_finals(engine, "CAnew", ["new"], at=10_000.0)
    engine.write([start("CAlive", 50.0)], NO_EVENTS)
    assert engine.delete_ended_before(5_000.0) == 1
    assert [c.call_sid for c in engine.list_calls(CallQuery())[0]] == ["CAnew", "CAlive"]


def test_calls_left_open_by_a_process_that_is_gone_are_closed_interrupted(store_location: str) -> None:
    crashed = open_engine(store_location)
    crashed.open()
    crashed.register("crashed-process", time.time())
    with crashed._transaction() as db:  # type: ignore[attr-defined]  # its last sign of life: an hour ago
        db.execute("UPDATE instances SET heartbeat_at = heartbeat_at - 3600")
    crashed.write([start("CA1", time.time() - 7200), final("CA1", 1, "before the crash")], RECEIVERS)
    crashed.close()  # kill -9: no end was written

    survivor = open_engine(store_location)
    survivor.open()
    survivor.register("next-process", time.time())
    try:
        assert survivor.reap("next-process", time.time(), 30.0, RECEIVERS) == ["CA1"]
        call = survivor.get_call("CA1")
        assert call is not None and call.outcome == Outcome.INTERRUPTED
        assert [u.text for u in survivor.utterances("CA1")] == ["before the crash"]
        # Its events are this process's to deliver now, call.ended last.
        heads = survivor.outbox_heads("next-process", RECEIVERS.receivers[0], time.time(), 10)
        assert [(e.kind, e.sequence) for e in heads] == [("call.started", 0)]
        assert survivor.outbox_state("next-process", RECEIVERS.receivers[0]).pending == 3
        assert survivor.reap("next-process", time.time(), 30.0, RECEIVERS) == []
    finally:
        survivor.close()


@pytest.fixture(params=["postgresql", "sqlite workers"])
def two_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two processes on one store, registered as "first" and "second": on PostgreSQL, or the
    workers of one `serve --workers N` on one SQLite file."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        first, second = open_engine(url), open_engine(url)
    else:
        path = str(tmp_path / "callscribe.db")
        first, second = open_engine(path, shared=True), open_engine(path, shared=True)
    for engine, name in ((first, "first"), (second, "second")):
        engine.open()
        engine.register(name, time.time())
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_a_live_process_keeps_its_calls_with_other_processes_on_the_store(two_processes: tuple[Engine, Engine]) -> None:
    first, second = two_processes
    first.write([start("CA1")], NO_EVENTS)
    first.heartbeat("first", time.time())
    assert second.reap("second", time.time(), 30.0, NO_EVENTS) == []  # its lease is fresh
    assert second.reap("second", time.time(), -1.0, NO_EVENTS) == ["CA1"]  # a lease that has run out


def test_the_outbox_hands_out_each_calls_events_in_order(engine: Engine) -> None:
    receiver = RECEIVERS.receivers[0]
    engine.write([start("CA1"), final("CA1", 1, "one"), start("CA2"), final("CA1", 2, "two")], RECEIVERS)
    engine.write([end("CA1", 2)], RECEIVERS)
    now = time.time() + 1
    heads = engine.outbox_heads("this-process", receiver, now, 10)
    assert [(e.call_sid, e.kind, e.sequence) for e in heads] == [("CA1", "call.started", 0), ("CA2", "call.started", 0)]
    body = json.loads(heads[0].body)
    assert body["id"] == heads[0].event_id and body["type"] == "call.started" and body["sequence"] == 0
    assert body["data"]["from"] == "+15550100"
    # CA1's head fails: CA1 waits for it; CA2's is delivered.
    engine.outbox_settle(Settlement(delivered=[heads[1]], retry=[(heads[0], 1, now + 60, "HTTP 500")]))
    assert engine.outbox_heads("this-process", receiver, now, 10) == []
    assert engine.outbox_state("this-process", receiver).next_due_at == now + 60
    retried = engine.outbox_heads("this-process", receiver, now + 60, 10)
    assert [(e.sequence, e.attempts) for e in retried] == [(0, 1)]
    kinds = []
    for _ in range(10):
        heads = engine.outbox_heads("this-process", receiver, now + 60, 10)
        if not heads:
            break
        kinds += [(e.kind, e.sequence) for e in heads]
        engine.outbox_settle(Settlement(delivered=heads))
    assert kinds == [("call.started", 0), ("transcript.final", 1), ("transcript.final", 2), ("call.ended", 3)]
    ended = json.loads(engine.outbox_heads("this-process", RECEIVERS.receivers[1], now, 10)[0].body)
    assert ended["type"] == "call.started"  # the other receiver has its own copy, untouched
    assert engine.outbox_state("this-process", receiver).pending == 0


def test_call_ended_carries_the_whole_transcript(engine: Engine) -> None:
    receiver = RECEIVERS.receivers[0]
    engine.write([start("CA1"), final("CA1", 1, "hi"), final("CA1", 2, "bye", channel=1), end("CA1", 2)], RECEIVERS)
    events = [json.loads(e.body) for e in iter_events(engine, receiver)]
    assert [e["type"] for e in events] == ["call.started", "transcript.final", "transcript.final", "call.ended"]
    assert events[1]["data"]["utterance"]["text"] == "hi" and events[1]["data"]["result"]["is_final"] is True
    assert events[3]["sequence"] == 3 and events[3]["data"]["outcome"] == "ended"
    assert [u["text"] for u in events[3]["data"]["utterances"]] == ["hi", "bye"]
    assert len({e["id"] for e in events}) == 4


def test_an_outbound_only_calls_channel_0_is_the_other_party_in_every_export(engine: Engine) -> None:
    # <Stream track="outbound_track">: Deepgram's channel 0 carries the other party, not the caller.
    receiver = RECEIVERS.receivers[0]
    batch = [start("CA1", tracks=("outbound",)), final("CA1", 1, "thanks for calling"), end("CA1", 1)]
    engine.write(batch, RECEIVERS)
    utterances = engine.utterances("CA1")
    assert [(u.channel, u.speaker) for u in utterances] == [(0, "Agent")]
    assert export(utterances, "txt") == "[00:00] Agent: thanks for calling\n"
    assert "<v Agent>thanks for calling" in export(utterances, "vtt")
    assert "Agent: thanks for calling" in export(utterances, "srt")
    assert json.loads(export(utterances, "json"))["channel_index"][0] == 0  # Deepgram's own, as it came
    events = [json.loads(e.body) for e in iter_events(engine, receiver)]
    assert events[1]["data"]["utterance"]["speaker"] == "Agent"
    assert [u["speaker"] for u in events[2]["data"]["utterances"]] == ["Agent"]


def iter_events(engine: Engine, receiver: str) -> list[OutboxEvent]:
    """Every event of the receiver, delivering them as they come."""
    out: list[OutboxEvent] = []
    for _ in range(20):
        heads = engine.outbox_heads("this-process", receiver, time.time() + 1, 10)
        if not heads:
            return out
        out += heads
        engine.outbox_settle(Settlement(delivered=heads))
    raise AssertionError("the outbox did not empty")


def test_migrations_are_applied_once_and_a_newer_schema_is_refused(store_location: str) -> None:
    for _ in range(2):
        engine = open_engine(store_location)
        engine.open()
        engine.close()
    reader = open_engine(store_location)
    reader.open(migrate=False)  # up to date: a reader may use it
    reader.close()
    bump = open_engine(store_location)
    bump.open()
    bump.register("x", 0.0)
    with bump._transaction() as db:  # type: ignore[attr-defined]
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (99,))
    bump.close()
    with pytest.raises(StoreError, match="schema version 99, newer than this callscribe knows"):
        open_engine(store_location).open()


def test_a_reader_needs_an_existing_up_to_date_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        open_engine(str(tmp_path / "nothing.db")).open(migrate=False)
    old = store_sqlite.SqliteEngine(str(tmp_path / "old.db"))
    old.open()
    with old._transaction() as db:
        db.execute("DELETE FROM schema_version")
    old.close()
    with pytest.raises(StoreError, match="start `callscribe serve` once with it to upgrade it"):
        open_engine(str(tmp_path / "old.db")).open(migrate=False)


def test_one_server_process_per_sqlite_file(tmp_path: Path) -> None:
    first = open_engine(str(tmp_path / "callscribe.db"))
    first.open()
    try:
        with pytest.raises(StoreError, match="in use by another callscribe server"):
            open_engine(str(tmp_path / "callscribe.db")).open()
        with pytest.raises(StoreError, match="in use by another callscribe server"):
            open_engine(str(tmp_path / "callscribe.db"), shared=True).open()  # nor may workers join it
        reader = open_engine(str(tmp_path / "callscribe.db"))
        reader.open(migrate=False)  # readers (callscribe calls) need no lock
        reader.close()
    finally:
        first.close()
    workers = [open_engine(str(tmp_path / "callscribe.db"), shared=True) for _ in range(2)]
    for worker in workers:
        worker.open()  # the lock went with the first; workers share it
    try:
        with pytest.raises(StoreError, match="in use by another callscribe server"):
            open_engine(str(tmp_path / "callscribe.db")).open()  # but keep other servers out
    finally:
        for worker in workers:
            worker.close()
    second = open_engine(str(tmp_path / "callscribe.db"))
    second.open()
    second.close()


def test_closing_while_a_thread_still_reads_waits_for_it_not_under_it(tmp_path: Path) -> None:
    # A read abandoned by a cancelled task goes on in its worker thread; closing its connection
    # under it crashed the process (a segfault in sqlite3). The busy connection is closed after.
    engine = open_engine(str(tmp_path / "callscribe.db"))
    engine.open()
    assert isinstance(engine, store_sqlite.SqliteEngine)
    reading, closed = threading.Event(), threading.Event()
    seen: list[object] = []

    def slow_reader() -> None:
        with engine._reading() as db:
            reading.set()
            closed.wait(5)
            seen.append(db.execute("SELECT count(*) FROM calls").fetchone()[0])

    thread = threading.Thread(target=slow_reader)
    thread.start()
    assert reading.wait(5)
    engine.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        engine.history("CA1")
    with pytest.raises(StoreError, match="in use by another callscribe server"):
        open_engine(str(tmp_path / "callscribe.db")).open()  # the lock is held while the read runs
    closed.set()
    thread.join(5)
    assert seen == [0]
    other = open_engine(str(tmp_path / "callscribe.db"))
    other.open()  # the last connection took the lock with it
    other.close()


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError, match="is not a callscribe store"):
        open_engine(str(path)).open()


def test_an_unreachable_postgresql_is_one_line(tmp_path: Path) -> None:
    from conftest import free_port

    url = f"postgresql://nobody:secret@127.0.0.1:{free_port()}/calls"
    with pytest.raises(StoreError) as raised:
        open_engine(url).open()
    assert str(raised.value).startswith("cannot reach PostgreSQL at postgresql://127.0.0.1:")
    assert "secret" not in str(raised.value) and "\n" not in str(raised.value)


def test_settling_a_round_never_touches_an_event_written_after_its_call_was_erased(engine: Engine) -> None:
    # A delivery round holds CA1's event while CA1 is erased (DELETE /api/calls) and a new call's
    # event is written: SQLite numbers a row max(id) + 1, so the new event may get the erased one's
    # id. Settling the round (delivered, or retried) must leave the new event alone.
    receiver = RECEIVERS.receivers[0]
    engine.write([start("CA1"), end("CA1", 0)], RECEIVERS)
    now = time.time() + 1
    (in_flight,) = engine.outbox_heads("this-process", receiver, now, 10)
    assert engine.delete_call("CA1") is Deleted.DELETED
    engine.write([start("CA2")], RECEIVERS)
    engine.outbox_settle(Settlement(delivered=[in_flight]))
    engine.outbox_settle(Settlement(retry=[(in_flight, 1, now + 60, "HTTP 500")]))
    heads = engine.outbox_heads("this-process", receiver, now, 10)
    assert [(e.call_sid, e.kind, e.attempts) for e in heads] == [("CA2", "call.started", 0)]


def test_symbols_inside_a_token_are_spaces_on_both_engines(engine: Engine) -> None:
    # Deepgram's smart formatting writes prices, times, e-mails and web addresses; a search takes
    # their symbols as spaces (call_query), so the words inside them are found, as on SQLite.
    call_with_finals(engine, "CA1", ["It costs $3.50, write to john.doe@example.com or see shop.example.org/help"])

    assert found(engine, "3.50") == ["CA1"]
    assert found(engine, "example") == ["CA1"]
    assert found(engine, "doe") == ["CA1"]
    assert found(engine, "shop help") == ["CA1"]
    assert found(engine, "john.doe@example.com") == ["CA1"]


LATIN = [chr(c) for block in (range(0xC0, 0x250), range(0x1E00, 0x1F00)) for c in block if chr(c).isalpha()]
"""The letters of Latin-1 Supplement, Latin Extended-A and -B and Latin Extended Additional."""


def unicode61(words: list[str]) -> list[str]:
    """The term SQLite's FTS5 (the SQLite store's tokenizer, unicode61) makes of each word."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5 (text)")
    db.execute("CREATE VIRTUAL TABLE terms USING fts5vocab (t, 'instance')")
    db.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", enumerate(words))
    terms = dict(db.execute("SELECT doc, term FROM terms").fetchall())
    db.close()
    return [terms[n] for n in range(len(words))]


def test_search_words_fold_accents_as_sqlite_does() -> None:
    # Covered: the letters of those blocks with one diacritic, which unicode61 takes off (é, ç, ñ,
    # ő, ș, ạ, the long s: 376, upper and lower case). Not ß, æ, ø, ł, đ, ħ, œ, þ (no base letter)
    # nor Vietnamese ấ, ệ or pinyin ǖ (two diacritics): unicode61 keeps them, and so does search.
    words = [f"q{letter}z" for letter in LATIN]
    assert [search_words(word) for word in words] == [(term,) for term in unicode61(words)]
    assert sum(term != word.lower() for word, term in zip(words, unicode61(words), strict=True)) == 376


def test_search_folds_accents_both_ways_on_both_engines(engine: Engine) -> None:
    call_with_finals(engine, "CA1", ["Un café crème à São Paulo, ÉCOLE, Łódź, Straße"], at=100.0)
    call_with_finals(engine, "CA2", ["a cafe creme in Sao Paulo"], at=200.0)
    call_with_finals(engine, "CA3", ["cafe\u0301 (decomposed)"], at=300.0)

    assert found(engine, "cafe") == ["CA3", "CA2", "CA1"]
    assert found(engine, "CAFÉ") == ["CA3", "CA2", "CA1"]
    assert found(engine, "crème sao PAULO") == ["CA2", "CA1"]
    assert found(engine, "ecole") == found(engine, "école") == ["CA1"]
    assert found(engine, "łodz") == ["CA1"]  # ó and ź fold, ł does not (nor in SQLite)
    assert found(engine, "lodz") == found(engine, "strasse") == []
    assert found(engine, "straße") == ["CA1"]


def test_every_letter_sqlite_folds_is_folded_on_both_engines(engine: Engine) -> None:
    folded = [(letter, term[1]) for letter, term in zip(LATIN, unicode61([f"q{c}z" for c in LATIN]), strict=True)]
    folded = [(letter, base) for letter, base in folded if base != letter.lower()]  # the 376 letters above
    calls = defaultdict(set)
    batch: list[Write] = []
    for n, (letter, base) in enumerate(folded):
        batch += [start(f"CA{n}", 1000.0 + n), final(f"CA{n}", 1, f"q{letter}z"), end(f"CA{n}", 1, at=2000.0 + n)]
        calls[base].add(f"CA{n}")
    engine.write(batch, NO_EVENTS)

    def found_all(q: str) -> set[str]:
        return {c.call_sid for c in engine.list_calls(parse_query({"q": q, "limit": "200"}))[0]}

    assert {letter: found_all(f"q{letter}z") for letter, _ in folded} == {
        letter: calls[base] for letter, base in folded
    }
    assert {base: found_all(f"q{base}z") for base in calls} == calls


def test_a_version_2_postgresql_store_upgraded_finds_accented_words(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_postgres, "MIGRATIONS", store_postgres.MIGRATIONS[:2])
    old = open_engine(postgres_url)
    old.open()
    old.register("old", time.time())
    call_with_finals(old, "CA1", ["un café à Zürich"])
    assert found(old, "cafe zurich") == []
    old.close()
    monkeypatch.undo()
    engine = open_engine(postgres_url)
    engine.open()
    try:
        assert found(engine, "cafe zurich") == ["CA1"]
    finally:
        engine.close()


def test_a_process_declared_gone_keeps_the_calls_it_starts_once_back(two_processes: tuple[Engine, Engine]) -> None:
    first, second = two_processes
    # The first lost the database for longer than its lease: the second declared it gone.
    assert second.reap("second", time.time(), -1.0, NO_EVENTS) == []
    # Back, its writer flushes a call started meanwhile before its next heartbeat.
    first.write([start("CA1", time.time())], NO_EVENTS)
    assert second.reap("second", time.time(), 30.0, NO_EVENTS) == []
    first.write([end("CA1", 0, at=time.time() + 1)], NO_EVENTS)
    call = first.get_call("CA1")
    assert call is not None and call.outcome == Outcome.ENDED
