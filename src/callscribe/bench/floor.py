"""The benchmark's "floor": the least a server built from callscribe's stack can do with a call.

Same stack as callscribe (Hypercorn's Trio worker, Quart-Trio, trio-websocket to Deepgram, msgspec),
none of callscribe's own work (no alignment or padding, no channels between tasks, no hub, no
subscribers). Two kinds:

- ``receive``: the ``/twilio`` handler only receives frames (no parsing) until it sees ``stop``.
  Its CPU per frame is the *stack floor*: what Hypercorn + Quart-Trio cost per received frame.
- ``asgi-receive``: the same as ``receive`` written as a plain ASGI application (no Quart): what
  Quart-Trio's own per-frame work costs on top of Hypercorn's.
- ``forward``: receive, decode each frame with msgspec, append the payload to its track's buffer,
  and every window send both tracks interleaved (slice assignment) to Deepgram from the same task;
  Deepgram's messages are read and dropped; on ``stop`` the rest is sent with ``CloseStream``.
  This is about the least any relay can do, so callscribe's distance to it is its own overhead.

Run as ``python -m callscribe.bench.floor --kind forward --listen 127.0.0.1:5001 --deepgram-url ...``;
``callscribe bench`` starts it itself.
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

import msgspec
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart import websocket
from quart_trio import QuartTrio

from callscribe.core import deepgram
from callscribe.server.websocket_client import connect_websocket

log = logging.getLogger(__name__)

KINDS = ("receive", "forward", "asgi-receive")


class _Media(msgspec.Struct):
    track: str
    payload: bytes


class _Frame(msgspec.Struct):
    event: str
    media: _Media | None = None


_decode = msgspec.json.Decoder(_Frame).decode
_STOP_PREFIX = '{"event":"stop"'


async def asgi_receive_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Plain ASGI: ``/healthz`` and a receive-only ``/twilio``."""
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http":
        await receive()
        body = b'{"status": "ok", "kind": "asgi-receive"}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "websocket" or (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        text = event.get("text")
        if text is not None and text.startswith(_STOP_PREFIX):
            break
    await send({"type": "websocket.close", "code": 1000, "reason": "call ended"})


def create_floor_app(kind: str, deepgram_url: str, api_key: str, window_ms: int = 100) -> Any:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if kind == "asgi-receive":
        return asgi_receive_only
    app = QuartTrio("callscribe-floor")
    window = window_ms * 8
    headers = [("Authorization", f"Token {api_key}")]

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, str], int]:
        return {"status": "ok", "kind": kind}, 200

    async def receive_only() -> None:
        ws = websocket._get_current_object()  # type: ignore[attr-defined]  # the object behind the proxy
        await ws.accept()
        while True:
            message = await ws.receive()
            if isinstance(message, str) and message.startswith(_STOP_PREFIX):
                break
        await ws.close(1000, "call ended")

    async def forward() -> None:
        ws = websocket._get_current_object()  # type: ignore[attr-defined]
        await ws.accept()
        buffers = {"inbound": bytearray(), "outbound": bytearray()}
        out = bytearray(window * 2)
        async with trio.open_nursery() as nursery:
            dg = await connect_websocket(nursery, deepgram.listen_url(deepgram_url, channels=2), headers=headers)

            async def drain_deepgram() -> None:
                try:
                    while True:
                        await dg.get_message()
                except Exception:
                    return

            nursery.start_soon(drain_deepgram)
            inbound, outbound = buffers["inbound"], buffers["outbound"]
            while True:
                frame = _decode(await ws.receive())
                if frame.event == "media" and frame.media is not None:
                    buffers[frame.media.track] += frame.media.payload
                    while len(inbound) >= window and len(outbound) >= window:
                        out[0::2] = inbound[:window]
                        out[1::2] = outbound[:window]
                        del inbound[:window], outbound[:window]
                        await dg.send_message(bytes(out))
                elif frame.event == "stop":
                    break
            rest = max(len(inbound), len(outbound))
            if rest:
                inbound.extend(b"\xff" * (rest - len(inbound)))
                outbound.extend(b"\xff" * (rest - len(outbound)))
                tail = bytearray(rest * 2)
                tail[0::2], tail[1::2] = inbound, outbound
                await dg.send_message(bytes(tail))
            await dg.send_message(deepgram.CLOSE_STREAM)
            with trio.move_on_after(5):
                while dg.closed is None:
                    await trio.sleep(0.01)
            await dg.aclose()
            nursery.cancel_scope.cancel()
        await ws.close(1000, "call ended")

    app.websocket("/twilio")(receive_only if kind == "receive" else forward)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callscribe.bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=KINDS, default="forward")
    parser.add_argument("--listen", default="127.0.0.1:5001")
    parser.add_argument("--deepgram-url", default="ws://127.0.0.1:8765/v1/listen?encoding=mulaw&sample_rate=8000")
    parser.add_argument("--deepgram-api-key", default="bench")
    parser.add_argument("--window-ms", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app = create_floor_app(args.kind, args.deepgram_url, args.deepgram_api_key, args.window_ms)
    config = Config()
    config.bind = [args.listen]
    config.websocket_max_message_size = 64 * 1024
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.errorlog = log

    async def run() -> None:
        stop = trio.Event()

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            await hypercorn_serve(app, config, shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel()

    trio.run(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
