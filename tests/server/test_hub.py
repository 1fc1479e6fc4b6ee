"""The in-memory hub: registry, fan-out, slow subscribers, closing."""

from __future__ import annotations

import pytest
import trio

from callscribe.server.hub import CLOSE_GOING_AWAY, CLOSE_POLICY, HISTORY, InMemoryHub, UnknownCall


async def drain(subscription) -> list[str]:
    return [message async for message in subscription]


async def test_fan_out_shares_one_message_object_and_ends_with_the_call() -> None:
    hub = InMemoryHub()
    await hub.register_call("CA1")
    async with hub.subscribe("CA1") as first, hub.subscribe("CA1") as second:
        assert hub.stats() == {"calls": 1, "subscribers": 2, "up": 1}
        message = '{"type":"Results"}'
        await hub.publish("CA1", message)
        await hub.unregister_call("CA1")
        got_first, got_second = await drain(first), await drain(second)
    assert got_first == got_second == [message]
    assert got_first[0] is got_second[0]  # serialized once, shared
    assert (first.close_code, first.close_reason) == (1000, "call ended")
    assert hub.stats() == {"calls": 0, "subscribers": 0, "up": 1}


async def test_unknown_call_is_refused() -> None:
    with pytest.raises(UnknownCall):
        async with InMemoryHub().subscribe("CA-nope"):
            pass


async def test_a_full_queue_ends_only_that_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    hub = InMemoryHub()
    await hub.register_call("CA1")
    async with hub.subscribe("CA1", queue_size=3) as slow, hub.subscribe("CA1", queue_size=100) as fine:
        for n in range(10):
            await hub.publish("CA1", str(n))
        assert slow.ended and slow.close_code == CLOSE_POLICY and "too slow" in slow.close_reason
        assert slow.cancel_scope.cancel_called
        assert not fine.ended
        await hub.unregister_call("CA1")
        assert await drain(fine) == [str(n) for n in range(10)]
    assert sum("too slow" in r.getMessage() for r in caplog.records) == 1


async def test_a_call_with_two_streams_ends_when_both_have_ended() -> None:
    hub = InMemoryHub()
    await hub.register_call("CA1")
    await hub.register_call("CA1")
    async with hub.subscribe("CA1") as subscription:
        await hub.unregister_call("CA1")
        assert not subscription.ended and await hub.active_calls() == ["CA1"]
        await hub.unregister_call("CA1")
        assert subscription.ended and await hub.active_calls() == []


async def test_sticky_notice_reaches_late_subscribers_first() -> None:
    hub = InMemoryHub()
    await hub.register_call("CA1")
    await hub.publish("CA1", "notice", sticky=True)
    await hub.publish("CA1", "lost to nobody")
    async with hub.subscribe("CA1") as late:
        await hub.publish("CA1", "after")
        await hub.unregister_call("CA1")
        assert await drain(late) == ["notice", "after"]


async def test_shutdown_closes_subscribers_with_1001() -> None:
    hub = InMemoryHub()
    await hub.register_call("CA1")
    async with hub.subscribe("CA1") as subscription:
        await hub.shutdown()
        assert (subscription.close_code, subscription.close_reason) == (CLOSE_GOING_AWAY, "server shutting down")
        with trio.fail_after(1):
            assert await drain(subscription) == []


async def test_a_lagging_subscriber_skips_interims_but_never_a_final() -> None:
    hub = InMemoryHub()
    await hub.register_call("CA1")
    async with hub.subscribe("CA1", queue_size=4) as lagging:
        await hub.publish("CA1", "final-1")
        await hub.publish("CA1", "final-2")  # half full now: lagging
        await hub.publish("CA1", "interim-1", droppable=True)
        await hub.publish("CA1", "final-3")
        assert lagging.skipped == 1 and not lagging.ended
        await hub.publish("CA1", "final-4")
        await hub.publish("CA1", "final-5")  # would be lost: the subscriber is closed instead
        assert lagging.ended and lagging.close_code == CLOSE_POLICY
        assert await drain(lagging) == ["final-1", "final-2", "final-3", "final-4"]


async def test_resuming_from_before_a_full_history_is_not_taken_for_a_slow_subscriber() -> None:
    """The history read back (up to `HISTORY` messages and the gap notice) is not the subscriber
    lagging: it gets all of it, then the live messages, and the usual bound applies to those."""
    hub = InMemoryHub()
    await hub.register_call("CA1")
    for n in range(HISTORY + 1):  # one more than kept: the first is evicted
        await hub.publish("CA1", f'{{"n": {n}}}')
    async with hub.subscribe("CA1", after="0-0") as resumed:
        await hub.publish("CA1", '{"n": "live"}')
        await hub.unregister_call("CA1")
        got = await drain(resumed)
    assert resumed.close_code == 1000, resumed.close_reason
    assert "cannot resume right after 0-0" in got[0]
    assert len(got) == 1 + HISTORY + 1 and got[-1].endswith('"n": "live"}')
