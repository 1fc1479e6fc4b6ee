"""Webhook events, signatures and the retry schedule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core import webhooks
from callscribe.core.call_record import call_start, stored_call_of
from callscribe.core.transcript import parse_final
from callscribe.core.webhooks import RetryPolicy, check_receiver_url, receiver_name, sign, verify
from callscribe.testing.fake_deepgram_results import compact_json, results_message

SECRET = b"webhook-secret"


@given(st.binary(max_size=2000), st.integers(0, 2**40))
def test_a_signature_verifies_its_body_and_nothing_else(body: bytes, now: int) -> None:
    header = sign(SECRET, now, body)
    assert verify(SECRET, header, body, now)
    assert not verify(SECRET, header, body + b" ", now)
    assert not verify(b"another secret", header, body, now)
    assert not verify(SECRET, header, body, now + webhooks.SIGNATURE_TOLERANCE_S + 1)  # a replay, later


@pytest.mark.parametrize("header", ["", "t=1", "v1=abc", "t=x,v1=abc", "t=1,t=2,v1=abc", "garbage"])
def test_malformed_signatures_are_refused(header: str) -> None:
    assert not verify(SECRET, header, b"{}", 1)


def test_the_retry_schedule_doubles_from_the_first_wait_and_gives_up() -> None:
    policy = RetryPolicy(first_s=1.0, max_delay_s=600.0, give_up_after_s=3600.0)
    assert [policy.delay(n) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    assert policy.delay(10_000) == 600.0  # no overflow
    assert policy.next_attempt(1, created_at=100.0, now=100.5) == 101.5  # the first retry within ~2 s
    assert policy.next_attempt(9, created_at=0.0, now=3000.0) == 3256.0
    assert policy.next_attempt(9, created_at=0.0, now=3500.0) is None  # 3500 + 256 is past the hour


@given(st.integers(1, 200), st.floats(0.01, 100), st.floats(1, 1e5))
def test_waits_never_shrink_and_never_pass_the_cap(failures: int, first: float, cap: float) -> None:
    policy = RetryPolicy(first_s=first, max_delay_s=max(first, cap))
    assert first <= policy.delay(failures) <= policy.delay(failures + 1) <= max(first, cap)


def test_event_bodies_are_json_with_the_final_as_deepgram_sent_it() -> None:
    raw = compact_json(
        results_message(request_id="r", channel=1, channels=2, start=0.5, end=1.5, is_final=True, transcript="hi there")
    )
    utterance = parse_final(raw, 3)
    assert utterance is not None
    body = webhooks.event_body(
        event_id="evt_1",
        kind=webhooks.TRANSCRIPT_FINAL,
        call_sid="CA1",
        sequence=3,
        created_at=0.0,
        data=webhooks.final_data(utterance),
    )
    event = json.loads(body)
    assert event == {
        "id": "evt_1",
        "type": "transcript.final",
        "createdAt": "1970-01-01T00:00:00.000Z",
        "callSid": "CA1",
        "sequence": 3,
        "data": {
            "utterance": {
                "channel": 1,
                "speaker": "Other party",
                "start": 0.5,
                "end": 1.5,
                "text": "hi there",
                "confidence": 0.99,
            },
            "result": json.loads(raw),
        },
    }
    call = stored_call_of(
        call_start(
            call_sid="CA1", stream_sid="MZ", account_sid="AC", tracks=["inbound"], parameters={"From": "+1"}, now=0
        )
    )
    started = json.loads(webhooks.started_data(call))
    assert started["from"] == "+1" and started["live"] is True
    ended = json.loads(webhooks.ended_data(call, [utterance]))
    assert ended["utterances"] == [event["data"]["utterance"]]


def test_receiver_urls() -> None:
    assert receiver_name("https://user:pw@hooks.example:8443/in?key=secret#x") == "https://hooks.example:8443/in"
    assert check_receiver_url(" http://127.0.0.1:9000/hook ") == "http://127.0.0.1:9000/hook"
    for bad in ("ftp://x/y", "hooks.example/in", "http:///nohost", "http://x:99999/"):
        with pytest.raises(ValueError, match="webhook URL"):
            check_receiver_url(bad)


def test_receivers_alike_but_for_what_their_names_leave_out_get_distinct_names() -> None:
    urls = ["https://hooks.example.com/calls?tenant=a", "https://u:p@hooks.example.com/calls", "https://b.example/x"]
    assert webhooks.receiver_names(urls) == {
        urls[0]: "https://hooks.example.com/calls",
        urls[1]: "https://hooks.example.com/calls#2",
        urls[2]: "https://b.example/x",
    }
