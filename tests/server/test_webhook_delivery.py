"""Webhook delivery from the store's outbox: in order per call, retried, isolated per receiver,
surviving a restart; real HTTP receivers on loopback."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from callscribe.core import webhooks
from callscribe.core.call_record import CallEnd, Outcome
from callscribe.core.webhooks import RetryPolicy
from callscribe.server.store import StoreSettings
from callscribe.server.store_writer import StoreRecorder, open_store
from callscribe.server.webhook_delivery import WebhookDelivery
from conftest import free_port
from store_records import final_text, start
from webhook_receiver import Receiver

SECRET = "s3cret"
FAST = RetryPolicy(first_s=0.05)
ENDED = CallEnd(ended_at=time.time(), outcome=Outcome.HUNG_UP, reason="call ended")


@asynccontextmanager
async def running_store(
    path: Path, receivers: list[str], policy: RetryPolicy = FAST, deliver: bool = True, attempt_timeout_s: float = 30.0
) -> AsyncIterator[tuple[StoreRecorder, WebhookDelivery]]:
    recorder = await open_store(
        StoreSettings(location=str(path), webhook_urls=tuple(receivers), webhook_secret=SECRET, webhook_retry=policy)
    )
    delivery = WebhookDelivery(recorder, SECRET, poll_s=0.5, attempt_timeout_s=attempt_timeout_s)
    if deliver:
        recorder.delivery = delivery
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            yield recorder, delivery
            nursery.cancel_scope.cancel()
    finally:
        recorder.engine.close()


def a_call(recorder: StoreRecorder, call_sid: str, finals: int) -> None:
    recorder.call_started(start(call_sid, time.time()).start)
    for n in range(finals):
        recorder.final(call_sid, final_text(f"{call_sid} says {n}", at=n))
    recorder.call_ended(call_sid, ENDED)


async def test_a_receiver_that_fails_three_times_gets_every_event_in_order_signed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    receiver = Receiver(fail_first=3)
    await nursery.start(receiver.serve)
    async with running_store(tmp_path / "store.db", [receiver.url]) as (recorder, delivery):
        a_call(recorder, "CA1", 3)
        a_call(recorder, "CA2", 2)
        await receiver.wait_for(5 + 4)
        stats = delivery.stats[receiver.url]
        with trio.fail_after(5):
            while stats.pending:
                await trio.sleep(0.01)
    assert stats.failed == 3 and stats.delivered == 9 and stats.dropped == 0
    for call_sid, finals in (("CA1", 3), ("CA2", 2)):
        events = [e for e in receiver.accepted if e["callSid"] == call_sid]
        assert [e["sequence"] for e in events] == list(range(finals + 2))
        assert [e["type"] for e in events] == ["call.started", *["transcript.final"] * finals, "call.ended"]
        assert [u["text"] for u in events[-1]["data"]["utterances"]] == [f"{call_sid} says {n}" for n in range(finals)]
    for delivery_ in receiver.deliveries:
        header = delivery_.headers[webhooks.SIGNATURE_HEADER.lower()]
        assert webhooks.verify(SECRET.encode(), header, delivery_.body, time.time())
        assert delivery_.headers["callscribe-event-id"] == delivery_.event["id"]
    # The failed attempts were sent again as they were: the same event ids.
    assert len({d.event["id"] for d in receiver.deliveries}) == 9


async def test_a_receiver_that_is_down_holds_up_nobody_else(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    working = Receiver()
    await nursery.start(working.serve)
    down = f"http://127.0.0.1:{free_port()}/hook"
    policy = RetryPolicy(first_s=0.05, max_delay_s=0.1, give_up_after_s=0.5)
    async with running_store(tmp_path / "store.db", [down, working.url], policy) as (recorder, delivery):
        a_call(recorder, "CA1", 4)
        await working.wait_for(6)
        with trio.fail_after(10):
            while delivery.stats[down].dropped < 6:
                await trio.sleep(0.05)
    assert delivery.stats[down].delivered == 0 and delivery.stats[down].failed >= 6
    messages = [r.getMessage() for r in caplog.records if r.name == "callscribe.server.webhook_delivery"]
    assert sum("delivery failed" in m for m in messages) == 1  # once per outage
    assert sum("gave up" in m for m in messages) == 6


async def test_a_receiver_url_the_http_client_refuses_is_a_failed_delivery_given_up_in_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A mistyped international host passes urlsplit (start-up refuses it now, see test_config) but
    # not httpx, whose InvalidURL is no HTTPError: each event is a failure and dropped in time.
    unusable = "https://hooks.ex\u00e4mple..com/calls"
    policy = RetryPolicy(first_s=0.05, max_delay_s=0.1, give_up_after_s=0.5)
    async with running_store(tmp_path / "store.db", [unusable], policy) as (recorder, delivery):
        a_call(recorder, "CA1", 1)
        with trio.fail_after(10):
            while delivery.stats[unusable].dropped < 3:
                await trio.sleep(0.05)
    assert delivery.stats[unusable].failed >= 3 and delivery.stats[unusable].pending == 0
    assert not any("failed unexpectedly" in r.getMessage() for r in caplog.records)


async def test_events_survive_a_restart(nursery: trio.Nursery, tmp_path: Path) -> None:
    receiver = Receiver()
    await nursery.start(receiver.serve)
    async with running_store(tmp_path / "store.db", [receiver.url], deliver=False) as (recorder, _):
        a_call(recorder, "CA1", 2)
        with trio.fail_after(5):
            await recorder.flush()
    assert receiver.deliveries == []
    async with running_store(tmp_path / "store.db", [receiver.url]) as _:
        await receiver.wait_for(4)
    assert [e["sequence"] for e in receiver.accepted] == [0, 1, 2, 3]


@pytest.mark.logged_exceptions_expected
async def test_an_unexpected_store_error_is_logged_and_delivery_goes_on(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = Receiver()
    await nursery.start(receiver.serve)
    async with running_store(tmp_path / "store.db", [receiver.url]) as (recorder, _delivery):
        heads = recorder.engine.outbox_heads
        failures = [sqlite3.DatabaseError("database disk image is malformed")]

        def failing_once(*args: Any) -> Any:
            if failures:
                raise failures.pop()
            return heads(*args)

        recorder.engine.outbox_heads = failing_once  # type: ignore[method-assign]
        a_call(recorder, "CA1", 1)
        await receiver.wait_for(3)
    assert [e["type"] for e in receiver.accepted] == ["call.started", "transcript.final", "call.ended"]
    (failed,) = [r for r in caplog.records if "delivery round failed unexpectedly" in r.getMessage()]
    assert failed.exc_info is not None and "malformed" in str(failed.exc_info[1])


async def test_a_receiver_whose_answer_never_ends_gets_each_event_once_and_holds_up_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The receiver took each event (200) but its body goes on forever (a URL that streams, a
    # misconfigured proxy): its status is all that counts, the body is neither waited for nor kept.
    receiver = Receiver(endless_reply=True)
    await nursery.start(receiver.serve)
    async with running_store(tmp_path / "store.db", [receiver.url]) as (recorder, delivery):
        a_call(recorder, "CA1", 1)
        await receiver.wait_for(3, timeout=10)
        stats = delivery.stats[receiver.url]
        with trio.fail_after(10):
            while stats.delivered < 3:
                await trio.sleep(0.01)
    assert stats.failed == 0 and [e["sequence"] for e in receiver.accepted] == [0, 1, 2]


async def test_an_answer_that_trickles_in_forever_fails_the_attempt_in_time(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Each byte of the headers comes well within httpx's read timeout: only the attempt's own
    # limit ends it, as a failure to retry, so the receiver's events are not held up for ever.
    receiver = Receiver(trickled_reply=True)
    await nursery.start(receiver.serve)
    async with running_store(tmp_path / "store.db", [receiver.url], attempt_timeout_s=0.5) as (recorder, delivery):
        a_call(recorder, "CA1", 0)
        stats = delivery.stats[receiver.url]
        with trio.fail_after(10):
            while stats.failed < 2:
                await trio.sleep(0.01)
    assert stats.delivered == 0
    assert any("no answer within 0.5 s" in r.getMessage() for r in caplog.records)
