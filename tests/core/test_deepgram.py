"""Deepgram framing without IO: URL options, control messages, classification, rejection summaries."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from callscribe.core.deepgram import (
    CLOSE_STREAM,
    DEFAULT_URL,
    KEEPALIVE,
    DeepgramState,
    DeepgramStream,
    api_key_problem,
    listen_url,
    rejection_summary,
)


def test_an_api_key_must_fit_an_authorization_header() -> None:
    assert api_key_problem("0123abcd") == api_key_problem("with space~") == ""
    assert api_key_problem("key\u201d") == "has a character that is not printable ASCII (at position 4)"
    assert api_key_problem("\tkey").endswith("(at position 1)") and api_key_problem("key\n")


def test_audio_parameters_are_forced_and_other_options_kept() -> None:
    url = listen_url("wss://api.example/v1/listen?model=nova-2&channels=5&encoding=opus&numerals=true", channels=2)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("wss", "api.example", "/v1/listen")
    assert dict(parse_qsl(parts.query)) == {
        "model": "nova-2",
        "numerals": "true",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "2",
        "multichannel": "true",
    }
    assert dict(parse_qsl(urlsplit(listen_url(DEFAULT_URL, channels=1)).query))["multichannel"] == "false"


@pytest.mark.parametrize("bad", ["https://api.deepgram.com/v1/listen", "wss:///v1/listen", "nonsense"])
def test_non_websocket_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        listen_url(bad, channels=1)


def test_stream_states_and_counters() -> None:
    stream = DeepgramStream()
    assert stream.send_audio(b"\xff" * 10) == b"\xff" * 10
    with pytest.raises(ValueError):
        stream.send_audio(b"")
    assert stream.send_keepalive() == KEEPALIVE
    assert stream.receive('{"type":"Results","is_final":false}').type == "Results"
    assert stream.receive('{"type":"Results","is_final":true}').type == "Results"
    assert stream.receive('{"type":"Metadata"}').type == "Metadata"
    assert stream.state is DeepgramState.STREAMING  # Metadata only finishes a closing stream
    assert stream.send_close_stream() == CLOSE_STREAM
    assert stream.state is DeepgramState.CLOSING
    with pytest.raises(RuntimeError):
        stream.send_audio(b"\x00")
    assert stream.receive("not json").type == ""
    stream.receive('{"type":"Metadata","request_id":"x"}')
    assert stream.state is DeepgramState.FINISHED
    assert (stream.audio_bytes_sent, stream.results_received, stream.finals_received, stream.unparsable) == (
        10,
        2,
        1,
        1,
    )


def test_rejection_summary_prefers_dg_error_then_body() -> None:
    headers = [(b"dg-error", b"Invalid credentials."), (b"dg-request-id", b"abc")]
    assert rejection_summary(401, headers, None) == "HTTP 401: Invalid credentials. (dg-request-id abc)"
    assert rejection_summary(400, {}, b'{"err_msg":"Bad sample rate"}') == "HTTP 400: Bad sample rate"
    assert rejection_summary(503, {}, b"<html>oops") == "HTTP 503: <html>oops"
    assert rejection_summary(429, {}, None) == "HTTP 429"


def test_a_connection_knows_its_request_id_from_its_results_or_its_metadata() -> None:
    with_results, without_results = DeepgramStream(), DeepgramStream()
    assert with_results.receive('{"type":"Results","metadata":{"request_id":"r1","model_info":{}}}').type == "Results"
    with_results.receive('{"type":"Metadata","request_id":"ignored: the first one seen wins"}')
    assert with_results.request_id == "r1"
    assert without_results.receive('{"type":"Results","metadata":{"model_uuid":"m"}}').type == "Results"
    assert without_results.request_id == ""  # no id in that one
    without_results.receive('{"type":"Metadata","request_id":"r2"}')  # a connection that sent no final
    assert without_results.request_id == "r2"
    odd = DeepgramStream()  # metadata of another shape: still a result, with no id
    assert odd.receive('{"type":"Results","is_final":true,"metadata":[1]}').is_final and odd.request_id == ""
