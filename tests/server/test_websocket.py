"""The `/twilio` WebSocket on callscribe's own code, over real loopback TCP (the fast read path)
and over TLS (read through trio's SSLStream)."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import rawws
from callscribe.server.websocket import ReadTick, ServedWebSocket
from callscribe.server.websocket_accept import Admission, accept_websocket
from callscribe.server.websocket_writes import WRITE_QUEUE
from conftest import local_tls

MAX = 64 * 1024


@asynccontextmanager
async def tcp_pair(tls: bool = False) -> AsyncIterator[tuple[trio.abc.Stream, trio.abc.Stream]]:
    """(client, server) streams over loopback TCP; TLS-wrapped on both ends when asked."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    server: trio.abc.Stream = await listeners[0].accept()
    await listeners[0].aclose()
    if tls:
        certs = local_tls()
        client = trio.SSLStream(client, certs.client, server_hostname="127.0.0.1")
        server = trio.SSLStream(server, certs.server, server_side=True)
    try:
        yield client, server
    finally:
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)


async def accepted(client: trio.abc.Stream, server: trio.abc.Stream, **options: object) -> ServedWebSocket:
    head = rawws.upgrade_request("/twilio")

    async def send_head() -> None:
        await client.send_all(head)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_head)
        received = b""
        while b"\r\n\r\n" not in received:
            received += await server.receive_some(65536)
    ws = await accept_websocket(
        server, received, "peer", check=lambda request: Admission(), max_message=MAX, stall_timeout_s=2.0, **options
    )
    assert ws is not None
    response = b""
    while b"\r\n\r\n" not in response:
        response += await client.receive_some(65536)
    assert response.startswith(b"HTTP/1.1 101")
    return ws


@asynccontextmanager
async def served(tls: bool = False) -> AsyncIterator[tuple[trio.abc.Stream, ServedWebSocket]]:
    """(client, the server's accepted WebSocket with its writer running), closed with 1000 at the end."""
    async with tcp_pair(tls) as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        yield client, ws
        await ws.close(1000, "call ended", timeout_s=2)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("tls", [False, True])
async def test_everything_one_read_brings_is_one_batch(tls: bool) -> None:
    async with served(tls) as (client, ws):
        frames = [rawws.frame(rawws.OP_TEXT, b'{"n":%d}' % n) for n in range(3)] + [
            rawws.frame(rawws.OP_BINARY, b"\x00")
        ]
        await client.send_all(b"".join(frames))
        with trio.fail_after(5):
            batch = await ws.receive_batch()
            while len(batch) < 4:  # TLS may split a record read; plain TCP on loopback does not
                batch += await ws.receive_batch()
        assert batch == ['{"n":0}', '{"n":1}', '{"n":2}', b"\x00"]


async def test_a_read_not_before_a_time_takes_all_that_came_until_then_at_once() -> None:
    async with served() as (client, ws), trio.open_nursery() as nursery:
        not_before = trio.current_time() + 0.3

        async def send_over_time() -> None:
            for n in range(3):
                await client.send_all(rawws.frame(rawws.OP_TEXT, b'{"n":%d}' % n))
                await trio.sleep(0.05)
            sent.set()

        sent = trio.Event()
        nursery.start_soon(send_over_time)
        with trio.fail_after(5):
            batch = await ws.receive_batch(not_before)
        assert trio.current_time() >= not_before and sent.is_set()
        assert batch == ['{"n":0}', '{"n":1}', '{"n":2}']  # three writes, one read


@pytest.mark.parametrize("tls", [False, True])
async def test_a_peer_ahead_of_us_is_read_at_once_whatever_the_reader_would_wait_for(tls: bool) -> None:
    # A read that fills the buffer means more is waiting: the reads go on without a pause, even when
    # the reader asks for none before a later time (a sender faster than real time, or a burst
    # after a network hiccup, is not slowed to one buffer a window), and nothing is lost.
    async with served(tls) as (client, ws):
        messages = [b'{"n":%d,"pad":"%s"}' % (n, b"x" * 1000) for n in range(12)]  # ~12 KiB: more than a buffer
        await client.send_all(b"".join(rawws.frame(rawws.OP_TEXT, m) for m in messages))
        received: list[str | bytes] = []
        with trio.fail_after(5):
            received += await ws.receive_batch()
        with trio.fail_after(5):  # not_before is a minute away
            while len(received) < len(messages):
                received += await ws.receive_batch(trio.current_time() + 60)
        assert received == [m.decode() for m in messages]


