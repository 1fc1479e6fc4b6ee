"""The call feed in the shell: what the hub it wraps is told reaches viewers at once, the games and
other processes' calls within a refresh, a one-call viewer sees its call only, a slow viewer is cut off."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from callscribe.core.twilio import TwilioState
from callscribe.server.call_feed import VIEWER_QUEUE, CallFeed, ObservedHub
from callscribe.server.games import GameRegistry, GameSettings
from callscribe.server.hub import InMemoryHub, Subscription


def a_call(sid: str, state: TwilioState = TwilioState.STREAMING) -> Any:
    """What the feed reads of a live call (call.py's `Call`)."""
    start = SimpleNamespace(
        call_sid=sid, stream_sid="MZ" + sid, account_sid="AC1", custom_parameters={"From": "+15550100"}
    )
    return SimpleNamespace(
        call_sid=sid,
        stream=SimpleNamespace(start=start, tracks=["inbound"], state=state),
        close_code=1000,
        deepgram_error="",
    )


def received(viewer: Subscription) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(json.loads(viewer._receive.receive_nowait()))
        except trio.WouldBlock:
            return out


def feed_and_hub(calls: dict[str, Any]) -> tuple[CallFeed, ObservedHub, GameRegistry]:
    games = GameRegistry(GameSettings(), speech=None)
    feed = CallFeed(calls.get, games)
    return feed, ObservedHub(InMemoryHub(), feed), games


async def test_what_the_hub_is_told_reaches_viewers_as_it_happens() -> None:
    calls = {"CA1": a_call("CA1")}
    feed, hub, _ = feed_and_hub(calls)
    with feed.watch(None) as viewer:
        (snapshot,) = received(viewer)
        assert snapshot["type"] == "snapshot" and snapshot["calls"] == []
        await hub.register_call("CA1")
        await hub.publish("CA1", '{"type":"Results","is_final":true}')  # not a notice: nothing
        notice = {"type": "Reconnecting", "source": "callscribe", "callSid": "CA1", "message": "lost; reconnecting"}
        await hub.publish("CA1", json.dumps(notice), sticky=True)
        calls["CA1"].stream.state = TwilioState.STOPPED
        await hub.unregister_call("CA1")
        started, updated, ended = received(viewer)
    assert started["type"] == "call.started" and started["call"]["from"] == "+15550100"
    assert started["call"]["tracks"] == ["inbound"]
    assert updated["call"]["deepgram"] == "reconnecting"
    assert ended["type"] == "call.ended" and ended["outcome"] == "ended"
    assert feed.viewers == 0
    assert hub.stats() == {"calls": 0, "subscribers": 0, "up": 1}  # the hub itself was told everything too


async def test_a_viewer_limited_to_one_call_sees_only_it() -> None:
    feed, hub, _ = feed_and_hub({"CA1": a_call("CA1"), "CA2": a_call("CA2")})
    await hub.register_call("CA1")
    with feed.watch("CA2") as viewer:
        await hub.register_call("CA2")
        await hub.unregister_call("CA1")
        snapshot, started = received(viewer)
    assert snapshot["calls"] == [] and started["call"]["callSid"] == "CA2"


async def test_a_viewer_too_slow_for_its_events_is_cut_off_and_nobody_else(caplog: pytest.LogCaptureFixture) -> None:
    feed, hub, _ = feed_and_hub({})
    with feed.watch(None) as slow, feed.watch(None) as reading:
        for n in range(VIEWER_QUEUE + 5):
            await hub.register_call(f"CA{n}")
            received(reading)
        assert slow.ended and slow.close_code == 1008 and "too slow" in slow.close_reason
        assert not reading.ended
    assert "dropping a viewer" in caplog.text


async def test_games_and_other_processes_calls_show_within_a_refresh(autojump_clock: trio.abc.Clock) -> None:
    feed, hub, games = feed_and_hub({})
    game = await games.join("peer")
    assert game is not None
    elsewhere = ["CA-elsewhere"]

    async def listed() -> list[str]:
        return elsewhere

    hub.inner.active_calls = listed  # type: ignore[method-assign]  # a shared hub lists another process's call
    with feed.watch(None) as viewer:
        async with trio.open_nursery() as nursery:
            await nursery.start(hub.run)
            await trio.sleep(0.5)
            events = received(viewer)[1:]
            assert events[0] == {"type": "games", "games": [{"code": game.code, "callSid": None}]}
            assert events[1]["type"] == "call.started" and events[1]["call"]["here"] is False
            elsewhere.clear()
            await trio.sleep(1.0)
            (gone,) = received(viewer)
            assert gone["type"] == "call.ended" and gone["callSid"] == "CA-elsewhere" and gone["outcome"] is None
            nursery.cancel_scope.cancel()
