"""The call pipeline over memory channels with a scripted Deepgram and Trio's MockClock: no sockets, no sleeps."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
import trio_websocket

from callscribe.core.deepgram import CLOSE_STREAM, KEEPALIVE
from callscribe.server.call import Call, Connector
from callscribe.server.call_settings import CallSettings
from callscribe.server.games import GameRegistry, GameSettings
from callscribe.server.hub import InMemoryHub
from callscribe.server.metrics import Metrics
from callscribe.server.supervisor import Supervisor
from callscribe.server.websocket_client import ConnectFailed

CALL_SID = "CA00000000000000000000000000000001"


def results(channel: int, channels: int, text: str, final: bool = True) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, channels],
            "is_final": final,
            "channel": {"alternatives": [{"transcript": text}]},
        }
    )


METADATA = json.dumps({"type": "Metadata", "request_id": "r1"})


class ScriptedConnection:
    """One Deepgram connection in memory: records what the call sends and answers as the test says."""

    def __init__(self, channels: int, answer_close_stream: bool) -> None:
        self.sent: list[str | bytes] = []
        self.sent_at: list[float] = []
        self.channels = channels
        self.answer_close_stream = answer_close_stream
        self._send, self._receive = trio.open_memory_channel[str](100)
        self.closed = False
        self.dropped = False
        self.close_stream_answer: list[str] | None = None
        """What to say on CloseStream (by default a final per channel, then Metadata)."""

    async def send_message(self, message: str | bytes) -> None:
        if self.closed:
            raise trio_websocket.ConnectionClosed(trio_websocket.CloseReason(1006, "gone"))
        self.sent.append(message)
        self.sent_at.append(trio.current_time())
        if message == CLOSE_STREAM and self.answer_close_stream:
            answer = self.close_stream_answer
            if answer is None:
                answer = [results(channel, self.channels, f"final words {channel}") for channel in range(self.channels)]
                answer.append(METADATA)
            for text in answer:
                self.say(text)
            self._send.close()

    def say(self, message: str) -> None:
        self._send.send_nowait(message)

    def drop(self) -> None:
        """The server goes away mid-stream with 1011."""
        self._send.close()
        self.closed = self.dropped = True

    async def get_message(self) -> str:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            reason = (
                trio_websocket.CloseReason(1011, "NET-0000") if self.dropped else trio_websocket.CloseReason(1000, None)
            )
            raise trio_websocket.ConnectionClosed(reason) from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = True

    @property
    def audio(self) -> list[bytes]:
        return [m for m in self.sent if isinstance(m, bytes)]

    @property
    def control(self) -> list[str]:
        return [m for m in self.sent if isinstance(m, str)]


class ScriptedDeepgram:
    """Hands out a new scripted connection per attempt; the properties speak of the latest one."""

    def __init__(self, *, channels: int = 2, answer_close_stream: bool = True) -> None:
        self.channels = channels
        self.answer_close_stream = answer_close_stream
        self.connections: list[ScriptedConnection] = []
        self.url = ""
        self.headers: list[tuple[str, str]] = []
        self.connected = trio.Event()

    async def connect(self, nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> ScriptedConnection:
        self.url, self.headers = url, headers
        self.connections.append(ScriptedConnection(self.channels, self.answer_close_stream))
        self.connected.set()
        return self.connections[-1]

    @property
    def latest(self) -> ScriptedConnection:
        return self.connections[-1]

    async def connection(self, number: int) -> ScriptedConnection:
        """Waits (5 s at most) until the call has opened its `number`th connection; returns the latest."""
        with trio.fail_after(5):
            while len(self.connections) < number:
                await trio.sleep(0.01)
        return self.latest

    def say(self, message: str) -> None:
        self.latest.say(message)

    def drop(self) -> None:
        self.latest.drop()

    @property
    def closed(self) -> bool:
        return all(c.closed for c in self.connections)

    @property
    def audio(self) -> list[bytes]:
        return [w for c in self.connections for w in c.audio]

    @property
    def control(self) -> list[str]:
        return [m for c in self.connections for m in c.control]


# The Twilio messages carry no sequenceNumber: `Harness.feed` numbers them in the order fed.


def twilio_start(tracks: list[str]) -> str:
    return json.dumps(
        {
            "event": "start",
            "streamSid": "MZ1",
            "start": {
                "accountSid": "AC1",
                "streamSid": "MZ1",
                "callSid": CALL_SID,
                "tracks": tracks,
                "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def twilio_media(track: str, timestamp_ms: int, payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "streamSid": "MZ1",
            "media": {
                "track": track,
                "chunk": "1",
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


STOP = json.dumps({"event": "stop", "streamSid": "MZ1"})


class Harness:
    def __init__(
        self,
        deepgram: ScriptedDeepgram | None = None,
        *,
        connect: Connector | None = None,
        games: GameRegistry | None = None,
        **settings: object,
    ) -> None:
        self.hub = InMemoryHub()
        self.deepgram = deepgram or ScriptedDeepgram()
        self.twilio_send, twilio_receive = trio.open_memory_channel[str | None](1000)
        base = {
            "deepgram_api_key": "k",
            "deepgram_url": "wss://dg.example/v1/listen?model=nova-3&channels=7&encoding=linear16",
        }
        self._twilio_receive = twilio_receive
        self.call = Call(
            self._read,
            settings=CallSettings(**(base | settings)),
            hub=self.hub,
            connect=connect or self.deepgram.connect,
            send=self._send_twilio if games is not None else None,
            games=games,
        )
        self.to_twilio: list[str] = []
        self.received: list[str] = []
        self.received_at: list[float] = []
        self.close: tuple[int, str] | None = None
        self.sequence_number = 0

    async def _send_twilio(self, message: str) -> None:
        self.to_twilio.append(message)

    async def _read(self, not_before: float = 0.0) -> list[str | None]:
        """Like a socket read: the next frame, and every frame queued behind it (from `not_before` on)."""
        if not_before > trio.current_time():
            await trio.sleep_until(not_before)
        frames = [await self._twilio_receive.receive()]
        while True:
            try:
                frames.append(self._twilio_receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):  # the end shows at the next read
                return frames

    @asynccontextmanager
    async def running(self, *, subscribed: bool = True) -> AsyncIterator[trio.Nursery]:
        """Runs the call (and, if `subscribed`, first a subscriber from when it is live) in a nursery
        that the block ends with, as the call ends."""
        async with trio.open_nursery() as nursery:
            if subscribed:
                nursery.start_soon(self.subscribe_when_live)
            nursery.start_soon(self.call.run)
            yield nursery

    async def subscribe_when_live(self) -> None:
        while CALL_SID not in await self.hub.active_calls():
            await trio.sleep(0.001)
        async with self.hub.subscribe(CALL_SID) as subscription:
            async for message in subscription:
                self.received.append(message)
                self.received_at.append(trio.current_time())
            self.close = (subscription.close_code, subscription.close_reason)

    def notices(self) -> list[dict[str, Any]]:
        """callscribe's own messages to the subscriber, in order."""
        return [m for m in map(json.loads, self.received) if m.get("source") == "callscribe"]

    def deepgram_messages(self) -> list[dict[str, Any]]:
        return [m for m in map(json.loads, self.received) if m.get("source") != "callscribe"]

    def feed(self, *frames: str | None) -> None:
        """Queue Twilio frames; like Twilio, number each message after `connected` in the order sent."""
        for frame in frames:
            try:
                message = json.loads(frame or "")
            except ValueError:
                message = None
            if isinstance(message, dict) and message.get("event") != "connected" and "sequenceNumber" not in message:
                self.sequence_number += 1
                frame = json.dumps(message | {"sequenceNumber": str(self.sequence_number)})
            self.twilio_send.send_nowait(frame)


