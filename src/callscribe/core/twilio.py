"""Twilio Media Streams, server side, without IO.

One `TwilioStream` per Twilio WebSocket. Feed it every frame the socket delivers with
`receive(frame)`; each frame yields exactly one event. A frame that cannot be used is never an
exception: it becomes a `Rejected` event naming the reason, so the shell can log it, count it and
carry on -- one bad frame never ends a call.

Wire format (twilio.com/docs/voice/media-streams/websocket-messages): JSON text frames whose
values are all strings, `sequenceNumber`, `chunk` and `timestamp` included; only
`mediaFormat.sampleRate` and `mediaFormat.channels` are numbers. msgspec decodes the JSON, turns
the numeric strings into ints and the base64 payload into bytes in one C pass.

States, as the protocol orders the messages:

    AWAITING_START --start--> STREAMING --stop--> STOPPED
    (connected is allowed only while AWAITING_START; media, mark and dtmf only while STREAMING)

Numbers, checked against the messages accepted so far (a rejected frame changes nothing):

- `sequenceNumber` counts up across all messages of the stream. A message whose number is present
  (not 0) and not greater than the last accepted one is rejected ("sequenceNumber 5 after 9").
  A missing number (0) is accepted and leaves the last one as it was.
- The stream's timeline is the highest media `timestamp` accepted on any track (0 at `start`).
  Media more than `MAX_TIMESTAMP_LEAD_MS` (one hour) ahead of it is rejected, as is a negative
  timestamp: no call jumps an hour, and the mixer would put such a payload where the next real
  frame belongs.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

MULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATE = 8000
TRACK_ORDER = ("inbound", "outbound")
"""Channel order of the mix: the announced tracks in this order, so with both tracks channel 0 is
the caller (inbound) and channel 1 the other party; an outbound-only stream's channel 0 is the
other party."""
CALLER_TRACK = "inbound"

MAX_TIMESTAMP_LEAD_MS = 3_600_000
"""How far (one hour) a media timestamp may be ahead of the stream's timeline."""

MAX_PAYLOAD_BYTES = 8000
"""Largest media payload accepted: one second of audio. Twilio sends 20 ms (160 bytes)."""
MAX_SID_LENGTH = 64
"""Longest callSid, streamSid and accountSid accepted (Twilio's are 34 characters). The ids go
into the store's keys and indexes, logs and Redis keys: a longer one, or one with control
characters (a NUL cannot be stored in PostgreSQL), ends the stream at its start."""


def printable(text: str) -> str:
    """`text` with each character that is not printable escaped as Python writes it (`\\n`,
    `\\x1b`): what a peer sent, quoted in a log line or a reason, cannot forge or hide lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode() for c in text)


def track_of_channel(channel: int, tracks: Sequence[str] = ()) -> str:
    """The track whose audio is Deepgram's `channel`: the stream's `tracks` in channel order (as
    `TwilioStream.tracks`, kept with the call); past them, or without them, `TRACK_ORDER`'s."""
    if 0 <= channel < len(tracks):
        return tracks[channel]
    return TRACK_ORDER[0 if channel <= 0 else 1]


class _Message(msgspec.Struct, tag_field="event", rename="camel", frozen=True):
    pass


class _StreamMessage(_Message, kw_only=True, frozen=True):
    """Every message after `connected` names its stream and carries a sequence number."""

    stream_sid: str = ""
    sequence_number: int = 0


class Connected(_Message, tag="connected", frozen=True):
    protocol: str = ""
    version: str = ""


class MediaFormat(msgspec.Struct, rename="camel", frozen=True):
    encoding: str
    sample_rate: int
    channels: int


class StartInfo(msgspec.Struct, rename="camel", frozen=True):
    call_sid: str
    stream_sid: str
    tracks: list[str]
    media_format: MediaFormat
    account_sid: str = ""
    custom_parameters: dict[str, str] = {}


class Start(_StreamMessage, tag="start", frozen=True):
    start: StartInfo


class MediaInfo(msgspec.Struct, frozen=True):
    track: str
    timestamp: int
    payload: bytes
    chunk: int = 0


class Media(_StreamMessage, tag="media", frozen=True):
    media: MediaInfo


class MarkInfo(msgspec.Struct, frozen=True):
    name: str


class Mark(_StreamMessage, tag="mark", frozen=True):
    mark: MarkInfo


