"""Twilio Media Streams call simulator.

Replays audio to a WebSocket server (callscribe's ``/twilio``) the way a Twilio
``<Stream>`` sends it: ``connected``, ``start``, one ``media`` message per chunk of 8 kHz
mu-law audio (base64, every value a JSON string), then ``stop``.

The module has two layers:

* a pure, sans-IO planner (:class:`CallSpec`, :func:`plan_frames` and the ``*_message``
  builders, :func:`call_messages`) that decides what is sent and when, including
  simulated packet loss, off-size chunks, a late outbound track and send-time jitter.
  All randomness comes from :class:`random.Random` seeded with ``CallSpec.seed``, so a
  plan is fully deterministic;
* a trio shell (:func:`run_call`) that connects with trio-websocket, sends the plan in
  real time (or faster), collects whatever the server sends back and records how the
  server closed the socket; plus the ``callscribe simulate-call`` command-line glue
  (:func:`add_cli_arguments`, :func:`run_from_cli`).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import ssl
import sys
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, NoReturn

import trio
import trio_websocket

from callscribe import argtypes
from callscribe.core import audio as mulaw
from callscribe.server.websocket_client import ConnectFailed, connect_websocket, describe_failure

__all__ = [
    "DEFAULT_URL",
    "CallConnectionError",
    "CallSpec",
    "PlannedFrame",
    "SimulationReport",
    "add_cli_arguments",
    "call_messages",
    "connected_message",
    "media_message",
    "plan_frames",
    "run_call",
    "run_from_cli",
    "start_message",
    "stop_message",
]

#: Where ``callscribe simulate-call`` connects by default.
DEFAULT_URL = "ws://127.0.0.1:5000/twilio"

_BYTES_PER_MS = mulaw.SAMPLE_RATE // 1000  # 8 mu-law bytes per millisecond
INBOUND = "inbound"
OUTBOUND = "outbound"


def _new_sid(prefix: str) -> str:
    """A random Twilio-style SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + uuid.uuid4().hex


# ----------------------------------------------------------------------- sans-IO part


