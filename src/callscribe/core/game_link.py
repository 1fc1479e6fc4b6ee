"""A patch between two processes: a call on one, the game holding the caller's code on another. No IO.

In one process a call's `GamePatch` hands the machine's messages to the `Game` object and the game's
commands come back by method call. When the game is connected to another process, the two ends
exchange :class:`Envelope` s instead (through Redis, see ``callscribe.server.redis_games``); the
:class:`~callscribe.core.patch.PatchMachine` still makes every decision about the call, on the
call's process, where its Twilio socket and speech are. This module decides the rest:

Call's process (:class:`CallEnd`, one per patched call)          game's process (:class:`GameEnd`, one per game)
    the machine heard the game's code --- ``patch`` ------------>  taken if the game is there and free,
                                        <-- ``refused`` ---------  else refused (busy, gone)
    the machine's messages for the game -- ``to_game`` -------->  to the game, in order
    the call is over, or let go -------- ``unpatch`` ---------->  the game is free again
    ``say`` / ``clear`` / ``left`` <----------------------------  the game's commands; it disconnected

The call's process patches at once (the machine connects when it hears the code, as in one
process, so the game gets ``CallConnected``, the carrying result and everything after it in
order); a ``refused`` then takes the patch back, as when the game leaves. Each direction of a
link numbers its envelopes from 0: one that is not the next expected is either old (ignored) or
past a gap (envelopes were lost between the processes: the game is told, and the link goes on).
When the other end's process dies (its lease ran out) the call's end lets the patch go (the caller
may say another code) and the game's end tells the game, ``Error`` then ``CallEnded``.

Envelopes are JSON objects; :func:`decode` turns anything that is not one into None, never raising.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Final

from callscribe.core import game_messages

__all__ = [
    "CLEAR",
    "LEFT",
    "PATCH",
    "REFUSED",
    "SAY",
    "TO_GAME",
    "UNPATCH",
    "CallEnd",
    "Envelope",
    "ForGame",
    "GameEnd",
    "decode",
    "encode",
    "refusal",
]

PATCH: Final = "patch"
TO_GAME: Final = "to_game"
UNPATCH: Final = "unpatch"
REFUSED: Final = "refused"
SAY: Final = "say"
CLEAR: Final = "clear"
LEFT: Final = "left"
_TO_GAME_SIDE = (PATCH, TO_GAME, UNPATCH)
_TO_CALL_SIDE = (REFUSED, SAY, CLEAR, LEFT)
PEER_GONE: Final = "the server at the other end of the patch stopped answering"


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    call_sid: str
    game_id: str
    origin: str
    """The sending process (where answers go)."""
    seq: int
    text: str = ""
    """A message for the game (``to_game``), text to say (``say``), a reason (``refused``, ``left``),
    or the code heard (``patch``)."""
    droppable: bool = False


def encode(envelope: Envelope) -> str:
    return json.dumps(asdict(envelope), separators=(",", ":"))


def decode(data: object) -> Envelope | None:
    """An envelope from another process, or None for anything else."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError:
            return None
    if not isinstance(data, str):
        return None
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict) or set(fields) != set(Envelope.__slots__):
        return None
    kind, seq, droppable = fields["kind"], fields["seq"], fields["droppable"]
    strings = all(isinstance(fields[name], str) for name in ("kind", "call_sid", "game_id", "origin", "text"))
    if not strings or kind not in (*_TO_GAME_SIDE, *_TO_CALL_SIDE) or not isinstance(droppable, bool):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return None
    return Envelope(**fields)


class _Numbering:
    """Numbers going out, and the check of those coming in."""

    def __init__(self) -> None:
        self.sent = 0
        self.expected = 0

    def next(self) -> int:
        self.sent += 1
        return self.sent - 1

    def check(self, seq: int) -> int | None:
        """None for an old envelope (ignore it); else how many were lost before it (0: in order)."""
        if seq < self.expected:
            return None
        lost, self.expected = seq - self.expected, seq + 1
        return lost


