"""The board of live calls behind the dashboard's event feed (`/api/events`): from what the shell saw
happen to calls, which events each viewer is sent.

Facts in (times are seconds since the epoch, passed in):

- `started(start)`: a stream of a call of this process started (`start` arrived). A call may have
  several streams (Twilio can fork a call twice); it is live from its first to the end of its last.
- `notice(call_sid, message)`: callscribe published one of its notices for the call
  (`Reconnecting`, `Resumed`, `Error`, with `"source": "callscribe"`): the call's Deepgram state.
- `ended(call_sid, outcome, now)`: a stream of a call of this process ended, with how (`Outcome`);
  a game it was patched to waits for a caller again from then on.
- `games(patches)`: the game codes in use and the call each is patched to (or None).
- `listed(call_sids, now)`: the calls the hub lists as live. With a hub shared by several
  processes (Redis) that includes calls of other processes: they appear on the board with what the
  list tells (their callSid) and leave it when the list no longer has them.

Events out, each a JSON-ready dict (the feed's wire format, documented in the README):

    {"type": "snapshot", "now": ISO, "calls": [CALL...], "games": [GAME...]}   first, to each viewer
    {"type": "call.started", "call": CALL}
    {"type": "call.updated", "call": CALL}          its Deepgram state or game changed
    {"type": "call.ended", "callSid": ..., "outcome": "ended"|...|null, "endedAt": ISO}
    {"type": "games", "games": [GAME...]}           the codes in use changed

    CALL = {"callSid", "from", "to", "tracks", "startedAt", "deepgram", "deepgramMessage",
            "gameCode", "here"}
    GAME = {"code", "callSid"}

`deepgram` is "streaming" (nothing has gone wrong), "reconnecting" or "failed" (given up: the call
goes on untranscribed). `here` is false for a call of another process, of which only the callSid
and when it was first listed are known. A viewer whose token is for one call gets only that call's
events (`for_call`).

Bad input (a notice that is not callscribe's JSON, facts about unknown calls) changes nothing and
raises nothing.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from callscribe.core.call_record import CallStart, Outcome, iso_time

ENDED_MEMORY_S = 30.0
"""A call of this process that ended is not taken for another process's call for this long, even
if the shared hub still lists it (its entry there goes a little after)."""


class DeepgramState(enum.StrEnum):
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


NOTICE_STATES = {
    "Reconnecting": DeepgramState.RECONNECTING,
    "Resumed": DeepgramState.STREAMING,
    "Error": DeepgramState.FAILED,
}
"""What each of callscribe's notices says of a call's transcription."""

Event = dict[str, Any]


@dataclass(frozen=True)
class LiveCall:
    call_sid: str
    from_number: str | None
    to_number: str | None
    tracks: tuple[str, ...]
    started_at: float
    here: bool = True
    """Handled by this process (False: only listed by a shared hub)."""
    deepgram: DeepgramState = DeepgramState.STREAMING
    deepgram_message: str | None = None
    game_code: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "callSid": self.call_sid,
            "from": self.from_number,
            "to": self.to_number,
            "tracks": list(self.tracks),
            "startedAt": iso_time(self.started_at),
            "deepgram": str(self.deepgram),
            "deepgramMessage": self.deepgram_message,
            "gameCode": self.game_code,
            "here": self.here,
        }


@dataclass
class CallBoard:
    calls: dict[str, LiveCall] = field(default_factory=dict)
    patches: dict[str, str | None] = field(default_factory=dict)
    """Game code -> the callSid patched to it (None: a game waiting for a caller)."""
    _streams: dict[str, int] = field(default_factory=dict)
    _ended_at: dict[str, float] = field(default_factory=dict)

    # -- facts ------------------------------------------------------------------------------------

    def started(self, start: CallStart) -> list[Event]:
        sid = start.call_sid
        self._streams[sid] = self._streams.get(sid, 0) + 1
        self._ended_at.pop(sid, None)
        known = self.calls.get(sid)
        if known is not None and known.here:
            return []  # a second stream of a call already on the board
        call = LiveCall(
            call_sid=sid,
            from_number=start.from_number,
            to_number=start.to_number,
            tracks=start.tracks,
            started_at=known.started_at if known else start.started_at,
            game_code=self._game_of(sid),
        )
        self.calls[sid] = call
        return [{"type": "call.updated" if known else "call.started", "call": call.json()}]

    def notice(self, call_sid: str, message: str) -> list[Event]:
        call = self.calls.get(call_sid)
        parsed = _notice(message)
        if call is None or parsed is None:
            return []
        state, text = parsed
        if (state, text) == (call.deepgram, call.deepgram_message):
            return []
        return self._update(replace(call, deepgram=state, deepgram_message=text))

    def ended(self, call_sid: str, outcome: Outcome | None, now: float) -> list[Event]:
        streams = self._streams.get(call_sid, 0) - 1
        if streams > 0:
            self._streams[call_sid] = streams
            return []
        self._streams.pop(call_sid, None)
        if call_sid not in self.calls:
            return []
        del self.calls[call_sid]
        self._forget_old(now)
        self._ended_at[call_sid] = now
        events = [_ended(call_sid, outcome, now)]
        if call_sid in self.patches.values():  # its game waits for the next caller
            events += self.games({code: (None if sid == call_sid else sid) for code, sid in self.patches.items()})
        return events

    def games(self, patches: Mapping[str, str | None]) -> list[Event]:
        new = dict(sorted(patches.items()))
        if new == self.patches:
            return []
        self.patches = new
        events: list[Event] = [{"type": "games", "games": self.games_json()}]
        for call in list(self.calls.values()):
            code = self._game_of(call.call_sid)
            if code != call.game_code:
                events += self._update(replace(call, game_code=code))
        return events

    def listed(self, call_sids: Iterable[str], now: float) -> list[Event]:
        self._forget_old(now)
        live = set(call_sids)
        events: list[Event] = []
        for sid in sorted(live):
            if sid not in self.calls and sid not in self._ended_at:
                call = LiveCall(sid, None, None, (), started_at=now, here=False, game_code=self._game_of(sid))
                self.calls[sid] = call
                events.append({"type": "call.started", "call": call.json()})
        for call in list(self.calls.values()):
            if not call.here and call.call_sid not in live:
                del self.calls[call.call_sid]
                events.append(_ended(call.call_sid, None, now))
        return events

    # -- what viewers see -------------------------------------------------------------------------

    def snapshot(self, now: float) -> Event:
        calls = sorted(self.calls.values(), key=lambda call: (call.started_at, call.call_sid))
        return {
            "type": "snapshot",
            "now": iso_time(now),
            "calls": [call.json() for call in calls],
            "games": self.games_json(),
        }

    def games_json(self) -> list[dict[str, str | None]]:
        return [{"code": code, "callSid": sid} for code, sid in self.patches.items()]

    # -- inside -----------------------------------------------------------------------------------

    def _update(self, call: LiveCall) -> list[Event]:
        self.calls[call.call_sid] = call
        return [{"type": "call.updated", "call": call.json()}]

    def _game_of(self, call_sid: str) -> str | None:
        return next((code for code, sid in self.patches.items() if sid == call_sid), None)

    def _forget_old(self, now: float) -> None:
        for sid, at in list(self._ended_at.items()):
            if now - at >= ENDED_MEMORY_S or at > now:
                del self._ended_at[sid]


def _ended(call_sid: str, outcome: Outcome | None, now: float) -> Event:
    return {
        "type": "call.ended",
        "callSid": call_sid,
        "outcome": None if outcome is None else str(outcome),
        "endedAt": iso_time(now),
    }


def _notice(message: str) -> tuple[DeepgramState, str | None] | None:
    """The Deepgram state a callscribe notice announces, and its words; None if it is not one."""
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or parsed.get("source") != "callscribe":
        return None
    kind = parsed.get("type")
    state = NOTICE_STATES.get(kind) if isinstance(kind, str) else None
    if state is None:
        return None
    text = parsed.get("message")
    return state, text if isinstance(text, str) else None


def for_call(event: Event, call_sid: str | None) -> Event | None:
    """`event` as a viewer whose token is for `call_sid` only sees it (None: not at all); every
    event for a viewer with no such limit."""
    if call_sid is None:
        return event
    kind = event["type"]
    if kind == "snapshot":
        return {
            **event,
            "calls": [call for call in event["calls"] if call["callSid"] == call_sid],
            "games": [game for game in event["games"] if game["callSid"] == call_sid],
        }
    if kind == "games":
        return {**event, "games": [game for game in event["games"] if game["callSid"] == call_sid]}
    if kind in ("call.started", "call.updated"):
        return event if event["call"]["callSid"] == call_sid else None
    if kind == "call.ended":
        return event if event["callSid"] == call_sid else None
    return None
