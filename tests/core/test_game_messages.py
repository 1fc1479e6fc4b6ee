"""Tests for callscribe.core.game_messages: what the server and a game say to each other on /game."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core import game_messages as gm
from callscribe.core.game_messages import BadCommand, Clear, Say, parse_command

NOT_JSON = 'not valid JSON: send plain text to speak, or {"type":"Say","text":...}'


def test_server_messages_are_exact() -> None:
    assert gm.call_connected("CA1") == '{"type": "CallConnected", "callSid": "CA1"}'
    assert gm.dtmf("#") == '{"type": "Dtmf", "digit": "#"}'
    assert gm.speech_done("say-1") == '{"type": "SpeechDone", "name": "say-1"}'
    assert gm.interrupted() == '{"type": "Interrupted"}'
    assert gm.call_ended("CA1", "call ended") == '{"type": "CallEnded", "callSid": "CA1", "reason": "call ended"}'
    assert gm.error_message("x") == '{"type": "Error", "source": "callscribe", "message": "x"}'


SAY_NEEDS_TEXT = 'Say needs "text", a string: {"type":"Say","text":"..."}'
LONE_SURROGATE = "Say text has a lone surrogate at character 6: send whole characters"


@pytest.mark.parametrize(
    ("frame", "command"),
    [
        ("Hello caller", Say("Hello caller")),
        (b"Hello caller", Say("Hello caller")),
        (b"caf\xe9", Say("caf\ufffd")),
        ("[1, 2]", Say("[1, 2]")),  # not an object: text to say
        ('{"type": "Say", "text": "hi"}', Say("hi")),
        ('  {"type":"Clear"}', Clear()),
        ('{"type": "Clear", "extra": 1}', Clear()),
        (None, None),
        ("", None),
        (" \n", None),
        ('{"type": "Say", "text": "  "}', None),
        ('{"type": "Say", "text": 5}', BadCommand(SAY_NEEDS_TEXT)),
        ('{"type": "Say"}', BadCommand(SAY_NEEDS_TEXT)),
        ('{"type": "Say", "message": "hi"}', BadCommand(SAY_NEEDS_TEXT)),
        # JSON.stringify of a string cut in the middle of an emoji: half a surrogate pair
        ('{"type": "Say", "text": "Hello \\ud83d"}', BadCommand(LONE_SURROGATE)),
        ('{"type": "Dance"}', BadCommand("unknown command 'Dance': use Say or Clear")),
        ("{}", BadCommand("unknown command 'None': use Say or Clear")),
        ('{"type": [1, 2]}', BadCommand("unknown command 'list': use Say or Clear")),
        ('{"type": "' + "x" * 100 + '"}', BadCommand(f"unknown command {'x' * 40!r}: use Say or Clear")),
        ("{not json", BadCommand(NOT_JSON)),
        ('{"a":' * 100_000, BadCommand(NOT_JSON)),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, BadCommand(NOT_JSON)),  # too deep for the parser
    ],
)
def test_parse_command(frame: str | bytes | None, command: object) -> None:
    assert parse_command(frame) == command


@settings(max_examples=300, deadline=None)
@given(frame=st.one_of(st.text(max_size=80), st.binary(max_size=80), st.none()))
def test_parse_command_never_raises(frame: str | bytes | None) -> None:
    command = parse_command(frame)
    assert command is None or isinstance(command, (Say, Clear, BadCommand))
    if isinstance(command, Say):
        assert command.text.strip()