async def test_fragments_are_joined_and_pings_answered() -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        await client.send_all(
            rawws.frame(rawws.OP_TEXT, b"hel", fin=False)
            + rawws.frame(rawws.OP_PING, b"are you there")
            + rawws.frame(rawws.OP_CONTINUATION, b"lo", fin=False)
            + rawws.frame(rawws.OP_CONTINUATION, b"!")
        )
        with trio.fail_after(5):
            assert await ws.receive() == "hello!"
        assert await rawws.read_frames(client, 1) == [(rawws.OP_PONG, b"are you there")]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "frames,code",
    [
        ([rawws.frame(rawws.OP_BINARY, b"x" * (MAX + 1))], 1009),
        ([rawws.frame(rawws.OP_TEXT, b"x" * MAX, fin=False), rawws.frame(rawws.OP_CONTINUATION, b"y")], 1009),
        ([rawws.frame(rawws.OP_TEXT, b"\xff\xfe")], 1007),
        ([rawws.frame(rawws.OP_TEXT, b"{}", mask=False)], 1002),
        ([rawws.frame(rawws.OP_CONTINUATION, b"nothing to continue")], 1002),
        ([rawws.frame(rawws.OP_PING, b"p" * 126)], 1002),
    ],
)
async def test_bad_input_fails_the_connection_with_its_close_code(frames: list[bytes], code: int) -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        await client.send_all(b"".join(frames))
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            while True:
                await ws.receive_batch()
        ((opcode, payload),) = await rawws.read_frames(client, 1)
        assert opcode == rawws.OP_CLOSE and struct.unpack("!H", payload[:2])[0] == code
        await ws.send("dropped")  # the peer is gone: nothing is queued, nothing blocks
        nursery.cancel_scope.cancel()


async def test_nothing_that_came_after_a_message_failing_the_connection_is_delivered() -> None:
    # Module docstring: after the connection fails, `receive*` raise EndOfChannel (RFC 6455 7.1.7:
    # nothing more is processed). Messages parsed in the same read as the invalid one were returned.
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        after = rawws.frame(rawws.OP_TEXT, b'{"event": "media"}')
        await client.send_all(rawws.frame(rawws.OP_TEXT, b"\xff\xfe") + after * 3)
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            delivered = await ws.receive_batch()
            raise AssertionError(f"delivered after the connection failed: {delivered}")
        ((opcode, payload),) = await rawws.read_frames(client, 1)
        assert opcode == rawws.OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1007
        nursery.cancel_scope.cancel()


async def test_the_peer_closing_ends_reading_and_is_answered() -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        await client.send_all(rawws.frame(rawws.OP_TEXT, b"last") + rawws.close_frame(1000, b"bye"))
        with trio.fail_after(5):
            assert await ws.receive() == "last"
            with pytest.raises(trio.EndOfChannel):
                await ws.receive()
        assert await rawws.read_frames(client, 1) == [(rawws.OP_CLOSE, struct.pack("!H", 1000) + b"bye")]
        nursery.cancel_scope.cancel()


async def test_an_abrupt_disconnect_ends_reading() -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        await client.aclose()
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await ws.receive_batch()
        nursery.cancel_scope.cancel()


async def test_closing_the_socket_under_a_waiting_reader_ends_its_reading() -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        ended = trio.Event()

        async def reader() -> None:
            with pytest.raises(trio.EndOfChannel):
                await ws.receive_batch()
            ended.set()

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()  # the reader waits for the socket to be readable
        await ws.aclose()
        with trio.fail_after(5):
            await ended.wait()


async def test_reading_a_socket_already_closed_ends_reading() -> None:
    async with tcp_pair() as (client, server):
        ws = await accepted(client, server)
        await ws.aclose()
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await ws.receive_batch()


