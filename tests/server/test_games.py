"""Games: the shell around the patch machine, then end to end over loopback (codes, patching by voice and
keypad, talk-back, barge-in, TwiML)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from unittest.mock import ANY
from xml.etree import ElementTree

import httpx
import pytest
import trio
import trio_websocket
from trio.testing import wait_all_tasks_blocked

from callscribe.core.audio import generate_tone
from callscribe.core.codes import CodePool
from callscribe.core.deepgram import DeepgramStream
from callscribe.core.game_link import CallEnd, Envelope
from callscribe.core.patch import KEYPAD_PAUSE_S, CodeHeard
from callscribe.server.games import CodeHolder, Game, GamePatch, GameRegistry, GameSettings
from callscribe.server.hub import Subscription
from callscribe.server.remote_games import RemoteGames
from callscribe.testing.call_runner import SimulationReport
from callscribe.testing.fake_aura import FakeAura, FakeAuraBehaviour
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, run_call
from conftest import API_KEY, RunningServer, Subscriber, start_server, subscribe
from game_client import GameClient, game_call, play, say_when_connected

PHONE = "+15550001111"


# --- the shell, without sockets ------------------------------------------------------------------


class HoldingEngine:
    """A speech engine that yields one chunk per sentence, then holds until cancelled."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed = trio.Event()

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self.texts.append(text)
        try:
            yield self._audio()
        finally:
            self.closed.set()

    async def _audio(self) -> AsyncIterator[bytes]:
        yield b"\x01\x02"
        await trio.sleep_forever()


