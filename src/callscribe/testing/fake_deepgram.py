"""A fake Deepgram live speech-to-text server (``/v1/listen``), for tests and for trying callscribe.

It speaks the wire protocol of ``wss://api.deepgram.com/v1/listen`` closely enough that a client
which works against it should work against Deepgram, and it can misbehave on request the way the
real service does. It does no speech recognition: every result describes the audio it covers
("audio 1.00 to 2.00") or carries a fixed transcript.

What it reproduces from the real protocol (Deepgram's live streaming documentation):

* **Handshake.** The key comes as ``Authorization: Token <key>`` or as the subprotocols
  ``Sec-WebSocket-Protocol: token, <key>`` (then ``token`` is echoed back). A refused upgrade is
  a plain HTTP error with ``dg-error`` and ``dg-request-id`` headers and a JSON body
  ``{"err_code", "err_msg", "request_id"}`` (401 ``INVALID_AUTH`` / ``Invalid credentials.``).
  ``encoding`` without ``sample_rate`` is a 400. Accepted upgrades carry ``dg-request-id`` too.
* **Audio.** Binary frames of raw audio (``mulaw``, ``alaw`` or ``linear16``), interleaved
  sample by sample when ``channels`` > 1. With ``multichannel=true`` each channel is transcribed
  on its own (``channel_index`` ``[ch, channels]``); otherwise the channels are "mixed" and
  results come for ``[0, 1]``. Without ``encoding`` Deepgram expects a container format it can
  sniff; raw audio then fails to decode, so the fake closes ``1008 DATA-0000`` on the first audio.
  An empty binary frame is a client error: it is recorded and ignored.
* **Results.** One final ``Results`` per channel per ``result_every_s`` of that channel's audio;
  each final covers only the audio since the previous final, with ``start``/``duration`` in
  seconds of audio since the connection opened and words spread evenly over the segment. With
  ``interim_results=true`` a non-final result is sent about half-way through each segment.
* **Control messages** (text frames): ``KeepAlive`` (keeps the connection alive, no reply),
  ``Finalize`` (flush: finals for pending audio with ``from_finalize: true``), ``CloseStream``
  (flush, ``Metadata`` with the SHA-256 and duration of the audio, then close 1000). Unknown or
  malformed text is ignored.
* **Timeouts and close codes.** Neither audio nor ``KeepAlive`` for ``idle_timeout_s`` (10 s
  like Deepgram) closes ``1011 NET-0001``.

Misbehaviours, set on :class:`FakeDeepgramBehaviour`: refuse every handshake with a given status
(``reject_status``), drop the connection with ``1011 NET-0000`` after some audio
(``drop_after_audio_s``), and answer slowly (``response_delay_s``; receiving audio goes on).

Not reproduced: speech recognition, ``SpeechStarted``/``UtteranceEnd`` events, endpointing,
containerised or compressed encodings (rejected with 400), the 1.25x real-time rate limit.

Every accepted connection is recorded as a :class:`FakeDeepgramSession` (audio per channel,
message sizes, control messages, close code) for tests to inspect. A failure while handling one
connection is logged and ends only that connection (``1011 NET-0000``); the server carries on.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import ipaddress
import json
import logging
import math
import os
import ssl
import string
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from callscribe import argtypes

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LISTEN_PATH",
    "FakeDeepgram",
    "FakeDeepgramBehaviour",
    "FakeDeepgramSession",
    "add_cli_arguments",
    "run_from_cli",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
LISTEN_PATH: Final = "/v1/listen"

MODEL_UUID: Final = "fa6ede00-0000-4000-8000-00000000fa6e"
MODEL_INFO: Final[dict[str, str]] = {"name": "fake", "version": "0", "arch": "fake"}
CONFIDENCE: Final = 0.99

#: Bytes per sample of the raw encodings the fake can "decode".
_BYTES_PER_SAMPLE: Final[dict[str, int]] = {"mulaw": 1, "alaw": 1, "linear16": 2}
#: Queued, not yet sent server messages per connection (bounded: backpressure beyond this).
_OUTGOING_BUFFER: Final = 256
#: Seconds a client gets to finish its opening handshake / to answer our close frame.
_HANDSHAKE_TIMEOUT: Final = 10.0
_CLOSE_TIMEOUT: Final = 5.0
#: Times in messages are rounded to this many decimals (avoids 0.30000000000000004).
_TIME_DECIMALS: Final = 6

#: (err_code, dg-error message) for the statuses Deepgram documents on the upgrade.
_REJECTIONS: Final[dict[int, tuple[str, str]]] = {
    400: ("Bad Request", "Bad Request."),
    401: ("INVALID_AUTH", "Invalid credentials."),
    402: (
        "ASR_PAYMENT_REQUIRED",
        "Project does not have enough credits for an ASR request and does not have an overage agreement.",
    ),
    403: ("INSUFFICIENT_PERMISSIONS", "User does not have sufficient permissions."),
    404: ("Not Found", "Not Found."),
    429: ("TOO_MANY_REQUESTS", "Too many requests. Please try again later."),
    500: ("INTERNAL_SERVER_ERROR", "Internal server error."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable. Please try again later."),
}


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
    """Audio received, de-interleaved: with 8-bit encodings byte ``i`` is channel ``i % channels``."""
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


class _Rejection(Exception):
    """A handshake to refuse with an HTTP error."""

    def __init__(self, status: int, message: str | None = None) -> None:
        err_code, default_message = _REJECTIONS.get(status, (_status_phrase(status), _status_phrase(status) + "."))
        super().__init__(message or default_message)
        self.status = status
        self.err_code = err_code
        self.message = message or default_message


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


@dataclass(frozen=True)
class _AudioFormat:
    """The parts of the query that shape how audio is read and results are made."""

    encoding: str | None
    sample_rate: int
    channels: int
    multichannel: bool
    interim_results: bool

    @property
    def bytes_per_sample(self) -> int:
        return _BYTES_PER_SAMPLE.get(self.encoding or "mulaw", 1)

    @property
    def result_channels(self) -> int:
        """Channels transcribed separately: all with ``multichannel=true``, else one mix."""
        return self.channels if self.multichannel else 1


def _flag(query: dict[str, str], name: str) -> bool:
    value = query.get(name, "false").strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise _Rejection(400, f"Invalid value for {name}: {query[name]!r}; expected true or false.")


def _positive_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise _Rejection(400, f"Invalid value for {name}: {raw!r}; expected a positive integer.")
    return value


def _audio_format(query: dict[str, str]) -> _AudioFormat:
    """Validate the audio query parameters like Deepgram does, or raise :class:`_Rejection` (400)."""
    encoding = query.get("encoding")
    if encoding is not None:
        encoding = encoding.strip().lower()
        if "sample_rate" not in query:
            raise _Rejection(400, "sample_rate must be specified when encoding is specified.")
        if encoding not in _BYTES_PER_SAMPLE:
            raise _Rejection(
                400,
                f"Unsupported encoding {encoding!r}: the fake Deepgram accepts only "
                + ", ".join(sorted(_BYTES_PER_SAMPLE))
                + ".",
            )
    return _AudioFormat(
        encoding=encoding,
        sample_rate=_positive_int(query, "sample_rate", 8000),
        channels=_positive_int(query, "channels", 1),
        multichannel=_flag(query, "multichannel"),
        interim_results=_flag(query, "interim_results"),
    )


def _offered_key(request: WebSocketRequest) -> tuple[str | None, str | None]:
    """The key the client offered and the subprotocol to accept with (``"token"`` if that way)."""
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "token":
                return credential.strip(), None
    protocols = request.proposed_subprotocols
    if len(protocols) >= 2 and protocols[0].lower() == "token":
        return protocols[1], protocols[0]
    return None, None


class _Deinterleaver:
    """Splits an interleaved audio byte stream into one byte stream per channel.

    Samples are ``bytes_per_sample`` wide and rotate through the channels; a sample split across
    two messages is carried over, so the per-channel output is exact however the stream is chunked.
    """

    def __init__(self, outputs: list[bytearray], bytes_per_sample: int) -> None:
        self._outputs = outputs
        self._channels = len(outputs)
        self._bps = bytes_per_sample
        self._carry = b""
        self._next_channel = 0
        self.samples = 0
        """Complete samples so far, all channels together."""

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
            if bps == 1:
                self._outputs[channel] += data[first:usable:channels]
            else:
                mine = bytearray(len(range(first, count, channels)) * bps)
                for k in range(bps):
                    mine[k::bps] = data[first * bps + k : usable : frame]
                self._outputs[channel] += mine
        self._next_channel = (self._next_channel + count) % channels
        self.samples += count


def _compact_json(message: dict[str, Any]) -> str:
    """JSON without spaces, as Deepgram sends it."""
    return json.dumps(message, separators=(",", ":"))


def _seconds(samples: int, sample_rate: int) -> float:
    return round(samples / sample_rate, _TIME_DECIMALS)


def _words(transcript: str, start: float, end: float) -> list[dict[str, Any]]:
    """Deepgram-style word list for ``transcript``, spread evenly over ``[start, end]``."""
    tokens = transcript.split()
    if not tokens:
        return []
    step = (end - start) / len(tokens)
    words = []
    for i, token in enumerate(tokens):
        words.append(
            {
                "word": token.strip(string.punctuation).lower() or token.lower(),
                "start": round(start + i * step, _TIME_DECIMALS),
                "end": round(start + (i + 1) * step, _TIME_DECIMALS),
                "confidence": CONFIDENCE,
                "punctuated_word": token,
            }
        )
    return words


def results_message(
    *,
    request_id: str,
    channel: int,
    channels: int,
    start: float,
    end: float,
    is_final: bool,
    from_finalize: bool = False,
    transcript: str | None = None,
) -> dict[str, Any]:
    """A ``Results`` message as Deepgram sends it, covering ``[start, end]`` seconds of ``channel``."""
    text = transcript if transcript is not None else f"audio {start:.2f} to {end:.2f}"
    return {
        "type": "Results",
        "channel_index": [channel, channels],
        "duration": round(end - start, _TIME_DECIMALS),
        "start": start,
        "is_final": is_final,
        "speech_final": is_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {
                    "transcript": text,
                    "confidence": CONFIDENCE if text else 0.0,
                    "words": _words(text, start, end),
                }
            ]
        },
        "metadata": {"request_id": request_id, "model_info": dict(MODEL_INFO), "model_uuid": MODEL_UUID},
    }


@dataclass(frozen=True)
class _Hooks:
    """Instrumentation callbacks of a :class:`FakeDeepgram` (see its constructor)."""

    on_audio: Callable[[FakeDeepgramSession, bytes], None] | None = None
    on_send: Callable[[FakeDeepgramSession, str], None] | None = None


@dataclass
class _Outgoing:
    """One entry of a connection's send queue: a message, or the close that ends it."""

    due: float
    text: str | None = None
    is_results: bool = False
    close: tuple[int, str | None] | None = None