async def test_sends_arrive_in_order_and_close_waits_for_the_peers_answer() -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        for n in range(5):
            await ws.send(f"message {n}")
        assert [p for _, p in await rawws.read_frames(client, 5)] == [f"message {n}".encode() for n in range(5)]

        async def answer_close() -> None:
            await rawws.read_frames(client, 1)
            await client.send_all(rawws.close_frame(1000))

        nursery.start_soon(answer_close)
        with trio.fail_after(5):
            await ws.close(1000, "call ended", timeout_s=5)
        nursery.cancel_scope.cancel()


async def test_on_plain_tcp_a_message_goes_out_without_the_writer() -> None:
    # Nothing queued: the sending task writes it itself (no writer task is even running).
    async with tcp_pair() as (client, server):
        ws = await accepted(client, server)
        await ws.send("straight out")
        assert [p for _, p in await rawws.read_frames(client, 1)] == [b"straight out"]


@pytest.mark.parametrize("size", [5, 200, 70_000])
async def test_a_message_sent_to_several_peers_is_framed_as_websockets_frames_it(size: int) -> None:
    text = "é" * size  # one object for every peer, as the hub hands a result to each subscriber
    reference = _open_protocol()
    reference.send_text(text.encode())
    expected = b"".join(reference.data_to_send())
    async with tcp_pair() as (client_a, server_a), tcp_pair() as (client_b, server_b):
        first, second = await accepted(client_a, server_a), await accepted(client_b, server_b)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.writer)
            nursery.start_soon(second.writer)
            await first.send(text)
            await second.send(text)
            await first.send("other")
            for client, then in ((client_a, [b"other"]), (client_b, [])):
                received = b""
                with trio.fail_after(5):
                    while len(received) < len(expected) or len(rawws.server_frames(received)) < 1 + len(then):
                        received += await client.receive_some(65536)
                assert received[: len(expected)] == expected
                assert [p for _, p in rawws.server_frames(received)[1:]] == then
            await first.close(1000, "", timeout_s=0.2)
            await second.close(1000, "", timeout_s=0.2)


async def test_what_the_socket_cannot_take_at_once_is_queued_and_order_is_kept() -> None:
    # The peer reads nothing at first: the first writes fill the kernel's buffers, the rest wait
    # for the writer; once the peer reads, every message arrives once, in order.
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        assert isinstance(server, trio.SocketStream)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        nursery.start_soon(ws.writer)
        texts = [f"{n:05d} " + "x" * 2000 for n in range(WRITE_QUEUE)]
        for text in texts:
            await ws.send(text)
        assert ws._writes.unwritten > 0  # some went through the writer
        frames = await rawws.read_frames(client, len(texts), timeout_s=10)
        assert [p.decode() for _, p in frames] == texts
        await ws.close(1000, "done", timeout_s=0.5)


async def test_drain_reads_until_the_peer_leaves() -> None:
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        await client.send_all(rawws.frame(rawws.OP_TEXT, b"ignored") + rawws.frame(rawws.OP_PING, b"hi"))
        drained = trio.Event()

        async def drain() -> None:
            await ws.drain()
            drained.set()

        nursery.start_soon(drain)
        assert (await rawws.read_frames(client, 1))[0] == (rawws.OP_PONG, b"hi")
        assert not drained.is_set()
        await client.send_all(rawws.close_frame(1000))
        with trio.fail_after(5):
            await drained.wait()
        await ws.close(1000, "bye", timeout_s=0.5)


async def test_a_peer_that_takes_nothing_is_given_up_on(autojump_clock: trio.abc.Clock) -> None:
    # A memory stream whose reader never reads: writes block until the stall timeout.
    _client, server = trio.testing.lockstep_stream_pair()
    ws = ServedWebSocket(server, _open_protocol(), "peer", stall_timeout_s=2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.writer)
        await ws.send("never read")
        with trio.fail_after(10):
            await ws.drain()  # returns once the writer gives up
        assert ws.gone and ws.stalled
        await ws.send("dropped")
        nursery.cancel_scope.cancel()