@dataclass
class CallSpec:
    """What one simulated call sends.

    ``inbound``/``outbound`` are raw 8 kHz mu-law audio. With ``outbound=None`` the stream
    is inbound-only (``tracks: ["inbound"]``, like every ``<Connect><Stream>``).
    """

    inbound: bytes
    """mu-law 8 kHz audio of the caller."""
    outbound: bytes | None = None
    """Audio of the other party; ``None`` for an inbound-only stream."""
    outbound_start_ms: int = 0
    """The outbound track starts this late (like a ``<Dial>`` connecting); its
    timestamps include the offset."""
    call_sid: str = field(default_factory=lambda: _new_sid("CA"))
    account_sid: str = field(default_factory=lambda: _new_sid("AC"))
    stream_sid: str = field(default_factory=lambda: _new_sid("MZ"))
    custom_parameters: dict[str, str] = field(default_factory=dict)
    """Sent as ``start.customParameters`` (what TwiML ``<Parameter>`` elements give)."""
    frame_ms: int = 20
    """Nominal chunk length; 20 ms is 160 bytes."""
    loss: float = 0.0
    """Probability that a chunk is not sent. Later timestamps stay true, so the
    receiver sees a gap."""
    off_size: float = 0.0
    """Probability that a chunk is off-size: split in two (at a whole millisecond) or
    merged with the next one. Timestamps stay exact."""
    jitter_ms: float = 0.0
    """Send-time jitter: uniform 0..jitter_ms added to each chunk's send time. Never
    changes timestamps or the order within a track."""
    seed: int = 0
    """Seed for all randomness (loss, off-size, jitter)."""
    dtmf: list[tuple[float, str]] = field(default_factory=list)
    """Keypad presses as ``(seconds since stream start, digit)``, sent as ``dtmf`` events."""

    def __post_init__(self) -> None:
        self.inbound = bytes(self.inbound)
        if self.outbound is not None:
            self.outbound = bytes(self.outbound)
        if isinstance(self.outbound_start_ms, bool) or not isinstance(self.outbound_start_ms, int):
            raise TypeError("outbound_start_ms must be an int")
        if self.outbound_start_ms < 0:
            raise ValueError(f"outbound_start_ms must be >= 0, got {self.outbound_start_ms}")
        if isinstance(self.frame_ms, bool) or not isinstance(self.frame_ms, int) or self.frame_ms < 1:
            raise ValueError(f"frame_ms must be a positive int, got {self.frame_ms!r}")
        for name in ("loss", "off_size"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, got {value}")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0):
            raise ValueError(f"jitter_ms must be a finite number >= 0, got {self.jitter_ms}")
        for key, value in self.custom_parameters.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError("custom_parameters must map str to str")

    @property
    def tracks(self) -> list[str]:
        """The ``start.tracks`` list: ``["inbound"]`` or ``["inbound", "outbound"]``."""
        return [INBOUND] if self.outbound is None else [INBOUND, OUTBOUND]

    @property
    def duration_s(self) -> float:
        """Seconds from stream start to the end of the last track's audio."""
        end = len(self.inbound) / mulaw.SAMPLE_RATE
        if self.outbound is not None:
            end = max(end, self.outbound_start_ms / 1000 + len(self.outbound) / mulaw.SAMPLE_RATE)
        return end


@dataclass(frozen=True)
class PlannedFrame:
    """One ``media`` message of the plan."""

    track: str
    """``"inbound"`` or ``"outbound"``."""
    timestamp_ms: int
    """Milliseconds since stream start: track start + byte offset within the track / 8."""
    chunk: int
    """Per-track counter of the chunks actually sent, starting at 1."""
    payload: bytes
    """mu-law audio."""
    send_at: float
    """Seconds since stream start at which a real-time sender sends it
    (``timestamp_ms / 1000`` plus jitter)."""


def _track_rng(spec: CallSpec, track: str, purpose: str) -> random.Random:
    # One independent, deterministic stream per (seed, track, purpose): changing e.g.
    # the loss rate does not reshuffle the off-size pattern or the jitter.
    return random.Random(f"{spec.seed}/{track}/{purpose}")


def _split_track(audio: bytes, frame_bytes: int, off_size: float, rng: random.Random) -> list[tuple[int, bytes]]:
    """Cut a track into ``(byte offset, payload)`` chunks on the ``frame_bytes`` grid,
    making a chunk off-size with probability ``off_size``.

    Every chunk except possibly the last starts and ends on a multiple of 8 bytes
    (1 ms), so timestamps stay exact integers.
    """
    chunks: list[tuple[int, bytes]] = []
    total = len(audio)
    offset = 0
    while offset < total:
        size = min(frame_bytes, total - offset)
        if off_size > 0.0 and rng.random() < off_size:
            next_size = min(frame_bytes, total - offset - size)
            can_split = size > _BYTES_PER_MS  # there is a whole-ms cut point inside
            prefer_split = rng.random() < 0.5
            if can_split and (prefer_split or next_size == 0):
                cut = _BYTES_PER_MS * rng.randint(1, (size - 1) // _BYTES_PER_MS)
                chunks.append((offset, audio[offset : offset + cut]))
                chunks.append((offset + cut, audio[offset + cut : offset + size]))
                offset += size
                continue
            size += next_size  # merge with the next chunk (no-op at the very end)
        chunks.append((offset, audio[offset : offset + size]))
        offset += size
    return chunks


def _plan_track(spec: CallSpec, track: str, audio: bytes, start_ms: int) -> list[PlannedFrame]:
    frame_bytes = spec.frame_ms * _BYTES_PER_MS
    chunks = _split_track(audio, frame_bytes, spec.off_size, _track_rng(spec, track, "off-size"))
    loss_rng = _track_rng(spec, track, "loss")
    jitter_rng = _track_rng(spec, track, "jitter")
    frames: list[PlannedFrame] = []
    previous_send = 0.0
    for offset, payload in chunks:
        # Draw for every chunk, lost or not, so each stream is independent of the others.
        lost = loss_rng.random() < spec.loss
        jitter_s = jitter_rng.uniform(0.0, spec.jitter_ms) / 1000 if spec.jitter_ms else 0.0
        if lost:
            continue
        timestamp_ms = start_ms + offset // _BYTES_PER_MS
        send_at = max(previous_send, timestamp_ms / 1000 + jitter_s)  # keep track order
        previous_send = send_at
        frames.append(PlannedFrame(track, timestamp_ms, len(frames) + 1, payload, send_at))
    return frames


def plan_frames(spec: CallSpec) -> list[PlannedFrame]:
    """The media frames of a call in the order they are sent.

    Sorted by ``send_at`` (stable: on a tie inbound goes first), both tracks interleaved.
    Frames dropped by ``spec.loss`` are not in the list; their bytes show up as a gap
    between the timestamps of the frames around them.
    """
    frames = _plan_track(spec, INBOUND, spec.inbound, 0)
    if spec.outbound is not None:
        frames += _plan_track(spec, OUTBOUND, spec.outbound, spec.outbound_start_ms)
    frames.sort(key=lambda frame: frame.send_at)
    return frames


def _dumps(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def connected_message() -> str:
    """The first message of every stream (it has no ``sequenceNumber`` nor ``streamSid``)."""
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(spec: CallSpec, sequence_number: int = 1) -> str:
    """The ``start`` message: stream metadata, tracks, custom parameters, media format."""
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "start": {
                "accountSid": spec.account_sid,
                "streamSid": spec.stream_sid,
                "callSid": spec.call_sid,
                "tracks": spec.tracks,
                "customParameters": dict(spec.custom_parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
            "streamSid": spec.stream_sid,
        }
    )


def media_message(spec: CallSpec, frame: PlannedFrame, sequence_number: int) -> str:
    """A ``media`` message; ``chunk``, ``timestamp`` and ``sequenceNumber`` are strings."""
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "media": {
                "track": frame.track,
                "chunk": str(frame.chunk),
                "timestamp": str(frame.timestamp_ms),
                "payload": base64.b64encode(frame.payload).decode("ascii"),
            },
            "streamSid": spec.stream_sid,
        }
    )


def stop_message(spec: CallSpec, sequence_number: int) -> str:
    """The ``stop`` message Twilio sends when the stream ends."""
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "stop": {"accountSid": spec.account_sid, "callSid": spec.call_sid},
            "streamSid": spec.stream_sid,
        }
    )


