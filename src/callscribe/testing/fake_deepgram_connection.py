"""One connection to the fake Deepgram: how it behaves, what it saw, and the task that serves it.

:class:`FakeDeepgramBehaviour` says how the fake behaves (read once per connection);
:class:`FakeDeepgramSession` records what one accepted connection saw, for tests to inspect;
:class:`Connection` reads audio and control messages from the client and sends what
:mod:`callscribe.testing.fake_deepgram_results` says is due, each message delayed by
``response_delay_s`` through a bounded queue so that receiving audio is never held up.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from callscribe.testing.fake_deepgram_handshake import AudioFormat
from callscribe.testing.fake_deepgram_results import (
    DueResult,
    ResultSchedule,
    VoiceEvents,
    compact_json,
    metadata_message,
    results_message,
    scripted_transcript,
    seconds,
    segment_samples,
)

__all__ = ["CLOSE_TIMEOUT", "Connection", "Deinterleaver", "FakeDeepgramBehaviour", "FakeDeepgramSession", "Hooks"]

logger = logging.getLogger(__name__)

#: Queued, not yet sent server messages per connection (bounded: backpressure beyond this).
_OUTGOING_BUFFER: Final = 256
#: Seconds a client gets to answer our close frame.
CLOSE_TIMEOUT: Final = 5.0

_Close = tuple[int, str | None]


@dataclass
class FakeDeepgramBehaviour:
    """How the fake behaves; read once at the start of each connection."""

    api_key: str = "test-key"
    """The key a handshake must carry (``Authorization: Token <key>`` or subprotocols ``token, <key>``)."""
    reject_status: int | None = None
    """If set, refuse every handshake with this HTTP status (e.g. 401, 429, 503)."""
    drop_after_audio_s: float | None = None
    """Per connection: once this many seconds of audio arrived, close ``1011 NET-0000``."""
    response_delay_s: float = 0.0
    """Delay every server message by this much; receiving audio is not held up."""
    result_every_s: float = 1.0
    """One final ``Results`` per channel per this many seconds of its audio (<= 0: only on flush)."""
    transcript: str | None = None
    """Words for every result; ``None`` describes the segment, e.g. ``"audio 1.00 to 2.00"``."""
    lines: tuple[tuple[str, ...], ...] | None = None
    """A script per transcribed channel, instead of ``transcript``: the final of a channel's n-th
    segment says its n-th line (cycling; ``""`` for silence), an interim the first half of it."""
    idle_timeout_s: float = 10.0
    """Neither audio nor ``KeepAlive`` for this long: close ``1011 NET-0001``."""


@dataclass
class FakeDeepgramSession:
    """What one accepted connection saw, for assertions in tests."""

    path: str
    """Request path without the query, e.g. ``"/v1/listen"``."""
    query: dict[str, str]
    """Query parameters (the last value wins)."""
    channels: int
    audio_by_channel: list[bytearray]
    """Audio received, de-interleaved: with 8-bit encodings byte ``i`` is channel ``i % channels``.
    Empty bytearrays if the fake was made with ``keep_audio=False``."""
    samples_by_channel: list[int] = field(default_factory=list)
    """Samples received per channel (kept with or without ``keep_audio``)."""
    message_sizes: list[int] = field(default_factory=list)
    """Length of every binary message in arrival order (0 for an empty one)."""
    control: list[str] = field(default_factory=list)
    """``type`` of every text message in order; ``"<invalid>"`` for text that is not a JSON object with one."""
    results_sent: int = 0
    """``Results`` messages actually sent (finals and interims)."""
    close_code: int | None = None
    """Close code the fake used, or the one the client closed with (1006: connection lost)."""
    closed: trio.Event = field(default_factory=trio.Event)
    """Set when the connection is over."""
    request_id: str = ""
    """The ``dg-request-id`` of this connection, also in every message's metadata."""
    close_reason: str | None = None
    """Close reason that went with ``close_code`` (e.g. ``"NET-0001"``)."""


@dataclass(frozen=True)
class Hooks:
    """Instrumentation callbacks of a fake Deepgram (see :class:`~callscribe.testing.fake_deepgram.FakeDeepgram`)."""

    on_audio: Callable[[FakeDeepgramSession, bytes], None] | None = None
    on_send: Callable[[FakeDeepgramSession, str], None] | None = None