async def test_a_sender_and_a_reader_waiting_when_the_writer_gives_up_just_see_the_peer_gone(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A peer that takes nothing: the queue fills, a talk-back sender waits, the writer gives up
    # after the stall timeout; then the peer leaves while the call's reader waits on it. Neither
    # the sender nor the reader may fail (an exception there ends the whole call).
    client, server = trio.testing.lockstep_stream_pair()
    ws = ServedWebSocket(server, _open_protocol(), "peer", stall_timeout_s=2.0)
    sent = trio.Event()

    async def talk_back() -> None:
        for n in range(WRITE_QUEUE + 2):  # the writer holds one, the queue the rest: the last one waits
            await ws.send(f"chunk {n}")
        sent.set()

    async def read_to_the_end() -> None:
        with pytest.raises(trio.EndOfChannel):
            await ws.receive_batch()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.writer)
        nursery.start_soon(talk_back)
        nursery.start_soon(read_to_the_end)
        with trio.fail_after(10):
            await sent.wait()
        assert ws.gone
        await client.aclose()  # the reader, still waiting on the socket, gets its end


def padded(n: int) -> bytes:
    """A text message of 300 bytes, about a Twilio frame."""
    head = b'{"n":%d,"pad":"' % n
    return head + b"x" * (300 - len(head) - 2) + b'"}'


async def test_a_reader_woken_by_bytes_takes_them_in_one_read_once_they_have_all_come() -> None:
    async with served() as (client, ws), trio.open_nursery() as nursery:
        assert ws.wakes_on_bytes

        async def send_over_time() -> None:
            for n in range(3):
                await trio.sleep(0.05)
                if n == 2:
                    last_sent.set()
                await client.send_all(rawws.frame(rawws.OP_TEXT, padded(n)))

        last_sent = trio.Event()
        nursery.start_soon(send_over_time)
        ws.wake_after(3, 300, trio.current_time() + 60)
        with trio.fail_after(5):
            batch = await ws.receive_batch()
        assert last_sent.is_set()  # not woken by the first two
        assert batch == [padded(n).decode() for n in range(3)]


async def test_a_reader_woken_by_bytes_reads_what_came_by_its_latest_time_and_then_anything() -> None:
    async with served() as (client, ws):
        await client.send_all(rawws.frame(rawws.OP_TEXT, padded(0)) + rawws.frame(rawws.OP_TEXT, padded(1)))
        latest = trio.current_time() + 0.2
        ws.wake_after(5, 300, latest)
        with trio.fail_after(5):
            batch = await ws.receive_batch()
        assert trio.current_time() >= latest
        assert batch == [padded(0).decode(), padded(1).decode()]
        # Nothing comes by the latest time: the read then takes the first bytes that come, however few.
        ws.wake_after(5, 300, trio.current_time() + 0.05)
        async with trio.open_nursery() as nursery:

            async def send_later() -> None:
                await trio.sleep(0.2)
                await client.send_all(rawws.frame(rawws.OP_TEXT, b"a"))

            nursery.start_soon(send_later)
            with trio.fail_after(5):
                assert await ws.receive_batch() == ["a"]


async def test_a_peer_that_hangs_up_wakes_a_reader_waiting_for_bytes_at_once() -> None:
    async with served() as (client, ws):
        ws.wake_after(10, 300, trio.current_time() + 60)
        await client.aclose()
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await ws.receive_batch()


async def test_a_close_frame_is_read_by_the_latest_time() -> None:
    # A few bytes, fewer than the reader waits for: read at its latest time (the call's is at
    # most a window and the jitter allowance after its last window), and answered.
    async with served() as (client, ws):
        latest = trio.current_time() + 0.2
        ws.wake_after(10, 300, latest)
        await client.send_all(rawws.close_frame(1000))
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await ws.receive_batch()
        assert trio.current_time() >= latest
        with trio.fail_after(5):
            reply = await client.receive_some(1024)
        assert rawws.server_frames(reply)[0][0] == rawws.OP_CLOSE


async def test_a_read_after_a_cancelled_wait_for_bytes_is_woken_by_any_byte() -> None:
    # The call's reader is cancelled while the socket holds its wake (no media for a while, the
    # call ended by the server): the next read, with no wake asked for (close() waiting for the
    # peer's close frame, say), must not wait for the low-water mark the cancelled one set.
    async with served() as (client, ws):
        ws.wake_after(10, 300, trio.current_time() + 60)
        with trio.move_on_after(0.1):
            await ws.receive_batch()
        await client.send_all(rawws.frame(rawws.OP_TEXT, b"a"))
        with trio.fail_after(1):
            assert await ws.receive_batch() == ["a"]


