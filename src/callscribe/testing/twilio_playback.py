"""Twilio's side of a bidirectional stream (``<Connect><Stream>``), without IO.

What the server sends back to Twilio (``media``, ``mark``, ``clear``) goes into :meth:`Playback.receive`
with the current time; Twilio plays the audio in real time, echoes each ``mark`` once the audio queued
before it has played, and on ``clear`` drops what is queued and echoes the pending marks at once.
:func:`callscribe.testing.simulator.run_call` drives it with ``bidirectional=True``.
"""

from __future__ import annotations

import base64
import json

from callscribe.core import audio as mulaw
from callscribe.testing.call_plan import compact_json

__all__ = ["Playback"]


class Playback:
    """Plays what the server sends to one stream and says which marks Twilio echoes when.

    ``origin`` is the time the stream started (the times given to :meth:`receive` are on the same
    clock): :attr:`heard` places each sound when it played, counted from there."""

    def __init__(self, stream_sid: str, origin: float = 0.0) -> None:
        self.stream_sid = stream_sid
        self.origin = origin
        self.audio = bytearray()
        """Every media payload received, in order."""
        self.heard = bytearray()
        """What the caller heard: mu-law from ``origin``, silence between sounds, what a
        ``clear`` cut off left out."""
        self.marks: list[str] = []
        """Marks echoed, in order."""
        self.clears = 0
        self.bad_messages: list[str] = []
        """Messages Twilio would reject (bad JSON, unknown event, wrong streamSid)."""
        self._playing_until = 0.0
        self._pending: list[tuple[float, str]] = []

    def receive(self, text: str, now: float) -> None:
        """One text message from the server, at ``now`` (seconds); bad ones go to :attr:`bad_messages`."""
        try:
            message = json.loads(text)
            event = message["event"]
            if message.get("streamSid") != self.stream_sid:
                raise ValueError("wrong streamSid")
            if event == "media":
                audio = base64.b64decode(message["media"]["payload"], validate=True)
                self.audio += audio
                starts = max(self._playing_until, now)
                self._place(starts, audio)
                self._playing_until = starts + len(audio) / mulaw.SAMPLE_RATE
            elif event == "mark":
                self._pending.append((max(self._playing_until, now), str(message["mark"]["name"])))
            elif event == "clear":
                self.clears += 1
                if self._playing_until > now:  # what was still to play is never heard
                    del self.heard[self._sample(now) :]
                self._playing_until = now
                self._pending = [(now, name) for _, name in self._pending]
            else:
                raise ValueError(f"unknown event {event!r}")
        except (ValueError, KeyError, TypeError) as error:
            self.bad_messages.append(f"{error}: {text[:80]}")

    def _sample(self, at: float) -> int:
        return max(0, round((at - self.origin) * mulaw.SAMPLE_RATE))

    def _place(self, at: float, audio: bytes) -> None:
        start = self._sample(at)
        if start > len(self.heard):
            self.heard += bytes([mulaw.SILENCE]) * (start - len(self.heard))
        self.heard[start:] = audio

    def next_due(self) -> float | None:
        """When the next pending mark is due, or ``None`` if none is pending."""
        return self._pending[0][0] if self._pending else None

    def due(self, now: float) -> list[str]:
        """The marks to echo now (Twilio's `mark` messages)."""
        ready = [name for at, name in self._pending if at <= now]
        self._pending = [(at, name) for at, name in self._pending if at > now]
        self.marks += ready
        return [compact_json({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}) for name in ready]