def frames(track: str, count: int, byte: int, start_ms: int = 0) -> list[str]:
    return [twilio_media(track, start_ms + 20 * n, bytes([byte]) * 160) for n in range(count)]


def inbound(chunks: list[bytes], first: int = 0) -> list[str]:
    """Inbound media frames of `chunks`, 20 ms apart; `first` numbers the first chunk (frame 0 at 0 ms)."""
    return [twilio_media("inbound", 20 * n, c) for n, c in enumerate(chunks, start=first)]


async def test_both_tracks_reach_deepgram_mixed_and_results_reach_the_subscriber_before_close(
    autojump_clock: trio.abc.Clock,
) -> None:
    h = Harness()
    async with h.running():
        h.feed(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            twilio_start(["inbound", "outbound"]),
        )
        for inbound, outbound in zip(frames("inbound", 13, 0x11), frames("outbound", 13, 0x22), strict=False):
            h.feed(inbound, outbound)
        await trio.sleep(1)
        h.deepgram.say(results(0, 2, "hello"))
        h.feed(STOP)

    audio = h.deepgram.audio
    assert [len(w) for w in audio] == [1600, 1600, 960]  # 100 ms windows of 2 channels, then the 60 ms rest
    mixed = b"".join(audio)
    assert mixed[0::2] == b"\x11" * 2080 and mixed[1::2] == b"\x22" * 2080
    assert h.deepgram.control == [CLOSE_STREAM]
    query = parse_qs(urlsplit(h.deepgram.url).query)
    assert query["channels"] == ["2"] and query["multichannel"] == ["true"]
    assert query["encoding"] == ["mulaw"] and query["sample_rate"] == ["8000"] and query["model"] == ["nova-3"]
    assert h.deepgram.headers == [("Authorization", "Token k")]
    assert [json.loads(m)["type"] for m in h.received] == ["Results", "Results", "Results", "Metadata"]
    assert json.loads(h.received[0])["channel"]["alternatives"][0]["transcript"] == "hello"
    assert h.close == (1000, "call ended")
    assert await h.hub.active_calls() == []
    assert h.call.audio_bytes_sent == 2 * 2080


