"""The Deepgram client's shell with connections of the test's own (no sockets): what it sends
across an outage and reconnects, under trio's MockClock."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import trio
import trio_websocket

from callscribe.core.backlog import AudioBacklog
from callscribe.server.call_settings import CallSettings
from callscribe.server.deepgram_client import DeepgramClient, DeepgramConnection
from callscribe.server.hub import InMemoryHub
from callscribe.server.websocket_client import ConnectFailed

C = TypeVar("C", bound=DeepgramConnection)

WINDOW = 800  # 100 ms of one channel


def window(n: int) -> bytes:
    return bytes([n % 256]) * WINDOW


def client_of(connections: list[C], make: Callable[[], C], hub: InMemoryHub | None = None) -> DeepgramClient:
    """A client of call CA1 (one channel) whose every connection is a new `make()`, kept in `connections`."""

    async def connect(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> C:
        connections.append(make())
        return connections[-1]

    settings = CallSettings(deepgram_api_key="k")
    return DeepgramClient("CA1", 1, settings=settings, hub=hub or InMemoryHub(), connect=connect)


class RepliesConnection:
    """A connection whose replies are what the test puts in `_send`; closing it is a normal close."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[str](100)

    async def get_message(self) -> str:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1000, None)) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


class SlowFirstSendConnection(RepliesConnection):
    """Accepts everything; the first audio send completes only once the next live window has been
    appended to `backlog` (a congested link: one send taking a little over 100 ms), the rest are instant."""

    def __init__(self, backlog: AudioBacklog) -> None:
        self.audio: list[bytes] = []
        self.backlog = backlog
        self._first = True
        super().__init__()

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            if self._first:
                self._first = False
                end = self.backlog.end
                while self.backlog.end == end:
                    await trio.sleep(0.01)
            self.audio.append(message)
        elif "CloseStream" in message:
            self._send.send_nowait('{"type":"Metadata","request_id":"r"}')