def dtmf_message(spec: CallSpec, digit: str, sequence_number: int) -> str:
    """A ``dtmf`` event (bidirectional streams): the caller pressed a key."""
    return _dumps(
        {
            "event": "dtmf",
            "streamSid": spec.stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


@dataclass(frozen=True)
class _Scripted:
    send_at: float
    event: str  # "connected" | "start" | "media" | "dtmf" | "stop"
    text: str
    frame: PlannedFrame | None = None  # set for media messages


def _call_script(spec: CallSpec, *, include_stop: bool = True) -> list[_Scripted]:
    script = [
        _Scripted(0.0, "connected", connected_message()),
        _Scripted(0.0, "start", start_message(spec, 1)),
    ]
    timed: list[tuple[float, PlannedFrame | str]] = [(frame.send_at, frame) for frame in plan_frames(spec)]
    timed += [(at, digit) for at, digit in spec.dtmf]
    timed.sort(key=lambda item: item[0])  # stable: media keeps its order
    sequence = 1
    last_send = 0.0
    for send_at, item in timed:
        sequence += 1
        if isinstance(item, PlannedFrame):
            script.append(_Scripted(send_at, "media", media_message(spec, item, sequence), item))
        else:
            script.append(_Scripted(send_at, "dtmf", dtmf_message(spec, item, sequence)))
        last_send = send_at
    if include_stop:
        # The call ends when the audio does, even if its last frames were lost.
        stop_at = max(last_send, spec.duration_s)
        script.append(_Scripted(stop_at, "stop", stop_message(spec, sequence + 1)))
    return script


class Playback:
    """Twilio's side of a bidirectional stream, without IO: it plays the `media` it is sent in
    real time, echoes each `mark` once the audio queued before it has played, and on `clear`
    drops what is queued and echoes the pending marks at once."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self.audio = bytearray()
        """Every media payload received, in order."""
        self.marks: list[str] = []
        """Marks echoed, in order."""
        self.clears = 0
        self.bad_messages: list[str] = []
        """Messages Twilio would reject (bad JSON, unknown event, wrong streamSid)."""
        self._playing_until = 0.0
        self._pending: list[tuple[float, str]] = []

    def receive(self, text: str, now: float) -> None:
        try:
            message = json.loads(text)
            event = message["event"]
            if message.get("streamSid") != self.stream_sid:
                raise ValueError("wrong streamSid")
            if event == "media":
                audio = base64.b64decode(message["media"]["payload"], validate=True)
                self.audio += audio
                self._playing_until = max(self._playing_until, now) + len(audio) / 8000
            elif event == "mark":
                self._pending.append((max(self._playing_until, now), str(message["mark"]["name"])))
            elif event == "clear":
                self.clears += 1
                self._playing_until = now
                self._pending = [(now, name) for _, name in self._pending]
            else:
                raise ValueError(f"unknown event {event!r}")
        except (ValueError, KeyError, TypeError) as error:
            self.bad_messages.append(f"{error}: {text[:80]}")

    def next_due(self) -> float | None:
        return self._pending[0][0] if self._pending else None

    def due(self, now: float) -> list[str]:
        """The marks to echo now (Twilio's `mark` messages)."""
        ready = [name for at, name in self._pending if at <= now]
        self._pending = [(at, name) for at, name in self._pending if at > now]
        self.marks += ready
        return [_dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}) for name in ready]


def call_messages(spec: CallSpec) -> list[tuple[float, str]]:
    """The whole call as ``(send_at, json text)``: connected, start, media..., stop.

    ``sequenceNumber`` counts up from 1 starting at ``start``; ``stop`` is due when the
    audio ends (or with the last frame if that is later, because of jitter).
    """
    return [(item.send_at, item.text) for item in _call_script(spec)]


# ------------------------------------------------------------------------- trio shell


class CallConnectionError(ConnectionError):
    """The simulator could not open the WebSocket (refused, timeout, TLS, HTTP rejection)."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"cannot connect to {url}: {cause}")
        self.url = url
        self.cause = cause


@dataclass
class SimulationReport:
    """What :func:`run_call` did and saw."""

    call_sid: str
    frames: list[PlannedFrame] = field(default_factory=list)
    """Media frames actually sent (fewer than planned if the server closed early)."""
    sent_at: list[float] = field(default_factory=list)
    """``trio.current_time()`` right after each frame of ``frames`` was sent."""
    bytes_by_track: dict[str, int] = field(default_factory=dict)
    """Payload bytes sent per track."""
    close_code: int | None = None
    """Close code if the *server* closed the socket (1006: TCP closed without a close
    frame); ``None`` if it did not before the simulator closed it."""
    close_reason: str | None = None
    received: list[str] = field(default_factory=list)
    """Text messages the server sent (binary messages are ignored)."""
    started_at: float = 0.0
    """``trio.current_time()`` at stream start, the origin of ``PlannedFrame.send_at``."""
    stop_sent: bool = False
    """Whether the ``stop`` message was sent."""
    playback: Playback | None = None
    """With ``bidirectional=True``: what the server played to the caller, and the marks echoed."""


def _check_url(url: str, ssl_context: ssl.SSLContext | None) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    if ssl_context is not None and parts.scheme != "wss":
        raise ValueError(f"an SSL context only applies to wss:// URLs, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}: {exc}") from None


def _describe_connect_failure(exc: BaseException) -> str:
    """One line naming the real cause of a failed connection attempt."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        body = " ".join((exc.body or b"")[:200].decode("utf-8", "replace").split())
        text = f"server rejected the WebSocket upgrade with HTTP {exc.status_code}"
        return f"{text}: {body}" if body else text
    return describe_failure(exc)


async def run_call(
    url: str,
    spec: CallSpec,
    *,
    speed: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
    close_wait: float = 5.0,
    send_stop: bool = True,
    headers: list[tuple[str, str]] | None = None,
    bidirectional: bool = False,
) -> SimulationReport:
    """Play one call to ``url`` and report what happened.

    ``speed`` 1.0 sends in real time, ``n`` sends ``n`` times faster, 0 sends as fast as
    possible (still one checkpoint per message). After the last frame it sends ``stop``
    and waits up to ``close_wait`` seconds for the server to close the socket, then
    closes it itself; with ``send_stop=False`` it closes right away without ``stop``
    (Twilio hanging up). If the server closes earlier, sending stops there. With
    ``bidirectional=True`` it also plays what the server sends back like Twilio does for
    ``<Connect><Stream>``: marks are echoed once the audio before them has played.

    Raises :class:`CallConnectionError` (a :class:`ConnectionError`) if the connection
    or the WebSocket handshake fails, :class:`ValueError` for a bad URL or speed.
    """
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"speed must be a finite number >= 0, got {speed}")
    _check_url(url, ssl_context)
    script = _call_script(spec, include_stop=send_stop)
    report = SimulationReport(call_sid=spec.call_sid, bytes_by_track={t: 0 for t in spec.tracks})
    if bidirectional:
        report.playback = Playback(spec.stream_sid)
    try:
        async with trio.open_nursery() as nursery:  # runs trio-websocket's reader task
            ws = await _connect(nursery, url, ssl_context, headers, connect_timeout)
            try:
                await _play(ws, script, speed, close_wait, report)
            finally:
                with trio.move_on_after(close_wait) as closing:
                    closing.shield = True
                    await ws.aclose()  # no-op if already closed
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _single_error(group)
        if isinstance(error, trio_websocket.HandshakeError):  # raised by the reader task
            raise CallConnectionError(url, _describe_connect_failure(error)) from error
        _reraise(error)
    return report


