"""Authentication: Twilio signatures, bearer tokens (static and signed), Origins -- each accept and reject path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import httpx
import pytest
import trio
import trio_websocket

from callscribe.core.access import TokenCheck, TwilioSignatureCheck, bearer_token, origin_allowed, public_url
from callscribe.core.audio import generate_tone
from callscribe.testing.fake_deepgram import FakeDeepgram
from callscribe.testing.simulator import CallConnectionError, CallSpec, run_call
from conftest import RunningServer, start_server

AUTH_TOKEN = "12345678901234567890123456789012"


def twilio_signature(url: str, params: dict[str, str] | None = None) -> str:
    """Computed the way Twilio documents it: HMAC-SHA1 of the URL followed by the sorted POST
    parameters (name then value), keyed with the auth token, base64-encoded."""
    data = url + "".join(f"{key}{value}" for key, value in sorted((params or {}).items()))
    return base64.b64encode(hmac.new(AUTH_TOKEN.encode(), data.encode(), hashlib.sha1).digest()).decode()


# -- pure ------------------------------------------------------------------------------------


def test_twilio_signature_check_accepts_twilios_signature_only() -> None:
    check = TwilioSignatureCheck(AUTH_TOKEN)
    url = "wss://calls.example.com/twilio"
    assert check.check(url, {}, twilio_signature(url)).ok
    assert check.check("wss://calls.example.com:443/twilio", {}, twilio_signature(url)).ok  # with or without the port
    assert not check.check(url, {}, twilio_signature("wss://evil.example.com/twilio")).ok
    assert check.check(url, {}, None).reason == "missing X-Twilio-Signature"
    form = {"CallSid": "CA1", "From": "+15551234567"}
    assert check.check(
        "https://calls.example.com/twiml", form, twilio_signature("https://calls.example.com/twiml", form)
    ).ok
    assert not check.check(
        "https://calls.example.com/twiml",
        form | {"From": "+1999"},
        twilio_signature("https://calls.example.com/twiml", form),
    ).ok


def test_public_url_follows_configuration_then_proxy_headers() -> None:
    assert public_url({"host": "127.0.0.1:5000"}, "ws", "/twilio", "", None) == "ws://127.0.0.1:5000/twilio"
    proxied = {"host": "10.0.0.5:5000", "x-forwarded-proto": "https", "x-forwarded-host": "calls.example.com"}
    assert public_url(proxied, "ws", "/twilio", "", None) == "wss://calls.example.com/twilio"
    assert public_url(proxied, "http", "/twiml", "a=1", None) == "https://calls.example.com/twiml?a=1"
    assert public_url(proxied, "ws", "/twilio", "", "https://public.example.com/") == "wss://public.example.com/twilio"
    assert (
        public_url({}, "http", "/twiml", "", "https://public.example.com/base")
        == "https://public.example.com/base/twiml"
    )


def test_static_and_signed_tokens() -> None:
    assert TokenCheck().check(None).ok  # nothing configured: open
    check = TokenCheck({"s3cret"}, secret="key")
    assert check.check("s3cret").ok
    assert check.check(None).reason == "a bearer token is required"
    assert check.check("guess").reason == "unknown token"
    token = check.issue(ttl_s=60, now=1000)
    assert check.check(token, now=1030).ok and check.check(token, now=1030).call_sid is None
    assert check.check(token, now=1061).reason == "token expired"
    _, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"exp": 9e9}).encode()).rstrip(b"=").decode() + "." + signature
    assert check.check(forged, now=1030).reason == "bad token signature"
    assert TokenCheck(secret="other").check(token, now=1030).reason == "bad token signature"
    assert check.check("a.b!!", now=1030).reason == "malformed token"
    limited = check.issue(ttl_s=60, call_sid="CA9", now=1000)
    assert check.check(limited, now=1010).call_sid == "CA9"
    with pytest.raises(ValueError):
        TokenCheck({"x"}).issue(ttl_s=1)


def test_tokens_are_found_in_header_query_or_subprotocol() -> None:
    assert bearer_token({"authorization": "Bearer abc"}, "") == ("abc", False)
    assert bearer_token({}, "token=xyz&x=1") == ("xyz", False)
    assert bearer_token({"sec-websocket-protocol": "bearer, t0k"}, "") == ("t0k", True)
    assert bearer_token({"sec-websocket-protocol": "chat"}, "") == (None, False)


def test_origins() -> None:
    allowed = frozenset({"https://app.example.com"})
    assert origin_allowed({"origin": "https://app.example.com/"}, allowed).ok
    assert not origin_allowed({"origin": "https://evil.example.com"}, allowed).ok
    assert origin_allowed({}, allowed).ok  # not a browser
    assert origin_allowed({"origin": "https://anything"}, frozenset()).ok


# -- over loopback -----------------------------------------------------------------------------


async def test_twilio_streams_need_a_valid_signature(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, twilio_auth_token=AUTH_TOKEN)
    spec = CallSpec(inbound=generate_tone(0.5))
    with pytest.raises(CallConnectionError, match="HTTP 403: missing X-Twilio-Signature"):
        await run_call(server.url("/twilio"), spec, speed=0)
    with pytest.raises(CallConnectionError, match="HTTP 403: X-Twilio-Signature does not match"):
        await run_call(
            server.url("/twilio"),
            spec,
            speed=0,
            headers=[("X-Twilio-Signature", twilio_signature("ws://elsewhere/twilio"))],
        )
    report = await run_call(
        server.url("/twilio"), spec, speed=0, headers=[("X-Twilio-Signature", twilio_signature(server.url("/twilio")))]
    )
    assert report.close_code == 1000
    # Behind a TLS proxy Twilio signed the public wss:// URL; the proxy says which one.
    proxied = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "calls.example.com")]
    signed = [("X-Twilio-Signature", twilio_signature("wss://calls.example.com/twilio"))]
    assert (await run_call(server.url("/twilio"), spec, speed=0, headers=proxied + signed)).close_code == 1000
    assert len(fake_deepgram.sessions) == 2
    server.stop.set()


async def test_twiml_webhooks_need_a_valid_signature(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, twilio_auth_token=AUTH_TOKEN)
    form = {"CallSid": "CA1", "From": "+15551234567"}
    async with httpx.AsyncClient() as http:
        refused = await http.post(server.http_url + "/twiml", data=form)
        assert refused.status_code == 403
        signature = twilio_signature(server.http_url + "/twiml", form)
        accepted = await http.post(server.http_url + "/twiml", data=form, headers={"X-Twilio-Signature": signature})
        assert accepted.status_code == 200 and "<Stream" in accepted.text
    server.stop.set()


async def _rejection(server: RunningServer, path: str, **kwargs: object) -> int:
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket_url(server.url(path), connect_timeout=5, **kwargs):
            pass
    return rejected.value.status_code


async def test_subscribers_and_games_need_a_token(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    secret = "token-secret"
    server = await start_server(nursery, fake_deepgram, tokens=frozenset({"static-token"}), token_secret=secret)
    assert await _rejection(server, "/client") == 401
    assert await _rejection(server, "/game") == 401
    assert await _rejection(server, "/client", extra_headers=[(b"Authorization", b"Bearer wrong")]) == 401
    # Header, query parameter and subprotocol (what a browser can do) all work.
    async with trio_websocket.open_websocket_url(
        server.url("/client"), connect_timeout=5, extra_headers=[(b"Authorization", b"Bearer static-token")]
    ) as ws:
        assert json.loads(await ws.get_message()) == []
    async with trio_websocket.open_websocket_url(server.url("/client?token=static-token"), connect_timeout=5) as ws:
        assert json.loads(await ws.get_message()) == []
    async with trio_websocket.open_websocket_url(
        server.url("/game"), connect_timeout=5, subprotocols=["bearer", "static-token"]
    ) as ws:
        assert ws.subprotocol == "bearer"
        await ws.get_message()
    server.stop.set()


async def test_a_call_limited_token_sees_and_reads_only_its_call(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    secret = "token-secret"
    server = await start_server(nursery, fake_deepgram, token_secret=secret)
    mine, other = (
        CallSpec(inbound=generate_tone(3.0), call_sid="CA" + "1" * 32),
        CallSpec(inbound=generate_tone(3.0), call_sid="CA" + "2" * 32),
    )
    token = TokenCheck(secret=secret).issue(ttl_s=60, call_sid=mine.call_sid)
    async with trio.open_nursery() as inner:
        inner.start_soon(lambda: run_call(server.url("/twilio"), mine, speed=2.0))
        inner.start_soon(lambda: run_call(server.url("/twilio"), other, speed=2.0))
        with trio.fail_after(5):
            while True:
                async with trio_websocket.open_websocket_url(
                    server.url(f"/client?token={token}"), connect_timeout=5
                ) as ws:
                    listed = json.loads(await ws.get_message())
                if listed:
                    break
                await trio.sleep(0.02)
        assert listed == [mine.call_sid]
        async with trio_websocket.open_websocket_url(server.url(f"/client?token={token}"), connect_timeout=5) as ws:
            await ws.get_message()
            await ws.send_message(other.call_sid)
            error = json.loads(await ws.get_message())
            assert error["message"] == "this token is not valid for that call"
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1008
        async with trio_websocket.open_websocket_url(server.url(f"/client?token={token}"), connect_timeout=5) as ws:
            await ws.get_message()
            await ws.send_message(mine.call_sid)
            first = json.loads(await ws.get_message())
            assert first["type"] in ("Results", "Metadata")
    server.stop.set()


async def test_browsers_from_other_origins_are_refused(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, allowed_origins=frozenset({"https://app.example.com"}))
    assert await _rejection(server, "/client", extra_headers=[(b"Origin", b"https://evil.example.com")]) == 403
    async with trio_websocket.open_websocket_url(
        server.url("/client"), connect_timeout=5, extra_headers=[(b"Origin", b"https://app.example.com")]
    ) as ws:
        assert json.loads(await ws.get_message()) == []
    server.stop.set()
