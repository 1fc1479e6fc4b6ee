"""A late subscriber of a call that another process is handling: the store's finals, then the hub's
history after the last of them, then live. No IO.

The call's process records each final (its store writer commits a batch a few times a second) and
publishes it at once. A subscriber joining on another process reads the finals already committed
from the shared store; the finals published since the last commit are in no store yet and were
published before it subscribed. The hub keeps the call's messages with ids (Redis Streams, see
``callscribe.core.fanout``), so the subscriber's process subscribes from the start of that history
(``after=0-0``, with ids) and passes each message through :class:`CatchUp`:

- until the last final of the store's history comes by, messages are skipped: the subscriber has
  those finals, and the rest of that part of the call is before its join (as for a subscriber on the
  call's own process, which gets the finals so far, then live messages);
- the subscriber is also caught up on a final that starts after that last final (it was passed
  without being seen: the hub no longer kept it), and on the hub's notice that part of the history
  is gone;
- from then on every message passes, without its id (a plain subscriber gets Deepgram's JSON byte
  for byte), except a final the store's history already gave, which passes once.

With no history at all (nothing committed yet) everything passes from the start of the call.
"""

from __future__ import annotations

import msgspec

from callscribe.core.fanout import GAP_NOTICE

__all__ = ["CatchUp", "without_id"]

_ID_PREFIX = '{"id": "'


class _Final(msgspec.Struct):
    type: str = ""
    is_final: bool = False
    start: float = 0.0
    source: str = ""
    message: str = ""


_decoder = msgspec.json.Decoder(_Final)


def without_id(text: str) -> str:
    """``text`` as it was before :func:`callscribe.core.fanout.with_id` put an id first in it."""
    if not text.startswith(_ID_PREFIX):
        return text
    end = text.find('"', len(_ID_PREFIX))
    if end < 0:
        return text
    rest = text[end + 1 :]
    if rest.startswith(", "):
        return "{" + rest[2:]
    return "{" + rest if rest.startswith("}") else text


def _kind(text: str) -> _Final | None:
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError:
        return None


class CatchUp:
    """What of a replayed-then-live subscription a late subscriber gets, given the store's finals
    (``history``, already sent to it, in order)."""

    def __init__(self, history: list[str]) -> None:
        self._sent = set(history)
        self._last = history[-1] if history else None
        last = _kind(self._last) if self._last is not None else None
        self._last_start = last.start if last is not None else 0.0
        self.caught_up = self._last is None

    def sent_already(self, text: str) -> bool:
        """For a subscriber on the call's own process (live messages only, no replay): whether
        ``text`` is a final the store's history gave (then it is skipped, once)."""
        if text in self._sent:
            self._sent.discard(text)
            return True
        return False

    def offer(self, message: str) -> str | None:
        """The text to send for ``message`` (as the hub delivered it, maybe with an id), or None."""
        text = without_id(message)
        if not self.caught_up:
            if text == self._last:
                self.caught_up = True
                self._sent.discard(text)
                return None
            kind = _kind(text)
            if kind is None:
                return None
            if kind.type == "Error" and kind.source == "callscribe" and kind.message.startswith(GAP_NOTICE):
                self.caught_up = True  # the hub's gap notice: what follows is all there is
                return text
            if not (kind.type == "Results" and kind.is_final and kind.start > self._last_start):
                return None
            self.caught_up = True
        if text in self._sent:
            self._sent.discard(text)
            return None
        return text
