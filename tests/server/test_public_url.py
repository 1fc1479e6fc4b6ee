"""PUBLIC_URL and Twilio's signatures: the stream URL our TwiML gives is the one the check expects."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import re

import httpx
import trio

from callscribe.core.access import Access, TwilioSignatureCheck
from callscribe.core.audio import generate_tone
from callscribe.core.twiml import stream_url
from callscribe.server.config import settings_from
from callscribe.server.options import add_arguments
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallSpec, run_call
from conftest import start_server

AUTH_TOKEN = "12345678901234567890123456789012"


def twilio_signature(url: str, params: dict[str, str] | None = None) -> str:
    """As Twilio documents it: HMAC-SHA1 over the URL then the sorted POST params, base64."""
    data = url + "".join(f"{k}{v}" for k, v in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(AUTH_TOKEN.encode(), data.encode(), hashlib.sha1).digest()).decode()


# -- 1. PUBLIC_URL with upper-case letters in the host: the stream URL we hand Twilio is not the one we check


async def test_twilio_stream_to_the_url_in_our_own_twiml_is_accepted_with_a_mixed_case_public_url(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    public = "https://Calls.Example.com"
    server = await start_server(nursery, fake_deepgram, public_url=public, twilio_auth_token=AUTH_TOKEN)
    form = {"CallSid": "CA1", "From": "+15551234567"}
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            server.http_url + "/twiml",
            data=form,
            headers={"X-Twilio-Signature": twilio_signature(public + "/twiml", form)},
        )
    assert answer.status_code == 200, answer.text
    (stream,) = re.findall(r'url="([^"]+)"', answer.text)
    assert stream == "wss://calls.example.com/twilio"  # what Twilio is told to open, and will sign
    report = await run_call(
        server.url("/twilio"),
        CallSpec(inbound=generate_tone(0.5)),
        speed=0,
        headers=[("X-Twilio-Signature", twilio_signature(stream))],
    )
    assert report.close_code == 1000
    server.stop.set()


# -- 2. PUBLIC_URL with trailing blank: accepted by the config and by the TwiML, but every signature is refused


def test_a_public_url_the_config_accepts_validates_the_streams_its_twiml_starts() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = settings_from(
        parser.parse_args([]), {"DEEPGRAM_API_KEY": "k", "PUBLIC_URL": "https://calls.example.com "}
    )  # accepted (as from an env file with a trailing blank)
    stream = stream_url(settings.public_url)
    assert stream == "wss://calls.example.com/twilio"
    access = Access(twilio=TwilioSignatureCheck(AUTH_TOKEN), public_url=settings.public_url)
    verdict = access.check_twilio({"X-Twilio-Signature": twilio_signature(stream)}, "wss", "/twilio", "", {})
    assert verdict.ok, verdict.reason


# -- 3. Aura error body that is deeply nested JSON: RecursionError escapes instead of SpeechError


# -- An empty X-Forwarded-Proto or X-Forwarded-Host: the signature check falls back to the request's
# own scheme and Host, the TwiML answered 400 ("cannot tell this server's address")


async def test_empty_forwarded_headers_fall_back_to_the_request_as_the_signature_check_does(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    server = await start_server(nursery, fake_deepgram)
    host = server.http_url.split("://", 1)[1]
    async with httpx.AsyncClient() as http:
        for headers in ({"X-Forwarded-Proto": ""}, {"X-Forwarded-Host": ""}, {"X-Forwarded-Host": ", x"}):
            answer = await http.post(server.http_url + "/twiml/game", data={"CallSid": "CA1"}, headers=headers)
            assert answer.status_code == 200, (headers, answer.text)
            (stream,) = re.findall(r'url="([^"]+)"', answer.text)
            assert stream == f"ws://{host}/twilio"
    server.stop.set()
