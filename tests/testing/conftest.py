"""Fixtures of the simulator's tests: a Twilio-facing WebSocket server that records what a call sends."""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio_websocket


@dataclass
class Recorder:
    """A tiny Twilio-facing test server: records messages; optionally replies and closes."""

    close_after_stop: bool = True
    close_after_media: int | None = None  # close (4000) after this many media messages
    reply_on_start: str | None = None
    messages: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    client_closed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    port: int = 0

    async def handler(self, request: trio_websocket.WebSocketRequest) -> None:
        self.headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        ws = await request.accept()
        media = 0
        try:
            while True:
                text = await ws.get_message()
                assert isinstance(text, str)
                self.messages.append(text)
                self.times.append(trio.current_time())
                event = json.loads(text)["event"]
                if event == "start" and self.reply_on_start:
                    await ws.send_message(self.reply_on_start)
                if event == "media":
                    media += 1
                    if media == self.close_after_media:
                        await ws.aclose(4000, "go away")
                        return
                if event == "stop" and self.close_after_stop:
                    await ws.send_message('{"event":"bye"}')
                    await ws.aclose(1000, "call ended")
                    return
        except trio_websocket.ConnectionClosed:
            self.client_closed.set()
        finally:
            self.done.set()


async def start_server(nursery: trio.Nursery, handler: Callable[..., Awaitable[None]], **kwargs: Any) -> int:
    """Serve ``handler`` with trio-websocket on a free loopback port; returns the port."""
    serve = functools.partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, **kwargs)
    server = await nursery.start(serve)
    return server.port


StartRecorder = Callable[..., Awaitable[Recorder]]


@pytest.fixture
async def start_recorder(nursery: trio.Nursery) -> StartRecorder:
    """``await start_recorder(ssl_context=None, **recorder_options)``: a serving :class:`Recorder`."""

    async def start(ssl_context: ssl.SSLContext | None = None, **options: Any) -> Recorder:
        recorder = Recorder(**options)
        recorder.port = await start_server(nursery, recorder.handler, ssl_context=ssl_context)
        return recorder

    return start


@pytest.fixture
async def start_websocket_server(nursery: trio.Nursery) -> Callable[..., Awaitable[int]]:
    """``await start_websocket_server(handler, **serve_options)``: serve any handler; returns the port."""
    return functools.partial(start_server, nursery)
