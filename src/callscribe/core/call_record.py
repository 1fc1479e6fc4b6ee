"""A call's record: what is kept of it from its `start` to its end, and how it ended.

`call_start` takes what Twilio's `start` message says (callSid, streamSid, account, tracks, and the
`From`, `To` and `Direction` that `/twiml` passes as stream parameters); `outcome_of` decides how a
call ended from what the shell saw; `StoredCall` is a call as the store keeps it, and its `json`
is what the REST API and webhooks show. Times are seconds since the epoch, passed in.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001

PARAMETER_FROM = "From"
PARAMETER_TO = "To"
PARAMETER_DIRECTION = "Direction"


class Outcome(enum.StrEnum):
    """How a call ended."""

    ENDED = "ended"
    """Twilio sent `stop`: the call ended normally."""
    HUNG_UP = "hung_up"
    """Twilio's connection closed without `stop`."""
    DEEPGRAM_FAILED = "deepgram_failed"
    """Transcription was given up (Deepgram refused or kept failing); the call itself went on."""
    SHUTDOWN = "shutdown"
    """The server shut down while the call was live."""
    STREAM_ERROR = "stream_error"
    """callscribe closed the stream: a bad `start`, too many unusable frames, no `start` at all."""
    INTERRUPTED = "interrupted"
    """The process handling the call died (a crash, kill -9); closed at the next start."""
    ERROR = "error"
    """A bug in callscribe ended the call (logged with its traceback)."""


def outcome_of(*, stop_received: bool, close_code: int, deepgram_failed: bool, crashed: bool = False) -> Outcome:
    """How a call ended, most telling first: a bug, transcription given up, shutdown, a stream
    callscribe had to close, then Twilio's `stop` (ended) or its absence (hung up)."""
    if crashed:
        return Outcome.ERROR
    if deepgram_failed:
        return Outcome.DEEPGRAM_FAILED
    if close_code == CLOSE_GOING_AWAY:
        return Outcome.SHUTDOWN
    if close_code != CLOSE_NORMAL:
        return Outcome.STREAM_ERROR
    return Outcome.ENDED if stop_received else Outcome.HUNG_UP


@dataclass(frozen=True)
class CallStart:
    call_sid: str
    stream_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    started_at: float
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    """Every `customParameters` entry of the `start` message."""

    @property
    def channels(self) -> int:
        return max(1, len(self.tracks))


def call_start(
    *,
    call_sid: str,
    stream_sid: str,
    account_sid: str,
    tracks: Sequence[str],
    parameters: Mapping[str, str],
    now: float,
) -> CallStart:
    """The record of a call that starts now, from its `start` message."""

    def parameter(name: str) -> str | None:
        # NUL as U+FFFD: PostgreSQL keeps no NUL in text, and would refuse the whole call.
        value = parameters.get(name, "").strip().replace("\0", "\ufffd")
        return value[:64] or None

    return CallStart(
        call_sid=call_sid,
        stream_sid=stream_sid,
        account_sid=account_sid,
        tracks=tuple(tracks),
        started_at=now,
        from_number=parameter(PARAMETER_FROM),
        to_number=parameter(PARAMETER_TO),
        direction=parameter(PARAMETER_DIRECTION),
        parameters=dict(parameters),
    )


@dataclass(frozen=True)
class CallEnd:
    ended_at: float
    outcome: Outcome
    reason: str
    """The close reason given to Twilio and subscribers ("call ended", "server shutting down", ...)."""
    audio_s: float = 0.0
    """Seconds of audio sent to Deepgram."""
    padding_s: float = 0.0
    """Of the audio, seconds of silence put in for lost packets and a late or silent track."""
    deepgram_connections: int = 0
    game_code: str | None = None
    request_ids: tuple[str, ...] = ()
    """Deepgram's ids of the call's connections that told theirs (those of finals are added)."""


@dataclass(frozen=True)
class StoredCall:
    """A call as the store keeps it."""

    call_sid: str
    stream_sid: str
    account_sid: str
    from_number: str | None
    to_number: str | None
    direction: str | None
    tracks: tuple[str, ...]
    started_at: float
    ended_at: float | None = None
    outcome: str | None = None
    reason: str | None = None
    audio_s: float | None = None
    padding_s: float | None = None
    deepgram_connections: int | None = None
    request_ids: tuple[str, ...] = ()
    game_code: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    finals: int = 0
    snippet: str = ""
    """For lists: the words that matched the search, or the first words of the call."""

    @property
    def live(self) -> bool:
        return self.ended_at is None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else round(max(0.0, self.ended_at - self.started_at), 3)

    def summary(self) -> dict[str, object]:
        """The call in a list (GET /api/calls)."""
        return {
            "callSid": self.call_sid,
            "from": self.from_number,
            "to": self.to_number,
            "startedAt": iso_time(self.started_at),
            "endedAt": None if self.ended_at is None else iso_time(self.ended_at),
            "durationS": self.duration_s,
            "live": self.live,
            "outcome": self.outcome,
            "snippet": self.snippet,
        }

    def json(self) -> dict[str, object]:
        """Everything kept of the call (GET /api/calls/{callSid}, webhooks)."""
        details = self.summary()
        del details["snippet"]
        details.update(
            {
                "streamSid": self.stream_sid,
                "accountSid": self.account_sid,
                "direction": self.direction,
                "tracks": list(self.tracks),
                "reason": self.reason,
                "audioS": self.audio_s,
                "paddingS": self.padding_s,
                "deepgramConnections": self.deepgram_connections,
                "deepgramRequestIds": list(self.request_ids),
                "gameCode": self.game_code,
                "parameters": dict(self.parameters),
            }
        )
        return details


def stored_call_of(start: CallStart) -> StoredCall:
    """The record of a call that has just started (what `call.started` shows): every field of its
    start, under the same name, and nothing yet of its end."""
    return StoredCall(**{f.name: getattr(start, f.name) for f in fields(start)})


def iso_time(epoch_s: float) -> str:
    """`2026-11-29T09:55:00.123Z`"""
    moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_NOT_DIGITS = re.compile(r"\D")


def digits(number: str | None) -> str:
    """A phone number's digits alone, so `+1 555-0100`, `15550100` and ` 15550100` (a `+` that a
    query string turned into a space) are one number."""
    return _NOT_DIGITS.sub("", number or "")
