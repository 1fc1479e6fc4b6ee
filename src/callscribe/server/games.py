"""Games: callers patch themselves into a game by saying (or keying in) its code, and the game talks back.

A game connects to `/game`, is given the phone number to call and a code from the pool, and keeps
the code until it disconnects. A call routed to games (`route=game` in the stream's custom
parameters, or every call with `--route game`) gets a `GamePatch`. Until it is patched, the
patch looks for an active code in the caller's *final* results (channel 0; none in an
outbound-only stream, which carries no caller audio) and in keypad digits, until the caller hangs
up (`twilio_gone`: Twilio's `stop`, or its socket closed; Deepgram's last finals, which come after
it, patch nobody). Once a code matches, the call belongs to that game for the rest of the call:

    game <- {"type":"CallConnected","callSid":...}, the Deepgram message that carried the code,
            then every Deepgram message unchanged, {"type":"Dtmf","digit":...},
            {"type":"SpeechDone","name":...}, {"type":"Interrupted"},
            {"type":"CallEnded","callSid":...,"reason":...}, {"type":"Error",...}
    game -> plain text or {"type":"Say","text":...} (speak it to the caller), {"type":"Clear"}

Every decision (when to patch, what the game gets, what to speak, barge-in) is made by the pure
`callscribe.core.patch.PatchMachine`; the wire format of `/game` is `callscribe.core.game_messages`.

Where codes are held is the registry's `CodeLedger`: `LocalCodes` (this process's pool), or Redis
(redis_games.py), where a code may be held by a game on another process. A caller who says such a
code is patched through `GameLinks` (remote_games.py): the call's `GamePatch` gets a `RemoteGame`
where it would hold a `Game`, and the game's process gives the `Game` a `RemoteCall` where it
would hold a `GamePatch`; the messages and their order are the same.
This module carries bytes: it feeds the machine what the call, the game and the speech engine do,
sends the machine's messages to the game's outbox, and runs one task per call (`run_speaker`)
that writes the machine's Twilio messages in order and synthesizes its sentences.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import trio

from callscribe.core.codes import CodePool
from callscribe.core.deepgram import MessageKind
from callscribe.core.game_messages import NOT_PATCHED, BadCommand, Say, error_message, parse_command
from callscribe.core.patch import CodeHeard, Output, PatchMachine, Speak, StopSpeaking, ToGame
from callscribe.core.twilio import CALLER_TRACK
from callscribe.server.hub import CLOSE_GOING_AWAY, CLOSE_NORMAL, Subscription
from callscribe.server.speech import SpeechEngine, SpeechError

__all__ = [
    "GAME_QUEUE",
    "NO_PHONE_NUMBER",
    "CodeHolder",
    "CodeLedger",
    "Game",
    "GameLinks",
    "GamePatch",
    "GameRegistry",
    "GameSettings",
    "LocalCodes",
    "error_message",
]

log = logging.getLogger(__name__)

GAME_QUEUE = 1000
"""Messages a game may lag behind before it is disconnected (like a subscriber)."""


NO_PHONE_NUMBER = "(no TWILIO_PHONE_NUMBER set)"
"""What /game sends first when no number is configured: never an empty frame, which tools such as
websocat take for the end of the input."""


@dataclass(frozen=True)
class GameSettings:
    phone_number: str = NO_PHONE_NUMBER
    route_all_calls: bool = False
    codes_file: str | None = None


class PatchedCall(Protocol):
    """What a game's commands go to: the `GamePatch` of a call on this process, or a `RemoteCall`."""

    call_sid: str

    def say(self, text: str) -> None: ...

    def clear(self) -> None: ...

    def game_left(self) -> None: ...


class PatchedGame(Protocol):
    """What a call's patch sends to: a `Game` on this process, or a `RemoteGame`."""

    code: str

    def send(self, message: str, droppable: bool = False) -> None: ...

    def unpatch(self, patch: GamePatch) -> None: ...


class Game:
    """One connected game: its code, its outbound queue, and the call patched to it (if any)."""

    def __init__(self, code: str, peer: str, game_id: str = "") -> None:
        self.code = code
        self.peer = peer
        self.game_id = game_id or secrets.token_hex(4)
        self.outbox = Subscription(call_sid="", queue_size=GAME_QUEUE)
        self.patch: PatchedCall | None = None

    def unpatch(self, patch: GamePatch) -> None:
        if self.patch is patch:
            self.patch = None

    def send(self, message: str, droppable: bool = False) -> None:
        if not self.outbox.offer(message, droppable):
            log.warning("game %s (%s) dropped: %s", self.code, self.peer, self.outbox.close_reason)

    def command(self, frame: str | bytes | None) -> None:
        """A frame from the game: text to say, {"type":"Say","text":...} or {"type":"Clear"}."""
        command = parse_command(frame)
        if command is None:
            return
        if isinstance(command, BadCommand):
            self.send(error_message(command.reason))
        elif self.patch is None:
            if isinstance(command, Say):
                self.send(error_message(NOT_PATCHED))
        elif isinstance(command, Say):
            self.patch.say(command.text)
        else:
            self.patch.clear()


