"""The accept loop: the connection barrier and routing by the first request head."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config

from callscribe.server import listener

HEAD = b"GET /twilio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


@pytest.mark.logged_exceptions_expected
async def test_a_connection_whose_handler_raises_is_logged_closed_and_kept_to_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def broken(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"hello")
        raise TypeError("a bug in the protocol code")

    await listener.guarded_connection(broken, server)
    assert await client.receive_some(10) == b"hello"
    assert await client.receive_some(10) == b""  # closed
    (record,) = [r for r in caplog.records if r.name == "callscribe.server.listener"]
    assert record.levelno == logging.ERROR and "failed and was closed" in record.getMessage()
    assert isinstance(record.exc_info[1], TypeError)  # type: ignore[index]


async def test_cancellation_is_not_swallowed_by_the_barrier() -> None:
    _, server = trio.testing.memory_stream_pair()

    async def waits(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await listener.guarded_connection(waits, server)
    assert scope.cancelled_caught


async def route(stream: trio.abc.Stream, head: bytes, peer: str) -> None:
    """A stand-in for a route."""


@pytest.mark.parametrize(
    "head,routed",
    [
        (HEAD, True),
        (HEAD.replace(b"/twilio", b"/twilio?x=1"), True),
        (HEAD.replace(b"Upgrade: websocket", b"upgrade:WebSocket"), True),
        (HEAD.replace(b"GET", b"POST"), False),
        (HEAD.replace(b"/twilio", b"/client"), False),
        (HEAD.replace(b"/twilio", b"/twilio/x"), False),
        (HEAD.replace(b"Upgrade: websocket\r\n", b""), False),
        (HEAD[:-2], False),  # no end of head: Hypercorn decides what to do with it
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", False),
        (b"GET /twilio\r\n\r\n", False),
    ],
)
def test_only_a_websocket_upgrade_for_a_route_is_routed(head: bytes, routed: bool) -> None:
    assert (listener.route_of(head, {"/twilio": route}) is route) is routed


async def test_the_head_is_read_up_to_its_end_and_no_further_than_needed() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(HEAD[:10])
    async with trio.open_nursery() as nursery:
        heads: list[bytes] = []

        async def read() -> None:
            heads.append(await listener.read_head(server, timeout_s=5))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await client.send_all(HEAD[10:] + b"\x81\x80")  # the first frame may come with the head
    assert heads == [HEAD + b"\x81\x80"]


@pytest.mark.parametrize(
    "start,stops",
    [
        (b"G", False),
        (b"GET /tw", False),
        (b"GET /twilio?x", False),
        (b"POST", True),
        (b"GET /client", True),
        (b"GET /twilioo", True),
        (b"\x16\x03", True),
    ],
)
async def test_reading_stops_as_soon_as_the_request_cannot_be_for_a_route(
    start: bytes, stops: bool, autojump_clock: trio.abc.Clock
) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(start)
    with trio.move_on_after(1) as waited:
        assert await listener.read_head(server, timeout_s=2, paths=["/twilio"]) == start
    assert waited.cancelled_caught is not stops


async def test_a_silent_or_vanishing_connection_gives_what_it_sent(autojump_clock: trio.abc.Clock) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET /")
    assert await listener.read_head(server, timeout_s=5) == b"GET /"
    await client.aclose()
    assert await listener.read_head(server, timeout_s=5) == b""


async def _minimal_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost:", b"GET /twilio HTTP/1.1\r\n"])
async def test_shutdown_closes_a_connection_whose_request_has_not_come_at_once(sent: bytes) -> None:
    # listener.serve: "Idle keep-alive connections close now" -- as Hypercorn closes a connection
    # that has not sent a whole request yet. One still in `read_head` kept the server up for the
    # whole graceful_timeout (or until its head came).
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 30.0
    config.keep_alive_timeout = 30.0
    stop, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await listener.serve(
                _minimal_app, config, shutdown_trigger=stop.wait, routes={"/twilio": _never}, task_status=task_status
            )
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        (bind,) = await nursery.start(run)
        port = int(bind.rsplit(":", 1)[1])
        quiet = await trio.open_tcp_stream("127.0.0.1", port)
        await quiet.send_all(sent)
        served = await trio.open_tcp_stream("127.0.0.1", port)  # a keep-alive connection idle after a request
        await served.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            assert (await served.receive_some(1000)).startswith(b"HTTP/1.1 200")
        stop.set()
        with trio.fail_after(5):
            await stopped.wait()
            assert await quiet.receive_some(1000) == b""
        await quiet.aclose()
        await served.aclose()


async def _never(stream: trio.abc.Stream, head: bytes, peer: str) -> None:
    raise AssertionError("no upgrade is sent")