async def test_a_window_being_sent_when_a_full_backlog_drops_it_leaves_no_hole_in_the_replay(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After an outage that filled the backlog, the replay's first window is the oldest one kept; a
    live window appended while it is being sent pushes it out of the backlog. It used to be counted
    lost although it went out, and the window after it was skipped: never sent, never counted lost,
    every later time of the connection 100 ms off."""
    connections: list[SlowFirstSendConnection] = []

    async def connect(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> SlowFirstSendConnection:
        if trio.current_time() < 1.0:  # Deepgram unreachable for the first second
            raise ConnectFailed("dg.example:443", "[Errno 111] Connection refused")
        connections.append(SlowFirstSendConnection(client.backlog))
        return connections[-1]

    client = DeepgramClient(
        "CA1",
        1,
        settings=CallSettings(deepgram_api_key="k", backlog_s=0.5, backoff_initial_s=0.5, backoff_max_s=0.5),
        hub=InMemoryHub(),
        connect=connect,
    )
    client.policy._rng = random.Random(0)  # the same backoff jitter every run
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run, receive)
        for n in range(40):  # 4 s of live audio, a window every 100 ms
            await send.send(window(n))
            await trio.sleep(0.1)
        await send.aclose()

    assert len(connections) == 1
    sent = [w[0] for w in connections[0].audio]
    # The connection's times are rebased by its rewind point, which holds only if the audio it got is
    # contiguous from there (anything dropped before it was sent belongs before the rewind point).
    assert sent == list(range(sent[0], 40)), f"sent {sent}; counted lost {client.backlog.lost / WINDOW:g} windows"


INTERIM = '{"type":"Results","channel_index":[0,1],"is_final":false,"start":0.0,"duration":0.5,"channel":{"alternatives":[{"transcript":"hel"}]}}'


class InterimThenDropConnection:
    """Answers the first audio with an interim result, then fails with 1011 (no final ever comes)."""

    def __init__(self) -> None:
        self.audio = 0
        self._send, self._receive = trio.open_memory_channel[str](10)

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            if self.audio == 0:
                self._send.send_nowait(INTERIM)
                self._send.close()
            self.audio += len(message)

    async def get_message(self) -> str:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1011, "NET-0000")) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def test_connections_that_only_ever_give_interims_are_not_retried_forever(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Every connection fails the same way before any final: nothing is ever covered, the same
    backlog is replayed each time. When an interim counted as progress, the retry count went back
    to 1 at every loss: the client never gave up and never backed off (a retry every ~0.25-0.5 s)."""
    connections: list[InterimThenDropConnection] = []

    async def connect(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> InterimThenDropConnection:
        connections.append(InterimThenDropConnection())
        return connections[-1]

    client = DeepgramClient(
        "CA1", 1, settings=CallSettings(deepgram_api_key="k", max_reconnects=8), hub=InMemoryHub(), connect=connect
    )
    client.policy._rng = random.Random(0)
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run, receive)
        for n in range(600):  # 60 s of live audio
            await send.send(window(n))
            await trio.sleep(0.1)
        await send.aclose()

    replayed_s = sum(c.audio for c in connections) / 8000
    assert len(connections) <= 9, (
        f"{len(connections)} connections in 60 s without a single final, {replayed_s:.0f} s of audio streamed"
        f" for 60 s of call; error={client.error!r}"
    )


class SilentConnection:
    """Accepts the handshake and every message, and never says anything (a hung Deepgram)."""

    def __init__(self) -> None:
        self.audio = 0
        self.control: list[str] = []

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.audio += len(message)
        else:
            self.control.append(message)

    async def get_message(self) -> str:
        await trio.sleep_forever()
        raise AssertionError

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def test_a_deepgram_that_accepts_and_never_answers_is_lost_and_reconnected(
    autojump_clock: trio.abc.Clock,
) -> None:
    """90 s of call audio go to connections that accept it and never send a single message. It used
    to go unnoticed: one connection, no notice, no error, nothing counted lost, while the backlog
    (60 s) quietly let go of audio that was never transcribed."""
    connections: list[SilentConnection] = []

    hub = InMemoryHub()
    await hub.register_call("CA1")
    notices: list[str] = []
    client = client_of(connections, SilentConnection, hub)
    send, receive = trio.open_memory_channel[bytes](100)
    async with hub.subscribe("CA1") as subscription, trio.open_nursery() as nursery:

        async def collect() -> None:
            async for message in subscription:
                notices.append(message)

        nursery.start_soon(collect)
        nursery.start_soon(client.run, receive)
        for n in range(900):  # 90 s of live audio
            await send.send(window(n))
            await trio.sleep(0.1)
        await send.aclose()
        await trio.sleep(10)
        nursery.cancel_scope.cancel()

    # After 30 s of audio without a word the connection is taken as lost: subscribers are told,
    # and the audio it never transcribed is replayed on the next one (the backlog still holds it).
    assert len(connections) >= 2
    assert 290 * WINDOW <= connections[0].audio <= 310 * WINDOW
    assert connections[1].audio > connections[0].audio - 10 * WINDOW  # replayed from the start
    assert any('"Reconnecting"' in notice for notice in notices), notices


async def test_a_quiet_deepgram_while_no_audio_flows_is_kept(autojump_clock: trio.abc.Clock) -> None:
    # Twilio sent nothing for a minute (the call is live): Deepgram has nothing to say either, and
    # KeepAlive keeps the connection; only silence while audio goes to it counts as lost.
    connections: list[SilentConnection] = []
    client = client_of(connections, SilentConnection)
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run, receive)
        await send.send(window(0))
        await trio.sleep(60)
        assert len(connections) == 1 and client.error == ""
        assert connections[0].control.count('{"type":"KeepAlive"}') >= 10
        nursery.cancel_scope.cancel()


class AnsweringConnection(RepliesConnection):
    """Answers as Deepgram does: a final for each whole second of audio it got (nothing for less),
    and Metadata once CloseStream came."""

    def __init__(self) -> None:
        self.audio = 0
        self._finals = 0
        super().__init__()

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.audio += len(message)
            while self.audio >= (self._finals + 1) * 8000:
                self._send.send_nowait(
                    '{"type":"Results","channel_index":[0,1],"is_final":true,'
                    f'"start":{self._finals}.0,"duration":1.0,"channel":{{"alternatives":[{{"transcript":""}}]}}}}'
                )
                self._finals += 1
        elif "CloseStream" in message:
            self._send.send_nowait('{"type":"Metadata","request_id":"r"}')
            self._send.close()


async def test_a_pause_in_the_audio_is_not_taken_for_a_silent_deepgram(autojump_clock: trio.abc.Clock) -> None:
    """5.5 s of audio, then Twilio sends nothing for 40 s (the call is live), then 2 s more. Deepgram
    answered every second of audio; the last half second waits for more audio, so it says nothing
    during the pause, rightly. The half second sent in the reader's quiet window used to count as
    "audio went to it": 30 s after the last final the connection was taken as lost (a reconnect, a
    "Reconnecting" notice) although Deepgram had been given 0.5 s of audio, not 30 s."""
    connections: list[AnsweringConnection] = []
    client = client_of(connections, AnsweringConnection)
    send, receive = trio.open_memory_channel[bytes](100)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run, receive)
        for n in range(55):
            await send.send(window(n))
            await trio.sleep(0.1)
        await trio.sleep(40)
        for n in range(55, 75):
            await send.send(window(n))
            await trio.sleep(0.1)
        await send.aclose()

    assert len(connections) == 1, f"{len(connections)} connections; error={client.error!r}"
    assert connections[0].audio == 75 * WINDOW and client.error == ""