class Deinterleaver:
    """Splits an interleaved audio byte stream into one byte stream per channel.

    Samples are ``bytes_per_sample`` wide and rotate through the channels; a sample split across
    two messages is carried over, so the per-channel output is exact however the stream is chunked.
    With ``keep=False`` the samples are only counted: ``outputs`` (one per channel) stay as they are.
    """

    def __init__(self, outputs: list[bytearray], bytes_per_sample: int, *, keep: bool = True) -> None:
        self._outputs = outputs
        self._channels = len(outputs)
        self._bps = bytes_per_sample
        self._keep = keep
        self._carry = b""
        self._next_channel = 0
        self.samples = 0
        """Complete samples so far, all channels together."""
        self.samples_by_channel = [0] * self._channels
        """Complete samples so far per channel."""

    def feed(self, data: bytes) -> None:
        if self._carry:
            data = self._carry + data
        usable = len(data) - len(data) % self._bps
        self._carry = data[usable:]
        count = usable // self._bps
        if count == 0:
            return
        channels, bps = self._channels, self._bps
        frame = channels * bps
        for channel in range(channels):
            first = (channel - self._next_channel) % channels
            if first >= count:
                continue
            self.samples_by_channel[channel] += (count - first + channels - 1) // channels
            if not self._keep:
                continue
            if bps == 1:
                self._outputs[channel] += data[first:usable:channels]
            else:
                mine = bytearray(len(range(first, count, channels)) * bps)
                for k in range(bps):
                    mine[k::bps] = data[first * bps + k : usable : frame]
                self._outputs[channel] += mine
        self._next_channel = (self._next_channel + count) % channels
        self.samples += count


@dataclass
class _Outgoing:
    """One entry of a connection's send queue: a message, or the close that ends it."""

    due: float
    text: str | None = None
    is_results: bool = False
    close: _Close | None = None


