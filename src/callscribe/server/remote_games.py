"""Patches between a call on this process and a game on another: the stand-ins on each side.

On the call's process the `GamePatch` holds a `RemoteGame` where it would hold a `Game`: what the
patch machine has for the game goes out as envelopes, and the game's commands coming back are
carried out on the patch as if the game had called it. On the game's process the `Game` holds a
`RemoteCall` where it would hold a `GamePatch`. The decisions -- take or refuse a patch, which
envelope counts, what a dead peer means -- are `callscribe.core.game_link`'s; `RemoteGames`
carries envelopes between the two and the transport (`send`, and `receive` for what arrives).
The transport is Redis (redis_games.py), which also says when a process died (`peer_died`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from callscribe.core.game_link import (
    CLEAR,
    PATCH,
    SAY,
    TO_GAME,
    UNPATCH,
    CallEnd,
    Envelope,
    GameEnd,
    refusal,
)
from callscribe.server.games import CodeHolder, Game, GamePatch, GameRegistry

log = logging.getLogger(__name__)

Send = Callable[[str, Envelope], None]
"""Send an envelope to the process with this origin, without waiting."""


class RemoteGame:
    """A game on another process, as the call's patch sees it."""

    def __init__(self, links: RemoteGames, patch: GamePatch, holder: CodeHolder, code: str) -> None:
        self.code = code
        self.patch = patch
        self.origin = holder.origin
        self.end = CallEnd(patch.call_sid, links.origin, code, holder.game_id, holder.origin)
        self._links = links

    def send(self, message: str, droppable: bool = False) -> None:
        envelope = self.end.to_game(message, droppable)
        if envelope is not None:
            self._links.send(self.origin, envelope)

    def unpatch(self, patch: GamePatch) -> None:
        envelope = self.end.unpatch()
        if envelope is not None:
            self._links.send(self.origin, envelope)
        self._links.forget(self)


class RemoteCall:
    """A call on another process, as the game patched to it sees it."""

    def __init__(self, links: RemoteGames, game: Game, end: GameEnd) -> None:
        self.game, self.end, self._links = game, end, links
        assert end.call is not None
        self.call_sid, self.origin = end.call

    def say(self, text: str) -> None:
        self._send(self.end.command(SAY, text))

    def clear(self) -> None:
        self._send(self.end.command(CLEAR))

    def game_left(self) -> None:
        self._send(self.end.left())
        self._links.ends.pop(self.game.game_id, None)

    def _send(self, envelope: Envelope | None) -> None:
        if envelope is not None:
            self._links.send(self.origin, envelope)


class RemoteGames:
    """This process's patches across processes, both ways (the registry's `GameLinks`)."""

    def __init__(self, registry: GameRegistry, origin: str, send: Send) -> None:
        self.registry, self.origin, self.send = registry, origin, send
        self.calls: dict[str, RemoteGame] = {}
        """This process's calls patched to games elsewhere, by callSid."""
        self.ends: dict[str, GameEnd] = {}
        """This process's games' ends of patches, by game id."""
        registry.links = self

    # -- the call's side ------------------------------------------------------------------------

    def connect(self, patch: GamePatch, holder: CodeHolder, code: str) -> RemoteGame:
        remote = RemoteGame(self, patch, holder, code)
        self.calls[patch.call_sid] = remote
        self.send(holder.origin, remote.end.patch())
        return remote

    def forget_game(self, game_id: str) -> None:
        """A game of this process left (also one whose patch was refused, ended or lost)."""
        self.ends.pop(game_id, None)

    def forget(self, remote: RemoteGame) -> None:
        if self.calls.get(remote.end.call_sid) is remote:
            del self.calls[remote.end.call_sid]

    def _to_call(self, envelope: Envelope) -> None:
        remote = self.calls.get(envelope.call_sid)
        action = remote.end.receive(envelope) if remote is not None else None
        if remote is None or action is None:
            return
        notice = remote.end.lost_notice()
        if notice is not None:
            self.send(remote.origin, notice)
        kind, text = action
        if kind == SAY:
            remote.patch.say(text)
        elif kind == CLEAR:
            remote.patch.clear()
        else:
            log.info("call %s: game %s on another process let go: %s", remote.end.call_sid, remote.code, text)
            remote.patch.game_left()

    # -- the game's side ------------------------------------------------------------------------

    def _to_game(self, envelope: Envelope) -> None:
        game = next((g for g in self.registry.games.values() if g.game_id == envelope.game_id), None)
        if game is None:
            if envelope.kind == PATCH:
                self.send(envelope.origin, refusal(envelope, self.origin, "game gone"))
            return
        end = self.ends.setdefault(game.game_id, GameEnd(game.game_id, self.origin))
        patched_before = end.call
        for_game, answer = end.receive(envelope, busy=game.patch is not None and patched_before is None)
        if answer is not None:
            self.send(envelope.origin, answer)
        elif envelope.kind == PATCH and end.call is not None:
            game.patch = RemoteCall(self, game, end)
            log.info("game %s patched to call %s on another process", game.code, envelope.call_sid)
        for message in for_game:
            game.send(message.message, message.droppable)
        if envelope.kind == UNPATCH and end.call is None and isinstance(game.patch, RemoteCall):
            game.patch = None

    # -- both ------------------------------------------------------------------------------------

    def receive(self, envelope: Envelope) -> None:
        """An envelope for this process (from the transport)."""
        if envelope.kind in (PATCH, TO_GAME, UNPATCH):
            self._to_game(envelope)
        else:
            self._to_call(envelope)

    def peer_died(self, alive: Callable[[str], bool]) -> None:
        """Let go of the patches whose other end's process is not `alive`."""
        for remote in list(self.calls.values()):
            if not alive(remote.origin) and remote.end.peer_gone() is not None:
                log.warning("call %s: the process of game %s stopped answering", remote.end.call_sid, remote.code)
                remote.patch.game_left()
        for game in list(self.registry.games.values()):
            patch = game.patch
            if isinstance(patch, RemoteCall) and not alive(patch.origin):
                log.warning("game %s: the process of call %s stopped answering", game.code, patch.call_sid)
                for message in patch.end.peer_gone():
                    game.send(message.message, message.droppable)
                game.patch = None
