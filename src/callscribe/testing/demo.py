"""`callscribe demo`: callscribe end to end on this machine, with no account and no phone.

One process runs the fake Deepgram (whose "recognition" is a scripted conversation), the real
server on 127.0.0.1:5000 (with a call store in a temporary folder, so that its dashboard has a
history), and simulated Twilio calls one after another, and prints each call's live transcript the
way `callscribe listen` does, through a real `/client` subscription. The server is a real one: its
dashboard (http://127.0.0.1:5000/), `callscribe listen --all` or websocat can follow the calls
from elsewhere while the demo runs, until Ctrl-C or `--duration` seconds.

With `--game` every call is a game call: a demo game joins `/game` and gets a code, the caller
says it and is patched in, the game greets them (speech from a fake Deepgram Aura, played back by
the simulated caller, who echoes the marks: `SpeechDone`), the caller presses a key (`Dtmf`) and
the game answers.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

import trio
import trio_websocket

from callscribe import argtypes
from callscribe.client.listen import Server, follow
from callscribe.client.terminal import Terminal, stdout_gone
from callscribe.client.transcript_view import Line, TranscriptView
from callscribe.core import audio
from callscribe.exception_groups import leaves
from callscribe.server.call_settings import CallSettings
from callscribe.server.config import ServerSettings
from callscribe.server.games import GameSettings
from callscribe.server.serve import StartupError, start_serving
from callscribe.server.store import StoreSettings
from callscribe.testing.call_plan import CallSpec
from callscribe.testing.call_runner import run_call
from callscribe.testing.fake_aura import FakeAura, FakeAuraBehaviour
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour

__all__ = [
    "CONVERSATION",
    "DEMO_NUMBER",
    "add_cli_arguments",
    "fake_deepgram",
    "game_script",
    "run_demo",
    "run_from_cli",
]

log = logging.getLogger(__name__)

API_KEY = "demo"
DEMO_NUMBER = "+15555550100"
"""The number the demo's game is shown, and that its callers call (555-01xx numbers are fictional)."""
CALLER_NUMBER = "+15555550123"
LINE_S = 1.5
"""Seconds of audio per line of the script: the fake Deepgram's result interval."""
CALL_S = 14.0
GAME_CALL_S = 9.0
PAUSE_S = 2.0
"""Between one call and the next."""
SHORTEST_CALL_S = 3.0
SUBSCRIBE_WAIT_S = 10.0

CONVERSATION = (
    (
        "Hi, I'm calling about my order; it hasn't arrived yet.",
        "",
        "Sure, it's 4 2 7 1.",
        "",
        "Great. When should I expect it?",
        "",
        "Perfect, thank you very much.",
        "",
    ),
    (
        "",
        "Sorry to hear that. Can I have the order number?",
        "",
        "Thanks. I see it left our warehouse yesterday.",
        "",
        "It should be with you by Friday.",
        "",
        "You're welcome. Have a nice day!",
    ),
)
"""What the fake Deepgram hears: the caller's lines (channel 0) and the other party's (channel 1),
one per `LINE_S` of audio, "" for silence."""

GAME_CODE = "42"
"""The demo game's code: the only one, so that what the demo prints is always the same."""
GAME_KEY_AT_S = 4.5
GAME_KEY = "7"


def game_script(code: str) -> tuple[tuple[str, ...], ...]:
    """The caller of a game call (mono: channel 0 only) says the code, then waits for the game."""
    return ((f"Hi! My code is {code}.", "", "", "", "Thanks, bye!", ""),)


def fake_deepgram() -> FakeDeepgram:
    """The demo's fake Deepgram: it says `CONVERSATION`, and keeps no audio and only the last sessions
    (the demo runs until Ctrl-C)."""
    return FakeDeepgram.for_long_runs(FakeDeepgramBehaviour(api_key=API_KEY, result_every_s=LINE_S, lines=CONVERSATION))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--game", action="store_true", help="patch each call into a demo game that talks back")
    parser.add_argument(
        "--duration",
        type=argtypes.positive_float,
        default=None,
        metavar="SECONDS",
        help="stop after this long of calls, counted once the demo is up (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--port", type=argtypes.non_negative_int, default=5000, help="server port on 127.0.0.1 (default 5000; 0: any)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the server's log on stderr")


