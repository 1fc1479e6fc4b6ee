"""Authentication: Twilio signatures, bearer tokens (static and signed), Origins -- each accept and reject path."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os

import httpx
import jwt
import pytest
import trio
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core.access import (
    LEEWAY_S,
    TokenCheck,
    TwilioSignatureCheck,
    Verdict,
    bearer_token,
    origin_allowed,
    public_url,
)
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


@pytest.mark.parametrize("url", ["ws://h/twilio?a=\x1b[31m\rINFO:forged", "ws://[::1/twilio?a=\r\x85"])
def test_a_refusal_shows_the_url_without_control_characters(url: str) -> None:
    # The reason is logged: callscribe's own upgrade parser lets a CR or an escape sequence through
    # in the query, which could then hide or forge log lines (unsigned, at anyone's will).
    verdict = TwilioSignatureCheck(AUTH_TOKEN).check(url, {}, "c2lnbmF0dXJl")
    assert not verdict.ok and verdict.reason.isprintable(), verdict.reason
    assert "\\r" in verdict.reason  # escaped, as Python writes it


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


SECRET = "0123456789abcdef0123456789abcdef"
"""32 bytes: the shortest HS256 key RFC 7518 allows."""


def mint(claims: dict[str, object], key: str = SECRET, algorithm: str = "HS256", **headers: object) -> str:
    """A token as any backend would mint it: plain PyJWT, nothing of callscribe's."""
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def test_static_tokens() -> None:
    assert TokenCheck().check(None).ok  # nothing configured: open
    check = TokenCheck({"s3cret", "pässword"})
    assert check.check("s3cret").ok and check.check("pässword").ok
    assert check.check(None).reason == "a bearer token is required"
    assert check.check("guess").reason == "unknown token"
    assert check.check("\udc80").reason == "unknown token"  # not even encodable: still just a wrong token
    assert check.check(mint({"exp": 2000})).reason == "unknown token"  # no secret: no signed tokens
    with pytest.raises(ValueError, match="CALLSCRIBE_TOKEN_SECRET"):
        check.issue(ttl_s=1)


def test_issued_tokens_are_standard_jwts() -> None:
    check = TokenCheck(secret=SECRET)
    token = check.issue(ttl_s=60, now=1000)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False}) == {"iat": 1000, "exp": 1060}
    limited = check.issue(ttl_s=60, call_sid="CA9", subject="ops dashboard", now=1000)
    claims = jwt.decode(limited, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"iat": 1000, "exp": 1060, "sub": "ops dashboard", "call_sid": "CA9"}


def test_tokens_minted_elsewhere_are_accepted_until_they_expire() -> None:
    check = TokenCheck(secret=SECRET)
    verdict = check.check(mint({"exp": 1060}), now=1030)
    assert verdict == Verdict(True)
    assert check.check(mint({"exp": 1060}), now=1060 + LEEWAY_S - 0.001).ok  # clocks may differ a little
    assert check.check(mint({"exp": 1060}), now=1060 + LEEWAY_S).reason == "token expired"
    assert check.check(mint({"exp": 1060.5}), now=1030).ok  # NumericDate may have a fraction
    scoped = check.check(mint({"exp": 1060, "sub": "agent 7", "call_sid": "CA9", "iat": 999, "jti": "x"}), now=1030)
    assert scoped == Verdict(True, call_sid="CA9", subject="agent 7")
    assert check.check(mint({"exp": 1060, "nbf": 1100}), now=1030).reason == "token not valid yet (nbf)"
    assert check.check(mint({"exp": 1060, "nbf": 1030 + LEEWAY_S}), now=1030).ok
    assert check.check(mint({"exp": 1060, "iat": 5000}), now=1030).ok  # iat is information, not a rule


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (mint({"exp": 1060}, key="another secret of at least 32 bytes"), "bad token signature"),
        (mint({"exp": 1060}, algorithm="HS512", key=SECRET * 2), "token algorithm must be HS256"),
        (mint({"exp": 1060}, algorithm="none", key=""), "token algorithm must be HS256"),
        (mint({"call_sid": "CA9"}), "token has no exp (expiry) claim"),
        (mint({"exp": None}), "token has no exp (expiry) claim"),
        (mint({"exp": "1060"}), "token claim exp must be a number of seconds since the epoch"),
        (mint({"exp": True}), "token claim exp must be a number of seconds since the epoch"),
        (mint({"exp": float("inf")}), "token claim exp must be a number of seconds since the epoch"),
        (mint({"exp": float("nan")}), "token claim exp must be a number of seconds since the epoch"),
        (mint({"exp": 1060, "nbf": "soon"}), "token claim nbf must be a number of seconds since the epoch"),
        (mint({"exp": 1060, "sub": 42}), "token claim sub must be a string"),
        (mint({"exp": 1060, "call_sid": 42}), "token claim call_sid must be a callSid string"),
        (mint({"exp": 1060, "call_sid": ""}), "token claim call_sid must be a callSid string"),
        (mint({"exp": 1060, "aud": "someone"}), "token has an aud (audience) claim; callscribe tokens have none"),
        ("a.b.c", "malformed token"),
        ("é.b.c", "malformed token"),
        ("a.b", "unknown token"),
    ],
)
def test_signed_tokens_are_refused_with_a_reason(token: str, reason: str) -> None:
    verdict = TokenCheck({"static"}, secret=SECRET).check(token, now=1030)
    assert verdict == Verdict(False, reason)
    assert "token" in verdict.reason  # the routes answer 401 to a token problem, 403 to the rest


def test_a_payload_changed_after_signing_is_refused() -> None:
    header, _, signature = mint({"exp": 1060, "call_sid": "CA1"}).split(".")
    widened = jwt.utils.base64url_encode(json.dumps({"exp": 1060}).encode()).decode()
    assert TokenCheck(secret=SECRET).check(f"{header}.{widened}.{signature}", now=1030).reason == "bad token signature"