class DtmfInfo(msgspec.Struct, frozen=True):
    digit: str
    track: str = "inbound_track"


class Dtmf(_StreamMessage, tag="dtmf", frozen=True):
    dtmf: DtmfInfo


class Stop(_StreamMessage, tag="stop", frozen=True):
    pass


class Rejected(msgspec.Struct, frozen=True):
    """A frame that was skipped, and why. `fatal` means the stream cannot go on (bad `start`)."""

    reason: str
    fatal: bool = False


Event = Connected | Start | Media | Mark | Dtmf | Stop | Rejected

_NOT_UTF8 = "malformed message: text is not valid UTF-8"
_decoder: msgspec.json.Decoder[Connected | Start | Media | Mark | Dtmf | Stop] = msgspec.json.Decoder(
    Connected | Start | Media | Mark | Dtmf | Stop, strict=False
)


class TwilioState(enum.Enum):
    AWAITING_START = "awaiting start"
    STREAMING = "streaming"
    STOPPED = "stopped"


class TwilioStream:
    """Validates one Twilio stream's messages against the protocol's order and the `start` it announced."""

    def __init__(self) -> None:
        self.state = TwilioState.AWAITING_START
        self.start: StartInfo | None = None
        self.rejected = 0
        self.media_frames = 0
        self.timeline = 0
        """Highest media timestamp accepted (ms)."""
        self.sequence_number = 0
        """Last `sequenceNumber` accepted (0: none yet)."""
        # Set from `start` and kept up to date, so that the per-frame checks are a few comparisons.
        self._tracks: tuple[str, ...] = ()
        self._stream_sid = ""
        self._timestamp_limit = MAX_TIMESTAMP_LEAD_MS

    @property
    def state(self) -> TwilioState:
        return self._state

    @state.setter
    def state(self, state: TwilioState) -> None:
        self._state = state
        self._streaming = state is TwilioState.STREAMING

    @property
    def tracks(self) -> tuple[str, ...]:
        """The announced tracks in channel order (inbound first)."""
        return self._tracks

    def receive(self, frame: str | bytes | None) -> Event:
        """Parse one WebSocket frame; return the event it carries or why it was rejected."""
        if not frame:
            return self._reject("empty frame")
        try:
            message = _decoder.decode(frame)
        except msgspec.DecodeError as error:
            if "UTF-8" in str(error):  # msgspec >= 0.23 checks the bytes of a string itself
                return self._reject(_NOT_UTF8)
            return self._reject(f"malformed message: {error}")
        except UnicodeError:  # bytes that are not UTF-8 in a string; a lone surrogate in a str frame
            return self._reject(_NOT_UTF8)
        except RecursionError:  # nested deeper than the interpreter allows, even in a skipped field
            return self._reject("malformed message: nested too deeply")
        if type(message) is Media:
            # The hot path (100 frames a second per call): a good frame passes with no call; any
            # doubt goes to `_media`, which finds the reason.
            media = message.media
            size = len(media.payload)
            timestamp = media.timestamp
            sequence = message.sequence_number
            if (
                self._streaming
                and media.track in self._tracks
                and 0 < size <= MAX_PAYLOAD_BYTES
                and 0 <= timestamp <= self._timestamp_limit
                and (sequence > self.sequence_number or not sequence)
                and (not message.stream_sid or message.stream_sid == self._stream_sid)
            ):
                self.media_frames += 1
                if sequence:
                    self.sequence_number = sequence
                if timestamp > self.timeline:
                    self.timeline = timestamp
                    self._timestamp_limit = timestamp + MAX_TIMESTAMP_LEAD_MS
                return message
            return self._media(message)
        if type(message) is Start:
            return self._start(message)
        if type(message) is Connected:
            if self.state is not TwilioState.AWAITING_START:
                return self._reject(f"'connected' while {self.state.value}")
            return message
        assert isinstance(message, _StreamMessage)  # mark, dtmf or stop
        if self.state is not TwilioState.STREAMING:
            return self._reject(f"{type(message).__name__.lower()!r} while {self.state.value}")
        if message.stream_sid and message.stream_sid != self._stream_sid:
            return self._reject(f"streamSid {message.stream_sid!r} is not this stream's")
        if rejected := self._check_sequence(message.sequence_number):
            return rejected
        if type(message) is Stop:
            self.state = TwilioState.STOPPED
        return message

    def _media(self, message: Media) -> Event:
        if self.state is not TwilioState.STREAMING:
            return self._reject(f"'media' while {self.state.value}")
        media = message.media
        if media.track not in self.start.tracks:  # type: ignore[union-attr]
            return self._reject(f"media for track {media.track!r}, not announced in start")
        if not media.payload:
            return self._reject("media with an empty payload")
        if len(media.payload) > MAX_PAYLOAD_BYTES:
            return self._reject(f"media payload of {len(media.payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        if media.timestamp < 0:
            return self._reject(f"negative media timestamp {media.timestamp}")
        if media.timestamp > self._timestamp_limit:
            return self._reject(
                f"media timestamp {media.timestamp} ms is more than an hour ahead of the stream (at {self.timeline} ms)"
            )
        if message.stream_sid and message.stream_sid != self._stream_sid:
            return self._reject(f"streamSid {message.stream_sid!r} is not this stream's")
        if rejected := self._check_sequence(message.sequence_number):
            return rejected
        self.media_frames += 1
        if media.timestamp > self.timeline:
            self.timeline = media.timestamp
            self._timestamp_limit = media.timestamp + MAX_TIMESTAMP_LEAD_MS
        return message

    def _check_sequence(self, sequence: int) -> Rejected | None:
        """The last check before a message is accepted: reject a `sequence` that does not count up,
        else take it as the last one (unless it is missing, 0)."""
        if sequence:
            if sequence <= self.sequence_number:
                return self._reject(f"sequenceNumber {sequence} after {self.sequence_number}")
            self.sequence_number = sequence
        return None

    def _start(self, message: Start) -> Event:
        if self.state is not TwilioState.AWAITING_START:
            return self._reject(f"second 'start' while {self.state.value}")
        info = message.start
        fmt = info.media_format
        if fmt.encoding != MULAW_ENCODING or fmt.sample_rate != SAMPLE_RATE or fmt.channels != 1:
            return self._reject(
                f"unsupported media format {fmt.encoding} {fmt.sample_rate} Hz {fmt.channels} ch"
                f" (expected {MULAW_ENCODING} {SAMPLE_RATE} Hz mono)",
                fatal=True,
            )
        unknown = [t for t in info.tracks if t not in TRACK_ORDER]
        if unknown or not info.tracks or len(set(info.tracks)) != len(info.tracks):
            return self._reject(f"unsupported tracks {info.tracks!r}", fatal=True)
        if not info.call_sid or not info.stream_sid:
            return self._reject("start without callSid or streamSid", fatal=True)
        for name, sid in (("callSid", info.call_sid), ("streamSid", info.stream_sid), ("accountSid", info.account_sid)):
            if len(sid) > MAX_SID_LENGTH or not sid.isprintable():
                return self._reject(
                    f"{name} is not an id: up to {MAX_SID_LENGTH} printable characters (Twilio's are 34)", fatal=True
                )
        if message.stream_sid and message.stream_sid != info.stream_sid:
            return self._reject(f"start's streamSid {message.stream_sid!r} is not the one it starts", fatal=True)
        if rejected := self._check_sequence(message.sequence_number):
            return rejected
        self.state = TwilioState.STREAMING
        self.start = info
        self._tracks = tuple(t for t in TRACK_ORDER if t in info.tracks)
        self._stream_sid = info.stream_sid
        return message

    def _reject(self, reason: str, *, fatal: bool = False) -> Rejected:
        self.rejected += 1
        if fatal:
            self.state = TwilioState.STOPPED
        return Rejected(printable(reason), fatal)  # a reason may quote the frame (msgspec's do)


# -- messages to Twilio (bidirectional streams only: `<Connect><Stream>`) -----------------------

_encoder = msgspec.json.Encoder()


def media_message(stream_sid: str, audio: bytes) -> str:
    """Audio to play to the caller: raw 8 kHz mu-law, base64 (msgspec encodes bytes as base64)."""
    return _encoder.encode({"event": "media", "streamSid": stream_sid, "media": {"payload": audio}}).decode()


def mark_message(stream_sid: str, name: str) -> str:
    """Twilio echoes a mark once the audio queued before it has played (or was cleared)."""
    return _encoder.encode({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def clear_message(stream_sid: str) -> str:
    """Empties Twilio's playback buffer (barge-in); pending marks are echoed."""
    return _encoder.encode({"event": "clear", "streamSid": stream_sid}).decode()
