"""What the fake Deepgram accepts on the WebSocket upgrade, and how it refuses the rest; pure.

The key comes as ``Authorization: Token <key>`` or as the subprotocols ``token, <key>``. The audio
query parameters are validated like Deepgram does (``encoding`` needs ``sample_rate``; only raw
``mulaw``, ``alaw`` and ``linear16`` can be "decoded"). A refusal is a :class:`Rejection`: an HTTP
status with Deepgram's ``err_code``/``err_msg`` body and ``dg-error`` header.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

__all__ = ["BYTES_PER_SAMPLE", "AudioFormat", "Rejection", "audio_format", "offered_key"]

#: Bytes per sample of the raw encodings the fake can "decode".
BYTES_PER_SAMPLE: Final[dict[str, int]] = {"mulaw": 1, "alaw": 1, "linear16": 2}

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


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class Rejection(Exception):
    """A handshake to refuse with an HTTP error."""

    def __init__(self, status: int, message: str | None = None) -> None:
        err_code, default_message = _REJECTIONS.get(status, (_status_phrase(status), _status_phrase(status) + "."))
        super().__init__(message or default_message)
        self.status = status
        self.err_code = err_code
        self.message = message or default_message

    def headers(self, request_id: str) -> list[tuple[bytes, bytes]]:
        """The response headers Deepgram sends with this refusal."""
        return [
            (b"dg-error", self.message.encode("latin-1", "replace")),
            (b"dg-request-id", request_id.encode()),
            (b"content-type", b"application/json"),
        ]

    def body(self, request_id: str) -> bytes:
        """The JSON body Deepgram sends with this refusal."""
        return json.dumps({"err_code": self.err_code, "err_msg": self.message, "request_id": request_id}).encode()


@dataclass(frozen=True)
class AudioFormat:
    """The parts of the query that shape how audio is read and results are made."""

    encoding: str | None
    sample_rate: int
    channels: int
    multichannel: bool
    interim_results: bool
    endpointing: bool = True
    """Whether finals may be ``speech_final`` (``endpointing=false`` turns it off)."""
    vad_events: bool = False
    """``SpeechStarted`` messages."""
    utterance_end_ms: int | None = None
    """``UtteranceEnd`` after this long without words (only with interim results)."""

    @property
    def bytes_per_sample(self) -> int:
        return BYTES_PER_SAMPLE.get(self.encoding or "mulaw", 1)

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
    raise Rejection(400, f"Invalid value for {name}: {query[name]!r}; expected true or false.")


def _positive_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise Rejection(400, f"Invalid value for {name}: {raw!r}; expected a positive integer.")
    return value


def audio_format(query: dict[str, str]) -> AudioFormat:
    """Validate the audio query parameters like Deepgram does, or raise :class:`Rejection` (400)."""
    encoding = query.get("encoding")
    if encoding is not None:
        encoding = encoding.strip().lower()
        if "sample_rate" not in query:
            raise Rejection(400, "sample_rate must be specified when encoding is specified.")
        if encoding not in BYTES_PER_SAMPLE:
            raise Rejection(
                400,
                f"Unsupported encoding {encoding!r}: the fake Deepgram accepts only "
                + ", ".join(sorted(BYTES_PER_SAMPLE))
                + ".",
            )
    interim_results = _flag(query, "interim_results")
    utterance_end_ms = _positive_int(query, "utterance_end_ms", 0)
    return AudioFormat(
        encoding=encoding,
        sample_rate=_positive_int(query, "sample_rate", 8000),
        channels=_positive_int(query, "channels", 1),
        multichannel=_flag(query, "multichannel"),
        interim_results=interim_results,
        endpointing=query.get("endpointing", "").strip().lower() != "false",
        vad_events=_flag(query, "vad_events"),
        utterance_end_ms=utterance_end_ms if utterance_end_ms and interim_results else None,
    )


def offered_key(headers: Sequence[tuple[bytes, bytes]], subprotocols: Sequence[str]) -> tuple[str | None, str | None]:
    """The key the client offered and the subprotocol to accept with (``"token"`` if that way)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "token":
                return credential.strip(), None
    if len(subprotocols) >= 2 and subprotocols[0].lower() == "token":
        return subprotocols[1], subprotocols[0]
    return None, None