class _Connection:
    """One accepted connection: reads audio and control messages, and sends results."""

    def __init__(
        self,
        ws: WebSocketConnection,
        session: FakeDeepgramSession,
        behaviour: FakeDeepgramBehaviour,
        audio: _AudioFormat,
        hooks: _Hooks | None = None,
    ) -> None:
        self._ws = ws
        self._hooks = hooks if hooks is not None else _Hooks()
        self._session = session
        self._behaviour = behaviour
        self._audio = audio
        self._deinterleaver = _Deinterleaver(session.audio_by_channel, audio.bytes_per_sample)
        self._sha256 = hashlib.sha256()
        self._created = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        # Per transcribed channel: samples already covered by a final, and whether this
        # segment's interim went out.
        self._reported = [0] * audio.result_channels
        self._interim_sent = [False] * audio.result_channels
        every = behaviour.result_every_s
        self._segment = max(0, round(every * audio.sample_rate)) if every > 0 and math.isfinite(every) else 0
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

    async def _receive_loop(self) -> tuple[int, str | None] | None:
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

    async def _on_audio(self, data: bytes) -> tuple[int, str | None] | None:
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
        await self._emit_due_results()
        drop_after = self._behaviour.drop_after_audio_s
        if drop_after is not None and self._audio_seconds() >= drop_after:
            logger.info("fake Deepgram %s: dropping the connection (NET-0000) as told", self._session.request_id)
            return (1011, "NET-0000")
        return None

    async def _on_text(self, text: str) -> tuple[int, str | None] | None:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        kind = payload.get("type") if isinstance(payload, dict) else None
        self._session.control.append(kind if isinstance(kind, str) else "<invalid>")
        if kind == "KeepAlive":
            self._idle_deadline = trio.current_time() + self._behaviour.idle_timeout_s
        elif kind == "Finalize":
            await self._flush(from_finalize=True)
        elif kind == "CloseStream":
            await self._flush(from_finalize=False)
            await self._send(_compact_json(self._metadata()))
            return (1000, None)
        else:
            logger.warning("fake Deepgram %s: ignoring text message %.100r", self._session.request_id, text)
        return None

    def _record_peer_close(self, exc: ConnectionClosed) -> None:
        reason = exc.reason
        self._session.close_code = reason.code if reason is not None else 1006
        self._session.close_reason = reason.reason if reason is not None else None

    # ---- results ---------------------------------------------------------------------------

    def _available(self, channel: int) -> int:
        """Samples received on transcribed ``channel`` (per channel when mixed)."""
        if self._audio.multichannel:
            return len(self._session.audio_by_channel[channel]) // self._audio.bytes_per_sample
        return self._deinterleaver.samples // self._audio.channels

    def _audio_seconds(self) -> float:
        return self._deinterleaver.samples / self._audio.channels / self._audio.sample_rate

    async def _emit_due_results(self) -> None:
        segment = self._segment
        if segment == 0:
            return
        for channel in range(self._audio.result_channels):
            available = self._available(channel)
            while available - self._reported[channel] >= segment:
                start = self._reported[channel]
                await self._send_results(channel, start, start + segment, is_final=True)
                self._reported[channel] = start + segment
                self._interim_sent[channel] = False
            pending = available - self._reported[channel]
            if (
                self._audio.interim_results
                and not self._interim_sent[channel]
                and pending > 0
                and 2 * pending >= segment
            ):
                await self._send_results(channel, self._reported[channel], available, is_final=False)
                self._interim_sent[channel] = True

    async def _flush(self, *, from_finalize: bool) -> None:
        """Finals for every channel's audio not yet covered by one."""
        for channel in range(self._audio.result_channels):
            available = self._available(channel)
            if available > self._reported[channel]:
                await self._send_results(
                    channel, self._reported[channel], available, is_final=True, from_finalize=from_finalize
                )
                self._reported[channel] = available
                self._interim_sent[channel] = False

    async def _send_results(
        self, channel: int, start: int, end: int, *, is_final: bool, from_finalize: bool = False
    ) -> None:
        rate = self._audio.sample_rate
        message = results_message(
            request_id=self._session.request_id,
            channel=channel,
            channels=self._audio.result_channels,
            start=_seconds(start, rate),
            end=_seconds(end, rate),
            is_final=is_final,
            from_finalize=from_finalize,
            transcript=self._behaviour.transcript,
        )
        await self._send(_compact_json(message), is_results=True)

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self._session.request_id,
            "sha256": self._sha256.hexdigest(),
            "created": self._created,
            "duration": round(self._audio_seconds(), _TIME_DECIMALS),
            "channels": self._audio.result_channels,
            "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: dict(MODEL_INFO)},
        }

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
                    with trio.move_on_after(_CLOSE_TIMEOUT):
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


