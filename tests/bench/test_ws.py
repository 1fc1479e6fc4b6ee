"""The benchmark's client WebSocket: reads timed by the kernel's arrival stamp."""

from __future__ import annotations

import time

import trio

from callscribe.bench import ws as bench_ws
from callscribe.bench.ws_frames import OP_TEXT

RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
ATTEMPTS = 20
"""Linux turns receive stamps on a moment after the first socket asks (deferred work): the first
reads may get none (then the read's own clock), so a few messages are tried."""


async def test_a_stamped_read_is_timed_when_the_bytes_arrived_not_when_it_was_read() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    ask_send, ask_receive = trio.open_memory_channel[None](0)
    stamped = 0
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:

            async def server() -> None:
                stream = await listeners[0].accept()
                while b"\r\n\r\n" not in await stream.receive_some(65536):
                    pass
                await stream.send_all(RESPONSE)
                async for _ in ask_receive:  # a frame each time the client asks: never with the handshake
                    await stream.send_all(bytes([0x80 | OP_TEXT, 5]) + b"hello")

            nursery.start_soon(server)
            conn = await bench_ws.connect("127.0.0.1", port, "/client", nursery, stamped=True)
            for _ in range(ATTEMPTS):
                sent_before = time.monotonic()
                await ask_send.send(None)
                await trio.lowlevel.wait_readable(conn.sock)
                readable_at = time.monotonic()
                while time.monotonic() < readable_at + 0.005:  # the reader is late by 5 ms
                    pass
                now, frames = await conn.receive()
                assert frames == [(OP_TEXT, b"hello")]
                assert now > sent_before - 0.001  # on the same clock
                if now < readable_at + 0.001:  # the arrival, not the read 5 ms later
                    stamped += 1
                    break
            nursery.cancel_scope.cancel()
    await listeners[0].aclose()
    assert stamped == 1
