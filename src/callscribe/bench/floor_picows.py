"""The benchmark's picows+uvloop floor: what receiving a Twilio frame costs outside callscribe's stack.

The ``receive`` floor of :mod:`callscribe.bench.floor` measures callscribe's own stack (Hypercorn,
Quart-Trio, wsproto) doing nothing but receive. This floor does the same nothing on about the
cheapest Python WebSocket server there is: picows (WebSocket framing in Cython) on uvloop (libuv's
loop and uvloop's own C transports, not aiofastnet's), so callscribe's CPU per frame divided by this
one says how far the whole stack, not only callscribe's work, is from a fast C server.

Mirrored from ``receive``: ``GET /healthz`` answers 200 with JSON (what ``callscribe bench`` polls
before a step), ``/twilio`` upgrades and receives every frame without parsing it, and a text frame
that starts like Twilio's ``stop`` ends the call with a close of 1000 "call ended". A close from the
caller is answered and ends the connection; pings are answered by picows. Messages are at most
64 KiB (Hypercorn's limit in the ``receive`` floor). Messages are not reassembled from fragments
(Twilio's, and the benchmark's, are single frames), which ``receive`` gets from wsproto for free.

Run as ``python -m callscribe.bench.floor_picows --listen 127.0.0.1:5001`` (needs the ``bench``
extra: picows and uvloop); ``callscribe bench`` starts it itself as the ``floor-picows-receive`` step.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

import uvloop
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

KIND = "picows-receive"
MAX_MESSAGE = 64 * 1024
_STOP_PREFIX = b'{"event":"stop"'
_STOP_LEN = len(_STOP_PREFIX)
_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE
_HEALTH = WSUpgradeResponseWithListener(
    WSUpgradeResponse.create_ok_response(
        f'{{"status": "ok", "kind": "{KIND}"}}'.encode(), extra_headers={"Content-Type": "application/json"}
    ),
    None,
)


class ReceiveOnly(WSListener):  # type: ignore[misc,unused-ignore]  # WSListener is Any where picows is not installed
    """One call: receive every frame, end on ``stop``."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is _TEXT:
            if frame.payload_size >= _STOP_LEN and frame.get_payload_as_memoryview()[:_STOP_LEN] == _STOP_PREFIX:
                transport.send_close(WSCloseCode.OK, b"call ended")
        elif msg_type is _CLOSE:
            if not transport.is_close_frame_sent:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


def route(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener | None:
    """``/twilio``: a :class:`ReceiveOnly`; ``/healthz``: 200; anything else: 404 (picows' answer to None)."""
    path = request.path.partition(b"?")[0]
    if path == b"/twilio":
        return ReceiveOnly()
    if path == b"/healthz":
        return _HEALTH
    return None


async def serve(host: str, port: int, stop: asyncio.Event) -> None:
    """Serve on ``host:port`` until ``stop`` is set."""
    server = await ws_create_server(
        route,
        host,
        port,
        max_frame_size=MAX_MESSAGE,
        use_aiofastnet=False,  # uvloop's own transports: the floor is picows on uvloop
        logger_name="floor",
    )
    async with server:
        await stop.wait()
        server.close()


async def _main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(host, port, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m callscribe.bench.floor_picows", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--listen", default="127.0.0.1:5001", help="HOST:PORT")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(_main(host.strip("[]"), int(port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