class CallEnd:
    """The call's process's end of one patch to a game on another process."""

    def __init__(self, call_sid: str, origin: str, code: str, game_id: str, game_origin: str) -> None:
        self.call_sid, self.origin, self.code = call_sid, origin, code
        self.game_id, self.game_origin = game_id, game_origin
        self.open = True
        self._numbers = _Numbering()
        self._lost_from_game = 0

    def _envelope(self, kind: str, text: str = "", droppable: bool = False) -> Envelope:
        return Envelope(kind, self.call_sid, self.game_id, self.origin, self._numbers.next(), text, droppable)

    def patch(self) -> Envelope:
        """The first envelope: the caller said (or keyed) the game's code."""
        return self._envelope(PATCH, self.code)

    def to_game(self, message: str, droppable: bool) -> Envelope | None:
        return self._envelope(TO_GAME, message, droppable) if self.open else None

    def unpatch(self) -> Envelope | None:
        """The call lets the game go (the call ended, or the game left): the last envelope."""
        if not self.open:
            return None
        self.open = False
        return self._envelope(UNPATCH)

    def receive(self, envelope: Envelope) -> tuple[str, str] | None:
        """What the game's end said, as (kind, text) for the patch to carry out: ``say`` with the
        text, ``clear``, or ``left`` with the reason (the game left, or refused the patch). None
        for anything not from this patch's game, out of date, or after the patch was let go."""
        if not self.open or envelope.kind not in _TO_CALL_SIDE:
            return None
        if (envelope.call_sid, envelope.game_id, envelope.origin) != (self.call_sid, self.game_id, self.game_origin):
            return None
        lost = self._numbers.check(envelope.seq)
        if lost is None:
            return None
        self._lost_from_game += lost
        if envelope.kind in (LEFT, REFUSED):
            self.open = False
            return (LEFT, envelope.text)
        return (envelope.kind, envelope.text)

    def lost_notice(self) -> Envelope | None:
        """After `receive`: an Error for the game when envelopes it sent were lost on the way (a Say
        or Clear that never reached the call, so no SpeechDone will come for it); None otherwise."""
        lost, self._lost_from_game = self._lost_from_game, 0
        if not lost:
            return None
        text = f"{lost} message(s) of the game were lost between servers: a Say or Clear did not reach the call"
        return self.to_game(game_messages.error_message(text), False)

    def peer_gone(self) -> tuple[str, str] | None:
        """The game's process died: the patch is let go (like the game leaving)."""
        if not self.open:
            return None
        self.open = False
        return (LEFT, PEER_GONE)


@dataclass(frozen=True, slots=True)
class ForGame:
    """A message for the game's WebSocket (droppable ones may be skipped for a lagging game)."""

    message: str
    droppable: bool = False


class GameEnd:
    """The game's process's end: which remote call (if any) the game is patched to."""

    def __init__(self, game_id: str, origin: str) -> None:
        self.game_id, self.origin = game_id, origin
        self.call: tuple[str, str] | None = None
        """(callSid, the call's process) while patched."""
        self._numbers = _Numbering()

    def _envelope(self, kind: str, text: str = "") -> Envelope:
        assert self.call is not None
        return Envelope(kind, self.call[0], self.game_id, self.origin, self._numbers.next(), text)

    def receive(self, envelope: Envelope, *, busy: bool) -> tuple[list[ForGame], Envelope | None]:
        """An envelope from a call's process: messages for the game, and an answer to send back.
        ``busy``: the game is patched to a call of its own process."""
        if envelope.kind not in _TO_GAME_SIDE or envelope.game_id != self.game_id:
            return [], None
        caller = (envelope.call_sid, envelope.origin)
        if envelope.kind == PATCH:
            if busy or self.call is not None:
                return [], refusal(envelope, self.origin, "game busy")
            self.call, self._numbers = caller, _Numbering()
            self._numbers.check(envelope.seq)
            return [], None
        if caller != self.call:
            return [], None
        lost = self._numbers.check(envelope.seq)
        if lost is None:
            return [], None
        out = []
        if lost:
            out.append(ForGame(game_messages.error_message(f"{lost} message(s) of the call were lost between servers")))
        if envelope.kind == UNPATCH:
            self.call = None
        else:
            out.append(ForGame(envelope.text, envelope.droppable))
        return out, None

    def command(self, kind: str, text: str = "") -> Envelope | None:
        """The game's ``say`` (with text) or ``clear`` for the patched call; None if not patched."""
        return self._envelope(kind, text) if self.call is not None else None

    def left(self, reason: str = "game disconnected") -> Envelope | None:
        """The game disconnected: the call is told (None if it was not patched)."""
        if self.call is None:
            return None
        envelope = self._envelope(LEFT, reason)
        self.call = None
        return envelope

    def peer_gone(self) -> list[ForGame]:
        """The call's process died: the game is told, and is free again."""
        if self.call is None:
            return []
        call_sid, self.call = self.call[0], None
        return [
            ForGame(game_messages.error_message(PEER_GONE)),
            ForGame(game_messages.call_ended(call_sid, PEER_GONE)),
        ]


def refusal(envelope: Envelope, origin: str, reason: str) -> Envelope:
    """The answer to a ``patch`` for a game that is not there (any more) on process ``origin``."""
    return Envelope(REFUSED, envelope.call_sid, envelope.game_id, origin, 0, reason)