class Connection:
    """One accepted connection: reads audio and control messages, and sends results."""

    def __init__(
        self,
        ws: WebSocketConnection,
        session: FakeDeepgramSession,
        behaviour: FakeDeepgramBehaviour,
        audio: AudioFormat,
        hooks: Hooks | None = None,
        *,
        keep_audio: bool = True,
    ) -> None:
        """``keep_audio=False``: count the session's samples without storing its audio."""
        self._ws = ws
        self._hooks = hooks if hooks is not None else Hooks()
        self._session = session
        self._behaviour = behaviour
        self._audio = audio
        self._deinterleaver = Deinterleaver(session.audio_by_channel, audio.bytes_per_sample, keep=keep_audio)
        session.samples_by_channel = self._deinterleaver.samples_by_channel  # the same list, kept up to date
        self._sha256 = hashlib.sha256()
        self._created = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self._schedule = ResultSchedule(
            audio.result_channels,
            segment_samples(behaviour.result_every_s, audio.sample_rate),
            interim_results=audio.interim_results,
        )
        utterance_end_s = audio.utterance_end_ms / 1000 if audio.utterance_end_ms else None
        self._voice = VoiceEvents(audio.result_channels, vad_events=audio.vad_events, utterance_end_s=utterance_end_s)
        self._idle_deadline = trio.current_time() + behaviour.idle_timeout_s
        self._outgoing: trio.MemorySendChannel[_Outgoing] | None = None
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        """Serve the connection until it is closed by either side."""
        send, receive = trio.open_memory_channel[_Outgoing](_OUTGOING_BUFFER)
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._sender, receive)
            async with send:
                self._outgoing = send
                close = await self._receive_loop()
                if close is None:
                    # The client is gone: nothing queued can be delivered any more.
                    nursery.cancel_scope.cancel()
                else:
                    # Sent after everything already queued (and delayed like it).
                    await send.send(_Outgoing(due=self._due(), close=close))

    # ---- receiving -------------------------------------------------------------------------

    async def _receive_loop(self) -> _Close | None:
        """Handle client messages; returns the close to send, or ``None`` if the client closed."""
        while True:
            message: str | bytes | None = None
            with trio.move_on_at(self._idle_deadline):
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    self._record_peer_close(exc)
                    return None
            if message is None:
                logger.info("fake Deepgram %s: no audio or KeepAlive, closing NET-0001", self._session.request_id)
                return (1011, "NET-0001")
            if isinstance(message, bytes):
                close = await self._on_audio(message)
            else:
                close = await self._on_text(message)
            if close is not None:
                return close

    async def _on_audio(self, data: bytes) -> _Close | None:
        if self._hooks.on_audio is not None:
            self._hooks.on_audio(self._session, data)
        self._session.message_sizes.append(len(data))
        if not data:
            logger.warning("fake Deepgram %s: empty binary message ignored", self._session.request_id)
            return None
        if self._audio.encoding is None:
            logger.warning(
                "fake Deepgram %s: audio without an `encoding` query parameter cannot be decoded "
                "(Deepgram would expect a container format); closing 1008 DATA-0000. "
                "Add encoding=mulaw&sample_rate=8000 to the URL.",
                self._session.request_id,
            )
            return (1008, "DATA-0000")
        self._sha256.update(data)
        self._deinterleaver.feed(data)
        self._idle_deadline = trio.current_time() + self._behaviour.idle_timeout_s
        await self._send_results(self._schedule.on_audio(self._available()))
        drop_after = self._behaviour.drop_after_audio_s
        if drop_after is not None and self._audio_seconds() >= drop_after:
            logger.info("fake Deepgram %s: dropping the connection (NET-0000) as told", self._session.request_id)
            return (1011, "NET-0000")
        return None

    async def _on_text(self, text: str) -> _Close | None:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        kind = payload.get("type") if isinstance(payload, dict) else None
        self._session.control.append(kind if isinstance(kind, str) else "<invalid>")
        if kind == "KeepAlive":
            self._idle_deadline = trio.current_time() + self._behaviour.idle_timeout_s
        elif kind == "Finalize":
            await self._send_results(self._schedule.flush(self._available(), closing=False))
        elif kind == "CloseStream":
            await self._send_results(self._schedule.flush(self._available(), closing=True))
            metadata = metadata_message(
                request_id=self._session.request_id,
                sha256=self._sha256.hexdigest(),
                created=self._created,
                duration=self._audio_seconds(),
                channels=self._audio.result_channels,
            )
            await self._send(compact_json(metadata))
            return (1000, None)
        else:
            logger.warning("fake Deepgram %s: ignoring text message %.100r", self._session.request_id, text)
        return None

    def _record_peer_close(self, exc: ConnectionClosed) -> None:
        reason = exc.reason
        self._session.close_code = reason.code if reason is not None else 1006
        self._session.close_reason = reason.reason if reason is not None else None

    # ---- results ---------------------------------------------------------------------------

    def _available(self) -> list[int]:
        """Samples received per transcribed channel (per channel when mixed)."""
        audio = self._audio
        if audio.multichannel:
            return list(self._deinterleaver.samples_by_channel)
        return [self._deinterleaver.samples // audio.channels]

    def _audio_seconds(self) -> float:
        return self._deinterleaver.samples / self._audio.channels / self._audio.sample_rate

    async def _send_results(self, due: list[DueResult]) -> None:
        rate = self._audio.sample_rate
        lines = self._behaviour.lines
        segment = segment_samples(self._behaviour.result_every_s, rate)
        for result in due:
            transcript = self._behaviour.transcript if lines is None else scripted_transcript(lines, result, segment)
            start, end = seconds(result.start, rate), seconds(result.end, rate)
            message = results_message(
                request_id=self._session.request_id,
                channel=result.channel,
                channels=self._audio.result_channels,
                start=start,
                end=end,
                is_final=result.is_final,
                from_finalize=result.from_finalize,
                transcript=transcript,
                endpointing=self._audio.endpointing,
            )
            spoken = bool(message["channel"]["alternatives"][0]["words"])
            for event in self._voice.before(result.channel, start, spoken=spoken):
                await self._send(compact_json(event))
            await self._send(compact_json(message), is_results=True)
            if result.is_final:
                for event in self._voice.after_final(result.channel, end, spoken=spoken):
                    await self._send(compact_json(event))

    # ---- sending ---------------------------------------------------------------------------

    def _due(self) -> float:
        return trio.current_time() + max(0.0, self._behaviour.response_delay_s)

    async def _send(self, text: str, *, is_results: bool = False) -> None:
        assert self._outgoing is not None
        await self._outgoing.send(_Outgoing(due=self._due(), text=text, is_results=is_results))

    async def _sender(self, receive: trio.MemoryReceiveChannel[_Outgoing]) -> None:
        """Send queued messages, each once its delay is over, then the close that ends the queue."""
        async with receive:
            async for item in receive:
                await trio.sleep_until(item.due)
                if item.close is not None:
                    code, reason = item.close
                    self._session.close_code, self._session.close_reason = code, reason
                    with trio.move_on_after(CLOSE_TIMEOUT):
                        await self._ws.aclose(code, reason)
                    return
                assert item.text is not None
                if self._hooks.on_send is not None:
                    self._hooks.on_send(self._session, item.text)
                try:
                    await self._ws.send_message(item.text)
                except ConnectionClosed as exc:
                    self._record_peer_close(exc)
                    self._scope.cancel()
                    return
                if item.is_results:
                    self._session.results_sent += 1
