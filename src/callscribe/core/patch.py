"""One game-routed call as a state machine: the caller's code, then relaying between caller and game.

Pure: the shell (:mod:`callscribe.server.games`) feeds it what happens and performs what it
returns; no input ever raises. States (:class:`PatchState`)::

    WAITING --connect()--> PATCHED --say()--> SPEAKING
                              ^                  |   last mark echoed, last sentence failed,
                              +------------------+   barge-in (Interrupted), clear(), twilio_gone()
    PATCHED or SPEAKING --game_left()--> WAITING
    any state --call_ended()--> ENDED (nothing more comes out)

WAITING
    No game. Until Twilio's side is gone, the caller's final results (channel 0) are matched against
    the pool's active codes and keypad digits are collected
    (:class:`~callscribe.core.keypad.DtmfCollector`); a match gives :class:`CodeHeard`. The shell
    checks that the code's game is there and free, and answers with :meth:`PatchMachine.connect`,
    which gives the game ``CallConnected`` and then the Deepgram message in which the code was said
    (nothing more for a keyed code: the digits that formed it are not forwarded).
PATCHED
    Every Deepgram message goes to the game unchanged (interim results droppable), every key as
    ``Dtmf``. ``Say`` queues a sentence (at most ``say_queue`` waiting) and moves to SPEAKING.
SPEAKING
    Sentences are spoken one at a time, in order. The shell's speaker asks
    :meth:`~PatchMachine.next_speech` for the next one, synthesizes it, and reports its audio
    (:meth:`~PatchMachine.speech_audio`) and its end (:meth:`~PatchMachine.speech_ended`). The
    audio becomes Twilio ``media`` messages and the end a ``mark`` ``say-N``; when Twilio echoes
    the mark the game gets ``SpeechDone``. Barge-in: a ``SpeechStarted`` or a non-empty interim
    result on the caller's channel is forwarded, then the machine stops speaking and the game
    gets ``Interrupted``. Stopping (barge-in, the game's ``Clear``, the game leaving) drops the
    waiting sentences, the pending marks and any Twilio message not yet taken, cancels the
    synthesis (:class:`StopSpeaking`) and queues a ``clear`` if audio went to Twilio since the
    last ``clear``.
ENDED
    ``CallEnded`` went to the game (if one was patched). Every input gives nothing.

The caller's channel is 0 when the stream has the inbound track (``tracks``, as the ``start``
announced them; it comes first). An outbound-only stream (``<Stream track="outbound_track">``)
carries no caller audio: its channel 0 is the other party, in whose words no code is heard and
nothing is a barge-in; keys still count.

Twilio messages (``media``, ``mark``, ``clear``) wait in order in the machine until the shell's one
Twilio writer takes them with :meth:`~PatchMachine.next_for_twilio`; everything for the game is
returned by the input that caused it. Once Twilio's side is gone (:meth:`~PatchMachine.twilio_gone`:
its ``stop``, or its socket closed) nothing more is queued for it, sentences are dropped unsaid and
``Say`` is ignored: the call is ending, ``CallEnded`` follows. The caller has hung up and is never
patched: Deepgram's last finals still come while the call finishes (a patched game gets them), but
no code is matched in them, nor keyed, and ``connect`` patches nothing. A game that leaves frees the
call: back to WAITING, where the caller (still there) may say another code.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from callscribe.core import game_messages
from callscribe.core.codes import CodePool, code_from_results, find_code
from callscribe.core.deepgram import MessageKind
from callscribe.core.keypad import DtmfCollector
from callscribe.core.twilio import CALLER_TRACK, clear_message, mark_message, media_message

__all__ = ["SAY_QUEUE", "CodeHeard", "Output", "PatchMachine", "PatchState", "Speak", "StopSpeaking", "ToGame"]

SAY_QUEUE: Final = 8
KEYPAD_PAUSE_S: Final = 3.0
"""Keys followed by this long a pause are submitted, as with ``#``: a code that also begins a
longer active one (``4`` with ``42`` held), or a mistyped entry, which is then forgotten."""
"""Sentences a game may have waiting to be spoken (besides the one being spoken)."""


class PatchState(enum.Enum):
    WAITING = "waiting for a code"
    PATCHED = "patched"
    SPEAKING = "speaking"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class ToGame:
    """Send ``message`` to the patched game; a droppable one may be skipped for a lagging game."""

    message: str
    droppable: bool = False


@dataclass(frozen=True, slots=True)
class CodeHeard:
    """The caller said or keyed an active code. ``how`` says which, for a log line; ``carrier``
    is the Deepgram message that carried a spoken code. Pass it back to ``connect`` to patch."""

    code: str
    how: str
    carrier: str | None = None


@dataclass(frozen=True, slots=True)
class StopSpeaking:
    """Cancel the synthesis of sentence ``number``; then report its end with ``speech_ended``."""

    number: int


@dataclass(frozen=True, slots=True)
class Speak:
    """Synthesize ``text`` (sentence ``number``): report its audio and its end."""

    number: int
    text: str


Output = ToGame | CodeHeard | StopSpeaking


class PatchMachine:
    """The patch of one call (see the module documentation)."""

    def __init__(
        self,
        call_sid: str,
        stream_sid: str,
        pool: CodePool,
        *,
        can_speak: bool = True,
        say_queue: int = SAY_QUEUE,
        tracks: Sequence[str] = (CALLER_TRACK,),
    ) -> None:
        self.call_sid = call_sid
        self.hears_caller = CALLER_TRACK in tracks
        """Whether the stream carries the caller's audio (channel 0: the inbound track comes first)."""
        self.stream_sid = stream_sid
        self.pool = pool
        self.can_speak = can_speak
        self.say_queue = say_queue
        self.state = PatchState.WAITING
        self.code: str | None = None
        """The code of the patched game (PATCHED and SPEAKING)."""
        self.twilio_open = True
        self._dtmf = DtmfCollector()
        self._keyed_at = 0.0
        self._sentences: deque[str] = deque()
        self._sentence_numbers = itertools.count(1)
        self._synthesizing: int | None = None  # the sentence the shell synthesizes, wanted or not
        self._wanted = False  # and whether its audio is still wanted
        self._pending_marks: dict[str, bool] = {}  # not yet echoed; True once taken for Twilio
        self._mark_numbers = itertools.count(1)
        self._to_twilio: deque[tuple[str, str, str]] = deque()  # (event, message, mark name)
        self._audio_since_clear = False  # media taken for Twilio since the last clear was taken

    @property
    def patched(self) -> bool:
        return self.state in (PatchState.PATCHED, PatchState.SPEAKING)

    @property
    def speaker_has_work(self) -> bool:
        """Whether :meth:`next_for_twilio` or :meth:`next_speech` has something now."""
        return bool(self._to_twilio) or (
            self.state is PatchState.SPEAKING and self._synthesizing is None and bool(self._sentences)
        )

    # -- from the call ---------------------------------------------------------------------

    def deepgram(self, kind: MessageKind, text: str, interim: bool) -> list[Output]:
        """A Deepgram message (``text``, classified as ``kind``); ``interim`` for a non-final result."""
        if self.state is PatchState.WAITING:
            if self._matching and self.hears_caller and kind.type == "Results" and kind.is_final and kind.channel == 0:
                transcript = code_from_results(_json(text))
                code = self.pool.find_code(transcript) if transcript else None
                if code is not None:
                    return [CodeHeard(code, f"said {transcript!r}", text)]
            return []
        if not self.patched:
            return []
        outputs: list[Output] = [ToGame(text, droppable=interim)]
        if self.state is PatchState.SPEAKING and self.hears_caller and _caller_speaks(kind, text, interim):
            outputs += self._stop()
            outputs.append(ToGame(game_messages.interrupted()))
        return outputs

    def dtmf(self, digit: str, now: float) -> list[Output]:
        """A key the caller pressed (Twilio's ``dtmf.digit``) at time ``now`` (seconds)."""
        if self.patched:
            return [ToGame(game_messages.dtmf(digit))]
        if self._matching:
            self._keyed_at = now
            return self._submitted(self._dtmf.press(digit, self.pool.active))
        return []

    def keypad_due(self) -> float | None:
        """When to call `keypad_pause`: a pause's end after keys not yet submitted, else None."""
        if self._matching and self._dtmf.pending:
            return self._keyed_at + KEYPAD_PAUSE_S
        return None

    def keypad_pause(self, now: float) -> list[Output]:
        """Time passed: after a pause of `KEYPAD_PAUSE_S`, what was keyed is submitted as with ``#``."""
        due = self.keypad_due()
        if due is None or now < due:
            return []
        return self._submitted(self._dtmf.submit())

    def _submitted(self, entered: str | None) -> list[Output]:
        code = find_code(entered, self.pool.active) if entered else None
        return [CodeHeard(code, f"keyed {entered}")] if code is not None else []

    def mark(self, name: str) -> list[Output]:
        """Twilio echoed a mark: the audio before it has played (or was cleared)."""
        if not self.patched or not self._pending_marks.get(name):
            return []  # not ours, or not sent yet: Twilio cannot have played it
        del self._pending_marks[name]
        self._settle()
        return [ToGame(game_messages.speech_done(name))]

    def twilio_gone(self) -> list[Output]:
        """Twilio's side is gone (its ``stop``, or its socket closed): nothing can be played any
        more, and the caller, who has hung up, is never patched."""
        if self.state is PatchState.ENDED or not self.twilio_open:
            return []
        self.twilio_open = False
        self._dtmf.reset()
        return self._stop()

    def call_ended(self, reason: str) -> list[Output]:
        """The call is over (``reason`` as told to subscribers)."""
        if self.state is PatchState.ENDED:
            return []
        self.twilio_open = False
        outputs = self._stop()
        if self.patched:
            outputs.append(ToGame(game_messages.call_ended(self.call_sid, reason)))
        self.state, self.code = PatchState.ENDED, None
        return outputs

    # -- from the shell's registry ---------------------------------------------------------

    def connect(self, heard: CodeHeard) -> list[Output]:
        """Patch the call to the game holding ``heard.code`` (the shell found it there and free)."""
        if not self._matching:
            return []
        self.state, self.code = PatchState.PATCHED, heard.code
        self._dtmf.reset()
        outputs: list[Output] = [ToGame(game_messages.call_connected(self.call_sid))]
        if heard.carrier is not None:
            outputs.append(ToGame(heard.carrier))
        return outputs

    # -- from the game ---------------------------------------------------------------------

    def say(self, text: str) -> list[Output]:
        """The game's ``Say``: queue ``text`` to be spoken."""
        if not self.patched or not text.strip():
            return []
        if not self.can_speak:
            return [ToGame(game_messages.error_message("no speech engine is configured"))]
        if not self.twilio_open:
            return []
        if len(self._sentences) >= self.say_queue:
            return [
                ToGame(
                    game_messages.error_message(
                        f"speech queue full ({self.say_queue} sentences waiting); wait for SpeechDone"
                    )
                )
            ]
        self._sentences.append(text)
        self.state = PatchState.SPEAKING
        return []

    def clear(self) -> list[Output]:
        """The game's ``Clear``: stop speaking (no ``Interrupted``: the game asked)."""
        return self._stop() if self.patched else []

    def game_left(self) -> list[Output]:
        """The patched game disconnected: stop speaking; the caller may say another code."""
        if not self.patched:
            return []
        outputs = self._stop()
        self.state, self.code = PatchState.WAITING, None
        return outputs

    # -- from the shell's Twilio writer and speaker ----------------------------------------

    def next_for_twilio(self) -> str | None:
        """The next message to send to Twilio, in order; None when there is none now."""
        if not self._to_twilio:
            return None
        event, message, name = self._to_twilio.popleft()
        if event == "media":
            self._audio_since_clear = True
        elif event == "clear":
            self._audio_since_clear = False
        else:
            self._pending_marks[name] = True
        return message

    def next_speech(self) -> Speak | None:
        """The next sentence to synthesize, once the previous one's end was reported; else None."""
        if self.state is not PatchState.SPEAKING or self._synthesizing is not None or not self._sentences:
            return None
        number = next(self._sentence_numbers)
        self._synthesizing, self._wanted = number, True
        return Speak(number, self._sentences.popleft())

    def speech_audio(self, number: int, chunk: bytes) -> list[Output]:
        """Mu-law audio of sentence ``number``: queued for Twilio if still wanted."""
        if number == self._synthesizing and self._wanted and chunk:
            self._to_twilio.append(("media", media_message(self.stream_sid, chunk), ""))
        return []

    def speech_ended(self, number: int, error: str | None = None) -> list[Output]:
        """Synthesis of sentence ``number`` is over: finished, stopped, or failed with ``error``."""
        if number != self._synthesizing:
            return []
        wanted, self._synthesizing, self._wanted = self._wanted, None, False
        outputs: list[Output] = []
        if wanted and error is not None:
            outputs.append(ToGame(game_messages.error_message(f"speech failed: {error}")))
        elif wanted:
            name = f"say-{next(self._mark_numbers)}"
            self._pending_marks[name] = False
            self._to_twilio.append(("mark", mark_message(self.stream_sid, name), name))
        self._settle()
        return outputs

    # -- internals -------------------------------------------------------------------------

    @property
    def _matching(self) -> bool:
        """Codes are matched (and a game may be patched) while no game is and the caller is there."""
        return self.state is PatchState.WAITING and self.twilio_open

    def _stop(self) -> list[Output]:
        outputs: list[Output] = []
        if self._synthesizing is not None and self._wanted:
            self._wanted = False
            outputs.append(StopSpeaking(self._synthesizing))
        self._sentences.clear()
        self._pending_marks.clear()
        self._to_twilio.clear()
        if self._audio_since_clear and self.twilio_open:
            self._to_twilio.append(("clear", clear_message(self.stream_sid), ""))
        self._settle()
        return outputs

    def _settle(self) -> None:
        """PATCHED or SPEAKING, by whether anything is still to be said or to be played."""
        if self.patched:
            busy = self._sentences or (self._synthesizing is not None and self._wanted) or self._pending_marks
            self.state = PatchState.SPEAKING if busy else PatchState.PATCHED


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _caller_speaks(kind: MessageKind, text: str, interim: bool) -> bool:
    """Whether the caller (channel 0) started talking: ``SpeechStarted``, or an interim result with words."""
    if kind.type == "SpeechStarted":
        message = _json(text)  # SpeechStarted names its channel in "channel", not "channel_index"
        channel = message.get("channel", [0]) if isinstance(message, dict) else None
        return isinstance(channel, list) and bool(channel) and channel[0] == 0
    if not interim or kind.channel != 0:
        return False
    message = _json(text)
    channel = message.get("channel") if isinstance(message, dict) else None
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    if not isinstance(alternatives, list):
        return False
    return any(isinstance(a, dict) and str(a.get("transcript", "")).strip() for a in alternatives)
