"""`callscribe listen` asking the call feed for a call's tracks: a feed that cannot say costs the
first line little time, whatever it does."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from callscribe.client.listen import TRACKS_CLOSE_S, TRACKS_WAIT_S, Server, call_tracks
from conftest import free_port


async def misbehaving_feed(nursery: trio.Nursery, behaviour: str) -> int:
    port = free_port()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        if behaviour == "refusing":
            await request.reject(404, body=b"no")
            return
        ws = await request.accept()
        try:
            if behaviour == "silent":
                await trio.sleep_forever()
            elif behaviour == "closing":
                await ws.aclose(1008, "nope")
            else:
                await ws.send_message("[[[")
                await trio.sleep_forever()  # and never answers the close
        except trio_websocket.ConnectionClosed:
            pass

    await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", port, None)
    return port


@pytest.mark.parametrize("behaviour", ["silent", "refusing", "closing", "garbled"])
async def test_a_feed_that_cannot_say_gives_no_tracks_within_the_wait(
    behaviour: str, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        port = await misbehaving_feed(nursery, behaviour)
        began = trio.current_time()
        assert await call_tracks(Server(f"ws://127.0.0.1:{port}"), "CA1") == ()
        assert trio.current_time() - began <= TRACKS_WAIT_S + TRACKS_CLOSE_S
        nursery.cancel_scope.cancel()
