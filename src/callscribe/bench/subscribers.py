"""The benchmark's simulated subscribers: one ``/client`` WebSocket per subscriber of a call.

A :class:`SimSubscriber` waits until its call is listed, subscribes, and hands every message it
receives to the :class:`~callscribe.bench.tracker.Tracker`, which matches it with the moment the fake
Deepgram sent it.
"""

from __future__ import annotations

import json

import trio

from callscribe.bench import ws as bench_ws
from callscribe.bench.calls import SimCall
from callscribe.bench.tracker import Tracker
from callscribe.bench.ws import ClientConnection
from callscribe.bench.ws_frames import OP_CLOSE, OP_TEXT, WebSocketError


class SimSubscriber:
    """One ``/client`` subscriber of one call."""

    def __init__(self, call: SimCall) -> None:
        self.call = call
        self.subscribed = trio.Event()
        self.failure: str | None = None
        self.skipped = False
        """The call ended before it could be subscribed to (a call started as the step ended)."""
        self.messages = 0
        self.close_code: int | None = None

    async def run(
        self,
        host: str,
        port: int,
        tracker: Tracker,
        nursery: trio.Nursery,
        limiter: trio.CapacityLimiter,
        *,
        give_up_s: float = 20.0,
    ) -> None:
        conn: ClientConnection | None = None
        try:
            deadline = trio.current_time() + give_up_s
            while True:
                async with limiter:
                    conn = await bench_ws.connect(host, port, "/client", nursery, stamped=True)
                listed = json.loads(await conn.receive_text(10.0))
                if self.call.call_sid in listed:
                    break
                await conn.aclose()
                conn = None
                if self.call.finished.is_set() or self.call.stop_sent:
                    self.skipped = True
                    return
                if trio.current_time() > deadline:
                    self.failure = "call never listed"
                    return
                await trio.sleep(0.05)
            conn.send_text(self.call.call_sid)
            self.subscribed.set()
            while conn.close_code is None:
                try:
                    now, frames = await conn.receive()
                except EOFError:
                    break
                for opcode, payload in frames:
                    if opcode == OP_TEXT:
                        self.messages += 1
                        tracker.delivered(payload, now)
                    elif opcode == OP_CLOSE:
                        break
            self.close_code = conn.close_code
        except (OSError, EOFError, WebSocketError, trio.TooSlowError, ValueError) as error:
            self.failure = f"{type(error).__name__}: {error}"
        finally:
            self.subscribed.set()
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose(timeout=1.0)