class CodeHolder(NamedTuple):
    """A game on another process holding a code."""

    origin: str
    game_id: str


class CodeLedger(Protocol):
    """Where the codes are held. `pool` is what the patch machines match against (its active codes
    are the codes held anywhere)."""

    pool: CodePool

    async def claim(self, game_id: str) -> str | None:
        """Hold a free code for the game `game_id`; None when every code is held."""

    def release(self, code: str, game_id: str) -> None:
        """The game let its code go (without waiting)."""

    def holder(self, code: str) -> CodeHolder | None:
        """The game on another process holding `code`; None if it is held here (or by nobody)."""


class LocalCodes:
    """The codes of one process: a `CodePool`."""

    def __init__(self, pool: CodePool) -> None:
        self.pool = pool

    async def claim(self, game_id: str) -> str | None:
        return self.pool.acquire()

    def release(self, code: str, game_id: str) -> None:
        self.pool.release(code)

    def holder(self, code: str) -> CodeHolder | None:
        return None


class GameLinks(Protocol):
    """Patches to games on other processes (remote_games.py)."""

    def connect(self, patch: GamePatch, holder: CodeHolder, code: str) -> PatchedGame:
        """`patch`'s caller said `code`, which `holder` holds: the stand-in for that game."""

    def forget_game(self, game_id: str) -> None:
        """This process's game `game_id` left: nothing of its patches is kept any longer."""


class GameRegistry:
    """The codes and the games holding them: this process's, and through `codes` and `links`, others'."""

    def __init__(
        self,
        settings: GameSettings,
        speech: SpeechEngine | None,
        pool: CodePool | None = None,
        *,
        codes: CodeLedger | None = None,
        links: GameLinks | None = None,
    ) -> None:
        self.settings = settings
        self.speech = speech
        if codes is None:
            if pool is None:
                pool = CodePool.from_file(settings.codes_file) if settings.codes_file else CodePool()
            codes = LocalCodes(pool)
        self.codes = codes
        self.links = links
        self.games: dict[str, Game] = {}

    @property
    def pool(self) -> CodePool:
        return self.codes.pool

    async def join(self, peer: str) -> Game | None:
        game = Game("", peer)
        code = await self.codes.claim(game.game_id)
        if code is None:
            return None
        game.code = code
        self.games[code] = game
        return game

    def leave(self, game: Game) -> None:
        """The game's connection is over: its code is free, its call goes on unpatched.

        Unless the server ended the game first (shutdown, too slow), the game disconnected: its
        outbox's close reason says so."""
        game.outbox.end(CLOSE_NORMAL, "game disconnected")
        if self.games.get(game.code) is game:
            del self.games[game.code]
            self.codes.release(game.code, game.game_id)
        if game.patch is not None:
            game.patch.game_left()
        if self.links is not None:
            self.links.forget_game(game.game_id)

    def wants(self, custom_parameters: dict[str, str]) -> bool:
        return self.settings.route_all_calls or custom_parameters.get("route") == "game"

    def patch_for(
        self,
        call_sid: str,
        stream_sid: str,
        send_to_twilio: Callable[[str], Awaitable[None]],
        tracks: Sequence[str] = (CALLER_TRACK,),
    ) -> GamePatch:
        """The patch of a call whose stream has these `tracks` (no code is heard without the caller's)."""
        return GamePatch(self, call_sid, stream_sid, send_to_twilio, tracks)

    def shutdown(self) -> None:
        for game in list(self.games.values()):
            game.outbox.end(CLOSE_GOING_AWAY, "server shutting down")


