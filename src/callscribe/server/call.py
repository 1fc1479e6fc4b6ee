"""One call: the tasks that carry its audio from Twilio to Deepgram and its transcripts to the hub.

Where a media frame goes:

    Call._read_twilio      frames of a read -> TwilioStream.receive -> [Media...] -> media channel,
                           once a window is due (WindowGate); then no read until the frames that
                           complete the next window have come (plain TCP: the socket's wake_after)
                           or can have come (TLS: ReadPacer)
    Call._mix              [Media...] -> Mixer.add -> Mixer.windows               -> window channel
    DeepgramClient.run     window -> AudioBacklog -> Deepgram socket; Deepgram's messages -> Hub.publish
                           (and GamePatch.on_deepgram), see deepgram_client.py

All of them run in the call's nursery (each Deepgram connection in a child nursery that also owns
its socket), joined by bounded memory channels and the bounded backlog. The call ends the same way
whatever ends it -- Twilio's `stop`, Twilio hanging up, or the server asking the call to finish
(`end_input`): the reader closes the media channel, the mixer flushes its partial window and closes
the window channel, the Deepgram client sends the rest and `CloseStream` and waits (bounded) for the
final results and `Metadata`, and only then are the subscribers closed. Cancelling the call's
nursery outright (a hard stop) skips the waiting but still closes Deepgram and every subscriber in
`finally`.

Deepgram failing never stalls Twilio: windows always go into the backlog, and Twilio is read to the
end whatever Deepgram does. Reconnecting, replaying and giving up are the Deepgram client's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from callscribe.core.call_record import call_start
from callscribe.core.deepgram import DeepgramStream, MessageKind
from callscribe.core.mixer import SAMPLES_PER_MS, Mixer, WindowGate
from callscribe.core.read_pacing import ReadPacer, latest_read
from callscribe.core.twilio import Dtmf, Event, Mark, Media, MediaInfo, Rejected, Start, Stop, TwilioStream
from callscribe.server.call_settings import CallSettings
from callscribe.server.deepgram_client import Connector, DeepgramClient
from callscribe.server.games import GamePatch, GameRegistry
from callscribe.server.hub import CLOSE_NORMAL, Hub
from callscribe.server.store import NO_RECORDER, Recorder

log = logging.getLogger(__name__)
T = TypeVar("T")

MEDIA_QUEUE = 50
"""Batches of Twilio frames (each about one window of audio) between reader and mixer: the mixer
never waits on IO."""
MAX_HELD_FRAMES = 500
"""The reader hands frames over at least this often (5 s of both tracks), whatever their timestamps."""
WINDOW_QUEUE_SECONDS = 10
"""Audio that may queue for Deepgram, e.g. while its connection is being opened."""
MAX_REJECTED_FRAMES = 1000
"""A Twilio socket that sends this many unusable frames is not Twilio; it is closed with 1008."""
SAMPLES_PER_S = SAMPLES_PER_MS * 1000
LOGGED_REJECTIONS = 5
"""Skipped frames logged one by one per call; after that every 100th."""


class Call:
    """One Twilio stream and everything it feeds.

    `receive` returns the frames of the Twilio socket's next read (at least one) and raises
    `trio.EndOfChannel` once the socket is gone; `end_input()` stops reading from outside.
    """

    def __init__(
        self,
        receive: Callable[[float], Awaitable[Sequence[str | bytes | None]]],
        *,
        settings: CallSettings,
        hub: Hub,
        connect: Connector | None = None,
        send: Callable[[str], Awaitable[None]] | None = None,
        games: GameRegistry | None = None,
        recorder: Recorder = NO_RECORDER,
        wake_after: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._receive = receive
        self.recorder = recorder
        """The call store: told of the start, each final and (by the supervisor) the end."""
        self._send_twilio = send
        self._games = games
        self.game: GamePatch | None = None
        self.settings = settings
        self.hub = hub
        self._connect = connect
        self._wake_after = wake_after  # the socket holds the reader's wake until bytes come (see _read_twilio)
        self.stream = TwilioStream()
        self.mixer: Mixer | None = None
        self.deepgram: DeepgramClient | None = None
        """The call's Deepgram side, from `start` on."""
        self.call_sid = ""
        self.close_code = CLOSE_NORMAL
        self.close_reason = "call ended"
        self.finished = trio.Event()
        self._end_requested = False
        """`end_input()` was called: Twilio is gone or the server is stopping; reading stops."""
        self._close_decided = False
        self._reader_scope = trio.CancelScope()
        self._channel_of: dict[str, int] = {}

    # -- control ---------------------------------------------------------------------------

    def end_input(self, code: int = CLOSE_NORMAL, reason: str = "call ended") -> None:
        """Twilio is gone, or the server is shutting down: stop reading and finish the call normally."""
        if not self._end_requested:
            self._end_requested = True
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
        """Read Twilio's frames a socket read at a time and hand the media to the mixer's task once
        a window is due (the `WindowGate` knows when, from the mixer's own arithmetic): one wake of
        the mixer per window rather than per frame, and no window later than mixing each frame.
        After each read the reader asks the socket to wake it once the frames that complete the
        next window can all be there (`wake_after`, from `WindowGate.chunks_until_due` and the
        smallest media message and the largest chunk so far), or when they were due in real time
        and half the jitter allowance more (`latest_read`: a track that skipped frames or stopped, a
        `stop`): one read a window, as its last frame lands. A socket that cannot wake on bytes (TLS) is read after sleeping until the next
        window can be complete (`ReadPacer`): about two reads a window. Either way no window
        leaves later than with a read per frame, but in the cases those say."""
        media_send: trio.MemorySendChannel[list[MediaInfo]] | None = None
        gate: WindowGate | None = None
        held: list[MediaInfo] = []
        pacer = ReadPacer()
        wake_after = self._wake_after
        # The smallest media message (bytes) and the largest chunk (samples) so far: the count is a
        # lower bound for chunks no larger than that (a smaller latest chunk would overcount).
        message_size = chunk = 0
        latest = 0.0
        scope = self._reader_scope
        scope.deadline = trio.current_time() + self.settings.start_timeout_s
        media_timeout_s = self.settings.media_timeout_s
        extend_after_s = media_timeout_s - min(1.0, media_timeout_s / 10)
        try:
            with scope:
                go_on = True
                read_at = 0.0
                while go_on:
                    after_sleep = read_at > trio.current_time()
                    try:
                        frames = await self._receive(read_at)
                    except trio.EndOfChannel:
                        break
                    for frame in frames:
                        event = self.stream.receive(frame)
                        if type(event) is Media:
                            media = event.media
                            held.append(media)
                            size = len(media.payload)
                            chunk = max(chunk, size)
                            gate.add(self._channel_of[media.track], media.timestamp, size)  # type: ignore[union-attr]  # media comes after start
                            if wake_after is not None and (len(frame) < message_size or not message_size):  # type: ignore[arg-type]  # media is not None
                                message_size = len(frame)  # type: ignore[arg-type]
                        elif type(event) is Start:
                            scope.deadline = trio.current_time() + self.settings.media_timeout_s
                            media_send, gate = await self._begin(nursery)
                        elif not self._on_event(event):
                            go_on = False
                            break
                    if held and (not go_on or len(held) >= MAX_HELD_FRAMES or gate.due()):  # type: ignore[union-attr]
                        await _hand_over(media_send, held)  # type: ignore[arg-type]
                        held = []
                        now = trio.current_time()
                        # Moving a deadline costs ~10 us (a heap entry and Trio's bookkeeping): not every window.
                        if scope.deadline - now < extend_after_s:
                            scope.deadline = now + media_timeout_s
                        if wake_after is not None:
                            latest = latest_read(
                                now,
                                gate.received_to / SAMPLES_PER_S,  # type: ignore[union-attr]
                                gate.next_due_at / SAMPLES_PER_S,  # type: ignore[union-attr]
                                self.settings.jitter_ms,
                            )
                        else:
                            read_at = pacer.window_done(
                                now,
                                gate.received_to / SAMPLES_PER_S,  # type: ignore[union-attr]
                                gate.next_due_at / SAMPLES_PER_S,  # type: ignore[union-attr]
                                after_sleep=after_sleep,
                            )
                    if wake_after is not None and chunk and go_on:
                        wake_after(gate.chunks_until_due(chunk), message_size, latest)  # type: ignore[union-attr]
            if scope.cancelled_caught and not self._end_requested and media_send is None:
                log.warning("closing a Twilio stream that sent no 'start' within %g s", self.settings.start_timeout_s)
                self._set_close(1008, "no start message")
            elif scope.cancelled_caught and not self._end_requested:
                timeout_s = self.settings.media_timeout_s
                log.warning("call %s: no media from Twilio for %g s; ending the call", self.call_sid, timeout_s)
                self._set_close(1008, f"no media for {timeout_s:g} s")
            if held and media_send is not None:
                await media_send.send(held)  # the socket ended: the mixer flushes what is left
        finally:
            if media_send is not None:
                media_send.close()
            if self.game is not None:
                self.game.twilio_gone()  # the socket gone without a `stop` (or after it: nothing more)

    def _on_event(self, event: Event) -> bool:
        """A Twilio event other than media and start; False when it ends the stream."""
        if type(event) is Rejected:
            self._log_rejected(event)
            if event.fatal:
                self._set_close(1003, event.reason[:120])
                return False
            if self.stream.rejected >= MAX_REJECTED_FRAMES:
                log.warning(
                    "call %s: closing the Twilio socket after %d unusable frames",
                    self.call_sid or "(before start)",
                    self.stream.rejected,
                )
                self._set_close(1008, f"too many invalid frames ({self.stream.rejected})")
                return False
        elif type(event) is Stop:
            self._set_close(CLOSE_NORMAL, "call ended")
            if self.game is not None:
                self.game.twilio_gone()  # at once: Deepgram's last finals, still to come, patch nobody
            return False
        elif self.game is not None:
            if type(event) is Dtmf:
                self.game.on_dtmf(event.dtmf.digit)
            elif type(event) is Mark:
                self.game.on_mark(event.mark.name)
        return True

    async def _begin(self, nursery: trio.Nursery) -> tuple[trio.MemorySendChannel[list[MediaInfo]], WindowGate]:
        """`start` arrived: register the call and start the mixer and the Deepgram tasks."""
        start = self.stream.start
        assert start is not None
        self.call_sid = start.call_sid
        tracks = self.stream.tracks
        self.mixer = Mixer(len(tracks), window_ms=self.settings.window_ms, jitter_ms=self.settings.jitter_ms)
        gate = WindowGate(len(tracks), window_ms=self.settings.window_ms, jitter_ms=self.settings.jitter_ms)
        self._channel_of = {track: index for index, track in enumerate(tracks)}
        await self.hub.register_call(self.call_sid)
        self.recorder.call_started(
            call_start(
                call_sid=self.call_sid,
                stream_sid=start.stream_sid,
                account_sid=start.account_sid,
                tracks=tracks,
                parameters=start.custom_parameters,
                now=time.time(),
            )
        )
        log.info(
            "call %s started: stream %s, tracks %s, parameters %s",
            self.call_sid,
            start.stream_sid,
            "+".join(tracks),
            start.custom_parameters or "none",
        )
        media_send, media_receive = trio.open_memory_channel[list[MediaInfo]](MEDIA_QUEUE)
        window_send, window_receive = trio.open_memory_channel[bytes](
            WINDOW_QUEUE_SECONDS * 1000 // self.settings.window_ms
        )
        self.deepgram = DeepgramClient(
            self.call_sid,
            len(tracks),
            settings=self.settings,
            hub=self.hub,
            connect=self._connect,
            on_message=self._on_deepgram,
        )
        nursery.start_soon(self._mix, media_receive, window_send)
        nursery.start_soon(self.deepgram.run, window_receive)
        if self._games is not None and self._send_twilio is not None and self._games.wants(start.custom_parameters):
            self.game = self._games.patch_for(self.call_sid, start.stream_sid, self._send_twilio, tracks)
            nursery.start_soon(self.game.run_speaker)
            log.info("call %s is routed to games: waiting for the caller to say or key in a code", self.call_sid)
        return media_send, gate

    async def _mix(
        self, media: trio.MemoryReceiveChannel[list[MediaInfo]], windows: trio.MemorySendChannel[bytes]
    ) -> None:
        mixer = self.mixer
        assert mixer is not None
        channel_of = self._channel_of
        async with media, windows:
            async for frames in media:
                for frame in frames:
                    mixer.add(channel_of[frame.track], frame.timestamp, frame.payload)
                for window in mixer.windows():
                    await _hand_over(windows, window)
            for window in mixer.flush():
                await windows.send(window)

    def _on_deepgram(self, kind: MessageKind, message: str, interim: bool) -> None:
        if kind.is_final and kind.type == "Results":
            self.recorder.final(self.call_sid, message)
        if self.game is not None:
            self.game.on_deepgram(kind, message, interim)

    # -- what the Deepgram side did --------------------------------------------------------

    @property
    def deepgram_error(self) -> str:
        """Why transcription was given up, "" if it was not."""
        return self.deepgram.error if self.deepgram else ""

    @property
    def deepgram_streams(self) -> list[DeepgramStream]:
        """The bookkeeping of each Deepgram connection opened for the call."""
        return self.deepgram.streams if self.deepgram else []

    @property
    def audio_bytes_sent(self) -> int:
        return self.deepgram.audio_bytes_sent if self.deepgram else 0

    @property
    def results_received(self) -> int:
        return self.deepgram.results_received if self.deepgram else 0

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
        backlog = self.deepgram.backlog if self.deepgram else None
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
            len(self.deepgram_streams),
            (
                f"; {backlog.lost / backlog.bytes_per_second:.1f} s of audio never reached Deepgram"
                if backlog and backlog.lost
                else ""
            )
            + (f"; transcription failed: {self.deepgram_error}" if self.deepgram_error else ""),
        )


__all__ = ["Call", "CallSettings", "Connector"]


async def _hand_over(channel: trio.MemorySendChannel[T], item: T) -> None:
    """`channel.send(item)` without its checkpoint when there is room: the tasks that hand over
    (reader, mixer) checkpoint once a loop anyway, at their read or receive, and a checkpoint is a
    trip through the scheduler. When the channel is full it waits, as `send` does."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)