@pytest.mark.parametrize("cancelled", [True, False], ids=["after a cancelled wait", "with a wake left"])
async def test_closing_after_a_wake_for_bytes_takes_the_peers_close_frame_at_once(cancelled: bool) -> None:
    # Either the reader's wait for the bytes was cancelled (the call ended), or the reader asked for
    # the next window's bytes after the read that brought `stop` (or a fatal frame) and ended:
    # close() must not wait for those bytes (or their latest time) to take the peer's close frame.
    async with served() as (client, ws):
        ws.wake_after(10, 300, trio.current_time() + 60)
        if cancelled:
            with trio.move_on_after(0.1):
                await ws.receive_batch()

        async def answer() -> None:
            reply = b""
            while not rawws.server_frames(reply):
                reply += await client.receive_some(1024)
            await client.send_all(rawws.close_frame(1000))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            started = trio.current_time()
            await ws.close(1000, "call ended", timeout_s=2)
        assert trio.current_time() - started < 1  # not the whole close timeout


async def test_a_wake_that_brings_no_whole_message_leaves_the_next_wait_woken_by_any_byte() -> None:
    # Woken by the low-water mark with the first part of a message only: the read gives no message
    # and receive_batch reads again, with no wake asked for; the rest of the message must wake it.
    async with served() as (client, ws), trio.open_nursery() as nursery:
        frame = rawws.frame(rawws.OP_TEXT, padded(0))
        ws.wake_after(1, 300, trio.current_time() + 60)

        async def send_in_two() -> None:
            await client.send_all(frame[:250])
            await trio.sleep(0.1)
            await client.send_all(frame[250:])

        nursery.start_soon(send_in_two)
        with trio.fail_after(1):
            assert await ws.receive_batch() == [padded(0).decode()]


async def test_the_bytes_of_a_message_already_read_count_towards_the_wake() -> None:
    # A read ended inside a message (TCP split it: a burst, the sender's Nagle): the socket must
    # wake the reader once the rest of it has come, not once a whole message more has.
    async with served() as (client, ws):
        frames = [rawws.frame(rawws.OP_TEXT, padded(n)) for n in range(2)]
        data, cut = b"".join(frames), len(frames[0]) + 250
        await client.send_all(data[:cut])  # a message and most of the next
        with trio.fail_after(1):
            assert await ws.receive_batch() == [padded(0).decode()]
        ws.wake_after(1, 300, trio.current_time() + 60)  # the message that completes a window
        await client.send_all(data[cut:])
        with trio.fail_after(1):
            assert await ws.receive_batch() == [padded(1).decode()]


async def test_only_a_plain_socket_read_without_the_shared_tick_is_woken_by_bytes() -> None:
    async with served(tls=True) as (_, ws):
        assert not ws.wakes_on_bytes
        ws.wake_after(10, 300, trio.current_time() + 60)  # ignored: TLS records are not the messages
    async with tcp_pair() as (client, server):
        ws = await accepted(client, server, read_tick=ReadTick(0.02))
        assert not ws.wakes_on_bytes


async def test_readers_on_a_shared_tick_wake_together() -> None:
    tick = ReadTick(0.02)
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        nursery.start_soon(tick.run)
        ws = await accepted(client, server, read_tick=tick)
        nursery.start_soon(ws.writer)
        await client.send_all(rawws.frame(rawws.OP_TEXT, b"a"))
        await client.send_all(rawws.frame(rawws.OP_TEXT, b"b"))
        with trio.fail_after(5):
            batch = await ws.receive_batch()
            if batch == ["a"]:
                batch += await ws.receive_batch()
        assert batch == ["a", "b"]
        nursery.cancel_scope.cancel()


async def test_a_refused_upgrade_gets_the_status_and_reason() -> None:
    async with tcp_pair() as (client, server):
        head = rawws.upgrade_request("/twilio")
        await client.send_all(head)
        received = b""
        while b"\r\n\r\n" not in received:
            received += await server.receive_some(65536)
        ws = await accept_websocket(
            server,
            received,
            "peer",
            check=lambda request: Admission(403, "bad signature"),
            max_message=MAX,
            stall_timeout_s=2,
        )
        assert ws is None
        response = await client.receive_some(65536)
        assert response.startswith(b"HTTP/1.1 403") and response.endswith(b"bad signature\n")