def test_secrets_shorter_than_an_hs256_key_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenCheck(secret=SECRET[:-1])


@given(st.text(max_size=200))
def test_any_text_gets_a_verdict(token: str) -> None:
    assert not TokenCheck({"static"}, secret=SECRET).check(token, now=1030).ok


@given(st.binary(min_size=1, max_size=8), st.integers(min_value=0))
def test_a_token_with_any_bytes_changed_is_refused_or_the_same(patch: bytes, at: int) -> None:
    token = mint({"exp": 1060, "call_sid": "CA1"}).encode()
    at %= len(token)
    changed = (token[:at] + patch + token[at + len(patch) :]).decode("latin-1")
    verdict = TokenCheck(secret=SECRET).check(changed, now=1030)
    # base64url's last character may carry unused bits: a change there can decode to the same bytes.
    assert not verdict.ok or jwt.decode(changed, SECRET, algorithms=["HS256"], options={"verify_exp": False}) == {
        "exp": 1060,
        "call_sid": "CA1",
    }


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
    odd = origin_allowed({"origin": "https://evil\x85\x9b[2K"}, allowed)  # obs-text: C1 controls
    assert not odd.ok and odd.reason == "origin https://evil\\x85\\x9b[2K is not allowed"


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
    secret = SECRET
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
    for path in ("/client", "/game"):  # callscribe's own socket and Quart's echo it alike
        async with trio_websocket.open_websocket_url(
            server.url(path), connect_timeout=5, subprotocols=["bearer", "static-token"]
        ) as ws:
            assert ws.subprotocol == "bearer"
            await ws.get_message()
    server.stop.set()


async def test_a_call_limited_token_sees_and_reads_only_its_call(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    secret = SECRET
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


async def test_a_call_a_limited_token_may_not_follow_is_logged_quoted(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    # The callSid is the subscriber's own text: logged as it came, a newline in it forged a log line.
    server = await start_server(nursery, fake_deepgram, token_secret=SECRET)
    token = TokenCheck(secret=SECRET).issue(ttl_s=60, call_sid="CA" + "1" * 32)
    async with trio_websocket.open_websocket_url(server.url(f"/client?token={token}"), connect_timeout=5) as ws:
        await ws.get_message()
        await ws.send_message("CA2\nWARNING callscribe: forged")
        assert json.loads(await ws.get_message())["message"] == "this token is not valid for that call"
    [line] = [r.getMessage() for r in caplog.records if "token is for call" in r.getMessage()]
    assert line.endswith(" not 'CA2\\nWARNING callscribe: forged'"), line
    server.stop.set()


async def test_browsers_from_other_origins_are_refused(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram, allowed_origins=frozenset({"https://app.example.com"}))
    assert await _rejection(server, "/client", extra_headers=[(b"Origin", b"https://evil.example.com")]) == 403
    async with trio_websocket.open_websocket_url(
        server.url("/client"), connect_timeout=5, extra_headers=[(b"Origin", b"https://app.example.com")]
    ) as ws:
        assert json.loads(await ws.get_message()) == []
    server.stop.set()


@pytest.mark.parametrize("claims", [{"exp": 10**400}, {"exp": 1060, "nbf": -(10**400)}])
def test_a_time_claim_too_large_for_a_float_is_refused_not_raised(claims: dict[str, object]) -> None:
    # JSON integers have no limit; Python's json gives them exactly, and float() of one overflows.
    verdict = TokenCheck(secret=SECRET).check(mint(claims), now=1030)
    assert not verdict.ok and verdict.reason.startswith("token claim")


def test_a_token_secret_that_is_not_utf8_is_used_as_its_bytes() -> None:
    # os.environ gives a variable's bytes that are not UTF-8 as surrogates (surrogateescape).
    secret = os.fsdecode(b"\xff" * 32)
    token = jwt.encode({"exp": 1060}, b"\xff" * 32, algorithm="HS256")
    assert TokenCheck(secret=secret).check(token, now=1030).ok
    assert TokenCheck(secret=secret).check(TokenCheck(secret=secret).issue(ttl_s=60, now=1000), now=1030).ok


async def test_an_origin_that_mentions_token_is_still_refused_with_403(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram
) -> None:
    """401 is for a missing or bad token; an Origin not allowed is 403, whatever its text says."""
    server = await start_server(nursery, fake_deepgram, allowed_origins=frozenset({"https://app.example.com"}))
    evil = [(b"Origin", b"https://token.example.com")]
    assert await _rejection(server, "/client", extra_headers=evil) == 403  # callscribe's own socket
    assert await _rejection(server, "/game", extra_headers=evil) == 403  # Quart's
    async with httpx.AsyncClient() as http:
        for path in ("/api/calls", "/api/games", "/metrics"):
            answer = await http.get(server.http_url + path, headers={"Origin": "https://token.example.com"})
            assert (path, answer.status_code) == (path, 403)
    server.stop.set()


async def test_a_call_limited_token_cannot_open_a_game(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    """A game gets the transcripts of whichever call says its code, and talks to that caller: a
    token limited to one call (a viewer's) must not open one."""
    server = await start_server(nursery, fake_deepgram, token_secret=SECRET)
    limited = TokenCheck(secret=SECRET).issue(ttl_s=60, call_sid="CA" + "1" * 32)
    assert await _rejection(server, f"/game?token={limited}") == 403
    unlimited = TokenCheck(secret=SECRET).issue(ttl_s=60)
    async with trio_websocket.open_websocket_url(server.url(f"/game?token={unlimited}"), connect_timeout=5) as ws:
        await ws.get_message()  # the phone number
    server.stop.set()
