"""What the server and a game say to each other on `/game`, as pure functions.

Server to game: JSON text frames, each with a ``type``, built by the functions below (Deepgram's
own messages are passed on unchanged and are not built here)::

    {"type": "CallConnected", "callSid": ...}     {"type": "Dtmf", "digit": ...}
    {"type": "SpeechDone", "name": ...}           {"type": "Interrupted"}
    {"type": "CallEnded", "callSid": ..., "reason": ...}
    {"type": "Error", "source": "callscribe", "message": ...}

Game to server (:func:`parse_command`): a plain text frame is text to say; a frame whose first
non-blank character is ``{`` is JSON, ``{"type": "Say", "text": ...}`` or ``{"type": "Clear"}``.
A frame that is neither is answered with an ``Error`` and otherwise ignored; it never raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

__all__ = [
    "NOT_PATCHED",
    "BadCommand",
    "Clear",
    "Say",
    "call_connected",
    "call_ended",
    "dtmf",
    "error_message",
    "interrupted",
    "parse_command",
    "speech_done",
]

NOT_PATCHED: Final = "no call is patched to this game yet"
"""The error a game gets for text to say while no caller is patched to it."""


def _message(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields})


def call_connected(call_sid: str) -> str:
    return _message("CallConnected", callSid=call_sid)


def dtmf(digit: str) -> str:
    return _message("Dtmf", digit=digit)


def speech_done(name: str) -> str:
    return _message("SpeechDone", name=name)


def interrupted() -> str:
    return _message("Interrupted")


def call_ended(call_sid: str, reason: str) -> str:
    return _message("CallEnded", callSid=call_sid, reason=reason)


def error_message(message: str) -> str:
    return json.dumps({"type": "Error", "source": "callscribe", "message": message})


@dataclass(frozen=True, slots=True)
class Say:
    """Speak ``text`` to the caller (never blank)."""

    text: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Stop speaking at once."""


@dataclass(frozen=True, slots=True)
class BadCommand:
    """A frame that is no command; ``reason`` is the ``Error`` message for the game."""

    reason: str


def parse_command(frame: str | bytes | None) -> Say | Clear | BadCommand | None:
    """The command in one frame from a game; None for a blank frame (nothing to do)."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else (frame or "")
    if text.lstrip().startswith("{"):
        try:
            command = json.loads(text)
        except (ValueError, RecursionError):
            return BadCommand('not valid JSON: send plain text to speak, or {"type":"Say","text":...}')
        kind = command.get("type")  # JSON that starts with "{" is an object
        if kind == "Say":
            if not isinstance(command.get("text"), str):
                return BadCommand('Say needs "text", a string: {"type":"Say","text":"..."}')
            text = command["text"]
        elif kind == "Clear":
            return Clear()
        else:
            shown = str(kind)[:40] if isinstance(kind, (str, int, float, type(None))) else type(kind).__name__
            return BadCommand(f"unknown command {shown!r}: use Say or Clear")
    if not text.strip():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:  # JSON's escapes allow half a surrogate pair ("\ud83d")
        return BadCommand(f"Say text has a lone surrogate at character {error.start}: send whole characters")
    return Say(text)