def _open_protocol():  # type: ignore[no-untyped-def]
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    protocol = ServerProtocol(max_size=MAX)
    protocol.state = State.OPEN
    return protocol


async def read_all(client: trio.abc.Stream, timeout_s: float) -> bytes:
    data = b""
    with trio.move_on_after(timeout_s):
        while chunk := await client.receive_some(65536):
            data += chunk
    return data


async def test_a_close_after_the_queue_filled_still_sends_the_close_frame() -> None:
    # A slow subscriber: the outbox fills and the subscription loop is cancelled (hub: "too slow"),
    # then the subscriber is closed with 1008. The peer then reads everything.
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        nursery.start_soon(ws.writer)
        sent = 0
        with trio.move_on_after(0.5):
            while True:
                await ws.send(f"{sent:05d} " + "x" * 2000)
                sent += 1
        await ws.close(1008, "subscriber too slow", timeout_s=0.2)
        frames = rawws.server_frames(await read_all(client, 3))
        assert frames and frames[-1] == (rawws.OP_CLOSE, struct.pack("!H", 1008) + b"subscriber too slow"), (
            sent,
            len(frames),
            frames[-1][0] if frames else None,
        )


async def test_a_send_cancelled_after_a_partial_direct_write_leaves_a_valid_stream() -> None:
    # The sending task was woken with a message and its scope cancelled before it ran (e.g. the
    # supervisor cancels the connection scopes at shutdown): the send writes part of the frame
    # directly, then `await outbox_send.send(rest)` raises Cancelled before queueing the rest.
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        nursery.start_soon(ws.writer)
        big = "x" * 300_000
        with trio.CancelScope() as scope:
            scope.cancel()
            await ws.send(big)
        unwritten_after_cancel = ws._writes.unwritten
        await ws.close(1001, "server shutting down", timeout_s=0.2)
        data = await read_all(client, 3)
        frames = rawws.server_frames(data)
        assert [op for op, _ in frames] in ([rawws.OP_TEXT, rawws.OP_CLOSE], [rawws.OP_CLOSE]), (
            len(data),
            [(op, len(p)) for op, p in frames],
            unwritten_after_cancel,
        )


async def test_the_peers_close_meanwhile_does_not_overtake_our_close_frame() -> None:
    # The queue is full, so our close frame waits behind it; the peer (healthy, just behind)
    # catches up and sends its own close meanwhile: the end of stream that answers it must not
    # overtake our close frame.
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        nursery.start_soon(ws.writer)
        # Fill the queue; the kernel may still take a little after a first pause (the peer's
        # window grows), so fill again until the queue is full when `close` is called.
        with trio.fail_after(5):
            while ws._writes.outbox_send.statistics().current_buffer_used < WRITE_QUEUE:
                with trio.move_on_after(0.2):
                    while True:
                        await ws.send("x" * 2000)
        got = bytearray()
        done = trio.Event()

        async def peer() -> None:
            with trio.move_on_after(0.2):  # catches up a little: the queue gets room
                while chunk := await client.receive_some(65536):
                    got.extend(chunk)
            await client.send_all(rawws.close_frame(1000))
            with trio.move_on_after(3):
                while chunk := await client.receive_some(65536):
                    got.extend(chunk)
            done.set()

        nursery.start_soon(peer)
        await ws.close(1008, "subscriber too slow", timeout_s=1.0)
        with trio.fail_after(5):
            await done.wait()
    assert rawws.server_frames(bytes(got))[-1] == (rawws.OP_CLOSE, struct.pack("!H", 1008) + b"subscriber too slow")


async def test_a_second_close_after_one_the_peer_never_answered_returns_at_once(autojump_clock: trio.abc.Clock) -> None:
    # A subscriber's handler closes in `serve` and again, shielded, in its `finally`: the second
    # close must not wait for the silent peer a second time (nor, shielded, past a shutdown).
    async with tcp_pair() as (client, server), trio.open_nursery() as nursery:
        ws = await accepted(client, server)
        nursery.start_soon(ws.writer)
        await ws.close(1000, "call ended", timeout_s=2.0)  # the peer says nothing
        start = trio.current_time()
        with trio.CancelScope(shield=True):
            await ws.close(1011, "server error", timeout_s=2.0)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert took < 2.0