def run_from_cli(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    terminal = Terminal(sys.stdout)
    failure: BaseException | None = None
    try:
        trio.run(functools.partial(run_demo, terminal, game=args.game, duration_s=args.duration, port=args.port))
    except* KeyboardInterrupt:  # before the server was up to catch it, or a second Ctrl-C
        pass
    except* BrokenPipeError:  # the reader went away (`| head`)
        stdout_gone()
    except* StartupError as group:
        failure = next(leaves(group))
    finally:
        try:
            terminal.finish()
        except BrokenPipeError:
            stdout_gone()
    if failure is not None:
        print(f"callscribe demo: {failure}" + (" (try --port 0)" if "listen" in str(failure) else ""), file=sys.stderr)
        return 2
    return 0


async def run_demo(
    terminal: Terminal, *, game: bool = False, duration_s: float | None = None, port: int = 5000
) -> None:
    """The whole demo: calls for `duration_s` once it is up (None: until SIGINT/SIGTERM, which the
    server catches: the live call is finished and the demo ends)."""
    fake = fake_deepgram()
    aura = FakeAura(FakeAuraBehaviour(api_key=API_KEY))
    stop = trio.Event()
    with tempfile.TemporaryDirectory(prefix="callscribe-demo-") as folder:
        codes_file = str(Path(folder) / "codes.json")
        await trio.Path(codes_file).write_text(json.dumps({"game_codes": [GAME_CODE]}))
        store = StoreSettings(location=str(Path(folder) / "callscribe.db"))  # the page's history, for this run
        await _run(terminal, fake, aura, codes_file, store, stop, game=game, duration_s=duration_s, port=port)


async def _run(
    terminal: Terminal,
    fake: FakeDeepgram,
    aura: FakeAura,
    codes_file: str,
    store: StoreSettings,
    stop: trio.Event,
    *,
    game: bool,
    duration_s: float | None,
    port: int,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        await nursery.start(aura.serve)
        settings = ServerSettings(
            host="127.0.0.1",
            port=port,
            call=CallSettings(deepgram_url=fake.url + "?interim_results=true", deepgram_api_key=API_KEY),
            shutdown_grace_s=5.0,
            games=GameSettings(phone_number=DEMO_NUMBER, codes_file=codes_file),
            speech="aura",
            speak_url=aura.url,
            store=store,
        )
        (bind,), server_done = await start_serving(nursery, settings, stop)
        url = "ws://" + bind.split("://", 1)[1]
        show = terminal.show
        page = "http://" + bind.split("://", 1)[1] + "/"
        show([_info(f"callscribe demo: open {page} to watch the calls; Deepgram is a local fake (Ctrl-C to stop)")])
        show([_info("follow the calls from another terminal too: callscribe listen --all" + _url_flag(url))])
        if game:
            code = await nursery.start(_demo_game, url, terminal)
            fake.behaviour = FakeDeepgramBehaviour(api_key=API_KEY, result_every_s=LINE_S, lines=game_script(code))
        # The duration counts from here: start-up (slow on a loaded machine) takes none of it.
        deadline = math.inf if duration_s is None else trio.current_time() + duration_s
        await _calls(url, terminal, game=game, deadline=deadline, stop=stop)
        stop.set()
        await server_done.wait()
        nursery.cancel_scope.cancel()


async def _calls(url: str, terminal: Terminal, *, game: bool, deadline: float, stop: trio.Event) -> None:
    """One call after another until the deadline or until the server is told to stop."""
    length = GAME_CALL_S if game else CALL_S
    while not stop.is_set():
        left = deadline - trio.current_time()
        if left < SHORTEST_CALL_S:
            return
        await _call(url, terminal, game=game, seconds=min(length, left))
        with trio.move_on_after(min(PAUSE_S, max(0.0, deadline - trio.current_time()))):
            await stop.wait()


async def _call(url: str, terminal: Terminal, *, game: bool, seconds: float) -> None:
    """One simulated call, its transcript shown through a /client subscription made before it starts."""
    if game:
        spec = CallSpec(
            inbound=audio.generate_tone(seconds, 440.0),
            custom_parameters={"route": "game", "From": CALLER_NUMBER, "To": DEMO_NUMBER},
            dtmf=[(GAME_KEY_AT_S, GAME_KEY)] if seconds > GAME_KEY_AT_S + 1 else [],
        )
        who = "a caller, patched into the game"
    else:
        spec = CallSpec(
            inbound=audio.generate_tone(seconds, 440.0),
            outbound=audio.generate_tone(seconds, 660.0),
            custom_parameters={"From": CALLER_NUMBER, "To": DEMO_NUMBER},  # what /twiml passes on
        )
        who = "a caller and the other party"
    view = TranscriptView()
    terminal.show([_info(f"call {spec.call_sid}: {who}, {seconds:.0f} s")])
    async with trio.open_nursery() as nursery:
        subscribed = trio.Event()

        async def subscribe() -> None:
            def shown(text: str) -> None:
                terminal.show(view.receive(text))

            code, reason = await follow(
                Server(url), spec.call_sid, shown, wait_s=SUBSCRIBE_WAIT_S, connected=subscribed
            )
            terminal.show(view.closed(code, reason))

        nursery.start_soon(subscribe)
        with trio.move_on_after(SUBSCRIBE_WAIT_S):
            await subscribed.wait()  # so that nothing of the call is missed
        await run_call(url + "/twilio", spec, bidirectional=game)


async def _demo_game(url: str, terminal: Terminal, task_status: trio.TaskStatus[str]) -> None:
    """A game that greets each caller, answers a key press and says what happens."""
    async with trio_websocket.open_websocket_url(url + "/game", connect_timeout=5) as ws:
        number = str(await ws.get_message())
        code = str(await ws.get_message())
        terminal.show([_game(f"<- {number!r} and code {code!r}: callers dial the number and say the code")])
        task_status.started(code)
        try:
            await _play_game(ws, terminal)
        except trio_websocket.ConnectionClosed as closed:
            reason = closed.reason
            terminal.show([_game(f"<- close {reason.code} {reason.reason}" if reason else "<- connection lost")])


WELCOME = "Welcome to the demo game! Press a key."


async def _play_game(ws: trio_websocket.WebSocketConnection, terminal: Terminal) -> None:
    """What the game does and receives: `<-` from the server, `->` to it."""
    heard_code = False

    async def say(text: str) -> None:
        terminal.show([_game(f"-> say {text!r}")])
        await ws.send_message(json.dumps({"type": "Say", "text": text}))

    while True:
        message = json.loads(await ws.get_message())
        kind = message.get("type")
        if kind == "CallConnected":
            heard_code = False
            terminal.show([_game(f"<- CallConnected {message['callSid']}")])
            await say(WELCOME)
        elif kind == "Results" and message.get("is_final") and not heard_code:
            heard_code = True  # the result that carried the code; later ones are the transcript's
            words = message["channel"]["alternatives"][0]["transcript"]
            terminal.show([_game(f"<- Results {words!r}")])
        elif kind == "Dtmf":
            terminal.show([_game(f"<- Dtmf {message['digit']}")])
            await say(f"You pressed {message['digit']}. Goodbye!")
        elif kind == "SpeechDone":
            terminal.show([_game(f"<- SpeechDone {message['name']} (the caller has heard it)")])
        elif kind == "CallEnded":
            terminal.show([_game(f"<- CallEnded {message['callSid']} ({message['reason']})")])
        elif kind in ("Interrupted", "Error"):
            terminal.show([_game(f"<- {kind} {message.get('message', '')}".rstrip())])


def _info(text: str) -> Line:
    return Line(text, "info")


def _game(text: str) -> Line:
    return Line(f"game   {text}", "game")


def _url_flag(url: str) -> str:
    return "" if url == "ws://127.0.0.1:5000" else f" --url {url}"