class FakeDeepgram:
    """A fake Deepgram live STT server; see the module docstring for what it reproduces.

    ``behaviour`` may be changed between connections; each connection uses the behaviour as it
    was when its handshake arrived.
    """

    def __init__(
        self,
        behaviour: FakeDeepgramBehaviour | None = None,
        *,
        on_audio: Callable[[FakeDeepgramSession, bytes], None] | None = None,
        on_send: Callable[[FakeDeepgramSession, str], None] | None = None,
    ) -> None:
        """``on_audio(session, data)`` and ``on_send(session, text)`` are optional instrumentation
        hooks (used by ``callscribe bench``): the first is called as each binary (audio) message
        arrives, before it is handled; the second just before each text message is written to the
        socket. They run on the fake's own tasks, so they must be quick and must not raise."""
        self.behaviour = behaviour if behaviour is not None else FakeDeepgramBehaviour()
        self._hooks = _Hooks(on_audio, on_send)
        self.sessions: list[FakeDeepgramSession] = []
        self.rejected = 0
        self.port = 0
        self._url_host = DEFAULT_HOST
        self._scheme = "ws"
        self._sessions_changed = trio.Event()

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/v1/listen`` (``wss://`` with TLS); valid once serving."""
        return f"{self._scheme}://{self._url_host}:{self.port}{LISTEN_PATH}"

    async def serve(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: a free port) until cancelled; ``task_status.started(port)``.

        Binding errors (e.g. the port is taken) are raised as a plain :class:`OSError`.
        """
        listeners: list[Any]
        if ssl_context is None:
            listeners = list(await trio.open_tcp_listeners(port, host=host))
        else:
            listeners = list(
                await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
            )
        server = WebSocketServer(
            self._handle,
            listeners,
            connect_timeout=_HANDSHAKE_TIMEOUT,
            disconnect_timeout=_CLOSE_TIMEOUT,
        )
        endpoint = server.listeners[0]
        self.port = endpoint.port if not isinstance(endpoint, str) else port
        self._scheme = "wss" if ssl_context is not None else "ws"
        self._url_host = _url_host(host)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            logger.debug("fake Deepgram listening on %s", self.url)
            task_status.started(self.port)

    async def wait_for_sessions(self, count: int) -> list[FakeDeepgramSession]:
        """Wait until at least ``count`` connections were accepted; returns :attr:`sessions`."""
        while len(self.sessions) < count:
            await self._sessions_changed.wait()
        return self.sessions

    def _add_session(self, session: FakeDeepgramSession) -> None:
        self.sessions.append(session)
        self._sessions_changed.set()
        self._sessions_changed = trio.Event()

    async def _handle(self, request: WebSocketRequest) -> None:
        """trio-websocket handler: never lets an exception out (that would stop the server)."""
        try:
            await self._handle_request(request)
        except ConnectionClosed:
            logger.info("fake Deepgram: client went away during the handshake")
        except Exception:
            logger.exception("fake Deepgram: handshake failed")

    async def _handle_request(self, request: WebSocketRequest) -> None:
        behaviour = dataclasses.replace(self.behaviour)
        request_id = str(uuid.uuid4())
        target = urlsplit(request.path)
        query = dict(parse_qsl(target.query, keep_blank_values=True))
        try:
            if behaviour.reject_status is not None:
                raise _Rejection(behaviour.reject_status)
            key, subprotocol = _offered_key(request)
            if key != behaviour.api_key:
                raise _Rejection(401)
            audio = _audio_format(query)
        except _Rejection as rejection:
            self.rejected += 1
            logger.info("fake Deepgram: refusing handshake: %d %s", rejection.status, rejection.message)
            body = json.dumps(
                {"err_code": rejection.err_code, "err_msg": rejection.message, "request_id": request_id}
            ).encode()
            await request.reject(
                rejection.status,
                extra_headers=[
                    (b"dg-error", rejection.message.encode("latin-1", "replace")),
                    (b"dg-request-id", request_id.encode()),
                    (b"content-type", b"application/json"),
                ],
                body=body,
            )
            return

        ws = await request.accept(subprotocol=subprotocol, extra_headers=[(b"dg-request-id", request_id.encode())])
        session = FakeDeepgramSession(
            path=target.path,
            query=query,
            channels=audio.channels,
            audio_by_channel=[bytearray() for _ in range(audio.channels)],
            request_id=request_id,
        )
        self._add_session(session)
        logger.info("fake Deepgram %s: connection accepted for %s", request_id, request.path)
        try:
            await _Connection(ws, session, behaviour, audio, self._hooks).run()
        except Exception:
            logger.exception("fake Deepgram %s: connection failed; closing it with 1011 NET-0000", request_id)
            if session.close_code is None:
                session.close_code, session.close_reason = 1011, "NET-0000"
            with trio.move_on_after(_CLOSE_TIMEOUT):
                await ws.aclose(1011, "NET-0000")
        finally:
            session.closed.set()
            logger.info("fake Deepgram %s: connection over (close code %s)", request_id, session.close_code)


def _url_host(host: str) -> str:
    """The host to put in :attr:`FakeDeepgram.url` for a bind address."""
    if host in ("", "0.0.0.0"):
        return DEFAULT_HOST
    if host == "::":
        return "[::1]"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]" if address.version == 6 else host


# ---- command line ------------------------------------------------------------------------------


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return value


def _error_status(text: str) -> int:
    value = int(text)
    if not 400 <= value <= 599:
        raise argparse.ArgumentTypeError(f"must be an HTTP error status (400-599), not {text!r}")
    return value


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``callscribe fake-deepgram``."""
    defaults = FakeDeepgramBehaviour()
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port, 0 for any free one (default %(default)s)"
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("DEEPGRAM_API_KEY") or defaults.api_key,
        help="key clients must send as 'Authorization: Token <key>' "
        f"(default: $DEEPGRAM_API_KEY, else {defaults.api_key!r})",
    )
    parser.add_argument(
        "--reject-status",
        type=_error_status,
        default=None,
        metavar="STATUS",
        help="refuse every handshake with this HTTP status, e.g. 401 or 429",
    )
    parser.add_argument(
        "--drop-after",
        type=argtypes.non_negative_float,
        default=None,
        metavar="SECONDS",
        help="close each connection with 1011 NET-0000 after this much audio",
    )
    parser.add_argument(
        "--delay",
        type=argtypes.non_negative_float,
        default=defaults.response_delay_s,
        metavar="SECONDS",
        help="delay every message by this much (default %(default)s)",
    )
    parser.add_argument(
        "--result-every",
        type=argtypes.positive_float,
        default=defaults.result_every_s,
        metavar="SECONDS",
        help="one final result per channel per this much audio (default %(default)s)",
    )
    parser.add_argument(
        "--transcript",
        default=None,
        help="words to put in every result (default: describe the audio, e.g. 'audio 1.00 to 2.00')",
    )
    parser.add_argument(
        "--idle-timeout",
        type=argtypes.positive_float,
        default=defaults.idle_timeout_s,
        metavar="SECONDS",
        help="close 1011 NET-0001 after this long without audio or KeepAlive (default %(default)s)",
    )


