"""What a person sees of a call's messages on `/client`; pure, no IO.

`TranscriptView` takes the call's messages as they arrive (Deepgram's, unchanged, and callscribe's
notices) and says what to show:

* `Line`: a finished line: each final result that says something, prefixed with the time into the
  call and the speaker (`00:03  Caller       Hi, ...`); callscribe's notices (`!! Reconnecting:
  ...`); how the subscription ended (`-- call ended (1000 call ended)`).
* `Interim`: the words of the current interim result, to be shown in place and overwritten by the
  next one (or cleared, `text == ""`, when its final arrives). Each has a `key`: several calls and
  both speakers may have one at a time.

The speaker of Deepgram's channel i is the call's track i (`tracks`, as Twilio's `start` announced
them, when known): with both tracks channel 0 is the caller and channel 1 the other party; an
inbound-only (mono) stream is the caller, an outbound-only one (`track="outbound_track"`) the
other party. Without the tracks, channel 0 is the caller.
Messages that are not JSON objects, results without words, and Deepgram's other events
(`SpeechStarted`, `UtteranceEnd`, `Metadata`) show nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from callscribe.core.twilio import track_of_channel

__all__ = ["SPEAKERS", "Interim", "Kind", "Line", "TranscriptView", "clock", "close_description"]

Kind = Literal["caller", "other", "notice", "error", "info", "game"]
"""How a line is drawn: a speaker's colour, a callscribe notice, an error, quiet information, or
what a game does (the demo's)."""

SPEAKERS: dict[str, tuple[str, Kind]] = {"inbound": ("Caller", "caller"), "outbound": ("Other party", "other")}
"""Each track's speaker and how their lines are drawn."""
SPEAKER_WIDTH = max(len(name) for name, _ in SPEAKERS.values())
CLOSE_NORMAL = 1000


@dataclass(frozen=True)
class Line:
    text: str
    kind: Kind


@dataclass(frozen=True)
class Interim:
    key: str
    """Whose interim this is (a call's label and channel): a later one with the same key replaces it."""
    text: str
    """The line to show in place; "" clears it."""
    kind: Kind


Shown = Line | Interim


def clock(seconds: float) -> str:
    """Time into the call: `00:03`, `12:40`, `1:02:03`."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def close_description(code: int | None, reason: str | None) -> str:
    """`1000 call ended`, `1001 server shutting down`, or what a close without a frame means."""
    if code is None or code == 1006:
        return "connection lost (no close frame)"
    return f"{code} {reason}" if reason else str(code)


class TranscriptView:
    """One call's messages as a person reads them. `label` prefixes every line (the call, when
    several are followed at once); `tracks` are the call's, in channel order, when known."""

    def __init__(self, label: str = "", tracks: Sequence[str] = ()) -> None:
        self.label = label
        self.tracks = tuple(tracks)
        self._interims: set[str] = set()

    def receive(self, text: str | bytes) -> list[Shown]:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
            return []
        if not isinstance(message, dict):
            return []
        if message.get("source") == "callscribe":
            return self._notice(message)
        if message.get("type") == "Results":
            return self._results(message)
        return []

    def closed(self, code: int | None, reason: str | None) -> list[Shown]:
        """The subscription ended with this close code and reason (None: the connection was lost)."""
        shown: list[Shown] = self._clear_interims()
        description = close_description(code, reason)
        if code == CLOSE_NORMAL:
            shown.append(Line(f"{self.label}-- call ended ({description})", "info"))
        else:
            shown.append(Line(f"{self.label}-- closed: {description}", "error"))
        return shown

    def info(self, text: str) -> Line:
        return Line(f"{self.label}-- {text}", "info")

    def _notice(self, message: dict[str, Any]) -> list[Shown]:
        kind: Kind = "error" if message.get("type") == "Error" else "notice"
        return [Line(f"{self.label}!! {message.get('type', 'Notice')}: {message.get('message', '')}", kind)]

    def _results(self, message: dict[str, Any]) -> list[Shown]:
        transcript, channel, start = _transcript(message)
        if channel is None:
            return []
        speaker, kind = self._speaker(channel)
        key = f"{self.label}{channel}"
        text = f"{self.label}{clock(start)}  {speaker:<{SPEAKER_WIDTH}}  {transcript}"
        if message.get("is_final") is True:
            shown: list[Shown] = []
            if key in self._interims:
                self._interims.discard(key)
                shown.append(Interim(key, "", kind))
            if transcript:
                shown.append(Line(text, kind))
            return shown
        if not transcript:
            return []
        self._interims.add(key)
        return [Interim(key, text + " ...", kind)]

    def _speaker(self, channel: int) -> tuple[str, Kind]:
        unknown: tuple[str, Kind] = (f"Channel {channel}", "other")
        return SPEAKERS.get(track_of_channel(channel, self.tracks), unknown) if channel in (0, 1) else unknown

    def _clear_interims(self) -> list[Shown]:
        cleared: list[Shown] = [Interim(key, "", "info") for key in sorted(self._interims)]
        self._interims.clear()
        return cleared


def _transcript(message: dict[str, Any]) -> tuple[str, int | None, float]:
    """The best alternative's transcript, the speaker's channel (None: not a usable result) and the start."""
    index = message.get("channel_index")
    channel = message.get("channel")
    start = message.get("start", 0.0)
    if not (isinstance(index, list) and index and isinstance(index[0], int) and isinstance(channel, dict)):
        return "", None, 0.0
    alternatives = channel.get("alternatives")
    if not (isinstance(alternatives, list) and alternatives and isinstance(alternatives[0], dict)):
        return "", None, 0.0
    transcript = alternatives[0].get("transcript")
    if not isinstance(transcript, str) or not isinstance(start, int | float) or isinstance(start, bool):
        return "", None, 0.0
    try:
        at = float(start)
    except OverflowError:  # an integer of hundreds of digits
        at = 0.0
    return " ".join(transcript.split()), index[0], at if math.isfinite(at) else 0.0