async def _connect(
    nursery: trio.Nursery,
    url: str,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[str, str]] | None,
    timeout: float,
) -> trio_websocket.WebSocketConnection:
    """Open the WebSocket step by step (see `callscribe.server.websocket_client`), each step bounded by `timeout`."""
    try:
        return await connect_websocket(
            nursery, url, headers=headers or (), connect_timeout=timeout, ssl_context=ssl_context
        )
    except ConnectFailed as exc:
        raise CallConnectionError(url, exc.cause) from exc
    except trio_websocket.ConnectionRejected as exc:
        raise CallConnectionError(url, _describe_connect_failure(exc)) from exc


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one non-Cancelled exception in a (nested) group, else the group itself."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                collect(sub)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` keeping its own context rather than the group it came in."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


async def _play(
    ws: trio_websocket.WebSocketConnection,
    script: list[_Scripted],
    speed: float,
    close_wait: float,
    report: SimulationReport,
) -> None:
    """Send ``script`` on an open connection while collecting what the server sends."""
    server_closed = trio.Event()
    receiver_done = trio.Event()
    send_scope = trio.CancelScope()
    we_close = False

    def note_server_close(reason: trio_websocket.CloseReason | None) -> None:
        if server_closed.is_set() or we_close:
            return
        report.close_code = reason.code if reason else None
        report.close_reason = reason.reason if reason else None
        server_closed.set()
        send_scope.cancel()  # stop sending, even in the middle of a long sleep

    playback = report.playback
    wake = trio.Event()

    async def receive() -> None:
        nonlocal wake
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str):
                    report.received.append(message)
                    if playback is not None:
                        playback.receive(message, trio.current_time())
                        wake.set()
        except trio_websocket.ConnectionClosed as exc:
            # Messages sent before a server-side close are all delivered first.
            note_server_close(exc.reason)
        finally:
            receiver_done.set()

    async def echo_marks() -> None:
        nonlocal wake
        assert playback is not None
        while True:
            due = playback.next_due()
            wake = trio.Event()
            with trio.move_on_at(due if due is not None else math.inf):
                await wake.wait()
            for echo in playback.due(trio.current_time()):
                try:
                    await ws.send_message(echo)
                except trio_websocket.ConnectionClosed:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        if playback is not None:
            nursery.start_soon(echo_marks)
        report.started_at = start = trio.current_time()
        with send_scope:
            for item in script:
                if speed > 0:
                    await trio.sleep_until(start + item.send_at / speed)
                else:
                    await trio.lowlevel.checkpoint()
                try:
                    await ws.send_message(item.text)
                except trio_websocket.ConnectionClosed as exc:
                    note_server_close(exc.reason)  # we have not closed: the server did
                    break
                if item.event == "stop":
                    report.stop_sent = True
                if item.frame is not None:
                    report.frames.append(item.frame)
                    report.sent_at.append(trio.current_time())
                    report.bytes_by_track[item.frame.track] += len(item.frame.payload)
        if report.stop_sent and not server_closed.is_set():
            with trio.move_on_after(close_wait):
                await server_closed.wait()
        if ws.closed is not None:
            note_server_close(ws.closed)  # the server started closing meanwhile
        if not server_closed.is_set():
            we_close = True
            with trio.move_on_after(close_wait):
                await ws.aclose()
        with trio.move_on_after(close_wait):
            await receiver_done.wait()  # let it drain messages that came before a close
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- CLI