class FakeTwilio:
    """Records the events the speaker sends to Twilio; `sent[event]` is set once one was sent."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.sent = {"media": trio.Event(), "mark": trio.Event(), "clear": trio.Event()}

    async def send(self, message: str) -> None:
        event = json.loads(message)["event"]
        self.events.append(event)
        self.sent[event].set()


async def received(outbox: Subscription, count: int) -> list[dict]:
    messages: list[dict] = []
    with trio.fail_after(5):
        async with aclosing(outbox.__aiter__()) as incoming:
            async for message in incoming:
                messages.append(json.loads(message))
                if len(messages) == count:
                    return messages
    raise AssertionError(f"the outbox ended after {messages}")


def feed(patch: GamePatch, message: dict) -> None:
    text = json.dumps(message)
    kind = DeepgramStream().receive(text)
    patch.on_deepgram(kind, text, kind.type == "Results" and not kind.is_final)


def final(transcript: str) -> dict:
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "is_final": True,
        "channel": {"alternatives": [{"transcript": transcript}]},
    }


async def test_the_speaker_carries_out_barge_in_and_stops_the_synthesis(nursery: trio.Nursery) -> None:
    engine = HoldingEngine()
    registry = GameRegistry(GameSettings(), engine, CodePool(["42"]))
    game = await registry.join("peer")
    assert game is not None
    twilio = FakeTwilio()
    patch = registry.patch_for("CA1", "MZ1", twilio.send)
    nursery.start_soon(patch.run_speaker)

    feed(patch, final("forty two please"))
    assert game.patch is patch
    game.command("Welcome!")
    with trio.fail_after(5):
        await twilio.sent["media"].wait()
    feed(patch, {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 1.0})
    with trio.fail_after(5):
        await engine.closed.wait()  # the synthesis was cancelled, not left running
        await twilio.sent["clear"].wait()
    assert twilio.events == ["media", "clear"]
    patch.twilio_gone()
    patch.call_ended("call ended")
    messages = await received(game.outbox, 5)
    assert [m["type"] for m in messages] == ["CallConnected", "Results", "SpeechStarted", "Interrupted", "CallEnded"]
    assert messages[1]["channel"]["alternatives"][0]["transcript"] == "forty two please"
    assert engine.texts == ["Welcome!"] and game.patch is None


class SteppedEngine:
    """Yields one chunk, then a second once `more` is set, then ends."""

    def __init__(self) -> None:
        self.more = trio.Event()

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        yield self._audio()

    async def _audio(self) -> AsyncIterator[bytes]:
        yield b"\x01" * 160
        await self.more.wait()
        yield b"\x02" * 160


async def test_a_clear_is_sent_even_when_a_chunk_arrives_in_the_same_tick(nursery: trio.Nursery) -> None:
    # The Twilio socket's queued path (a backlog, TLS) is a memory channel, whose `send` raises
    # in a cancelled scope before queueing: the `clear` must not be sent from the sentence's
    # cancelled scope, or the caller keeps hearing the audio already sent.
    engine = SteppedEngine()
    registry = GameRegistry(GameSettings(), engine, CodePool(["42"]))  # type: ignore[arg-type]
    game = await registry.join("peer")
    assert game is not None
    wire_send, wire_receive = trio.open_memory_channel[str](100)
    patch = registry.patch_for("CA1", "MZ1", wire_send.send)
    nursery.start_soon(patch.run_speaker)
    feed(patch, final("forty two"))
    game.command("Hello there, a long sentence")
    with trio.fail_after(5):
        assert json.loads(await wire_receive.receive())["event"] == "media"
        await wait_all_tasks_blocked()  # the speaker waits for the second chunk
    engine.more.set()  # the chunk arrives, and the game's Clear is handled before the speaker runs
    game.command('{"type": "Clear"}')
    with trio.fail_after(5):
        events = [json.loads(await wire_receive.receive())["event"]]
        while events[-1] != "clear":
            events.append(json.loads(await wire_receive.receive())["event"])
    assert events in (["clear"], ["media", "clear"])
    patch.twilio_gone()


async def test_a_keyed_code_that_begins_a_longer_held_one_is_patched_after_a_pause(
    autojump_clock: trio.abc.Clock,
) -> None:
    # 4 and 42 both held (the default pool 0-99 holds such pairs): keying 4 and waiting patches to 4.
    registry = GameRegistry(GameSettings(), None, CodePool(["4", "42"]))
    first, second = await registry.join("a"), await registry.join("b")
    four = first if first is not None and first.code == "4" else second
    assert four is not None and four.code == "4"
    twilio = FakeTwilio()
    patch = registry.patch_for("CA1", "MZ1", twilio.send)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(patch.run_speaker)
        began = trio.current_time()
        patch.on_dtmf("4")
        with trio.fail_after(10):
            while four.patch is not patch:
                await trio.sleep(0.1)
        assert trio.current_time() - began == pytest.approx(KEYPAD_PAUSE_S, abs=0.11)
        nursery.cancel_scope.cancel()


class FlakyEngine:
    """Fails its first sentence with a bug (not a SpeechError); then yields one chunk a sentence."""

    def __init__(self) -> None:
        self.sentences = 0

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        self.sentences += 1
        if self.sentences == 1:
            raise RuntimeError("a bug in the engine")
        yield self._audio()

    async def _audio(self) -> AsyncIterator[bytes]:
        yield b"\x01" * 160


@pytest.mark.logged_exceptions_expected
async def test_a_synthesis_failing_unexpectedly_fails_its_sentence_not_the_call() -> None:
    # Anything but a SpeechError ended the speaker, and with it the whole call (its transcription).
    registry = GameRegistry(GameSettings(), FlakyEngine(), CodePool(["42"]))  # type: ignore[arg-type]
    game = await registry.join("peer")
    assert game is not None
    twilio = FakeTwilio()
    patch = registry.patch_for("CA1", "MZ1", twilio.send)
    with trio.fail_after(5):
        async with trio.open_nursery() as speaker:
            speaker.start_soon(patch.run_speaker)
            feed(patch, final("forty two"))
            game.command("Welcome!")
            *_, error = await received(game.outbox, 3)  # CallConnected, Results, Error
            assert error == {"type": "Error", "source": "callscribe", "message": ANY}
            assert error["message"] == "speech failed: internal error (see the server's log)"
            game.command("Second try.")  # the next sentence is spoken
            await twilio.sent["mark"].wait()
            patch.twilio_gone()
    assert twilio.events == ["media", "mark"]


async def test_game_commands_before_a_call_is_patched() -> None:
    game = Game("42", "peer")
    game.command("hello")
    game.command('{"type": "Clear"}')  # nothing to clear: no answer
    game.command('{"type": "Dance"}')
    game.outbox.end(1000, "test over")
    messages = await received(game.outbox, 2)
    assert [m["message"] for m in messages] == [
        "no call is patched to this game yet",
        "unknown command 'Dance': use Say or Clear",
    ]


async def test_a_game_that_leaves_is_reported_as_disconnected_unless_the_server_ended_it() -> None:
    registry = GameRegistry(GameSettings(), None, CodePool(["1", "2"]))
    leaver, kept = await registry.join("a"), await registry.join("b")
    assert leaver is not None and kept is not None
    registry.leave(leaver)
    assert (leaver.outbox.close_code, leaver.outbox.close_reason) == (1000, "game disconnected")
    registry.shutdown()
    registry.leave(kept)
    assert (kept.outbox.close_code, kept.outbox.close_reason) == (1001, "server shutting down")
    assert registry.games == {} and registry.pool.free_count == 2


async def test_a_game_that_leaves_keeps_nothing_of_its_patches_from_other_processes() -> None:
    registry = GameRegistry(GameSettings(), None, CodePool(["1"]))
    sent: list[tuple[str, Envelope]] = []
    links = RemoteGames(registry, "game-process", lambda origin, envelope: sent.append((origin, envelope)))
    game = await registry.join("a")
    assert game is not None
    call = CallEnd("CA1", "call-process", game.code, game.game_id, "game-process")
    links.receive(call.patch())
    unpatch = call.unpatch()
    assert unpatch is not None
    links.receive(unpatch)  # the call ended: the game is free again, still connected
    assert game.patch is None and list(links.ends) == [game.game_id]
    registry.leave(game)
    assert links.ends == {}


# --- end to end ----------------------------------------------------------------------------------


@pytest.fixture
def codes_file(tmp_path: Path) -> str:
    path = tmp_path / "codes.json"
    path.write_text(json.dumps({"game_codes": ["42"]}))
    return str(path)


async def game_server(
    nursery: trio.Nursery,
    fake: FakeDeepgram,
    aura: FakeAura | None,
    codes_file: str,
    *,
    interim: bool = False,
    speech: str = "aura",
) -> RunningServer:
    return await start_server(
        nursery,
        fake,
        games=GameSettings(phone_number=PHONE, codes_file=codes_file),
        speech=speech,
        speak_url=aura.url if aura else "http://127.0.0.1:9/v1/speak",
        deepgram_url=fake.url + ("?interim_results=true" if interim else ""),
    )


async def game_says_in_a_call(
    nursery: trio.Nursery, deepgram: FakeDeepgram, aura: FakeAura, codes_file: str, heard: str, say: str, spec: CallSpec
) -> tuple[RunningServer, GameClient, SimulationReport]:
    """A call whose caller is heard saying `heard` every 0.5 s, and a game that sends `say` once
    the call is patched to it: the server, the game's side and the call's report."""
    deepgram.behaviour.transcript = heard
    deepgram.behaviour.result_every_s = 0.5
    server = await game_server(nursery, deepgram, aura, codes_file)
    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(play, server, game, say_when_connected(say))
        report = await run_call(server.url("/twilio"), spec, speed=2.0, bidirectional=True)
    return server, game, report


async def test_caller_says_the_code_is_patched_and_the_game_talks_back(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, fake_aura: FakeAura, codes_file: str
) -> None:
    spec = game_call()
    server, game, report = await game_says_in_a_call(
        nursery,
        fake_deepgram,
        fake_aura,
        codes_file,
        "hi my code is forty two thanks",
        "Hello caller, welcome to the game.",
        spec,
    )

    assert (game.number, game.code) == (PHONE, "42")
    assert game.messages[0] == {"type": "CallConnected", "callSid": spec.call_sid}
    carrier = game.messages[1]  # the result in which the caller said the code, so the game knows what was said
    assert carrier["type"] == "Results" and carrier["is_final"] is True
    assert carrier["channel"]["alternatives"][0]["transcript"] == "hi my code is forty two thanks"
    assert game.types.count("Results") >= 8  # then every Deepgram message, unchanged
    assert game.types.count("Results") == fake_deepgram.sessions[0].results_sent  # the carrier included
    assert {"type": "SpeechDone", "name": "say-1"} in game.messages
    assert game.messages[-1] == {"type": "CallEnded", "callSid": spec.call_sid, "reason": "call ended"}
    playback = report.playback
    assert playback is not None and playback.bad_messages == []  # right streamSid, valid JSON, known events
    assert bytes(playback.audio) == fake_aura.expected_audio("Hello caller, welcome to the game.")
    assert playback.marks == ["say-1"]
    request = fake_aura.requests[0]
    assert (request.query["encoding"], request.query["sample_rate"], request.query["container"]) == (
        "mulaw",
        "8000",
        "none",
    )
    server.stop.set()


async def test_a_say_with_half_a_surrogate_pair_is_an_error_and_the_call_goes_on(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, fake_aura: FakeAura, codes_file: str
) -> None:
    # Valid JSON that no speech engine can encode (JSON.stringify of a string cut mid-emoji): it
    # used to raise out of the call's speaker task and end the call.
    say = '{"type": "Say", "text": "Hello \\ud83d"}'
    server, game, _ = await game_says_in_a_call(
        nursery, fake_deepgram, fake_aura, codes_file, "forty two", say, game_call(4.0)
    )
    errors = [m for m in game.messages if m["type"] == "Error"]
    assert [e["message"] for e in errors] == ["Say text has a lone surrogate at character 6: send whole characters"]
    assert game.types.count("Results") == fake_deepgram.sessions[0].results_sent >= 8  # the call went on
    assert game.messages[-1]["type"] == "CallEnded" and game.messages[-1]["reason"] == "call ended"
    server.stop.set()


async def test_barge_in_clears_twilio_and_tells_the_game(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, codes_file: str
) -> None:
    aura = FakeAura(FakeAuraBehaviour(api_key=API_KEY, hold_after_chunks=1))  # speaks, then keeps speaking
    await nursery.start(aura.serve)
    fake_deepgram.behaviour.transcript = "forty two"
    fake_deepgram.behaviour.result_every_s = 0.5
    server = await game_server(nursery, fake_deepgram, aura, codes_file, interim=True)

    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(
            play, server, game, say_when_connected(json.dumps({"type": "Say", "text": "A very long story " * 20}))
        )
        report = await run_call(server.url("/twilio"), game_call(4.0), speed=2.0, bidirectional=True)
    aura.release()
    assert "Interrupted" in game.types
    assert "SpeechDone" not in game.types
    assert report.playback is not None and report.playback.clears >= 1
    assert 0 < len(report.playback.audio) < len(aura.expected_audio("A very long story " * 20))
    server.stop.set()


async def test_keypad_code_entry_and_dtmf_forwarding(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, fake_aura: FakeAura, codes_file: str
) -> None:
    fake_deepgram.behaviour.transcript = "hello there"  # no code spoken
    server = await game_server(nursery, fake_deepgram, fake_aura, codes_file)
    spec = game_call(3.0, dtmf=[(0.5, "4"), (0.6, "2"), (1.5, "7")])
    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(play, server, game)
        await run_call(server.url("/twilio"), spec, speed=2.0, bidirectional=True)
    assert game.messages[0] == {"type": "CallConnected", "callSid": spec.call_sid}
    assert {"type": "Dtmf", "digit": "7"} in game.messages
    assert {"type": "Dtmf", "digit": "4"} not in game.messages  # those digits were the code
    server.stop.set()


async def test_a_code_in_a_final_after_the_stop_patches_nothing_and_the_code_stays_free(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, codes_file: str
) -> None:
    # Deepgram's last finals come after Twilio's `stop`, while the call finishes: a code in them
    # used to patch the caller who had hung up (CallConnected, CallEnded at once, the code busy).
    fake_deepgram.behaviour.transcript = "forty two"
    fake_deepgram.behaviour.result_every_s = 0  # finals only on CloseStream: after the `stop`
    server = await game_server(nursery, fake_deepgram, None, codes_file)
    gone, caller = game_call(1.0), game_call(3.0)
    game, watcher = GameClient(), Subscriber()
    async with trio.open_nursery() as inner:
        await inner.start(play, server, game)  # until a call it was patched to ends
        inner.start_soon(subscribe, server, gone.call_sid, watcher)
        await run_call(server.url("/twilio"), gone, speed=2.0, bidirectional=True)
        assert game.messages == []
        fake_deepgram.behaviour.result_every_s = 0.5  # the next caller's code is heard mid-call
        await run_call(server.url("/twilio"), caller, speed=2.0, bidirectional=True)
    finals = [json.loads(m) for m in watcher.messages if json.loads(m).get("type") == "Results"]
    assert [f["channel"]["alternatives"][0]["transcript"] for f in finals] == ["forty two"]  # still published
    assert game.messages[0] == {"type": "CallConnected", "callSid": caller.call_sid}  # the code was free
    assert gone.call_sid not in json.dumps(game.messages)
    assert game.messages[-1] == {"type": "CallEnded", "callSid": caller.call_sid, "reason": "call ended"}
    server.stop.set()


async def test_codes_are_held_one_game_at_a_time_and_return_to_the_pool(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, codes_file: str
) -> None:
    server = await game_server(nursery, fake_deepgram, None, codes_file, speech="espeak")
    async with trio_websocket.open_websocket_url(server.url("/game"), connect_timeout=5) as first:
        assert [await first.get_message(), await first.get_message()] == [PHONE, "42"]
        async with trio_websocket.open_websocket_url(server.url("/game"), connect_timeout=5) as second:
            error = json.loads(await second.get_message())
            assert error["type"] == "Error" and "all 1 game codes are in use" in error["message"]
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await second.get_message()
            assert (closed.value.reason.code, closed.value.reason.reason) == (1013, "no game code free")
    with trio.fail_after(5):
        while True:  # the first game left: its code is free again
            async with trio_websocket.open_websocket_url(server.url("/game"), connect_timeout=5) as third:
                first_frame = await third.get_message()
                if first_frame == PHONE:
                    assert await third.get_message() == "42"
                    break
            await trio.sleep(0.02)
    server.stop.set()


async def test_a_game_leaving_mid_call_frees_its_code_and_the_caller_can_repatch(
    nursery: trio.Nursery,
    fake_deepgram: FakeDeepgram,
    fake_aura: FakeAura,
    codes_file: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="callscribe")
    fake_deepgram.behaviour.transcript = "number 42."
    fake_deepgram.behaviour.result_every_s = 0.5
    server = await game_server(nursery, fake_deepgram, fake_aura, codes_file)
    spec = game_call(6.0)
    leaver, stayer = GameClient(), GameClient()

    async def leave_at_once(ws: trio_websocket.WebSocketConnection, message: dict) -> None:
        if message["type"] == "CallConnected":
            await ws.aclose()

    async with trio.open_nursery() as inner:
        await inner.start(play, server, leaver, leave_at_once)
        inner.start_soon(lambda: run_call(server.url("/twilio"), spec, speed=2.0, bidirectional=True))
        with trio.fail_after(10):
            while not leaver.messages:
                await trio.sleep(0.02)
        with trio.fail_after(10):
            while not stayer.code:
                try:
                    await play(server, stayer)
                except trio_websocket.ConnectionClosed:
                    pass
    assert leaver.messages[0]["type"] == "CallConnected"
    assert stayer.code == "42"
    assert stayer.messages[0] == {"type": "CallConnected", "callSid": spec.call_sid}
    assert stayer.messages[1]["type"] == "Results"  # "number 42." again: what patched it
    assert stayer.messages[-1]["type"] == "CallEnded"
    departures = [r.getMessage() for r in caplog.records if " left (" in r.getMessage()]
    assert departures and departures[0].endswith("with code 42 left (game disconnected)")
    server.stop.set()


async def test_speech_failure_is_reported_to_the_game_and_the_call_goes_on(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, codes_file: str
) -> None:
    aura = FakeAura(FakeAuraBehaviour(api_key=API_KEY, reject_status=503))
    await nursery.start(aura.serve)
    fake_deepgram.behaviour.transcript = "forty two"
    fake_deepgram.behaviour.result_every_s = 0.5
    server = await game_server(nursery, fake_deepgram, aura, codes_file)
    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(play, server, game, say_when_connected("anyone there"))
        report = await run_call(server.url("/twilio"), game_call(3.0), speed=2.0, bidirectional=True)
    errors = [m for m in game.messages if m["type"] == "Error"]
    assert errors and "speech failed" in errors[0]["message"] and "503" in errors[0]["message"]
    assert game.messages[-1]["type"] == "CallEnded" and report.close_code == 1000
    server.stop.set()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is installed by scripts/setup")
async def test_espeak_talks_back_offline(nursery: trio.Nursery, fake_deepgram: FakeDeepgram, codes_file: str) -> None:
    fake_deepgram.behaviour.transcript = "forty two"
    fake_deepgram.behaviour.result_every_s = 0.5
    server = await game_server(nursery, fake_deepgram, None, codes_file, speech="espeak")
    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(play, server, game, say_when_connected("Welcome."))
        report = await run_call(server.url("/twilio"), game_call(5.0), speed=1.5, bidirectional=True)
    assert report.playback is not None and len(report.playback.audio) > 2000  # a fraction of a second of speech
    assert "SpeechDone" in game.types
    server.stop.set()


async def test_twiml_for_transcription_and_for_games(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, forward_number="+15557654321")
    async with httpx.AsyncClient() as http:
        response = await http.post(server.http_url + "/twiml")
        assert response.headers["content-type"].startswith("text/xml")
        xml = ElementTree.fromstring(response.text)
        stream = xml.find("./Start/Stream")
        assert stream is not None and stream.get("track") == "both_tracks"
        assert stream.get("url") == server.ws_url + "/twilio"
        assert xml.findtext("./Dial") == "+15557654321"

        proxied = await http.post(
            server.http_url + "/twiml/game",
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "calls.example.com"},
        )
        xml = ElementTree.fromstring(proxied.text)
        stream = xml.find("./Connect/Stream")
        assert stream is not None and stream.get("url") == "wss://calls.example.com/twilio"
        parameter = stream.find("./Parameter")
        assert parameter is not None and (parameter.get("name"), parameter.get("value")) == ("route", "game")
        assert xml.find("./Say") is not None

        for headers in ({"X-Forwarded-Proto": "ftp"}, {"X-Forwarded-Host": "[::1"}, {"Host": "example.com:99999"}):
            refused = await http.post(server.http_url + "/twiml", headers=headers)
            assert refused.status_code == 400 and "set PUBLIC_URL" in refused.text, headers
    server.stop.set()


async def test_route_game_sends_every_call_to_games(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, codes_file: str
) -> None:
    fake_deepgram.behaviour.transcript = "forty two"
    fake_deepgram.behaviour.result_every_s = 0.5
    server = await start_server(
        nursery, fake_deepgram, games=GameSettings(phone_number=PHONE, codes_file=codes_file, route_all_calls=True)
    )
    spec = CallSpec(inbound=generate_tone(2.0))  # no route parameter: a TwiML Bin cannot set one
    game = GameClient()
    async with trio.open_nursery() as inner:
        await inner.start(play, server, game)
        await run_call(server.url("/twilio"), spec, speed=2.0, bidirectional=True)
    assert game.messages[0] == {"type": "CallConnected", "callSid": spec.call_sid}
    server.stop.set()


async def test_a_say_lost_between_processes_is_reported_to_the_game() -> None:
    """Game on B, call on A. B's first Say envelope is lost (outbox full / Redis down); the next
    arrives with a gap in its numbering: the game is told, as it is of the call's lost messages
    (it used to wait for the lost Say's SpeechDone for ever)."""

    class Held:
        def __init__(self, holder: CodeHolder) -> None:
            self.pool, self._holder = CodePool(["42"]), holder

        async def claim(self, game_id: str) -> str | None:
            return None

        def release(self, code: str, game_id: str) -> None:
            pass

        def holder(self, code: str) -> CodeHolder | None:
            return self._holder

    registry_b = GameRegistry(GameSettings(), None, CodePool(["42"]))
    game = await registry_b.join("peer")
    assert game is not None
    registry_a = GameRegistry(GameSettings(), object(), codes=Held(CodeHolder("bbbbbbbb", game.game_id)))  # type: ignore[arg-type]
    lose_next = False

    def a_sends(origin: str, envelope: Envelope) -> None:
        links_b.receive(envelope)

    def b_sends(origin: str, envelope: Envelope) -> None:
        nonlocal lose_next
        if lose_next:
            lose_next = False
            return  # lost between the processes
        links_a.receive(envelope)

    links_a = RemoteGames(registry_a, "aaaaaaaa", a_sends)
    links_b = RemoteGames(registry_b, "bbbbbbbb", b_sends)

    async def to_twilio(message: str) -> None:
        pass

    patch = registry_a.patch_for("CA1", "MZ1", to_twilio)
    patch._connect(CodeHeard("42", "spoken"))
    assert game.patch is not None  # patched across the two processes
    lose_next = True
    game.command(json.dumps({"type": "Say", "text": "first sentence"}))
    game.command(json.dumps({"type": "Say", "text": "second sentence"}))
    assert list(patch.machine._sentences) == ["second sentence"]  # the first is gone
    received = []
    while True:
        try:
            received.append(json.loads(game.outbox._receive.receive_nowait()))
        except trio.WouldBlock:
            break
    assert any(m.get("type") == "Error" for m in received), f"the game got only {[m['type'] for m in received]}"
