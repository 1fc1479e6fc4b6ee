"""A call's messages between processes, and the ids that let a subscriber resume. No IO.

Every message a call publishes has a *kind*: ``m`` a message (a final result, a notice, ...), ``i``
a droppable one (an interim result), ``e`` the end of the call (its close code and reason as JSON).
The messages that count for resuming -- ``m`` and ``e`` -- get an *id* when they are kept in the
call's history: Redis Stream ids (``<ms>-<seq>``), or ids of the same shape made by the one-process
hub. Ids of one call only grow; a subscriber compares them with :func:`id_key`, never as strings.
Droppable messages are not kept and have no id.

Between processes (Redis pub/sub, see ``callscribe.server.redis_hub``) a message travels as one
string: its kind letter, the publishing process's 8-character origin, then for ``m`` and ``e`` its
id and a space, then the text. :func:`parse_wire` reads it back, and anything else becomes
:data:`MALFORMED` -- it never raises.

A subscriber that asked for ids gets each kept message with its id as the object's first field,
``{"id": "1718000000000-0", "type": "Results", ...}`` (:func:`with_id`: the rest of the text is
unchanged, byte for byte); droppable ones arrive without an id, and plain subscribers get the text
alone. :class:`Resume` is the subscriber's side: what to pass on, what is a duplicate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

__all__ = [
    "DROPPABLE",
    "END",
    "GAP_NOTICE",
    "MALFORMED",
    "MAX_WAIT_S",
    "MESSAGE",
    "ORIGIN_LENGTH",
    "IdClock",
    "Resume",
    "ResumeRequest",
    "WireMessage",
    "end_text",
    "id_key",
    "parse_end",
    "parse_wire",
    "resume_request",
    "valid_id",
    "wire",
    "with_id",
]

MAX_WAIT_S: Final = 3600.0
"""`/client?wait=SECONDS`: the longest a subscriber may wait for its call to start."""
GAP_NOTICE: Final = "cannot resume right after"
"""How the message of the hub's notice to a subscriber resuming from before its history begins."""
MESSAGE: Final = "m"
DROPPABLE: Final = "i"
END: Final = "e"
ORIGIN_LENGTH: Final = 8
_ID = re.compile(r"(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,19})\Z")
_MAX = 2**64 - 1


def valid_id(text: str) -> bool:
    """Whether ``text`` is an id (``<ms>-<seq>``, each a decimal that fits 64 bits)."""
    match = _ID.match(text)
    return match is not None and int(match[1]) <= _MAX and int(match[2]) <= _MAX


def id_key(message_id: str) -> tuple[int, int]:
    """The id as a pair that orders like the history; an invalid id sorts first."""
    if not valid_id(message_id):
        return (-1, -1)
    ms, seq = message_id.split("-")
    return (int(ms), int(seq))


@dataclass(frozen=True, slots=True)
class WireMessage:
    kind: str
    origin: str
    message_id: str
    """"" for a droppable message."""
    text: str


MALFORMED: Final = WireMessage("", "", "", "")


def wire(kind: str, origin: str, text: str, message_id: str = "") -> str:
    """One message as it travels between processes."""
    return kind + origin + (message_id + " " if kind != DROPPABLE else "") + text


def parse_wire(data: object) -> WireMessage:
    """A message from another process, or :data:`MALFORMED`."""
    if not isinstance(data, str) or len(data) <= ORIGIN_LENGTH or data[0] not in (MESSAGE, DROPPABLE, END):
        return MALFORMED
    kind, origin, rest = data[0], data[1 : 1 + ORIGIN_LENGTH], data[1 + ORIGIN_LENGTH :]
    if kind == DROPPABLE:
        return WireMessage(kind, origin, "", rest)
    message_id, space, text = rest.partition(" ")
    if not space or not valid_id(message_id):
        return MALFORMED
    if kind == END and parse_end(text) is None:
        return MALFORMED
    return WireMessage(kind, origin, message_id, text)


def end_text(code: int, reason: str) -> str:
    return json.dumps({"code": code, "reason": reason})


def parse_end(text: str) -> tuple[int, str] | None:
    """The close code and reason of an end message, or None if it is not one."""
    try:
        end = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(end, dict):
        return None
    code, reason = end.get("code"), end.get("reason")
    if isinstance(code, int) and not isinstance(code, bool) and _sendable(code) and isinstance(reason, str):
        try:
            reason.encode()
        except UnicodeEncodeError:  # a lone surrogate: no close frame can carry it
            return None
        return code, reason
    return None


def _sendable(code: int) -> bool:
    """Whether a close frame may carry `code` (RFC 6455 7.4: 1000-4999, not the reserved ones)."""
    return 1000 <= code <= 4999 and code not in (1004, 1005, 1006, 1015) and not 1016 <= code <= 2999


def with_id(text: str, message_id: str) -> str:
    """``text`` (a JSON object) with ``"id"`` as its first field; any other text is returned as it is."""
    stripped = text.lstrip()
    if not stripped.startswith("{"):
        return text
    rest = stripped[1:]
    separator = "" if rest.lstrip().startswith("}") else ", "
    return '{"id": ' + json.dumps(message_id) + separator + rest


class Resume:
    """One subscriber's position in a call's history: kept messages pass once each, in id order.

    ``after`` is the id of the last message the subscriber saw ("" for none). A kept message
    passes when its id is above the last one passed (:meth:`admit`); a droppable one always does.
    History read back and live messages may overlap in any way: each kept message passes once.
    """

    def __init__(self, after: str = "") -> None:
        self.last = after
        self._last_key = id_key(after) if after else (-1, -1)

    def admit(self, message_id: str) -> bool:
        """Whether the kept message with ``message_id`` is new to the subscriber (and note it)."""
        key = id_key(message_id)
        if key <= self._last_key:
            return False
        self.last, self._last_key = message_id, key
        return True

    def skip_to(self, message_id: str) -> None:
        """Count everything up to ``message_id`` as seen (the subscriber joined after it)."""
        if id_key(message_id) > self._last_key:
            self.last, self._last_key = message_id, id_key(message_id)


class IdClock:
    """Ids for one call's kept messages, made by the one-process hub: ``<ms>-<seq>`` like Redis's,
    growing even if the clock goes back (``now_ms`` is the wall clock, passed in)."""

    def __init__(self) -> None:
        self._ms, self._seq = -1, 0

    def next(self, now_ms: int) -> str:
        if now_ms > self._ms:
            self._ms, self._seq = now_ms, 0
        else:
            self._seq += 1
        return f"{self._ms}-{self._seq}"


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """What a subscriber asked for in its query string: ids (``ids=1``), or to resume (``after=ID``)."""

    ids: bool = False
    after: str | None = None
    error: str = ""
    """Why the query is refused ("" if it is not)."""


def resume_request(query: str) -> ResumeRequest:
    """``ids`` and ``after`` from a ``/client`` query string; other parameters are not looked at."""
    params = parse_qs(query, keep_blank_values=True)
    ids_values, after_values = params.get("ids", []), params.get("after", [])
    if len(ids_values) > 1 or len(after_values) > 1:
        return ResumeRequest(error="give ids and after at most once each")
    ids_text = ids_values[0] if ids_values else "0"
    if ids_text not in ("0", "1", "true", "false"):
        return ResumeRequest(error=f"ids must be 1 or 0, not {ids_text[:20]!r}")
    after = after_values[0] if after_values else None
    if after is not None and not valid_id(after):
        return ResumeRequest(error=f"after must be a message id like 1718000000000-0, not {after[:40]!r}")
    return ResumeRequest(ids=ids_text in ("1", "true") or after is not None, after=after)
