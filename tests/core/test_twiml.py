"""Tests for callscribe.core.twiml: the TwiML documents parse and have exactly the expected structure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from callscribe.core.twiml import (
    DEFAULT_GAME_PROMPT,
    DEFAULT_HOLD_S,
    call_parameters,
    game_twiml,
    stream_url,
    transcription_twiml,
)


def parse(twiml: str) -> ET.Element:
    assert twiml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(twiml)
    assert root.tag == "Response"
    return root


def shape(element: ET.Element) -> tuple[object, ...]:
    """(tag, attributes, text, children...) of an element tree, for exact comparisons."""
    return (element.tag, dict(element.attrib), (element.text or "").strip(), *[shape(c) for c in element])


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://callscribe.example.com", "wss://callscribe.example.com/twilio"),
        ("https://callscribe.example.com/", "wss://callscribe.example.com/twilio"),
        ("HTTPS://CallScribe.Example.com", "wss://callscribe.example.com/twilio"),
        ("wss://callscribe.example.com", "wss://callscribe.example.com/twilio"),
        ("http://127.0.0.1:5000", "ws://127.0.0.1:5000/twilio"),
        ("ws://localhost:8080/", "ws://localhost:8080/twilio"),
        ("https://example.com:8443/callscribe", "wss://example.com:8443/callscribe/twilio"),
        ("https://example.com/a/b/", "wss://example.com/a/b/twilio"),
        ("https://[::1]:5000", "wss://[::1]:5000/twilio"),
        ("  https://abc.ngrok.app  ", "wss://abc.ngrok.app/twilio"),
    ],
)
def test_stream_url(public_url: str, expected: str) -> None:
    assert stream_url(public_url) == expected


@pytest.mark.parametrize(
    ("public_url", "message"),
    [
        ("ftp://example.com", "must start with https:// or wss://"),
        ("example.com", "must start with https:// or wss://"),
        ("", "must start with https://"),
        ("https://", "has no host"),
        ("https://user:secret@example.com", "must not contain credentials"),
        ("https://example.com/?token=x", "query string"),
        ("https://example.com/?", "query string"),
        ("https://example.com/#frag", "query string or fragment"),
        ("https://example.com:99999", "not a valid URL"),
    ],
)
def test_stream_url_rejects(public_url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stream_url(public_url)


def test_transcription_twiml_forwards_the_call() -> None:
    root = parse(transcription_twiml("https://callscribe.example.com", "+15551234567"))
    assert shape(root) == (
        "Response", {}, "",
        ("Start", {}, "", ("Stream", {"url": "wss://callscribe.example.com/twilio", "track": "both_tracks"}, "")),
        ("Dial", {}, "+15551234567"),
    )  # fmt: skip


@pytest.mark.parametrize("number", [None, "", "   "])
def test_transcription_twiml_without_a_number_holds_the_call(number: str | None) -> None:
    root = parse(transcription_twiml("wss://h.example", number))
    assert shape(root) == (
        "Response", {}, "",
        ("Start", {}, "", ("Stream", {"url": "wss://h.example/twilio", "track": "both_tracks"}, "")),
        ("Pause", {"length": str(DEFAULT_HOLD_S)}, ""),
    )  # fmt: skip
    held = parse(transcription_twiml("wss://h.example", number, hold_s=60))
    assert held[1].attrib == {"length": "60"}


@pytest.mark.parametrize("hold_s", [0, -1, 14401, 1.5, True])
def test_transcription_twiml_rejects_bad_hold(hold_s: object) -> None:
    with pytest.raises(ValueError, match="hold_s"):
        transcription_twiml("https://h.example", None, hold_s=hold_s)  # type: ignore[arg-type]


def test_transcription_twiml_escapes_the_number() -> None:
    root = parse(transcription_twiml("https://h.example", " +1 555 <&> "))
    assert root[1].tag == "Dial" and root[1].text == "+1 555 <&>"


def test_game_twiml() -> None:
    root = parse(game_twiml("https://callscribe.example.com"))
    assert shape(root) == (
        "Response", {}, "",
        ("Say", {}, DEFAULT_GAME_PROMPT),
        ("Connect", {}, "",
            ("Stream", {"url": "wss://callscribe.example.com/twilio"}, "",
                ("Parameter", {"name": "route", "value": "game"}, ""))),
    )  # fmt: skip
    assert "track" not in root[1][0].attrib  # <Connect> streams the inbound track only


def test_game_twiml_prompt_is_escaped_or_left_out() -> None:
    root = parse(game_twiml("http://127.0.0.1:5000", prompt='Say "A & B" <now>'))
    assert root[0].tag == "Say" and root[0].text == 'Say "A & B" <now>'
    assert root[1][0].attrib["url"] == "ws://127.0.0.1:5000/twilio"
    silent = parse(game_twiml("https://h.example", prompt="  "))
    assert [child.tag for child in silent] == ["Connect"]


def test_bad_public_url_is_rejected_by_both() -> None:
    with pytest.raises(ValueError):
        game_twiml("ftp://h.example")
    with pytest.raises(ValueError):
        transcription_twiml("https://h.example/?x=1", "+1555")


def test_the_calls_from_to_and_direction_become_stream_parameters() -> None:
    form = {"CallSid": "CA1", "From": " +15550100 ", "To": "+15550199", "Direction": "inbound", "Caller": "x"}
    parameters = call_parameters(form)
    assert parameters == {"From": "+15550100", "To": "+15550199", "Direction": "inbound"}
    assert call_parameters({"From": "", "To": "x" * 100}) == {"To": "x" * 64}

    stream = parse(transcription_twiml("https://h.example", None, parameters=parameters)).find("./Start/Stream")
    assert stream is not None
    assert [(p.get("name"), p.get("value")) for p in stream] == list(parameters.items())

    stream = parse(game_twiml("https://h.example", parameters={**parameters, "route": "x"})).find("./Connect/Stream")
    assert stream is not None
    assert [(p.get("name"), p.get("value")) for p in stream] == [("route", "game"), *parameters.items()]


def test_control_characters_in_the_webhook_fields_do_not_break_the_twiml() -> None:
    # XML 1.0 cannot hold most C0 control characters, even escaped; ElementTree writes them raw,
    # so a From like "+1555\x01" made a document Twilio refuses to parse (the call fails).
    form = {"From": "+1555\x00\x01", "To": "sip:a\x1b[0m@b.example", "Direction": "in\x0bbound"}
    parameters = call_parameters(form)
    assert parameters == {"From": "+1555", "To": "sip:a[0m@b.example", "Direction": "inbound"}
    for twiml in (
        transcription_twiml("https://h.example", None, parameters=call_parameters(form)),
        game_twiml("https://h.example", parameters=call_parameters(form)),
    ):
        parse(twiml)