async def test_frames_in_real_time_are_read_about_once_a_window_and_no_window_waits_for_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Twilio sends a frame per track every 20 ms and the mixer can only use them a window at a time:
    # the reader sleeps through the frames in between and takes them in one read, and still hands
    # over each window as its last frame comes.
    h = Harness()
    reads = 0
    read = h._read

    async def counting_read(not_before: float = 0.0) -> list[str | None]:
        nonlocal reads
        reads += 1
        return await read(not_before)

    h.call._receive = counting_read
    completed_at: list[float] = []
    async with h.running(subscribed=False):
        h.feed(twilio_start(["inbound", "outbound"]))
        pairs = list(zip(frames("inbound", 50, 0x11), frames("outbound", 50, 0x22), strict=True))
        for n, (inbound, outbound) in enumerate(pairs):
            h.feed(inbound, outbound)
            if n % 5 == 4:  # the pair of frames that completes a 100 ms window
                completed_at.append(trio.current_time())
            await trio.sleep(0.02)
        h.feed(STOP)

    connection = h.deepgram.connections[0]
    sent_at = [
        at for message, at in zip(connection.sent, connection.sent_at, strict=True) if isinstance(message, bytes)
    ]
    assert len(completed_at) == 10 and sent_at == completed_at
    # A read a pair would be 52. Here: the start and the first window's pairs as they come (the
    # stream's delay is not known yet), then two a window (the wake, then the last pair), the stop.
    assert reads <= 1 + 5 + 2 * 9 + 1