class GamePatch:
    """A game-routed call: feeds its `PatchMachine` and carries out what the machine decides."""

    def __init__(
        self,
        registry: GameRegistry,
        call_sid: str,
        stream_sid: str,
        send_to_twilio: Callable[[str], Awaitable[None]],
        tracks: Sequence[str] = (CALLER_TRACK,),
    ) -> None:
        self.registry = registry
        self.call_sid = call_sid
        self.machine = PatchMachine(
            call_sid, stream_sid, registry.pool, can_speak=registry.speech is not None, tracks=tracks
        )
        self.game: PatchedGame | None = None
        self.patched_code: str | None = None
        """The code of the last game the call was patched to (for the call's record)."""
        self._send_to_twilio = send_to_twilio
        # Rung when the machine has something for the speaker; one ring is enough to wake it.
        self._wake_send, self._wake_receive = trio.open_memory_channel[None](1)
        self._speaker_scope = trio.CancelScope()
        self._synthesis = trio.CancelScope()

    # -- from the call ---------------------------------------------------------------------

    def on_deepgram(self, kind: MessageKind, text: str, interim: bool) -> None:
        self._perform(self.machine.deepgram(kind, text, interim))

    def on_dtmf(self, digit: str) -> None:
        self._perform(self.machine.dtmf(digit, trio.current_time()))
        self._ring()  # the speaker waits for the keypad's pause from now on

    def on_mark(self, name: str) -> None:
        self._perform(self.machine.mark(name))

    def twilio_gone(self) -> None:
        """Twilio's `stop`, or its socket closed: the speaker stops, and the caller is never patched."""
        self._perform(self.machine.twilio_gone())
        self._speaker_scope.cancel()

    def call_ended(self, reason: str) -> None:
        self._perform(self.machine.call_ended(reason))
        self._speaker_scope.cancel()
        self._unbind()

    # -- from the game ---------------------------------------------------------------------

    def say(self, text: str) -> None:
        self._perform(self.machine.say(text))

    def clear(self) -> None:
        self._perform(self.machine.clear())

    def game_left(self) -> None:
        log.info("call %s: game %s left; the call goes on unpatched", self.call_sid, self.machine.code or "?")
        self._perform(self.machine.game_left())
        self._unbind()

    # -- carrying out the machine's decisions ----------------------------------------------

    def _perform(self, outputs: Sequence[Output]) -> None:
        for output in outputs:
            if isinstance(output, ToGame):
                if self.game is not None:
                    self.game.send(output.message, output.droppable)
            elif isinstance(output, StopSpeaking):
                self._synthesis.cancel()
            else:
                self._connect(output)
        if self.machine.speaker_has_work:
            self._ring()

    def _ring(self) -> None:
        try:
            self._wake_send.send_nowait(None)
        except trio.WouldBlock:
            pass  # already rung

    def _connect(self, heard: CodeHeard) -> None:
        holder = self.registry.codes.holder(heard.code)
        if holder is not None and self.registry.links is not None:
            self.game = self.registry.links.connect(self, holder, heard.code)
            self.patched_code = heard.code
            log.info("call %s patched to game %s on another process (%s)", self.call_sid, heard.code, heard.how)
            self._perform(self.machine.connect(heard))
            return
        game = self.registry.games.get(heard.code)
        if game is None or game.patch is not None:
            log.info(
                "call %s %s: code %s matched but its game is %s",
                self.call_sid,
                heard.how,
                heard.code,
                "busy" if game else "gone",
            )
            return
        self.game, game.patch = game, self
        self.patched_code = heard.code
        log.info("call %s patched to game %s (%s)", self.call_sid, heard.code, heard.how)
        self._perform(self.machine.connect(heard))

    def _unbind(self) -> None:
        if self.game is not None:
            self.game.unpatch(self)
            self.game = None

    async def run_speaker(self) -> None:
        """Send the machine's Twilio messages in order and speak its sentences, until Twilio is gone."""
        with self._speaker_scope:
            while True:
                message = self.machine.next_for_twilio()
                if message is not None:
                    await self._send_to_twilio(message)
                    continue
                self._synthesis = trio.CancelScope()  # before the machine can ask to stop this sentence
                speak = self.machine.next_speech()
                if speak is not None:
                    await self._speak(speak)
                    continue
                due = self.machine.keypad_due()  # keys not yet submitted: after a pause they are
                with trio.move_on_at(math.inf if due is None else due):
                    await self._wake_receive.receive()
                self._perform(self.machine.keypad_pause(trio.current_time()))

    async def _speak(self, speak: Speak) -> None:
        engine = self.registry.speech
        error: str | None = None
        try:
            with self._synthesis:
                if engine is None:  # the machine asks only when it was told there is one
                    raise SpeechError("no speech engine is configured")
                async with engine.synthesize(speak.text) as audio:
                    async for chunk in audio:
                        self._perform(self.machine.speech_audio(speak.number, chunk))
                        # Once this sentence is stopped, what waits for Twilio (its `clear`) is
                        # sent by run_speaker, outside the cancelled scope, never lost in it.
                        while (
                            not self._synthesis.cancel_called
                            and (message := self.machine.next_for_twilio()) is not None
                        ):
                            await self._send_to_twilio(message)
        except SpeechError as failure:
            log.warning("call %s: speech failed: %s", self.call_sid, failure)
            error = str(failure)
        except Exception:  # an engine's bug fails its sentence, never the call (this task is the call's)
            log.exception("call %s: speech failed unexpectedly", self.call_sid)
            error = "internal error (see the server's log)"
        self._perform(self.machine.speech_ended(speak.number, error))
