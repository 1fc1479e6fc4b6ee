"""Tests for callscribe.core.patch: the game patch of one call, every state against every input."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.codes import CodePool
from callscribe.core.deepgram import DeepgramStream
from callscribe.core.patch import (
    KEYPAD_PAUSE_S,
    CodeHeard,
    Output,
    PatchMachine,
    PatchState,
    Speak,
    StopSpeaking,
    ToGame,
)

CALL, STREAM = "CA1", "MZ1"


def active_pool(*codes: str) -> CodePool:
    pool = CodePool(codes or ("42", "7", "red fox"), rng=random.Random(0))
    while pool.acquire() is not None:
        pass
    return pool


def results(transcript: str, *, final: bool = True, channel: int = 0) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, 2],
            "start": 0.0,
            "duration": 1.0,
            "is_final": final,
            "speech_final": final,
            "channel": {"alternatives": [{"transcript": transcript, "confidence": 0.9, "words": []}]},
        }
    )


def speech_started(channel: int = 0) -> str:
    return json.dumps({"type": "SpeechStarted", "channel": [channel, 2], "timestamp": 1.0})


def deepgram(machine: PatchMachine, text: str) -> list[Output]:
    """Feed `text` as the shell does: classified by DeepgramStream, interim for non-final results."""
    kind = DeepgramStream().receive(text)
    return machine.deepgram(kind, text, kind.type == "Results" and not kind.is_final)


def describe(outputs: list[Output]) -> list[str]:
    """Outputs in short: game:<type> (~ when droppable), heard:<code>, stop:<number>."""
    described = []
    for output in outputs:
        if isinstance(output, ToGame):
            kind = json.loads(output.message).get("type") if output.message.startswith("{") else "?"
            described.append(f"game:{kind}" + ("~" if output.droppable else ""))
        elif isinstance(output, CodeHeard):
            described.append(f"heard:{output.code}")
        else:
            assert isinstance(output, StopSpeaking)
            described.append(f"stop:{output.number}")
    return described


def take_twilio(machine: PatchMachine) -> list[str]:
    """Everything queued for Twilio, in short: media, mark:<name>, clear."""
    taken = []
    for _ in range(100):
        message = machine.next_for_twilio()
        if message is None:
            return taken
        parsed = json.loads(message)
        assert parsed["streamSid"] == STREAM
        taken.append(parsed["event"] + (f":{parsed['mark']['name']}" if parsed["event"] == "mark" else ""))
    raise AssertionError("the Twilio queue never empties")


# --- the states --------------------------------------------------------------------------------


def waiting() -> PatchMachine:
    return PatchMachine(CALL, STREAM, active_pool())


def patched() -> PatchMachine:
    machine = waiting()
    assert describe(machine.connect(CodeHeard("42", "said 'forty two'"))) == ["game:CallConnected"]
    return machine


def synthesizing() -> PatchMachine:
    """SPEAKING: sentence 1 is being synthesized and some of its audio went to Twilio."""
    machine = patched()
    assert machine.say("hello") == []
    assert machine.next_speech() == Speak(1, "hello")
    assert machine.speech_audio(1, b"\x01") == []
    assert take_twilio(machine) == ["media"]
    return machine


def awaiting_mark() -> PatchMachine:
    """SPEAKING: sentence 1 is synthesized and sent; Twilio has not echoed its mark yet."""
    machine = synthesizing()
    assert machine.speech_ended(1) == []
    assert take_twilio(machine) == ["mark:say-1"]
    return machine


def keying() -> PatchMachine:
    """WAITING with `4` keyed, and codes 42, 4 and 7 active: `4` waits for a `2` or a pause."""
    machine = PatchMachine(CALL, STREAM, active_pool("42", "4", "7"))
    assert machine.dtmf("4", 0.0) == []
    return machine


def after_hang_up(build: Callable[[], PatchMachine]) -> Callable[[], PatchMachine]:
    """The state `build` makes, then the caller hangs up (Twilio's `stop`, or its socket gone): the
    call is finishing, and Deepgram's last finals may still come."""

    def hung_up() -> PatchMachine:
        machine = build()
        assert machine.twilio_gone() == []
        return machine

    return hung_up


hung_up = after_hang_up(patched)
waiting_hung_up = after_hang_up(waiting)
keying_hung_up = after_hang_up(keying)


def left_after_hang_up() -> PatchMachine:
    """WAITING again: the caller hung up while patched, then the game left."""
    machine = hung_up()
    assert machine.game_left() == []
    return machine


def ended() -> PatchMachine:
    machine = patched()
    assert describe(machine.call_ended("call ended")) == ["game:CallEnded"]
    return machine


STATES: dict[str, tuple[Callable[[], PatchMachine], PatchState]] = {
    "waiting": (waiting, PatchState.WAITING),
    "patched": (patched, PatchState.PATCHED),
    "synthesizing": (synthesizing, PatchState.SPEAKING),
    "awaiting_mark": (awaiting_mark, PatchState.SPEAKING),
    "hung_up": (hung_up, PatchState.PATCHED),
    "waiting_hung_up": (waiting_hung_up, PatchState.WAITING),
    "keying": (keying, PatchState.WAITING),
    "keying_hung_up": (keying_hung_up, PatchState.WAITING),
    "left_after_hang_up": (left_after_hang_up, PatchState.WAITING),
    "ended": (ended, PatchState.ENDED),
}

INPUTS: dict[str, Callable[[PatchMachine], list[Output]]] = {
    "final_with_code": lambda m: deepgram(m, results("my code is forty two")),
    "final_without_code": lambda m: deepgram(m, results("hello there")),
    "final_other_party": lambda m: deepgram(m, results("forty two", channel=1)),
    "interim_with_words": lambda m: deepgram(m, results("forty", final=False)),
    "interim_blank": lambda m: deepgram(m, results(" ", final=False)),
    "interim_other_party": lambda m: deepgram(m, results("wait", final=False, channel=1)),
    "speech_started": lambda m: deepgram(m, speech_started()),
    "speech_started_other_party": lambda m: deepgram(m, speech_started(1)),
    "utterance_end": lambda m: deepgram(m, '{"type":"UtteranceEnd","channel":[0,1],"last_word_end":1.0}'),
    "not_json": lambda m: deepgram(m, "forty two"),
    "dtmf_code": lambda m: m.dtmf("7", 0.0),
    "keypad_pause": lambda m: m.keypad_pause(1e9),  # nothing keyed and waiting
    "mark_pending": lambda m: m.mark("say-1"),
    "mark_unknown": lambda m: m.mark("say-99"),
    "connect": lambda m: m.connect(CodeHeard("7", "keyed 7")),
    "say": lambda m: m.say("hi"),
    "say_blank": lambda m: m.say("  "),
    "clear": lambda m: m.clear(),
    "speech_audio": lambda m: m.speech_audio(1, b"\x02"),
    "speech_ended": lambda m: m.speech_ended(1),
    "speech_failed": lambda m: m.speech_ended(1, "boom"),
    "game_left": lambda m: m.game_left(),
    "twilio_gone": lambda m: m.twilio_gone(),
    "call_ended": lambda m: m.call_ended("call ended"),
}

W, P, S, E = PatchState.WAITING, PatchState.PATCHED, PatchState.SPEAKING, PatchState.ENDED
Expected = tuple[list[str], PatchState, list[str], Speak | None]
"""Outputs, the state after, what the speaker then sends to Twilio, and the sentence it may start."""

FORWARD: Expected = (["game:Results"], P, [], None)
NOTHING: Expected = ([], P, [], None)

PATCHED: dict[str, Expected] = {
    "final_with_code": FORWARD,
    "final_without_code": FORWARD,
    "final_other_party": FORWARD,
    "interim_with_words": (["game:Results~"], P, [], None),
    "interim_blank": (["game:Results~"], P, [], None),
    "interim_other_party": (["game:Results~"], P, [], None),
    "speech_started": (["game:SpeechStarted"], P, [], None),
    "speech_started_other_party": (["game:SpeechStarted"], P, [], None),
    "utterance_end": (["game:UtteranceEnd"], P, [], None),
    "not_json": (["game:?"], P, [], None),  # whatever Deepgram sends, unchanged
    "dtmf_code": (["game:Dtmf"], P, [], None),
    "keypad_pause": NOTHING,
    "mark_pending": NOTHING,
    "mark_unknown": NOTHING,
    "connect": NOTHING,
    "say": ([], S, [], Speak(1, "hi")),
    "say_blank": NOTHING,
    "clear": NOTHING,  # no audio of ours can be playing: no clear
    "speech_audio": NOTHING,
    "speech_ended": NOTHING,
    "speech_failed": NOTHING,
    "game_left": ([], W, [], None),
    "twilio_gone": NOTHING,
    "call_ended": (["game:CallEnded"], E, [], None),
}
"""The row of the patched state, which the hung-up state shares but for one entry."""

WAITING: dict[str, Expected] = {
    **{name: ([], W, [], None) for name in INPUTS},
    "final_with_code": (["heard:42"], W, [], None),
    "dtmf_code": (["heard:7"], W, [], None),
    "connect": (["game:CallConnected"], P, [], None),
    "call_ended": ([], E, [], None),
}
"""Waiting for a code: a final result or a key that carries one is heard (interim results never
patch), `connect` patches the game, the call's end ends it; every other input is ignored."""

HUNG_UP_WAITING: dict[str, Expected] = {
    **{name: ([], W, [], None) for name in INPUTS},
    "call_ended": ([], E, [], None),
}
"""The row of every waiting state once Twilio is gone."""

# One row per state, one entry per input. Where a state ignores all its inputs but a few, its row
# says so and names those few: a new input is ignored there unless the row says otherwise.
TABLE: dict[str, dict[str, Expected]] = {
    "waiting": WAITING,
    "patched": PATCHED,
    "synthesizing": {
        "final_with_code": (["game:Results"], S, [], None),
        "final_without_code": (["game:Results"], S, [], None),
        "final_other_party": (["game:Results"], S, [], None),
        "interim_with_words": (["game:Results~", "stop:1", "game:Interrupted"], P, ["clear"], None),
        "interim_blank": (["game:Results~"], S, [], None),
        "interim_other_party": (["game:Results~"], S, [], None),
        "speech_started": (["game:SpeechStarted", "stop:1", "game:Interrupted"], P, ["clear"], None),
        "speech_started_other_party": (["game:SpeechStarted"], S, [], None),
        "utterance_end": (["game:UtteranceEnd"], S, [], None),
        "not_json": (["game:?"], S, [], None),
        "dtmf_code": (["game:Dtmf"], S, [], None),
        "keypad_pause": ([], S, [], None),
        "mark_pending": ([], S, [], None),  # say-1 was not sent yet
        "mark_unknown": ([], S, [], None),
        "connect": ([], S, [], None),
        "say": ([], S, [], None),  # waits for sentence 1
        "say_blank": ([], S, [], None),
        "clear": (["stop:1"], P, ["clear"], None),
        "speech_audio": ([], S, ["media"], None),
        "speech_ended": ([], S, ["mark:say-1"], None),
        "speech_failed": (["game:Error"], P, [], None),
        "game_left": (["stop:1"], W, ["clear"], None),
        "twilio_gone": (["stop:1"], P, [], None),
        "call_ended": (["stop:1", "game:CallEnded"], E, [], None),
    },
    "awaiting_mark": {
        "final_with_code": (["game:Results"], S, [], None),
        "final_without_code": (["game:Results"], S, [], None),
        "final_other_party": (["game:Results"], S, [], None),
        "interim_with_words": (["game:Results~", "game:Interrupted"], P, ["clear"], None),
        "interim_blank": (["game:Results~"], S, [], None),
        "interim_other_party": (["game:Results~"], S, [], None),
        "speech_started": (["game:SpeechStarted", "game:Interrupted"], P, ["clear"], None),
        "speech_started_other_party": (["game:SpeechStarted"], S, [], None),
        "utterance_end": (["game:UtteranceEnd"], S, [], None),
        "not_json": (["game:?"], S, [], None),
        "dtmf_code": (["game:Dtmf"], S, [], None),
        "keypad_pause": ([], S, [], None),
        "mark_pending": (["game:SpeechDone"], P, [], None),
        "mark_unknown": ([], S, [], None),
        "connect": ([], S, [], None),
        "say": ([], S, [], Speak(2, "hi")),
        "say_blank": ([], S, [], None),
        "clear": ([], P, ["clear"], None),
        "speech_audio": ([], S, [], None),  # sentence 1 is over
        "speech_ended": ([], S, [], None),
        "speech_failed": ([], S, [], None),
        "game_left": ([], W, ["clear"], None),
        "twilio_gone": ([], P, [], None),
        "call_ended": (["game:CallEnded"], E, [], None),
    },
    # the same as patched but for a sentence to say: nobody is left to hear it, so it is dropped
    # (CallEnded follows)
    "hung_up": {**PATCHED, "say": NOTHING},
    # Keys wait for more (`4`, with 42 held too): a pause submits them, and `7` makes `47`, no code.
    "keying": {**WAITING, "dtmf_code": ([], W, [], None), "keypad_pause": (["heard:4"], W, [], None)},
    # A caller who has hung up is never patched: no code is heard, spoken or keyed (a final may
    # still come from Deepgram), and `connect` patches nothing. Only the call's end ends it.
    "waiting_hung_up": HUNG_UP_WAITING,
    "keying_hung_up": HUNG_UP_WAITING,
    "left_after_hang_up": HUNG_UP_WAITING,
    "ended": {name: ([], E, [], None) for name in INPUTS},
}


def test_the_table_covers_every_state_and_input() -> None:
    assert set(TABLE) == set(STATES)
    for row in TABLE.values():
        assert set(row) == set(INPUTS)


@pytest.mark.parametrize("state_name", list(STATES))
@pytest.mark.parametrize("input_name", list(INPUTS))
def test_every_state_and_input(state_name: str, input_name: str) -> None:
    build, state = STATES[state_name]
    machine = build()
    assert machine.state is state
    outputs, after, twilio, speech = TABLE[state_name][input_name]
    assert describe(INPUTS[input_name](machine)) == outputs
    assert machine.state is after
    assert take_twilio(machine) == twilio
    assert machine.next_speech() == speech


# --- the protocol, step by step ----------------------------------------------------------------


def test_the_game_gets_call_connected_then_the_result_that_carried_the_code() -> None:
    machine = waiting()
    carrier = results("hi, my code is forty two")
    (heard,) = deepgram(machine, carrier)
    assert heard == CodeHeard("42", "said 'hi, my code is forty two'", carrier)
    outputs = machine.connect(heard)
    assert outputs == [ToGame('{"type": "CallConnected", "callSid": "CA1"}'), ToGame(carrier)]
    assert (machine.state, machine.code) == (PatchState.PATCHED, "42")


def test_a_keyed_code_connects_without_forwarding_its_digits() -> None:
    machine = PatchMachine(CALL, STREAM, active_pool("42", "4"))
    assert machine.dtmf("4", 0.0) == []  # 42 may follow
    (heard,) = machine.dtmf("2", 0.0)
    assert heard == CodeHeard("42", "keyed 42")
    assert describe(machine.connect(heard)) == ["game:CallConnected"]
    assert machine.dtmf("2", 0.0) == [ToGame('{"type": "Dtmf", "digit": "2"}')]


def test_after_a_pause_the_keys_are_submitted_as_with_hash() -> None:
    machine = PatchMachine(CALL, STREAM, active_pool("42", "4", "421"))
    assert machine.keypad_due() is None
    assert machine.dtmf("4", 10.0) == []  # 42 or 421 may follow
    assert machine.keypad_due() == 10.0 + KEYPAD_PAUSE_S
    assert machine.dtmf("2", 12.0) == []  # 421 may follow: a key starts the pause again
    assert machine.keypad_pause(14.9) == [] and machine.keypad_due() == 15.0
    assert machine.keypad_pause(15.0) == [CodeHeard("42", "keyed 42")]
    assert machine.keypad_due() is None


def test_a_mistyped_entry_is_forgotten_after_a_pause() -> None:
    machine = PatchMachine(CALL, STREAM, active_pool("42"))
    assert machine.dtmf("4", 0.0) == machine.dtmf("3", 0.5) == []  # no such code
    assert machine.keypad_pause(0.5 + KEYPAD_PAUSE_S) == []  # submitted: nothing matched, forgotten
    assert machine.dtmf("4", 9.0) == []
    assert machine.dtmf("2", 9.5) == [CodeHeard("42", "keyed 42")]


def test_once_patched_a_pause_submits_nothing() -> None:
    machine = patched()
    machine.dtmf("4", 0.0)  # forwarded to the game
    assert machine.keypad_due() is None and machine.keypad_pause(100.0) == []


def test_a_busy_game_is_not_connected_and_the_caller_may_try_again() -> None:
    machine = waiting()
    assert describe(deepgram(machine, results("forty two"))) == ["heard:42"]  # the shell finds 42 busy
    assert machine.state is PatchState.WAITING
    assert describe(deepgram(machine, results("seven then"))) == ["heard:7"]


def test_codes_no_game_holds_are_not_heard() -> None:
    pool = active_pool("42", "7")
    pool.release("42")
    machine = PatchMachine(CALL, STREAM, pool)
    assert deepgram(machine, results("forty two")) == []
    assert machine.dtmf("4", 0.0) == machine.dtmf("2", 0.0) == machine.dtmf("#", 0.0) == []


def test_an_outbound_only_stream_has_no_caller_to_hear_a_code_or_a_barge_in_from() -> None:
    # <Stream track="outbound_track">: Deepgram's channel 0 is the other party; the caller is not heard.
    machine = PatchMachine(CALL, STREAM, active_pool(), tracks=("outbound",))
    assert deepgram(machine, results("forty two")) == []
    assert describe(machine.dtmf("7", 0.0)) == ["heard:7"]  # keys are the caller's, whatever is heard
    both = PatchMachine(CALL, STREAM, active_pool(), tracks=("inbound", "outbound"))
    assert describe(deepgram(both, results("forty two"))) == ["heard:42"]
    assert deepgram(both, results("seven", channel=1)) == []
    machine.connect(CodeHeard("42", "keyed 42"))
    machine.say("hello")
    assert machine.next_speech() == Speak(1, "hello")
    assert describe(deepgram(machine, speech_started())) == ["game:SpeechStarted"]  # forwarded, not a barge-in
    assert describe(deepgram(machine, results("hi", final=False))) == ["game:Results~"]
    assert machine.state is PatchState.SPEAKING


def test_speaking_and_the_mark_round_trip() -> None:
    machine = patched()
    machine.say("one")
    machine.say("two")
    assert machine.next_speech() == Speak(1, "one")
    assert machine.next_speech() is None  # one sentence at a time
    machine.speech_audio(1, b"\x01\x02")
    machine.speech_audio(1, b"")  # no empty media message
    machine.speech_ended(1)
    messages = [machine.next_for_twilio() for _ in range(3)]
    assert messages == [
        '{"event":"media","streamSid":"MZ1","media":{"payload":"AQI="}}',
        '{"event":"mark","streamSid":"MZ1","mark":{"name":"say-1"}}',
        None,
    ]
    assert machine.next_speech() == Speak(2, "two")
    assert describe(machine.mark("say-1")) == ["game:SpeechDone"]
    assert machine.mark("say-1") == []  # once
    machine.speech_ended(2)
    assert take_twilio(machine) == ["mark:say-2"]
    assert machine.state is PatchState.SPEAKING
    assert machine.mark("say-2") == [ToGame('{"type": "SpeechDone", "name": "say-2"}')]
    assert machine.state is PatchState.PATCHED


def test_a_mark_not_yet_sent_is_not_ours_to_echo() -> None:
    machine = synthesizing()
    machine.speech_ended(1)
    assert machine.mark("say-1") == []  # queued, not sent: Twilio cannot have played it
    assert take_twilio(machine) == ["mark:say-1"]
    assert describe(machine.mark("say-1")) == ["game:SpeechDone"]


def test_after_barge_in_the_clear_goes_before_the_next_sentence() -> None:
    machine = synthesizing()
    assert describe(deepgram(machine, speech_started())) == ["game:SpeechStarted", "stop:1", "game:Interrupted"]
    machine.speech_audio(1, b"\x09")  # late audio of the stopped sentence
    assert machine.say("next") == []
    assert machine.next_speech() is None  # sentence 1 has not wound down yet
    assert machine.speech_ended(1) == []  # stopped: no mark, no SpeechDone
    assert machine.next_speech() == Speak(2, "next")
    machine.speech_audio(2, b"\x02")
    machine.speech_ended(2)
    assert take_twilio(machine) == ["clear", "media", "mark:say-1"]  # marks count what was finished


def test_media_not_yet_taken_is_dropped_by_a_stop_and_needs_no_clear() -> None:
    machine = patched()
    machine.say("one")
    machine.next_speech()
    machine.speech_audio(1, b"\x01")
    assert describe(machine.clear()) == ["stop:1"]
    assert take_twilio(machine) == []  # nothing reached Twilio


def test_clears_do_not_pile_up() -> None:
    machine = synthesizing()
    machine.clear()
    for _ in range(5):
        machine.say("x")
        machine.clear()
    assert take_twilio(machine) == ["clear"]


def test_the_say_queue_is_bounded() -> None:
    machine = PatchMachine(CALL, STREAM, active_pool(), say_queue=2)
    machine.connect(CodeHeard("42", "said 42"))
    assert machine.say("a") == machine.say("b") == []
    (full,) = machine.say("c")
    assert isinstance(full, ToGame)
    assert json.loads(full.message) == {
        "type": "Error",
        "source": "callscribe",
        "message": "speech queue full (2 sentences waiting); wait for SpeechDone",
    }
    machine.next_speech()
    assert machine.say("c") == []  # "a" is being spoken: room for one more


def test_without_a_speech_engine_say_is_an_error() -> None:
    machine = PatchMachine(CALL, STREAM, active_pool(), can_speak=False)
    machine.connect(CodeHeard("42", "said 42"))
    (error,) = machine.say("hello")
    assert isinstance(error, ToGame) and "no speech engine is configured" in error.message
    assert machine.state is PatchState.PATCHED and machine.next_speech() is None


def test_a_speech_failure_is_reported_and_the_next_sentence_follows() -> None:
    machine = synthesizing()
    machine.say("two")
    (error,) = machine.speech_ended(1, "HTTP 503")
    assert isinstance(error, ToGame)
    assert json.loads(error.message)["message"] == "speech failed: HTTP 503"
    assert machine.next_speech() == Speak(2, "two")


def test_a_stopped_sentence_that_fails_tells_nothing() -> None:
    machine = synthesizing()
    assert describe(machine.clear()) == ["stop:1"]
    assert machine.speech_ended(1, "cancelled mid-way") == []
    assert machine.state is PatchState.PATCHED


def test_a_game_leaving_frees_the_call_for_another_code() -> None:
    machine = awaiting_mark()
    machine.game_left()
    assert (machine.state, machine.code) == (PatchState.WAITING, None)
    assert machine.mark("say-1") == []  # echoed by the clear: nobody is told
    (heard,) = deepgram(machine, results("seven"))
    assert describe(machine.connect(heard)) == ["game:CallConnected", "game:Results"]
    assert machine.code == "7"


def test_the_call_ending_while_waiting_tells_nobody() -> None:
    machine = waiting()
    assert machine.call_ended("call ended") == []
    assert machine.connect(CodeHeard("42", "said 42")) == []


def test_a_caller_who_hung_up_is_never_patched() -> None:
    # Deepgram's last finals come after Twilio's `stop`, while the call finishes: a code in them
    # used to patch the gone caller, and the game got CallConnected, then CallEnded at once.
    machine = waiting()
    assert machine.twilio_gone() == []
    carrier = results("my code is forty two")
    assert deepgram(machine, carrier) == []
    assert machine.dtmf("7", 0.0) == []
    assert machine.connect(CodeHeard("42", "said 42", carrier)) == []  # never patched, even if asked
    assert (machine.state, machine.code, machine.patched) == (PatchState.WAITING, None, False)
    assert machine.call_ended("call ended") == []  # no game to tell


def test_keys_pending_when_the_caller_hangs_up_are_never_submitted() -> None:
    machine = keying()
    assert machine.keypad_due() == KEYPAD_PAUSE_S
    assert machine.twilio_gone() == []
    assert machine.keypad_due() is None  # the shell waits for no pause
    assert machine.keypad_pause(1e9) == []
    assert machine.dtmf("2", 1.0) == machine.dtmf("#", 1.0) == []  # "42" would have been heard


def test_a_patched_game_still_gets_the_finals_that_come_after_the_hang_up() -> None:
    machine = hung_up()
    assert describe(deepgram(machine, results("forty two"))) == ["game:Results"]
    assert describe(machine.game_left()) == []
    assert deepgram(machine, results("seven")) == []  # the game left: no other game takes the call


def test_call_ended_carries_the_reason() -> None:
    machine = patched()
    (ended_message,) = machine.call_ended("deepgram failed")
    assert isinstance(ended_message, ToGame)
    assert json.loads(ended_message.message) == {"type": "CallEnded", "callSid": CALL, "reason": "deepgram failed"}


# --- random sequences ----------------------------------------------------------------------------

GAME_TYPES = {"CallConnected", "Dtmf", "SpeechDone", "Interrupted", "CallEnded", "Error"}

ACTIONS = [
    *INPUTS,
    "final_with_code_7",
    "key_4",
    "key_2",
    "key_hash",
    "take_twilio",
    "next_speech",
    "audio",
    "end",
    "fail",
    "stale_end",
    "echo_oldest",
    "echo_newest",
    "game_busy",
    "game_free",
]


@dataclass
class Harness:
    """The machine and a model of the shell around it, checking the protocol's invariants."""

    machine: PatchMachine = field(default_factory=lambda: PatchMachine(CALL, STREAM, active_pool("42", "4", "7")))
    game_free: bool = True
    connected: bool = False  # the game is patched (as the shell sees it)
    synthesizing: int | None = None  # the sentence the shell synthesizes
    stopped: set[int] = field(default_factory=set)
    sent_marks: list[str] = field(default_factory=list)  # taken for Twilio, not echoed
    ever_sent_marks: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    outstanding: int = 0  # sentences accepted and not yet answered (SpeechDone, Error) or ended in bulk
    media_since_clear: bool = False
    ended: bool = False
    twilio_gone: bool = False

    def perform(self, action: str) -> None:
        m = self.machine
        before = m.state
        outputs: list[Output]
        if action in INPUTS:
            outputs = INPUTS[action](m)
            if action in ("speech_ended", "speech_failed") and self.synthesizing == 1:
                self.synthesizing = None  # those end sentence 1
            if action == "mark_pending" and "say-1" in self.sent_marks:
                self.sent_marks.remove("say-1")
        elif action == "final_with_code_7":
            outputs = deepgram(m, results("seven"))
        elif action.startswith("key_"):
            outputs = m.dtmf({"key_4": "4", "key_2": "2", "key_hash": "#"}[action], 0.0)
        elif action == "take_twilio":
            self.take_one()
            outputs = []
        elif action == "next_speech":
            speak = m.next_speech()
            if speak is not None:
                assert self.synthesizing is None, "two sentences at once"
                self.synthesizing = speak.number
            outputs = []
        elif action in ("audio", "end", "fail"):
            number = self.synthesizing if self.synthesizing is not None else 1
            if action == "audio":
                outputs = m.speech_audio(number, bytes([number % 256]))
            else:
                outputs = m.speech_ended(number, "boom" if action == "fail" else None)
                if number == self.synthesizing:
                    self.synthesizing = None
        elif action == "stale_end":
            outputs = m.speech_ended(1000)
        elif action in ("echo_oldest", "echo_newest"):
            name = (self.sent_marks[0] if action == "echo_oldest" else self.sent_marks[-1]) if self.sent_marks else "x"
            if name in self.sent_marks:
                self.sent_marks.remove(name)
            outputs = m.mark(name)
        else:
            self.game_free = action == "game_free"
            outputs = []
        self.check(action, before, outputs)

    def take_one(self) -> None:
        message = self.machine.next_for_twilio()
        if message is None:
            return
        assert not self.ended and not self.twilio_gone, "a Twilio message after the socket or the call is gone"
        parsed = json.loads(message)
        if parsed["event"] == "media":
            number = base64.b64decode(parsed["media"]["payload"])[0]
            assert number not in self.stopped, "audio of a stopped sentence"
            self.media_since_clear = True
        elif parsed["event"] == "clear":
            assert self.media_since_clear, "a clear with none of our audio to clear"
            self.media_since_clear = False
            self.sent_marks.clear()  # Twilio echoes them now; they are not pending any more
        else:
            self.sent_marks.append(parsed["mark"]["name"])
            self.ever_sent_marks.add(parsed["mark"]["name"])

    def check(self, action: str, before: PatchState, outputs: list[Output]) -> None:
        m = self.machine
        if self.ended:
            assert outputs == [] and m.state is PatchState.ENDED
            assert m.next_for_twilio() is None and m.next_speech() is None
            return
        if action == "connect" and before is PatchState.WAITING:
            assert describe(outputs) == ([] if self.twilio_gone else ["game:CallConnected"])
            self.connected = not self.twilio_gone
        for output in outputs:
            if isinstance(output, CodeHeard):
                assert before is PatchState.WAITING and not self.twilio_gone, "a code heard after the hang-up"
                if self.game_free:
                    connected = m.connect(output)
                    assert describe(connected)[0] == "game:CallConnected"
                    assert (output.carrier is None) == (len(connected) == 1)
                    self.connected = True
            elif isinstance(output, StopSpeaking):
                assert output.number == self.synthesizing and output.number not in self.stopped
                self.stopped.add(output.number)
            else:
                assert self.connected, f"{output.message} sent to a game before it was patched"
                kind = json.loads(output.message).get("type") if output.message.startswith("{") else None
                if kind == "SpeechDone":
                    name = json.loads(output.message)["name"]
                    assert name in self.ever_sent_marks and name not in self.done, "SpeechDone before its mark"
                    assert action.startswith("echo_") or action == "mark_pending"
                    self.done.add(name)
                    self.outstanding -= 1
                elif kind == "Error" and "speech failed" in output.message:
                    self.outstanding -= 1
                elif kind == "Interrupted":
                    self.outstanding = 0
                elif kind == "CallEnded":
                    assert action == "call_ended"
        if action == "say" and self.connected and outputs == [] and not self.twilio_gone:
            self.outstanding += 1
        if action in ("clear", "game_left", "twilio_gone", "call_ended"):
            self.outstanding = 0
        if action == "game_left":
            self.connected = False
        self.twilio_gone |= action in ("twilio_gone", "call_ended")
        self.ended |= action == "call_ended"
        assert m.keypad_due() is None or not self.twilio_gone
        assert self.outstanding >= 0
        assert m.patched == self.connected or self.ended
        if m.patched:
            assert (m.state is PatchState.SPEAKING) == (self.outstanding > 0), "SPEAKING means a Say is unanswered"

    def finish(self) -> None:
        """Run the speaker and echo every mark until nothing moves: every Say has been answered."""
        for _ in range(200):
            if self.machine.speaker_has_work:
                for action in ("take_twilio", "next_speech"):
                    self.perform(action)
            elif self.synthesizing is not None:
                self.perform("end")
            elif self.sent_marks:
                self.perform("echo_oldest")
            else:
                break
        assert self.outstanding == 0 or self.ended or self.twilio_gone
        assert self.machine.state is not PatchState.SPEAKING


SPEAKER_ACTIONS = ["take_twilio", "next_speech", "audio", "end", "echo_oldest"]
GAME_ACTIONS = ["say", "say", "clear", "fail", "interim_with_words", "speech_started"]


@settings(max_examples=1000, deadline=None)
@given(
    patched_first=st.booleans(),
    actions=st.lists(
        st.one_of(st.sampled_from(SPEAKER_ACTIONS), st.sampled_from(GAME_ACTIONS), st.sampled_from(ACTIONS)),
        max_size=80,
    ),
)
def test_random_sequences_keep_the_protocol(patched_first: bool, actions: list[str]) -> None:
    harness = Harness()
    for action in ["final_with_code", *actions] if patched_first else actions:
        harness.perform(action)
    harness.finish()


@settings(max_examples=500, deadline=None)
@given(
    before=st.lists(st.sampled_from(ACTIONS), max_size=20),
    after=st.lists(st.sampled_from([*ACTIONS, "final_with_code", "final_with_code_7", "connect"]), max_size=30),
)
def test_after_the_hang_up_no_code_is_heard(before: list[str], after: list[str]) -> None:
    """Whatever happened before Twilio went, and whatever comes after (late finals, the game
    leaving, the shell asking to connect), no code is heard and no game is patched again."""
    harness = Harness()
    for action in [*before, "twilio_gone", *after]:
        harness.perform(action)  # checks: no CodeHeard, no CallConnected once Twilio is gone
    harness.finish()


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200), final=st.booleans())
def test_any_deepgram_text_never_raises(text: str, final: bool) -> None:
    for machine in (waiting(), synthesizing()):
        kind = DeepgramStream().receive(text)
        machine.deepgram(kind, text, not final)
