"""One call: the tasks that carry its audio from Twilio to Deepgram and its transcripts to the hub.

Where a media frame goes:

    Call._read_twilio      frame -> TwilioStream.receive -> Media    -> media channel
    Call._mix              Media -> Mixer.add -> Mixer.windows       -> window channel
    Call._collect_windows  window -> AudioBacklog.append
    Call._send_deepgram    AudioBacklog.next_unsent -> DeepgramStream.send_audio -> Deepgram socket
    Call._read_deepgram    Deepgram text -> DeepgramStream.receive -> rebase -> Hub.publish (and GamePatch)

All of them run in the call's nursery (the Deepgram pair in a child nursery per connection, which
also owns that socket), joined by bounded memory channels and the bounded backlog. The call ends
the same way whatever ends it -- Twilio's `stop`, Twilio hanging up, or the server asking the call
to finish (`end_input`): the reader closes the media channel, the mixer flushes its partial window
and closes the window channel, the sender sends the rest and `CloseStream`, the Deepgram reader
waits (bounded) for the final results and `Metadata`, and only then are the subscribers closed.
Cancelling the call's nursery outright (a hard stop) skips the waiting but still closes Deepgram
and every subscriber in `finally`.

Deepgram failing never stalls Twilio: windows always go into the backlog. A dropped connection is
reopened with backoff, and what Deepgram had not finalized is replayed (see backlog.py); a refused
handshake, or too many failures in a row, is reported to subscribers and the rest of the call's
audio is discarded while Twilio is still read to the end.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import trio
import trio_websocket

from callscribe.core import deepgram
from callscribe.core.backlog import AudioBacklog, Pacer
from callscribe.core.deepgram import DeepgramState, DeepgramStream, rebase
from callscribe.core.mixer import SAMPLES_PER_MS, Mixer
from callscribe.core.twilio import Dtmf, Mark, Media, MediaInfo, Rejected, Start, Stop, TwilioStream
from callscribe.server.games import GamePatch, GameRegistry
from callscribe.server.hub import CLOSE_NORMAL, Hub
from callscribe.server.websocket_client import ConnectFailed, connect_websocket, describe_failure

log = logging.getLogger(__name__)

MEDIA_QUEUE = 50
"""Twilio frames between reader and mixer (1 s of both tracks): the mixer never waits on IO."""
WINDOW_QUEUE_SECONDS = 10
"""Audio that may queue for Deepgram, e.g. while its connection is being opened."""
RETRYABLE_STATUS = frozenset({408, 429})
"""Handshake refusals worth retrying; any other 4xx (bad key, bad options, no credit) is final."""
MAX_REJECTED_FRAMES = 1000
"""A Twilio socket that sends this many unusable frames is not Twilio; it is closed with 1008."""
LOGGED_REJECTIONS = 5
"""Skipped frames logged one by one per call; after that every 100th."""


@dataclass(frozen=True)
class CallSettings:
    deepgram_url: str = deepgram.DEFAULT_URL
    deepgram_api_key: str = ""
    window_ms: int = 100
    jitter_ms: int = 40
    keepalive_s: float = 5.0
    connect_timeout_s: float = 5.0
    finalize_timeout_s: float = 5.0
    start_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    backlog_s: float = 60.0
    max_reconnects: int = 8
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    replay_rate: float = 1.25
    deepgram_ssl_context: ssl.SSLContext | None = None


class DeepgramConnection(Protocol):
    async def send_message(self, message: str | bytes) -> None: ...
    async def get_message(self) -> str | bytes: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


Connector = Callable[[trio.Nursery, str, list[tuple[str, str]]], Awaitable[DeepgramConnection]]
"""Opens a Deepgram connection whose background tasks run in the given nursery."""


class DeepgramLost(Exception):
    """The Deepgram connection ended before the call did."""


def error_message(call_sid: str, message: str) -> str:
    """What subscribers receive when callscribe (not Deepgram) has something to report."""
    return msgspec.json.encode(
        {"type": "Error", "source": "callscribe", "callSid": call_sid, "message": message}
    ).decode()


class Call:
    """One Twilio stream and everything it feeds.

    `receive` returns the Twilio socket's next frame and raises `trio.EndOfChannel` once the socket
    is gone; a shell that cannot tell (Quart cancels the handler instead) calls `end_input()`.
    """

    def __init__(
        self,
        receive: Callable[[], Awaitable[str | bytes | None]],
        *,
        settings: CallSettings,
        hub: Hub,
        connect: Connector | None = None,
        send: Callable[[str], Awaitable[None]] | None = None,
        games: GameRegistry | None = None,
    ) -> None:
        self._receive = receive
        self._send_twilio = send
        self._games = games
        self.game: GamePatch | None = None
        self.settings = settings
        self.hub = hub
        self._connect = connect or self._connect_websocket
        self.stream = TwilioStream()
        self.mixer: Mixer | None = None
        self.connections: list[DeepgramStream] = []
        self.backlog = AudioBacklog(1)
        self.call_sid = ""
        self.close_code = CLOSE_NORMAL
        self.close_reason = "call ended"
        self.deepgram_error = ""
        self.finished = trio.Event()
        self._input_ended = False
        self._close_decided = False
        self._reader_scope = trio.CancelScope()
        self._input_done = False
        self._audio_ready = trio.Event()
        self._productive = False
        self._published_final_end: dict[int, float] = {}
        self._random = random.Random()

    # -- control ---------------------------------------------------------------------------

    def end_input(self, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        """Twilio is gone, or the server is shutting down: stop reading and finish the call normally."""
        if not self._input_ended:
            self._input_ended = True
            self._set_close(code, reason)
            self._reader_scope.cancel()

    def _set_close(self, code: int, reason: str) -> None:
        """The first reason to end the call is the one reported (to Twilio and subscribers)."""
        if not self._close_decided:
            self._close_decided = True
            self.close_code, self.close_reason = code, reason

    async def run(self) -> None:
        """Run the call to its end. Returns when every task, socket and subscriber is closed."""
        started_at = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_twilio, nursery)
        finally:
            if self.game is not None:
                self.game.call_ended(self.close_reason)
            if self.call_sid:
                with trio.move_on_after(2, shield=True):
                    await self.hub.unregister_call(self.call_sid, self.close_code, self.close_reason)
                self._log_end(trio.current_time() - started_at)
            self.finished.set()

    # -- Twilio -> mixer -------------------------------------------------------------------

    async def _read_twilio(self, nursery: trio.Nursery) -> None:
        media_send: trio.MemorySendChannel[MediaInfo] | None = None
        scope = self._reader_scope
        scope.deadline = trio.current_time() + self.settings.start_timeout_s
        try:
            with scope:
                while True:
                    try:
                        frame = await self._receive()
                    except trio.EndOfChannel:
                        return
                    event = self.stream.receive(frame)
                    kind = type(event)
                    if kind is Media:
                        await media_send.send(event.media)  # type: ignore[union-attr]
                    elif kind is Rejected:
                        self._log_rejected(event)  # type: ignore[arg-type]
                        if event.fatal:  # type: ignore[union-attr]
                            self._set_close(1003, event.reason[:120])  # type: ignore[union-attr]
                            return
                        if self.stream.rejected >= MAX_REJECTED_FRAMES:
                            log.warning(
                                "call %s: closing the Twilio socket after %d unusable frames",
                                self.call_sid or "(before start)",
                                self.stream.rejected,
                            )
                            self._set_close(1008, f"too many invalid frames ({self.stream.rejected})")
                            return
                    elif kind is Start:
                        scope.deadline = math.inf
                        media_send = await self._begin(nursery)
                    elif kind is Stop:
                        self._set_close(CLOSE_NORMAL, "call ended")
                        return
                    elif self.game is not None:
                        if kind is Dtmf:
                            self.game.on_dtmf(event.dtmf.digit)  # type: ignore[union-attr]
                        elif kind is Mark:
                            self.game.on_mark(event.mark.name)  # type: ignore[union-attr]
            if scope.cancelled_caught and not self._input_ended:
                log.warning("closing a Twilio stream that sent no 'start' within %g s", self.settings.start_timeout_s)
                self._set_close(1008, "no start message")
        finally:
            if media_send is not None:
                media_send.close()
            if self.game is not None:
                self.game.twilio_gone()

    async def _begin(self, nursery: trio.Nursery) -> trio.MemorySendChannel[MediaInfo]:
        """`start` arrived: register the call and start the mixer and the Deepgram tasks."""
        start = self.stream.start
        assert start is not None
        self.call_sid = start.call_sid
        tracks = self.stream.tracks
        self.mixer = Mixer(len(tracks), window_ms=self.settings.window_ms, jitter_ms=self.settings.jitter_ms)
        await self.hub.register_call(self.call_sid)
        log.info(
            "call %s started: stream %s, tracks %s, parameters %s",
            self.call_sid,
            start.stream_sid,
            "+".join(tracks),
            start.custom_parameters or "none",
        )
        media_send, media_receive = trio.open_memory_channel[MediaInfo](MEDIA_QUEUE)
        window_send, window_receive = trio.open_memory_channel[bytes](
            WINDOW_QUEUE_SECONDS * 1000 // self.settings.window_ms
        )
        nursery.start_soon(self._mix, media_receive, window_send)
        nursery.start_soon(self._run_deepgram, window_receive)
        if self._games is not None and self._send_twilio is not None and self._games.wants(start.custom_parameters):
            self.game = self._games.patch_for(self.call_sid, start.stream_sid, self._send_twilio)
            nursery.start_soon(self.game.run_speaker)
            log.info("call %s is routed to games: waiting for the caller to say or key in a code", self.call_sid)
        return media_send

    async def _mix(self, media: trio.MemoryReceiveChannel[MediaInfo], windows: trio.MemorySendChannel[bytes]) -> None:
        mixer = self.mixer
        assert mixer is not None
        channel_of = {track: index for index, track in enumerate(self.stream.tracks)}
        async with media, windows:
            async for frame in media:
                mixer.add(channel_of[frame.track], frame.timestamp, frame.payload)
                for window in mixer.windows():
                    await windows.send(window)
            for window in mixer.flush():
                await windows.send(window)

    # -- mixer -> Deepgram -> hub ----------------------------------------------------------

    async def _run_deepgram(self, windows: trio.MemoryReceiveChannel[bytes]) -> None:
        """Keep a Deepgram connection for the call, reconnecting and replaying what was not transcribed."""
        self.backlog = AudioBacklog(len(self.stream.tracks), self.settings.backlog_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._collect_windows, windows)
            await self._keep_deepgram_connected()

    async def _collect_windows(self, windows: trio.MemoryReceiveChannel[bytes]) -> None:
        """Move the mixer's windows into the backlog as they come, whatever state Deepgram is in."""
        backlog = self.backlog
        async with windows:
            async for window in windows:
                backlog.append(window)
                self._audio_ready.set()
        self._input_done = True
        self._audio_ready.set()

    async def _keep_deepgram_connected(self) -> None:
        failures = 0
        while True:
            failure = ""
            permanent = False
            self._productive = False
            try:
                async with trio.open_nursery() as nursery:
                    await self._stream_to_deepgram(nursery)
                return
            except* trio_websocket.ConnectionRejected as group:
                rejected = group.exceptions[0]
                summary = deepgram.rejection_summary(rejected.status_code, list(rejected.headers), rejected.body)
                failure = f"Deepgram refused the connection: {summary}"
                permanent = 400 <= rejected.status_code < 500 and rejected.status_code not in RETRYABLE_STATUS
            except* ConnectFailed as group:
                failure = f"cannot reach Deepgram: {group.exceptions[0]}"
            except* DeepgramLost as group:
                failure = f"Deepgram connection lost: {group.exceptions[0]}"
            except* trio_websocket.HandshakeError as group:  # raised by trio-websocket's reader task
                failure = f"WebSocket handshake with Deepgram failed: {describe_failure(group.exceptions[0])}"
            failures = 1 if self._productive else failures + 1
            if permanent:
                await self._deepgram_failed(failure)
                return
            if failures > self.settings.max_reconnects:
                await self._deepgram_failed(
                    f"giving up on Deepgram after {failures} failed attempt{'s' * (failures > 1)} ({failure});"
                    " the call goes on untranscribed"
                )
                return
            delay = min(self.settings.backoff_max_s, self.settings.backoff_initial_s * 2 ** (failures - 1))
            delay *= self._random.uniform(0.5, 1.0)
            log.warning(
                "call %s: %s; reconnecting in %.1f s (attempt %d of %d, %.1f s of audio waiting)",
                self.call_sid,
                failure,
                delay,
                failures,
                self.settings.max_reconnects,
                self.backlog.unsent_seconds,
            )
            await trio.sleep(delay)

    async def _stream_to_deepgram(self, nursery: trio.Nursery) -> None:
        backlog = self.backlog
        url = deepgram.listen_url(self.settings.deepgram_url, channels=backlog.channels)
        headers = [("Authorization", f"Token {self.settings.deepgram_api_key}")]
        connection = await self._connect(nursery, url, headers)
        base = backlog.rewind()
        stream = DeepgramStream()
        self.connections.append(stream)
        if len(self.connections) > 1:
            log.info(
                "call %s: Deepgram connection %d open; replaying %.2f s of audio from call time %.2f s",
                self.call_sid,
                len(self.connections),
                backlog.unsent_seconds,
                base,
            )
        finished = trio.Event()
        try:
            nursery.start_soon(self._read_deepgram, connection, stream, base, finished)
            await self._send_deepgram(connection, stream)
            with trio.move_on_after(self.settings.finalize_timeout_s) as waiting:
                await finished.wait()
            if waiting.cancelled_caught:
                log.warning(
                    "call %s: no Metadata from Deepgram within %g s of CloseStream; closing",
                    self.call_sid,
                    self.settings.finalize_timeout_s,
                )
        finally:
            with trio.move_on_after(2, shield=True):
                await connection.aclose()
            nursery.cancel_scope.cancel()

    async def _send_deepgram(self, connection: DeepgramConnection, stream: DeepgramStream) -> None:
        """Send the backlog in order (at most `replay_rate` x real time), KeepAlive when idle, then CloseStream."""
        backlog = self.backlog
        settings = self.settings
        pacer = Pacer(settings.replay_rate)
        last_sent = trio.current_time()
        while True:
            window = backlog.next_unsent()
            if window is None:
                if self._input_done:
                    break
                self._audio_ready = trio.Event()
                with trio.move_on_at(last_sent + settings.keepalive_s) as idle:
                    await self._audio_ready.wait()
                if idle.cancelled_caught:
                    await self._send(connection, stream.send_keepalive())
                    last_sent = trio.current_time()
                continue
            wait = pacer.delay(trio.current_time(), len(window) / backlog.bytes_per_second)
            if wait > 0:
                await trio.sleep(wait)
            await self._send(connection, stream.send_audio(window))
            backlog.mark_sent(window)
            last_sent = trio.current_time()
        await self._send(connection, stream.send_close_stream())

    async def _send(self, connection: DeepgramConnection, message: str | bytes) -> None:
        try:
            with trio.fail_after(self.settings.send_timeout_s):
                await connection.send_message(message)
        except trio.TooSlowError:
            raise DeepgramLost(f"a send stalled for {self.settings.send_timeout_s:g} s") from None
        except trio_websocket.ConnectionClosed as closed:
            raise DeepgramLost(_close_text(closed)) from None

    async def _read_deepgram(
        self, connection: DeepgramConnection, stream: DeepgramStream, base: float, finished: trio.Event
    ) -> None:
        """Publish what Deepgram says, in call time (`base` + its times).

        A connection after the first replays audio some of whose finals subscribers already have.
        Its final for channel c covering call time [start, end) is dropped as a repeat when it
        covers audio (duration > 0) and `end` is not past the furthest end of the finals published
        for c: published finals cover c up to there. A final that reaches past it is published,
        overlap and all; a final of duration 0 (e.g. Deepgram's `from_finalize` flush at the end of
        the audio after CloseStream) covers nothing, so it repeats nothing and is published.
        """
        backlog = self.backlog
        published_final_end = self._published_final_end
        replaying = len(self.connections) > 1
        try:
            while stream.state is not DeepgramState.FINISHED:
                try:
                    message = await connection.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    if stream.state is DeepgramState.STREAMING:
                        raise DeepgramLost(_close_text(closed)) from None
                    return
                if isinstance(message, bytes):
                    continue
                kind = stream.receive(message)
                interim = False
                if kind.type == "Results":
                    self._productive = True
                    if kind.is_final:
                        end = base + kind.start + kind.duration
                        backlog.acknowledge(kind.channel, kind.start + kind.duration, base)
                        previous = published_final_end.get(kind.channel, -1.0)
                        if replaying and kind.duration > 0 and end <= previous + 1e-6:
                            continue  # a replayed stretch whose final subscribers already have
                        if end > previous:
                            published_final_end[kind.channel] = end
                    else:
                        interim = True
                message = rebase(message, base)
                await self.hub.publish(self.call_sid, message, droppable=interim)
                if self.game is not None:
                    self.game.on_deepgram(kind, message, interim)
        finally:
            finished.set()

    async def _deepgram_failed(self, description: str) -> None:
        self.deepgram_error = description
        log.error("call %s: %s", self.call_sid, description)
        await self.hub.publish(self.call_sid, error_message(self.call_sid, description), sticky=True)

    async def _connect_websocket(self, nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> Any:
        return await connect_websocket(
            nursery,
            url,
            headers=headers,
            connect_timeout=self.settings.connect_timeout_s,
            ssl_context=self.settings.deepgram_ssl_context,
        )

    @property
    def audio_bytes_sent(self) -> int:
        return sum(stream.audio_bytes_sent for stream in self.connections)

    @property
    def results_received(self) -> int:
        return sum(stream.results_received for stream in self.connections)

    # -- logging ---------------------------------------------------------------------------

    def _log_rejected(self, event: Rejected) -> None:
        count = self.stream.rejected
        if count <= LOGGED_REJECTIONS or count % 100 == 0 or event.fatal:
            log.warning(
                "call %s: skipped a Twilio frame (%d so far): %s",
                self.call_sid or "(before start)",
                count,
                event.reason,
            )

    def _log_end(self, duration_s: float) -> None:
        mixer = self.mixer
        channels = mixer.channels if mixer else 1
        audio_s = self.audio_bytes_sent / (SAMPLES_PER_MS * 1000 * channels)
        padded = sum(mixer.padded) / (SAMPLES_PER_MS * 1000) if mixer else 0.0
        log.info(
            "call %s ended (%s): %.1f s, tracks %s, %d frames (%d skipped), %.2f s of audio sent to Deepgram"
            " (%.2f s padding), %d results received, %d Deepgram connection(s)%s",
            self.call_sid,
            self.close_reason,
            duration_s,
            "+".join(self.stream.tracks),
            self.stream.media_frames,
            self.stream.rejected,
            audio_s,
            padded,
            self.results_received,
            len(self.connections),
            (
                f"; {self.backlog.lost / self.backlog.bytes_per_second:.1f} s of audio never reached Deepgram"
                if self.backlog.lost
                else ""
            )
            + (f"; transcription failed: {self.deepgram_error}" if self.deepgram_error else ""),
        )


def _close_text(closed: trio_websocket.ConnectionClosed) -> str:
    reason = closed.reason
    if reason is None:
        return "closed"
    return f"closed with {reason.code} {reason.reason or reason.name}".rstrip()


__all__ = ["Call", "CallSettings", "DeepgramLost", "error_message"]
