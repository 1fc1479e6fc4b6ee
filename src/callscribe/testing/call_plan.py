"""What a simulated Twilio Media Streams call sends, and when; pure, no IO.

A Twilio ``<Stream>`` sends ``connected``, ``start``, one ``media`` event per chunk of 8 kHz mu-law
audio (base64, every value a JSON string), optional ``dtmf`` events, then ``stop``. :class:`CallSpec`
describes one call, including simulated packet loss, off-size chunks, a late outbound track and
send-time jitter; :func:`plan_frames` cuts its audio into :class:`PlannedFrame` s and
:func:`call_messages` gives every message with the second (since stream start) it is due.

All randomness comes from :class:`random.Random` seeded with ``CallSpec.seed``, so a plan is fully
deterministic. :mod:`callscribe.testing.call_runner` sends a plan over a real WebSocket.
"""

from __future__ import annotations

import base64
import json
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from callscribe.core import audio as mulaw

__all__ = [
    "BYTES_PER_MS",
    "INBOUND",
    "OUTBOUND",
    "CallSpec",
    "PlannedFrame",
    "ScriptedMessage",
    "call_messages",
    "call_script",
    "compact_json",
    "connected_message",
    "dtmf_message",
    "parse_dtmf",
    "plan_frames",
    "start_message",
    "stop_message",
    "twilio_media_event",
]

BYTES_PER_MS = mulaw.SAMPLE_RATE // 1000  # 8 mu-law bytes per millisecond
INBOUND = "inbound"
OUTBOUND = "outbound"