def behaviour_from_args(args: argparse.Namespace) -> FakeDeepgramBehaviour:
    """The behaviour the parsed options of :func:`add_cli_arguments` ask for."""
    return FakeDeepgramBehaviour(
        api_key=args.api_key,
        reject_status=args.reject_status,
        drop_after_audio_s=args.drop_after,
        response_delay_s=args.delay,
        result_every_s=args.result_every,
        transcript=args.transcript,
        idle_timeout_s=args.idle_timeout,
    )


def run_from_cli(args: argparse.Namespace, *, announce: Callable[[str], None] | None = None) -> int:
    """Run the fake until Ctrl-C; prints ``fake Deepgram listening on ws://...`` once listening.

    Returns 0 after Ctrl-C, 1 if the address cannot be bound.
    """
    fake = FakeDeepgram(behaviour_from_args(args))
    say = announce if announce is not None else (lambda line: print(line, flush=True))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve, args.host, args.port)
            say(f"fake Deepgram listening on {fake.url}")

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            return 0
        bind_errors, rest = rest.split(OSError)
        if rest is None and bind_errors is not None:
            first: BaseException = bind_errors
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            print(f"fake Deepgram: cannot listen on {args.host}:{args.port}: {first}", file=sys.stderr)
            return 1
        raise
    except OSError as exc:
        print(f"fake Deepgram: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
