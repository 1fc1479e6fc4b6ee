"""Games: callers patch themselves into a game by saying (or keying in) its code, and the game talks back.

A game connects to `/game`, is given the phone number to call and a code from the pool, and keeps
the code until it disconnects. A call routed to games (`route=game` in the stream's custom
parameters, or every call with `--route game`) gets a `GamePatch`. Until it is patched, the
patch looks for an active code in the caller's *final* results (channel 0) and in keypad digits;
once a code matches, the call belongs to that game for the rest of the call:

    game <- {"type":"CallConnected","callSid":...}, every Deepgram message unchanged,
            {"type":"Dtmf","digit":...}, {"type":"SpeechDone","name":...}, {"type":"Interrupted"},
            {"type":"CallEnded","callSid":...,"reason":...}, {"type":"Error",...}
    game -> plain text or {"type":"Say","text":...} (speak it to the caller), {"type":"Clear"}

Talking back: the text is synthesized and streamed to Twilio as `media` messages as soon as the
first audio exists, then a `mark`; when Twilio echoes the mark (the audio has played) the game gets
`SpeechDone`. Barge-in: if the caller starts talking while the game speaks (Deepgram
`SpeechStarted` or a non-empty interim result on the caller's channel), Twilio gets `clear` and
the game `Interrupted`. A game that disconnects frees its code; its call goes on unpatched and the
caller may say another code.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from callscribe.core.codes import CodePool, DtmfCollector, code_from_results, find_code
from callscribe.core.deepgram import MessageKind
from callscribe.core.twilio import clear_message, mark_message, media_message
from callscribe.server.hub import CLOSE_GOING_AWAY, Subscription
from callscribe.server.speech import SpeechEngine, SpeechError

log = logging.getLogger(__name__)

GAME_QUEUE = 1000
"""Messages a game may lag behind before it is disconnected (like a subscriber)."""
SAY_QUEUE = 8
"""Sentences a game may queue for speaking."""


def _message(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields})


def error_message(message: str) -> str:
    return json.dumps({"type": "Error", "source": "callscribe", "message": message})


@dataclass(frozen=True)
class GameSettings:
    phone_number: str = ""
    route_all_calls: bool = False
    codes_file: str | None = None


class Game:
    """One connected game: its code, its outbound queue, and the call patched to it (if any)."""

    def __init__(self, code: str, peer: str) -> None:
        self.code = code
        self.peer = peer
        self.outbox = Subscription(call_sid="", queue_size=GAME_QUEUE)
        self.patch: GamePatch | None = None

    def send(self, message: str, droppable: bool = False) -> None:
        if not self.outbox.offer(message, droppable):
            log.warning("game %s (%s) dropped: %s", self.code, self.peer, self.outbox.close_reason)

    def command(self, frame: str | bytes | None) -> None:
        """A frame from the game: text to say, {"type":"Say","text":...} or {"type":"Clear"}."""
        text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else (frame or "")
        command: object = None
        if text.lstrip().startswith("{"):
            try:
                command = json.loads(text)
            except ValueError:
                self.send(error_message('not valid JSON: send plain text to speak, or {"type":"Say","text":...}'))
                return
        if isinstance(command, dict):
            kind = command.get("type")
            if kind == "Say" and isinstance(command.get("text"), str):
                text = command["text"]
            elif kind == "Clear":
                if self.patch is not None:
                    self.patch.clear()
                return
            else:
                self.send(error_message(f"unknown command {str(kind)[:40]!r}: use Say or Clear"))
                return
        if not text.strip():
            return
        if self.patch is None:
            self.send(error_message("no call is patched to this game yet"))
            return
        self.patch.say(text)


class GameRegistry:
    """The codes and the games holding them (one process)."""

    def __init__(self, settings: GameSettings, speech: SpeechEngine | None, pool: CodePool | None = None) -> None:
        self.settings = settings
        self.speech = speech
        self.pool = (
            pool
            if pool is not None
            else (CodePool.from_file(settings.codes_file) if settings.codes_file else CodePool())
        )
        self.games: dict[str, Game] = {}

    def join(self, peer: str) -> Game | None:
        code = self.pool.acquire()
        if code is None:
            return None
        game = self.games[code] = Game(code, peer)
        return game

    def leave(self, game: Game) -> None:
        if self.games.get(game.code) is game:
            del self.games[game.code]
            self.pool.release(game.code)
        if game.patch is not None:
            game.patch.game_left()

    def wants(self, custom_parameters: dict[str, str]) -> bool:
        return self.settings.route_all_calls or custom_parameters.get("route") == "game"

    def patch_for(self, call_sid: str, stream_sid: str, send_to_twilio: Callable[[str], Awaitable[None]]) -> GamePatch:
        return GamePatch(self, call_sid, stream_sid, send_to_twilio)

    def shutdown(self) -> None:
        for game in list(self.games.values()):
            game.outbox.end(CLOSE_GOING_AWAY, "server shutting down")


class GamePatch:
    """A game-routed call: finds the caller's code, then forwards to the game and speaks for it."""

    def __init__(
        self, registry: GameRegistry, call_sid: str, stream_sid: str, send_to_twilio: Callable[[str], Awaitable[None]]
    ) -> None:
        self.registry = registry
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self._send_to_twilio = send_to_twilio
        self.game: Game | None = None
        self._dtmf = DtmfCollector()
        # The speaker's commands, in order: a sentence to say, or None to clear Twilio's buffer.
        self._say_send, self._say_receive = trio.open_memory_channel[str | None](SAY_QUEUE)
        self._speaking = trio.CancelScope()
        self._pending_marks: set[str] = set()
        self._mark_names = itertools.count(1)
        self._speaker_scope = trio.CancelScope()
        self._speaking_now = False

    # -- from the call ---------------------------------------------------------------------

    def on_deepgram(self, kind: MessageKind, text: str, interim: bool) -> None:
        if self.game is None:
            if kind.type == "Results" and kind.is_final and kind.channel == 0:
                transcript = code_from_results(json.loads(text))
                if transcript:
                    self._patch(self.registry.pool.find_code(transcript), f"said {transcript!r}")
            return
        self.game.send(text, droppable=interim)
        if self.speaking and kind.channel == 0 and (kind.type == "SpeechStarted" or (interim and _has_words(text))):
            self._interrupt()

    def on_dtmf(self, digit: str) -> None:
        if self.game is not None:
            self.game.send(_message("Dtmf", digit=digit))
            return
        active = self.registry.pool.active
        entered = self._dtmf.press(digit, active)
        if entered:
            self._patch(find_code(entered, active), f"keyed {entered}")

    def on_mark(self, name: str) -> None:
        if name in self._pending_marks:
            self._pending_marks.discard(name)
            if self.game is not None:
                self.game.send(_message("SpeechDone", name=name))

    def twilio_gone(self) -> None:
        """Nobody is left to speak to."""
        self._speaker_scope.cancel()

    def call_ended(self, reason: str) -> None:
        self._speaker_scope.cancel()
        game, self.game = self.game, None
        if game is not None:
            game.patch = None
            game.send(_message("CallEnded", callSid=self.call_sid, reason=reason))

    # -- from the game ---------------------------------------------------------------------

    def say(self, text: str) -> None:
        try:
            self._say_send.send_nowait(text)
        except trio.WouldBlock:
            if self.game is not None:
                self.game.send(error_message(f"speech queue full ({SAY_QUEUE} sentences waiting); wait for SpeechDone"))

    def clear(self) -> None:
        """Stop speaking: drop queued sentences, stop the current one, clear Twilio's buffer."""
        self._drop_queued()
        self._speaking.cancel()
        self._pending_marks.clear()
        self._say_send.send_nowait(None)  # room: the queue was just emptied

    def game_left(self) -> None:
        log.info(
            "call %s: game %s left; the call goes on unpatched", self.call_sid, self.game.code if self.game else "?"
        )
        self.game = None
        self.clear()

    # -- speaking --------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        return bool(self._pending_marks) or self._speaking_now

    async def run_speaker(self) -> None:
        """Speak what the game sends, one sentence after another, until the call ends."""
        with self._speaker_scope:
            async for item in self._say_receive:
                if item is None:
                    await self._send_to_twilio(clear_message(self.stream_sid))
                else:
                    await self._speak(item)

    async def _speak(self, text: str) -> None:
        engine = self.registry.speech
        game = self.game
        if engine is None or game is None:
            if game is not None:
                game.send(error_message("no speech engine is configured"))
            return
        self._speaking = trio.CancelScope()
        self._speaking_now = True
        try:
            with self._speaking:
                async with engine.synthesize(text) as audio:
                    async for chunk in audio:
                        await self._send_to_twilio(media_message(self.stream_sid, chunk))
                name = f"say-{next(self._mark_names)}"
                self._pending_marks.add(name)
                await self._send_to_twilio(mark_message(self.stream_sid, name))
        except SpeechError as error:
            log.warning("call %s: speech failed: %s", self.call_sid, error)
            game.send(error_message(f"speech failed: {error}"))
        finally:
            self._speaking_now = False

    def _interrupt(self) -> None:
        """Barge-in: the caller talks over the game."""
        self.clear()
        if self.game is not None:
            self.game.send(_message("Interrupted"))

    def _drop_queued(self) -> None:
        while True:
            try:
                self._say_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return

    def _patch(self, code: str | None, how: str) -> None:
        if code is None:
            return
        game = self.registry.games.get(code)
        if game is None or game.patch is not None:
            log.info(
                "call %s %s: code %s matched but its game is %s", self.call_sid, how, code, "busy" if game else "gone"
            )
            return
        self.game, game.patch = game, self
        log.info("call %s patched to game %s (%s)", self.call_sid, code, how)
        game.send(_message("CallConnected", callSid=self.call_sid))


def _has_words(text: str) -> bool:
    try:
        alternatives = json.loads(text)["channel"]["alternatives"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(isinstance(a, dict) and str(a.get("transcript", "")).strip() for a in alternatives)