def _key_value(separator: str) -> Any:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition(separator)
        key = key.strip()
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected KEY{separator}VALUE, got {text!r}")
        return key, value.strip() if separator == ":" else value

    return parse


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``callscribe simulate-call`` options to ``parser``."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"WebSocket URL of the server (default {DEFAULT_URL})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--wav",
        metavar="FILE",
        help="WAV file (PCM or mu-law, any rate); channel 0 is the caller (inbound), "
        "channel 1 the other party (outbound)",
    )
    source.add_argument("--mulaw", metavar="FILE", help="raw 8 kHz mu-law file for the inbound track")
    parser.add_argument("--outbound-mulaw", metavar="FILE", help="raw 8 kHz mu-law file for the outbound track")
    parser.add_argument(
        "--duration",
        type=argtypes.positive_float,
        default=None,
        metavar="SECONDS",
        help="length of the generated tone (default 5); with a file, play at most this much",
    )
    parser.add_argument(
        "--tracks",
        choices=["inbound", "both"],
        default=None,
        help="inbound-only or both tracks (default: both if there is outbound audio; "
        "'both' with generated audio adds a second tone)",
    )
    parser.add_argument(
        "--outbound-start-ms",
        type=argtypes.non_negative_int,
        default=0,
        metavar="MS",
        help="outbound track starts this late",
    )
    parser.add_argument(
        "--speed",
        type=argtypes.non_negative_float,
        default=1.0,
        help="1 = real time (default), 0 = as fast as possible",
    )
    parser.add_argument(
        "--frame-ms", type=argtypes.positive_int, default=20, metavar="MS", help="chunk length (default 20)"
    )
    parser.add_argument(
        "--jitter-ms", type=argtypes.non_negative_float, default=0.0, metavar="MS", help="random send delay up to MS"
    )
    parser.add_argument(
        "--loss", type=argtypes.probability, default=0.0, metavar="P", help="probability a chunk is not sent"
    )
    parser.add_argument(
        "--off-size",
        type=argtypes.probability,
        default=0.0,
        metavar="P",
        help="probability a chunk is split or merged",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for loss/off-size/jitter (default 0)")
    parser.add_argument("--call-sid", default=None, help="CallSid to send (default: random)")
    parser.add_argument(
        "--param",
        type=_key_value("="),
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="start.customParameters entry (repeatable)",
    )
    parser.add_argument(
        "--header",
        type=_key_value(":"),
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra HTTP header on the WebSocket upgrade (repeatable)",
    )
    parser.add_argument("--ca-file", metavar="PEM", help="trust this CA certificate for wss:// URLs")
    parser.add_argument(
        "--connect-timeout", type=argtypes.positive_float, default=5.0, metavar="SECONDS", help="default 5"
    )
    parser.add_argument(
        "--close-wait",
        type=argtypes.non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the server to close after stop (default 5)",
    )
    parser.add_argument("--no-stop", action="store_true", help="hang up without sending stop")


class _UsageError(Exception):
    pass


def _read_mulaw_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not data:
        raise _UsageError(f"{what} {path} is empty")
    return data


def _spec_from_args(args: argparse.Namespace) -> CallSpec:
    outbound: bytes | None = None
    generated = False
    if args.wav:
        try:
            channels = mulaw.read_wav_as_mulaw(args.wav)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        except OSError as exc:
            raise _UsageError(f"cannot read WAV file {args.wav}: {exc.strerror or exc}") from None
        inbound = channels[0]
        if len(channels) > 1:
            if args.outbound_mulaw:
                raise _UsageError(
                    "--outbound-mulaw conflicts with a stereo --wav (its channel 1 is the outbound track)"
                )
            outbound = channels[1]
        if not inbound:
            raise _UsageError(f"WAV file {args.wav} has no audio")
    elif args.mulaw:
        inbound = _read_mulaw_file(args.mulaw, "mu-law file")
    else:
        generated = True
        inbound = mulaw.generate_tone(args.duration or 5.0, 440.0)
    if args.outbound_mulaw:
        outbound = _read_mulaw_file(args.outbound_mulaw, "outbound mu-law file")
    if args.duration is not None and not generated:
        limit = round(args.duration * mulaw.SAMPLE_RATE)
        inbound = inbound[:limit]
        if outbound is not None:
            outbound = outbound[: max(0, limit - args.outbound_start_ms * _BYTES_PER_MS)]

    if args.tracks == "inbound":
        if args.outbound_mulaw:
            raise _UsageError("--outbound-mulaw needs --tracks both")
        outbound = None
    elif args.tracks == "both" and outbound is None:
        if not generated:
            raise _UsageError("--tracks both needs outbound audio: a stereo --wav or --outbound-mulaw")
        seconds = max(0.0, (args.duration or 5.0) - args.outbound_start_ms / 1000)
        outbound = mulaw.generate_tone(seconds, 660.0)

    extra: dict[str, Any] = {}
    if args.call_sid:
        extra["call_sid"] = args.call_sid
    return CallSpec(
        inbound=inbound,
        outbound=outbound,
        outbound_start_ms=args.outbound_start_ms,
        custom_parameters=dict(args.param),
        frame_ms=args.frame_ms,
        loss=args.loss,
        off_size=args.off_size,
        jitter_ms=args.jitter_ms,
        seed=args.seed,
        **extra,
    )


def _ssl_context_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.ca_file:
        return None
    if urllib.parse.urlsplit(args.url).scheme != "wss":
        raise _UsageError("--ca-file only applies to wss:// URLs")
    if not os.path.isfile(args.ca_file):
        raise _UsageError(f"CA file {args.ca_file} does not exist")
    try:
        return ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise _UsageError(f"cannot load CA file {args.ca_file}: {exc}") from None


def _error(message: str) -> None:
    print(f"callscribe simulate-call: error: {message}", file=sys.stderr)


def run_from_cli(args: argparse.Namespace) -> int:
    """Run ``callscribe simulate-call``; returns the exit status.

    0 on success (whether or not the server closed the socket), 1 if the connection
    failed, 2 for bad usage (bad options, unreadable or unsupported files).
    """
    try:
        spec = _spec_from_args(args)
        ssl_context = _ssl_context_from_args(args)
        _check_url(args.url, ssl_context)
    except (_UsageError, ValueError, TypeError) as exc:
        _error(str(exc))
        return 2
    speed = "as fast as possible" if args.speed == 0 else f"{args.speed:g}x real time"
    print(
        f"call {spec.call_sid} -> {args.url}, {spec.duration_s:.1f} s, tracks {'+'.join(spec.tracks)}, {speed}",
        flush=True,
    )
    try:
        report = trio.run(
            lambda: run_call(
                args.url,
                spec,
                speed=args.speed,
                ssl_context=ssl_context,
                connect_timeout=args.connect_timeout,
                close_wait=args.close_wait,
                send_stop=not args.no_stop,
                headers=list(args.header) or None,
            )
        )
    except ConnectionError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    print(_summary(spec, report, args.close_wait))
    return 0


def _summary(spec: CallSpec, report: SimulationReport, close_wait: float) -> str:
    counts = {track: sum(1 for f in report.frames if f.track == track) for track in spec.tracks}
    sent = ", ".join(
        f"{counts[track]} {track} frames ({report.bytes_by_track.get(track, 0)} bytes)" for track in spec.tracks
    )
    elapsed = (report.sent_at[-1] - report.started_at) if report.sent_at else 0.0
    parts = [f"sent {sent} over {elapsed:.2f} s", "stop sent" if report.stop_sent else "no stop"]
    if report.received:
        parts.append(f"{len(report.received)} messages received")
    if report.close_code is not None:
        reason = f" ({report.close_reason})" if report.close_reason else ""
        parts.append(f"server closed with code {report.close_code}{reason}")
    elif report.stop_sent:
        parts.append(f"server did not close within {close_wait:g} s")
    else:
        parts.append("simulator hung up")
    return "; ".join(parts)