async def test_inbound_only_stream_is_mono_and_never_waits(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    async with h.running(subscribed=False):
        h.feed(twilio_start(["inbound"]), *frames("inbound", 5, 0x33))
        await trio.sleep(1)
        # One full window went out before the call ends: nothing waits for a second track.
        assert [len(w) for w in h.deepgram.audio] == [800]
        h.feed(STOP)
    assert parse_qs(urlsplit(h.deepgram.url).query)["channels"] == ["1"]
    assert b"".join(h.deepgram.audio) == b"\x33" * 800


async def test_keepalive_every_5_seconds_without_audio(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    async with h.running(subscribed=False):
        h.feed(twilio_start(["inbound"]))
        await trio.sleep(12)
        assert h.deepgram.control == [KEEPALIVE, KEEPALIVE]
        h.feed(*frames("inbound", 5, 1, start_ms=12_000))
        await trio.sleep(4)
        assert h.deepgram.control == [KEEPALIVE, KEEPALIVE]  # audio reset the idle clock
        await trio.sleep(2)
        assert h.deepgram.control == [KEEPALIVE, KEEPALIVE, KEEPALIVE]
        h.feed(STOP)
    assert h.deepgram.control[-1] == CLOSE_STREAM


async def test_a_twilio_socket_silent_after_its_start_ends_its_call(autojump_clock: trio.abc.Clock) -> None:
    # A connection dropped with no FIN or RST reads nothing for ever; Twilio sends every 20 ms.
    # The call used to stay live (its Deepgram connection kept open by KeepAlive) until shutdown.
    h = Harness(ScriptedDeepgram(channels=1))
    async with h.running():
        h.feed(twilio_start(["inbound"]), *frames("inbound", 10, 1))
        with trio.fail_after(CallSettings().media_timeout_s + 15):
            await h.call.finished.wait()
    why = (1008, f"no media for {CallSettings().media_timeout_s:g} s")
    assert (h.call.close_code, h.call.close_reason) == why and h.close == why  # subscribers are told why
    assert h.deepgram.control[-1] == CLOSE_STREAM and len(b"".join(h.deepgram.audio)) == 10 * 160


@pytest.mark.parametrize("timeout_s", [2.0, 15.0])
async def test_a_stream_sending_media_lives_past_the_media_timeout_and_ends_within_it_once_silent(
    timeout_s: float, autojump_clock: trio.abc.Clock
) -> None:
    # The reader moves the media timeout's deadline on only once a tenth of it (at most a second)
    # has gone: media for three timeouts keeps the call, and once it stops the call ends no
    # earlier than that tenth (and a window of held frames) before the timeout, never after it.
    h = Harness(ScriptedDeepgram(channels=1), media_timeout_s=timeout_s)
    ended_at: list[float] = []

    async def watch() -> None:
        while h.call.close_code == 1000 and not h.call.finished.is_set():  # until the reader gives up
            await trio.sleep(0.001)
        ended_at.append(trio.current_time())

    async with h.running() as nursery:
        nursery.start_soon(watch)
        h.feed(twilio_start(["inbound"]))
        for frame in frames("inbound", int(3 * timeout_s * 50) + 3, 1):
            await trio.sleep(0.02)
            assert not ended_at, "ended while media came"
            h.feed(frame)
        last = trio.current_time()
        with trio.fail_after(timeout_s + 120):  # ending takes the Deepgram side its own time
            await h.call.finished.wait()
    assert (h.call.close_code, h.call.close_reason) == (1008, f"no media for {timeout_s:g} s")
    assert timeout_s - min(1.0, timeout_s / 10) - 0.1 <= ended_at[0] - last <= timeout_s + 0.001


async def test_a_call_started_just_before_a_shutdown_is_ended_with_1001_not_cut_off(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Live from when it is started, not from when its task first runs: a shutdown in between used
    # to see no call, and cancel it with the calls' nursery (Twilio told 1000 "call ended").
    h = Harness(ScriptedDeepgram(channels=1))
    supervisor = Supervisor(h.call.settings, h.hub, GameRegistry(GameSettings(), speech=None), h.deepgram.connect)
    h.feed(twilio_start(["inbound"]), *frames("inbound", 10, 1))
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        call = supervisor.start_call(h._read, None)  # what the /twilio handler does once accepting
        await supervisor.shutdown(grace_s=10.0)  # SIGTERM's step, before the call's task has run
        with trio.fail_after(30):
            await call.finished.wait()
    assert supervisor.calls == set()
    assert (call.close_code, call.close_reason) == (1001, "server shutting down")


@pytest.mark.parametrize(("tracks", "hears_caller"), [(["outbound"], False), (["inbound"], True)])
async def test_a_game_call_hears_codes_only_from_a_stream_with_the_callers_audio(
    autojump_clock: trio.abc.Clock, tracks: list[str], hears_caller: bool
) -> None:
    # <Stream track="outbound_track">: Deepgram's channel 0 is the other party, whose words are no code.
    h = Harness(ScriptedDeepgram(channels=1), games=GameRegistry(GameSettings(route_all_calls=True), speech=None))
    async with h.running(subscribed=False):
        h.feed(twilio_start(tracks), *frames(tracks[0], 10, 1), STOP)
    assert h.call.game is not None and h.call.game.machine.hears_caller is hears_caller


async def test_twilio_hanging_up_without_stop_still_flushes_and_closes_the_stream(
    autojump_clock: trio.abc.Clock,
) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    async with h.running():
        h.feed(twilio_start(["inbound"]), *frames("inbound", 3, 0x44))
        await trio.sleep(1)
        h.call.end_input()
    assert b"".join(h.deepgram.audio) == b"\x44" * 480  # the partial window was flushed
    assert h.deepgram.control == [CLOSE_STREAM]
    assert json.loads(h.received[-1])["type"] == "Metadata"
    assert h.close == (1000, "call ended")


async def test_malformed_frames_are_skipped_and_the_call_goes_on(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    async with h.running(subscribed=False):
        good = frames("inbound", 10, 0x55)
        h.feed(
            twilio_start(["inbound"]),
            *good[:5],
            "{garbage",
            None,
            '{"event":"media","media":{"track":"inbound","timestamp":"1","payload":"%%"}}',
            *good[5:],
            STOP,
        )
    assert b"".join(h.deepgram.audio) == b"\x55" * 1600
    assert h.call.stream.rejected == 3


async def test_deepgram_refusing_the_handshake_tells_subscribers_and_twilio_is_read_to_the_end(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async def refuse(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> None:
        raise trio_websocket.ConnectionRejected(
            401, ((b"dg-error", b"Invalid credentials."), (b"dg-request-id", b"req-9")), b'{"err_code":"INVALID_AUTH"}'
        )

    h = Harness(connect=refuse)
    async with h.running():
        h.feed(twilio_start(["inbound"]))
        await trio.sleep(0.5)
        h.feed(*frames("inbound", 300, 1), STOP)  # 6 s of audio: more than the window queue holds
    (error,) = [json.loads(m) for m in h.received]  # no "Reconnecting" first: it is not retried
    assert error == {
        "type": "Error",
        "source": "callscribe",
        "callSid": CALL_SID,
        "message": "Deepgram refused the connection: HTTP 401: Invalid credentials. (dg-request-id req-9);"
        " not retrying: the call goes on untranscribed",
    }
    assert h.call.stream.media_frames == 300  # every frame was read
    assert h.call.deepgram is not None and h.call.deepgram.backlog.lost == 300 * 160  # all of it counted as lost
    assert h.close == (1000, "call ended")
    assert any("Invalid credentials." in r.getMessage() and CALL_SID in r.getMessage() for r in caplog.records)


def final(start: float, duration: float, text: str = "words", **extra: object) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [0, 1],
            "is_final": True,
            "start": start,
            "duration": duration,
            "channel": {
                "alternatives": [
                    {"transcript": text, "words": [{"word": text, "start": start, "end": start + duration}]}
                ]
            },
            **extra,
        }
    )


async def test_deepgram_dropping_mid_call_reconnects_replays_and_rebases(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    audio = bytes(range(256)) * 50  # 12800 bytes = 1.6 s, recognisable at every offset
    chunks = [audio[i : i + 160] for i in range(0, len(audio), 160)]
    async with h.running():
        h.feed(twilio_start(["inbound"]), *inbound(chunks[:10]))
        await trio.sleep(0.5)
        first = h.deepgram.latest
        assert len(first.audio) == 2
        first.say(final(0.0, 0.1, "one"))  # Deepgram has finished the first 100 ms only
        await trio.sleep(0.1)
        first.drop()
        # While Deepgram is away, 1.2 s more audio arrives at once (more than the pacer's burst).
        h.feed(*inbound(chunks[10:], first=10))
        second = await h.deepgram.connection(2)
        await trio.sleep(3)
        second.say(final(0.0, 0.5, "two"))
        h.feed(STOP)

    # Subscribers were told at once, and told again when it recovered; no Error.
    assert [n["message"] for n in h.notices()] == [
        "Deepgram connection lost: closed with 1011 NET-0000; reconnecting",
        "transcription resumed: Deepgram connection restored (retry 1)",  # the drop counted once, not per task
    ]
    # Audio: the second connection replays from the first window not covered by a final (100 ms).
    assert b"".join(first.audio) == audio[:1600]
    assert b"".join(second.audio) == audio[800:]
    # The replay (1.5 s of audio) went out no faster than 1.25x real time, apart from the 0.5 s burst.
    replay = [t for t, m in zip(second.sent_at, second.sent, strict=False) if isinstance(m, bytes)]
    assert replay[-1] - replay[0] >= (1.5 - 0.5 - 0.1) / 1.25 - 1e-6
    # Timeline: the second connection's times are shifted by the 0.1 s it started at.
    finals = [m for m in h.deepgram_messages() if m.get("is_final")]
    # Last, the scripted answer to CloseStream: a final with no times (duration 0), so no repeat.
    assert [(f["channel"]["alternatives"][0]["transcript"], f.get("start")) for f in finals] == [
        ("one", 0.0),
        ("two", 0.1),
        ("final words 0", None),
    ]
    assert finals[1]["channel"]["alternatives"][0]["words"][0] == {"word": "two", "start": 0.1, "end": 0.6}
    assert h.close == (1000, "call ended")
    assert h.call.stream.media_frames == 80


async def call_with_a_reconnect(second_says: list[str], close_stream_answer: list[str]) -> list[tuple[str, str, float]]:
    """A mono call of 1.6 s whose first Deepgram connection finalizes call time 0-0.15 s and drops.
    The second replays from 0.1 s (the first window not covered), says `second_says` (in its own
    time, which is call time - 0.1 s) and answers CloseStream with `close_stream_answer`.
    Returns what the subscriber got: (type, transcript, start)."""
    h = Harness(ScriptedDeepgram(channels=1))
    chunks = [bytes([n]) * 160 for n in range(80)]
    async with h.running():
        h.feed(twilio_start(["inbound"]), *inbound(chunks[:10]))
        await trio.sleep(0.5)
        first = h.deepgram.latest
        first.say(final(0.0, 0.15, "one"))
        await trio.sleep(0.1)
        first.drop()
        h.feed(*inbound(chunks[10:], first=10))
        second = await h.deepgram.connection(2)
        await trio.sleep(3)
        assert b"".join(second.audio) == b"".join(chunks[5:])  # the replay went out, from 0.1 s
        for text in second_says:
            second.say(text)
        second.close_stream_answer = close_stream_answer
        h.feed(STOP)
    assert h.close == (1000, "call ended") and len(h.deepgram.connections) == 2
    assert [n["type"] for n in h.notices()] == ["Reconnecting", "Resumed"]
    received = h.deepgram_messages()
    return [
        (m["type"], m.get("channel", {}).get("alternatives", [{}])[0].get("transcript", ""), m.get("start", 0.0))
        for m in received
    ]


async def test_after_a_reconnect_finals_of_no_audio_still_reach_subscribers(autojump_clock: trio.abc.Clock) -> None:
    # After CloseStream, Deepgram finalizes at the end of the audio: finals of duration 0 that
    # end where the last published final did. They repeat nothing.
    at_the_end = final(1.5, 0.0, "", from_finalize=True)
    received = await call_with_a_reconnect([final(0.05, 1.45, "two")], [at_the_end, at_the_end, METADATA])
    assert received == [
        ("Results", "one", 0.0),
        ("Results", "two", 0.15),
        ("Results", "", 1.6),
        ("Results", "", 1.6),
        ("Metadata", "", 0.0),
    ]


async def test_after_a_reconnect_finals_of_audio_already_published_are_dropped(autojump_clock: trio.abc.Clock) -> None:
    received = await call_with_a_reconnect(
        [final(0.0, 0.0, ""), final(0.0, 0.05, "one again"), final(0.0, 0.1, "one and on"), final(0.1, 1.2, "two")],
        [final(1.0, 0.3, "two again", from_finalize=True), final(1.3, 0.2, "three", from_finalize=True), METADATA],
    )
    # "one again" (0.1-0.15) and "two again" (1.1-1.4) lie within finals already published; a final
    # reaching past them ("one and on", 0.1-0.2) is published, though it overlaps. The final of no
    # audio at 0.1 repeats nothing, and does not pull back the end of what was published.
    assert received == [
        ("Results", "one", 0.0),
        ("Results", "", 0.1),
        ("Results", "one and on", 0.1),
        ("Results", "two", 0.2),
        ("Results", "three", 1.4),
        ("Metadata", "", 0.0),
    ]


async def test_a_connection_dropped_after_close_stream_is_replaced_to_finish_the_transcript(
    autojump_clock: trio.abc.Clock,
) -> None:
    h = Harness(ScriptedDeepgram(channels=1, answer_close_stream=False))
    audio = bytes(range(256)) * 10  # 0.32 s
    async with h.running():
        h.feed(
            twilio_start(["inbound"]),
            *inbound([audio[i : i + 160] for i in range(0, len(audio), 160)]),
        )
        await trio.sleep(0.5)
        first = h.deepgram.latest
        first.say(final(0.0, 0.1, "one"))
        h.feed(STOP)
        with trio.fail_after(5):
            while CLOSE_STREAM not in first.control:
                await trio.sleep(0.01)
        h.deepgram.answer_close_stream = True  # the next connection finishes properly
        first.drop()  # 1011 before Metadata: the finals of the rest would be lost
    second = h.deepgram.latest
    assert second is not first and b"".join(second.audio) == audio[800:]  # the audio not finalized, again
    assert [m["type"] for m in h.notices()] == ["Reconnecting", "Resumed"]
    assert [(m["type"], m.get("start")) for m in h.deepgram_messages()] == [
        ("Results", 0.0),
        ("Results", None),  # the scripted answer to CloseStream: a final with no times
        ("Metadata", None),
    ]
    assert h.close == (1000, "call ended")


async def test_giving_up_on_deepgram_is_explicit_and_the_call_goes_on(autojump_clock: trio.abc.Clock) -> None:
    attempts: list[float] = []

    async def unreachable(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> None:
        attempts.append(trio.current_time())
        raise ConnectFailed("dg.example:443", "[Errno 111] Connection refused")

    h = Harness(max_reconnects=3, connect=unreachable)
    async with h.running():
        h.feed(twilio_start(["inbound"]), *frames("inbound", 50, 1))
        await trio.sleep(30)
        h.feed(*frames("inbound", 50, 1, start_ms=1000), STOP)
    assert len(attempts) == 4  # the first try and 3 reconnects
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(g > 0.2 for g in gaps) and gaps[-1] > gaps[0]  # backing off, not a storm
    reconnecting, error = h.notices()
    assert reconnecting["type"] == "Reconnecting" and reconnecting["callSid"] == CALL_SID
    assert (
        reconnecting["message"] == "cannot reach Deepgram: dg.example:443: [Errno 111] Connection refused; reconnecting"
    )
    assert error["type"] == "Error" and error["message"] == (
        "giving up on Deepgram after 3 retries (cannot reach Deepgram: dg.example:443: [Errno 111] Connection"
        " refused); the call goes on untranscribed"
    )
    assert h.received_at[0] < attempts[0] + 0.01 < attempts[1]  # the first failure was announced at once
    assert h.call.stream.media_frames == 100 and h.close == (1000, "call ended")


async def test_a_4xx_refusal_is_not_retried_but_429_is(autojump_clock: trio.abc.Clock) -> None:
    for status, expected_attempts in ((403, 1), (429, 3)):
        attempts = 0

        async def refuse(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]], status: int = status) -> None:
            nonlocal attempts
            attempts += 1
            raise trio_websocket.ConnectionRejected(status, ((b"dg-error", b"nope"),), None)

        h = Harness(max_reconnects=2, connect=refuse)
        async with h.running(subscribed=False):
            h.feed(twilio_start(["inbound"]), *frames("inbound", 10, 1))
            await trio.sleep(20)
            h.feed(STOP)
        assert attempts == expected_attempts, status
        assert f"HTTP {status}: nope" in h.call.deepgram_error


async def test_an_outage_is_announced_at_once_and_its_end_too_and_late_subscribers_see_the_latest(
    autojump_clock: trio.abc.Clock,
) -> None:
    deepgram = ScriptedDeepgram(channels=1)
    attempts: list[float] = []

    async def down_twice(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> ScriptedConnection:
        attempts.append(trio.current_time())
        if len(attempts) <= 2:
            raise ConnectFailed("dg.example:443", "timed out after 5 s waiting for the TCP connection")
        return await deepgram.connect(nursery, url, headers)

    h = Harness(deepgram, connect=down_twice)
    late: list[dict[str, Any]] = []

    async def subscribe_late() -> None:
        async with h.hub.subscribe(CALL_SID) as subscription:
            async for message in subscription:
                late.append(json.loads(message))

    audio = [bytes([n]) * 160 for n in range(50)]
    async with h.running() as nursery:
        h.feed(twilio_start(["inbound"]), *inbound(audio))
        await deepgram.connected.wait()
        await trio.sleep(0.1)
        nursery.start_soon(subscribe_late)
        await trio.sleep(1)
        deepgram.say(final(0.0, 1.0, "back"))
        h.feed(STOP)

    reconnecting, resumed = h.notices()
    assert reconnecting == {
        "type": "Reconnecting",
        "source": "callscribe",
        "callSid": CALL_SID,
        "message": "cannot reach Deepgram: dg.example:443: timed out after 5 s waiting for the TCP connection;"
        " reconnecting",
    }
    assert h.received_at[0] < attempts[1]  # at the first failure, not after the retries
    assert resumed == {
        "type": "Resumed",
        "source": "callscribe",
        "callSid": CALL_SID,
        "message": "transcription resumed: Deepgram connection restored (retry 2)",
    }
    assert h.received_at[1] == attempts[2]
    # The late subscriber's first message is the latest notice: the outage is over.
    assert [m.get("type") for m in late] == ["Resumed", "Results", "Results", "Metadata"]
    assert b"".join(deepgram.audio) == b"".join(audio)  # the audio of the outage was kept and sent
    assert h.call.deepgram_error == ""


async def test_after_stop_a_call_that_cannot_reach_deepgram_ends_within_the_finalize_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    attempts: list[float] = []

    async def unreachable(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> None:
        attempts.append(trio.current_time())
        raise ConnectFailed("dg.example:443", "[Errno 113] No route to host")

    h = Harness(connect=unreachable, finalize_timeout_s=5.0, max_reconnects=8)
    async with h.running():
        h.feed(twilio_start(["inbound"]), *frames("inbound", 50, 1))
        await trio.sleep(2)
        stopped_at = trio.current_time()
        h.feed(STOP)
    assert trio.current_time() - stopped_at <= 5.0
    assert h.close == (1000, "call ended")
    reconnecting, error = h.notices()
    assert reconnecting["type"] == "Reconnecting" and error["type"] == "Error"
    assert error["message"] == (
        "giving up on Deepgram: the call's audio has ended and it is still unreachable (cannot reach Deepgram:"
        " dg.example:443: [Errno 113] No route to host); the audio not yet sent is not transcribed"
    )
    assert h.call.deepgram is not None and h.call.deepgram.backlog.lost == 50 * 160  # none of it reached Deepgram
    metrics = Metrics(lambda: {"active_calls": 0, "subscribers": 0, "games": 0, "hub_up": 1})
    metrics.call_ended(h.call, "transcription_failed")
    assert "callscribe_audio_seconds_lost_total 1.0" in metrics.render().decode()


async def test_a_connection_attempt_under_way_when_the_audio_ends_is_cut_at_the_finalize_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def never_answers(nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> None:
        await trio.sleep_forever()

    h = Harness(connect=never_answers, finalize_timeout_s=3.0)
    with trio.fail_after(60):
        async with h.running():
            h.feed(twilio_start(["inbound"]), *frames("inbound", 10, 1))
            await trio.sleep(1)
            h.feed(STOP)
    assert trio.current_time() == pytest.approx(4.0)
    (error,) = h.notices()
    assert error["message"] == (
        "giving up on Deepgram 3 s after the call's audio ended (still connecting);"
        " the audio not yet sent is not transcribed"
    )
    assert h.close == (1000, "call ended")


async def test_a_call_adds_its_counters_to_the_metrics_once_at_its_end(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    async with h.running(subscribed=False):
        good = frames("inbound", 10, 1)
        h.feed(twilio_start(["inbound"]), *good, good[-1])  # the last 20 ms again: dropped as overlapping
        h.feed(twilio_media("inbound", 60_000, b"\x02" * 160))  # a jump of almost a minute: a clock jump
        with trio.fail_after(5):
            await h.deepgram.connected.wait()
        h.deepgram.say("not json")
        await trio.sleep(1)
        h.feed(STOP)
    metrics = Metrics(lambda: {"active_calls": 0, "subscribers": 0, "games": 0, "hub_up": 1})
    metrics.call_ended(h.call, "ok")
    text = metrics.render().decode()
    for line in (
        'callscribe_calls_total{outcome="ok"} 1.0',
        "callscribe_twilio_frames_total 12.0",
        "callscribe_twilio_audio_seconds_overlapping_total 0.02",
        "callscribe_twilio_timestamp_jumps_total 1.0",
        "callscribe_deepgram_messages_unparsable_total 1.0",
        "callscribe_deepgram_connections_total 1.0",
        "callscribe_audio_seconds_sent_total 0.22",
        "callscribe_audio_seconds_lost_total 0.0",
    ):
        assert line in text, line


async def test_a_failure_in_a_task_of_the_websocket_library_ends_the_attempt_with_its_cause(
    autojump_clock: trio.abc.Clock,
) -> None:
    deepgram = ScriptedDeepgram(channels=1)

    async def handshake_fails_in_the_background(
        nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]
    ) -> ScriptedConnection:
        async def reader() -> None:  # trio-websocket's reader task raises this into the connection's nursery
            await trio.sleep(0.1)
            raise trio_websocket.HandshakeError() from ConnectionResetError(104, "Connection reset by peer")

        nursery.start_soon(reader)
        return await deepgram.connect(nursery, url, headers)

    h = Harness(deepgram, connect=handshake_fails_in_the_background, max_reconnects=0)
    async with h.running():
        h.feed(twilio_start(["inbound"]), *frames("inbound", 10, 1))
        await trio.sleep(1)
        h.feed(STOP)
    (error,) = h.notices()
    assert error["message"] == (
        "giving up on Deepgram (cannot reach Deepgram: WebSocket handshake failed: [Errno 104] Connection reset by"
        " peer; retrying is off); the call goes on untranscribed"
    )
    assert deepgram.closed and h.close == (1000, "call ended")


async def test_missing_metadata_bounds_the_wait(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1, answer_close_stream=False), finalize_timeout_s=3.0)
    async with h.running(subscribed=False):
        h.feed(twilio_start(["inbound"]), *frames("inbound", 2, 1), STOP)
    assert trio.current_time() == pytest.approx(3.0, abs=0.1)
    assert h.deepgram.closed


async def test_no_start_closes_the_stream_with_a_reason(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(start_timeout_s=10.0)
    h.feed(json.dumps({"event": "connected"}))
    await h.call.run()
    assert (h.call.close_code, h.call.close_reason) == (1008, "no start message")
    assert trio.current_time() == pytest.approx(10.0)


async def test_an_unusable_start_ends_the_stream_with_1003(autojump_clock: trio.abc.Clock) -> None:
    h = Harness()
    h.feed(twilio_start(["inbound"]).replace("audio/x-mulaw", "audio/l16"))
    await h.call.run()
    assert h.call.close_code == 1003 and "unsupported media format" in h.call.close_reason
    assert h.deepgram.url == ""


async def test_cancelling_the_call_closes_deepgram_and_every_subscriber(autojump_clock: trio.abc.Clock) -> None:
    h = Harness(ScriptedDeepgram(channels=1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(h.subscribe_when_live)
        nursery.start_soon(h.subscribe_when_live)
        call_scope = trio.CancelScope()
        nursery.start_soon(_run_in, call_scope, h.call)
        h.feed(twilio_start(["inbound"]), *frames("inbound", 10, 1))
        await trio.sleep(1)
        assert h.hub.stats() == {"calls": 1, "subscribers": 2, "up": 1}
        call_scope.cancel()
    assert h.deepgram.closed
    assert h.hub.stats() == {"calls": 0, "subscribers": 0, "up": 1}
    assert h.call.finished.is_set()


async def _run_in(scope: trio.CancelScope, call: Call) -> None:
    with scope:
        await call.run()
