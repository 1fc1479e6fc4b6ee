"""Lingering close: bounded in bytes and in time, and never past its caller's cancel scope."""

from __future__ import annotations

import trio

from callscribe.server.linger import LINGER_BYTES, LINGER_S, linger_close


async def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_a_peer_that_never_closes_is_let_go_after_the_bound(autojump_clock: trio.abc.Clock) -> None:
    server, client = await socket_pair()
    start = trio.current_time()
    with trio.fail_after(LINGER_S + 1):
        await linger_close(server)
    assert trio.current_time() - start == LINGER_S
    assert await client.receive_some() == b""  # the answer ended at once (the write side shut)
    await client.aclose()


async def test_a_peer_that_closes_is_let_go_at_once(autojump_clock: trio.abc.Clock) -> None:
    server, client = await socket_pair()
    await client.send_all(b"x" * 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(linger_close, server)
        assert await client.receive_some() == b""
        start = trio.current_time()
        await client.aclose()
    assert trio.current_time() == start


async def test_no_more_than_the_bound_is_read(autojump_clock: trio.abc.Clock) -> None:
    server, client = await socket_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(linger_close, server)
        sent = 0
        start = trio.current_time()
        with trio.fail_after(LINGER_S / 2):  # cut off long before the time bound
            try:
                while True:
                    await client.send_all(b"x" * 4096)
                    sent += 4096
            except trio.BrokenResourceError:
                pass
        assert trio.current_time() - start < LINGER_S
    assert sent >= LINGER_BYTES
    await client.aclose()


async def test_a_cancelled_linger_closes_at_once(autojump_clock: trio.abc.Clock) -> None:
    server, client = await socket_pair()
    with trio.CancelScope() as shutdown:
        shutdown.cancel()
        await linger_close(server)
    assert shutdown.cancelled_caught
    assert server.socket.fileno() == -1
    await client.aclose()