def _new_sid(prefix: str) -> str:
    """A random Twilio-style SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + uuid.uuid4().hex


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
        for at, key in self.dtmf:
            if not isinstance(key, str) or len(key) != 1 or key not in DTMF_DIGITS:
                raise ValueError(f"DTMF keys are one of {DTMF_DIGITS}, not {key!r}")
            if isinstance(at, bool) or not isinstance(at, int | float) or not (math.isfinite(at) and at >= 0):
                raise ValueError(f"a DTMF time is seconds since the stream started (finite, >= 0), not {at!r}")
        if self.dtmf and self.outbound is not None:  # both tracks: <Start><Stream>, one-way
            raise ValueError("Twilio sends dtmf on bidirectional streams, which carry the inbound track only")
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


# ---- frames -------------------------------------------------------------------------------------


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
            can_split = size > BYTES_PER_MS  # there is a whole-ms cut point inside
            prefer_split = rng.random() < 0.5
            if can_split and (prefer_split or next_size == 0):
                cut = BYTES_PER_MS * rng.randint(1, (size - 1) // BYTES_PER_MS)
                chunks.append((offset, audio[offset : offset + cut]))
                chunks.append((offset + cut, audio[offset + cut : offset + size]))
                offset += size
                continue
            size += next_size  # merge with the next chunk (no-op at the very end)
        chunks.append((offset, audio[offset : offset + size]))
        offset += size
    return chunks


def _plan_track(spec: CallSpec, track: str, audio: bytes, start_ms: int) -> list[PlannedFrame]:
    frame_bytes = spec.frame_ms * BYTES_PER_MS
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
        timestamp_ms = start_ms + offset // BYTES_PER_MS
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


# ---- messages -----------------------------------------------------------------------------------


def compact_json(message: dict[str, Any]) -> str:
    """JSON without spaces, as Twilio sends it."""
    return json.dumps(message, separators=(",", ":"))


def connected_message() -> str:
    """The first message of every stream (it has no ``sequenceNumber`` nor ``streamSid``)."""
    return compact_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(spec: CallSpec, sequence_number: int = 1) -> str:
    """The ``start`` message: stream metadata, tracks, custom parameters, media format."""
    return compact_json(
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


def twilio_media_event(spec: CallSpec, frame: PlannedFrame, sequence_number: int) -> str:
    """The ``media`` event Twilio sends with caller/callee audio; ``chunk``, ``timestamp`` and
    ``sequenceNumber`` are strings. (Audio *to* Twilio is :func:`callscribe.core.twilio.media_message`.)"""
    return compact_json(
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
    return compact_json(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "stop": {"accountSid": spec.account_sid, "callSid": spec.call_sid},
            "streamSid": spec.stream_sid,
        }
    )


def dtmf_message(spec: CallSpec, digit: str, sequence_number: int) -> str:
    """A ``dtmf`` event (bidirectional streams): the caller pressed a key."""
    return compact_json(
        {
            "event": "dtmf",
            "streamSid": spec.stream_sid,
            "sequenceNumber": str(sequence_number),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


DTMF_DIGITS = "0123456789*#"
"""The keys Twilio reports in ``dtmf`` events."""


def parse_dtmf(text: str, *, first_at: float = 1.0, gap: float = 0.5) -> list[tuple[float, str]]:
    """Keypad presses from ``"4,2,#"`` or ``"4@3,2@3.5,#"``: each key, optionally ``@`` the second
    (since stream start) it is pressed; a key without a time comes ``gap`` after the one before,
    the first at ``first_at``. :class:`ValueError` names what is wrong."""
    presses: list[tuple[float, str]] = []
    at = first_at - gap
    for item in text.split(","):
        key, sep, when = (part.strip() for part in item.partition("@"))
        if len(key) != 1 or key not in DTMF_DIGITS:
            raise ValueError(f"DTMF keys are one of {DTMF_DIGITS} each, separated by commas, not {item.strip()!r}")
        if sep:
            try:
                at = float(when)
            except ValueError:
                at = math.nan
            if not (math.isfinite(at) and at >= 0):
                raise ValueError(f"a DTMF time is seconds since the stream started, not {when!r}")
        else:
            at += gap
        presses.append((at, key))
    return presses


# ---- the whole call -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ScriptedMessage:
    """One message of a call, due ``send_at`` seconds after stream start."""

    send_at: float
    event: str
    """``"connected"``, ``"start"``, ``"media"``, ``"dtmf"`` or ``"stop"``."""
    text: str
    frame: PlannedFrame | None = None
    """The frame a ``media`` message carries."""


def call_script(spec: CallSpec, *, include_stop: bool = True) -> list[ScriptedMessage]:
    """Every message of the call in sending order; ``stop`` only with ``include_stop``.

    ``sequenceNumber`` counts up from 1 starting at ``start``; ``stop`` is due when the
    audio ends (or with the last frame if that is later, because of jitter).
    """
    script = [
        ScriptedMessage(0.0, "connected", connected_message()),
        ScriptedMessage(0.0, "start", start_message(spec, 1)),
    ]
    timed: list[tuple[float, PlannedFrame | str]] = [(frame.send_at, frame) for frame in plan_frames(spec)]
    timed += [(at, digit) for at, digit in spec.dtmf]
    timed.sort(key=lambda item: item[0])  # stable: media keeps its order
    sequence = 1
    last_send = 0.0
    for send_at, item in timed:
        sequence += 1
        if isinstance(item, PlannedFrame):
            script.append(ScriptedMessage(send_at, "media", twilio_media_event(spec, item, sequence), item))
        else:
            script.append(ScriptedMessage(send_at, "dtmf", dtmf_message(spec, item, sequence)))
        last_send = send_at
    if include_stop:
        # The call ends when the audio does, even if its last frames were lost.
        stop_at = max(last_send, spec.duration_s)
        script.append(ScriptedMessage(stop_at, "stop", stop_message(spec, sequence + 1)))
    return script


def call_messages(spec: CallSpec) -> list[tuple[float, str]]:
    """The whole call as ``(send_at, json text)``: connected, start, media (and dtmf)..., stop."""
    return [(item.send_at, item.text) for item in call_script(spec)]
