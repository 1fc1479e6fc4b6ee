"""Deepgram live speech-to-text, client side, without IO.

`DeepgramStream` tracks one connection to `/v1/listen`: it returns the frames to send (binary
audio, text control messages) and classifies the text frames Deepgram sends back. It never
re-serializes Deepgram's results: subscribers receive the exact JSON text Deepgram produced.

States (developers.deepgram.com, live streaming):

    STREAMING --CloseStream sent--> CLOSING --Metadata received--> FINISHED

In CLOSING Deepgram flushes its final `Results` for the audio it has, then sends `Metadata` and
closes with 1000. A connection that closes in any state is simply over; the shell decides what
that means for the call.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

DEFAULT_URL = (
    "wss://api.deepgram.com/v1/listen?model=nova-3&language=en-US&punctuate=true"
    "&smart_format=true&interim_results=true&endpointing=300&utterance_end_ms=1000"
    "&vad_events=true"
)
"""Deepgram's endpoint with options that suit phone calls: interim results for live captions,
300 ms endpointing (the 10 ms default splits phone speech), utterance ends and VAD events."""

KEEPALIVE = '{"type":"KeepAlive"}'
CLOSE_STREAM = '{"type":"CloseStream"}'

_FORCED_PARAMETERS = ("encoding", "sample_rate", "channels", "multichannel")


def listen_url(base_url: str, *, channels: int, sample_rate: int = 8000) -> str:
    """`base_url` with the audio parameters set from what is really sent; other options are kept."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"Deepgram URL must be ws:// or wss:// with a host, not {base_url!r}")
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _FORCED_PARAMETERS]
    forced = [
        ("encoding", "mulaw"),
        ("sample_rate", str(sample_rate)),
        ("channels", str(channels)),
        ("multichannel", "true" if channels > 1 else "false"),
    ]
    return urlunsplit(parts._replace(query=urlencode(kept + forced)))


def api_key_problem(key: str) -> str:
    """What makes `key` unfit for an `Authorization` header, without showing it; "" if nothing."""
    at = next((i for i, c in enumerate(key) if not (c.isascii() and c.isprintable())), None)
    return "" if at is None else f"has a character that is not printable ASCII (at position {at + 1})"


def rejection_summary(status: int, headers: Mapping[str, str] | list[tuple[bytes, bytes]], body: bytes | None) -> str:
    """One readable line for a refused handshake, with Deepgram's `dg-error` and request id."""
    if not isinstance(headers, Mapping):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    else:
        headers = {k.lower(): v for k, v in headers.items()}
    error = headers.get("dg-error")
    if not error and body:
        try:
            error = msgspec.json.decode(body).get("err_msg")
        except (msgspec.DecodeError, AttributeError):
            error = body[:200].decode("utf-8", "replace")
    summary = f"HTTP {status}"
    if error:
        summary += f": {error}"
    if request_id := headers.get("dg-request-id"):
        summary += f" (dg-request-id {request_id})"
    return summary


class _ResultMetadata(msgspec.Struct):
    request_id: str = ""


class MessageKind(msgspec.Struct):
    """What the relay needs to know of a Deepgram message; the message itself is passed on as is."""

    type: str = ""
    is_final: bool = False
    channel_index: list[int] = []
    start: float = 0.0
    duration: float = 0.0
    request_id: str = ""
    """Metadata's (at the end of a connection)."""
    metadata: msgspec.Raw = msgspec.Raw()
    """Results' (each carries its connection's request id), read only until the id is known."""

    @property
    def channel(self) -> int:
        return self.channel_index[0] if self.channel_index else 0


_UNKNOWN = MessageKind()


_kind_decoder = msgspec.json.Decoder(MessageKind)
_metadata_decoder = msgspec.json.Decoder(_ResultMetadata)


class DeepgramState(enum.Enum):
    STREAMING = "streaming"
    CLOSING = "closing"
    FINISHED = "finished"


class DeepgramStream:
    """Bookkeeping and framing for one Deepgram connection."""

    def __init__(self) -> None:
        self.state = DeepgramState.STREAMING
        self.audio_bytes_sent = 0
        self.messages_received = 0
        self.results_received = 0
        self.finals_received = 0
        self.unparsable = 0
        self.request_id = ""
        """Deepgram's id of this connection, from its first Results or its Metadata ("" if neither came)."""

    def send_audio(self, window: bytes) -> bytes:
        if self.state is not DeepgramState.STREAMING:
            raise RuntimeError(f"cannot send audio while {self.state.value}")
        if not window:
            raise ValueError("an empty binary frame would tell Deepgram nothing (and older APIs close on it)")
        self.audio_bytes_sent += len(window)
        return window

    def send_keepalive(self) -> str:
        return KEEPALIVE

    def send_close_stream(self) -> str:
        self.state = DeepgramState.CLOSING
        return CLOSE_STREAM

    def receive(self, text: str | bytes) -> MessageKind:
        """Classify one message from Deepgram (`type` "" if it has none or is not JSON)."""
        self.messages_received += 1
        try:
            kind = _kind_decoder.decode(text)
        except msgspec.DecodeError:
            self.unparsable += 1
            return _UNKNOWN
        if kind.type == "Results":
            self.results_received += 1
            self.finals_received += kind.is_final
            if not self.request_id and len(kind.metadata):
                with contextlib.suppress(msgspec.DecodeError):
                    self.request_id = _metadata_decoder.decode(kind.metadata).request_id
        elif kind.type == "Metadata":
            self.request_id = self.request_id or kind.request_id
            if self.state is DeepgramState.CLOSING:
                self.state = DeepgramState.FINISHED
        return kind


def rebase(text: str, offset_s: float) -> str:
    """Shift the times in a Deepgram message by `offset_s`, so that a reconnected stream (whose times
    restart at 0) continues the call's timeline. With no offset the text is returned untouched."""
    if not offset_s:
        return text
    try:
        message = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text
    if not isinstance(message, dict):
        return text

    def shift(holder: dict[str, Any], key: str) -> None:
        value = holder.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            holder[key] = round(value + offset_s, 6)

    kind = message.get("type")
    if kind == "Results":
        shift(message, "start")
        channel = message.get("channel")
        alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
        for alternative in alternatives if isinstance(alternatives, list) else ():
            words = alternative.get("words") if isinstance(alternative, dict) else None
            for word in words if isinstance(words, list) else ():
                if isinstance(word, dict):
                    shift(word, "start")
                    shift(word, "end")
    elif kind == "UtteranceEnd":
        shift(message, "last_word_end")
    elif kind == "SpeechStarted":
        shift(message, "timestamp")
    else:
        return text
    return msgspec.json.encode(message).decode()
