"""Tests for the fake Deepgram Aura server, driven with plain httpx requests over loopback.

How AuraEngine fares against it (misbehaviours included) is tested in tests/server/test_speech.py.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from callscribe.core import audio as mulaw
from callscribe.testing.fake_aura import REQUIRED_AUDIO_PARAMS, FakeAura, FakeAuraBehaviour

KEY = "speak-key"
GOOD_QUERY = "model=m&encoding=mulaw&sample_rate=8000&container=none"


@pytest.fixture
async def fake_aura(nursery: trio.Nursery) -> FakeAura:
    fake = FakeAura(FakeAuraBehaviour(api_key=KEY, chunk_bytes=300))
    await nursery.start(fake.serve)
    return fake


async def test_fake_aura_streams_a_tone_in_chunks(fake_aura: FakeAura) -> None:
    text = "Hello there."
    with trio.fail_after(5):
        async with httpx.AsyncClient() as client:
            url = f"{fake_aura.url}?{GOOD_QUERY}"
            response = await client.post(url, json={"text": text}, headers={"Authorization": f"Token {KEY}"})
    body = response.content
    assert response.status_code == 200 and response.headers["content-type"] == "audio/basic"
    assert response.headers["dg-model-name"] == "m" and response.headers["dg-char-count"] == str(len(text))
    assert body == fake_aura.expected_audio(text) == mulaw.generate_tone(len(text) * 0.05)
    (request,) = fake_aura.requests
    assert request.text == text and request.status == 200 and request.completed
    assert request.chunks_sent == -(-len(body) // 300) and request.bytes_sent == len(body)


def test_fake_aura_requires_twilio_audio() -> None:
    assert REQUIRED_AUDIO_PARAMS == {"encoding": "mulaw", "sample_rate": "8000", "container": "none"}
    assert FakeAura().expected_audio("x") == mulaw.generate_tone(0.1)  # at least one chunk's worth


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "status", "message"),
    [
        ("POST", "/v1/speak", GOOD_QUERY.replace("mulaw", "linear16"), b'{"text":"x"}', 400, "encoding must be mulaw"),
        ("POST", "/v1/speak", GOOD_QUERY.replace("8000", "16000"), b'{"text":"x"}', 400, "sample_rate must be 8000"),
        (
            "POST",
            "/v1/speak",
            "model=m&encoding=mulaw&sample_rate=8000",
            b'{"text":"x"}',
            400,
            "container must be none",
        ),
        ("POST", "/v1/speak", GOOD_QUERY.replace("model=m&", ""), b'{"text":"x"}', 400, "model is required"),
        ("POST", "/v1/speak", GOOD_QUERY, b"{bad", 400, "could not process the JSON"),
        ("POST", "/v1/speak", GOOD_QUERY, b'{"text":""}', 400, "non-empty"),
        ("GET", "/v1/speak", GOOD_QUERY, b"", 405, "Use POST"),
        ("POST", "/v1/listen", GOOD_QUERY, b'{"text":"x"}', 404, "No such endpoint"),
    ],
)
async def test_fake_aura_validates_requests_like_deepgram(
    fake_aura: FakeAura, method: str, path: str, query: str, body: bytes, status: int, message: str
) -> None:
    url = f"http://127.0.0.1:{fake_aura.port}{path}?{query}"
    with trio.fail_after(5):
        async with httpx.AsyncClient() as client:
            response = await client.request(method, url, content=body, headers={"Authorization": f"Token {KEY}"})
    assert response.status_code == status
    assert message in response.json()["err_msg"]
    assert response.headers["dg-request-id"] == response.json()["request_id"]
    assert fake_aura.requests[-1].status == status and not fake_aura.requests[-1].completed
