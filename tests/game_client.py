"""A game client for tests: connects to /game, records what it is sent, reacts with a script."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio_websocket

from callscribe.core.audio import generate_tone
from callscribe.testing.simulator import CallSpec
from conftest import RunningServer


@dataclass
class GameClient:
    number: str = ""
    code: str = ""
    messages: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def types(self) -> list[str]:
        return [m.get("type", "") for m in self.messages]


Script = Callable[[trio_websocket.WebSocketConnection, dict], Awaitable[None]]


async def play(
    server: RunningServer,
    game: GameClient,
    script: Script | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> GameClient:
    """A game: connect, read the number and the code, then react to messages until the server closes."""
    async with trio_websocket.open_websocket_url(server.url("/game"), connect_timeout=5) as ws:
        game.number = str(await ws.get_message())
        game.code = str(await ws.get_message())
        task_status.started()
        try:
            with trio.fail_after(30):
                while True:
                    message = json.loads(await ws.get_message())
                    game.messages.append(message)
                    if script is not None:
                        await script(ws, message)
                    if message.get("type") == "CallEnded":
                        return game
        except trio_websocket.ConnectionClosed as closed:
            game.close_code, game.close_reason = closed.reason.code, closed.reason.reason
    return game


def say_when_connected(text: str) -> Script:
    """A game that says `text` (as a plain text frame) once a caller is patched in."""

    async def script(ws: trio_websocket.WebSocketConnection, message: dict) -> None:
        if message["type"] == "CallConnected":
            await ws.send_message(text)

    return script


def game_call(seconds: float = 6.0, **extra: object) -> CallSpec:
    return CallSpec(inbound=generate_tone(seconds), custom_parameters={"route": "game"}, **extra)  # type: ignore[arg-type]
