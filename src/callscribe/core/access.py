"""Who may connect: Twilio's request signature, bearer tokens for clients and games, allowed Origins.

- `/twilio` and the TwiML webhooks: when `TWILIO_AUTH_TOKEN` is set, `X-Twilio-Signature` must be
  valid, checked with Twilio's own `RequestValidator` over the URL Twilio used: the public
  `wss://` (or `https://`) address -- `PUBLIC_URL` if set, otherwise rebuilt from `Host` and the
  proxy headers `X-Forwarded-Proto` / `X-Forwarded-Host`.
- `/client` and `/game`: a bearer token, from `Authorization: Bearer ...`, a `token` query
  parameter, or (browsers cannot set headers on WebSockets) the subprotocol list
  `Sec-WebSocket-Protocol: bearer, <token>`. A token is either one of a static list, or signed:
  `base64url(claims).base64url(HMAC-SHA256(secret, claims))` with claims `{"exp": unix time,
  "call": optional callSid}` -- a token with `call` is good for that call only.
- Browsers: with an Origin allow-list, a request whose `Origin` is not on it is refused.

Everything here is pure: the routes hand it headers and URLs, it answers with a `Verdict`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import RequestValidator

BEARER_SUBPROTOCOL = "bearer"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    call_sid: str | None = None
    """For a signed token limited to one call: that call."""


ALLOWED = Verdict(True)


def public_url(headers: Mapping[str, str], scheme: str, path: str, query: str, configured: str | None) -> str:
    """The URL the peer used, as it signed it: `configured` (PUBLIC_URL) or rebuilt from proxy headers.

    WebSocket requests get ws/wss, HTTP requests http/https, matching what Twilio signs."""
    websocket = scheme in ("ws", "wss")
    if configured:
        parts = urlsplit(configured)
        secure = parts.scheme in ("https", "wss")
        base = f"{('wss' if secure else 'ws') if websocket else ('https' if secure else 'http')}://{parts.netloc}"
        base += parts.path.rstrip("/")
    else:
        proto = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        secure = proto in ("https", "wss") if proto else scheme in ("https", "wss")
        host = headers.get("x-forwarded-host", "").split(",")[0].strip() or headers.get("host", "")
        base = f"{('wss' if secure else 'ws') if websocket else ('https' if secure else 'http')}://{host}"
    return base + path + (f"?{query}" if query else "")


class TwilioSignatureCheck:
    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def check(self, url: str, params: Mapping[str, str], signature: str | None) -> Verdict:
        if not signature:
            return Verdict(False, "missing X-Twilio-Signature")
        if not self._validator.validate(url, dict(params), signature):
            return Verdict(False, f"X-Twilio-Signature does not match {url}")
        return ALLOWED


class TokenCheck:
    """Static bearer tokens and HMAC-signed ones with an expiry (and optionally one call)."""

    def __init__(self, static_tokens: set[str] | frozenset[str] = frozenset(), secret: str | None = None) -> None:
        self.static_tokens = frozenset(t for t in static_tokens if t)
        self._key = secret.encode() if secret else None

    @property
    def enabled(self) -> bool:
        return bool(self.static_tokens) or self._key is not None

    def issue(self, *, ttl_s: float, call_sid: str | None = None, now: float | None = None) -> str:
        if self._key is None:
            raise ValueError("signed tokens need CALLSCRIBE_TOKEN_SECRET")
        claims: dict[str, object] = {"exp": int((time.time() if now is None else now) + ttl_s)}
        if call_sid:
            claims["call"] = call_sid
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._sign(body))}"

    def check(self, token: str | None, *, now: float | None = None) -> Verdict:
        if not self.enabled:
            return ALLOWED
        if not token:
            return Verdict(False, "a bearer token is required")
        if any(hmac.compare_digest(token, known) for known in self.static_tokens):
            return ALLOWED
        if self._key is None or token.count(".") != 1:
            return Verdict(False, "unknown token")
        body, signature = token.split(".")
        try:
            valid = hmac.compare_digest(_unb64(signature), self._sign(body))
            claims = json.loads(_unb64(body)) if valid else None
        except (ValueError, TypeError):
            return Verdict(False, "malformed token")
        if not valid or not isinstance(claims, dict):
            return Verdict(False, "bad token signature")
        expires = claims.get("exp")
        if not isinstance(expires, (int, float)) or expires < (time.time() if now is None else now):
            return Verdict(False, "token expired")
        call = claims.get("call")
        return Verdict(True, call_sid=call if isinstance(call, str) else None)

    def _sign(self, body: str) -> bytes:
        assert self._key is not None
        return hmac.new(self._key, body.encode(), hashlib.sha256).digest()


def bearer_token(headers: Mapping[str, str], query: str) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came as a subprotocol (to be echoed on accept)."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip(), False
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0], False
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    if len(offered) >= 2 and offered[0].lower() == BEARER_SUBPROTOCOL:
        return offered[1], True
    return None, False


def origin_allowed(headers: Mapping[str, str], allowed: frozenset[str]) -> Verdict:
    """Browsers send Origin; other clients (websocat, games, servers) usually do not and are let through."""
    origin = headers.get("origin")
    if not allowed or origin is None or origin.rstrip("/") in allowed:
        return ALLOWED
    return Verdict(False, f"origin {origin} is not allowed")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Access:
    """The policy the routes apply. Nothing configured: everything is open."""

    def __init__(
        self,
        twilio: TwilioSignatureCheck | None = None,
        tokens: TokenCheck | None = None,
        origins: frozenset[str] = frozenset(),
        public_url: str | None = None,
    ) -> None:
        self.twilio = twilio
        self.tokens = tokens or TokenCheck()
        self.origins = origins
        self.public_url = public_url

    def check_twilio(
        self, headers: Mapping[str, str], scheme: str, path: str, query: str, params: Mapping[str, str]
    ) -> Verdict:
        """A request that claims to come from Twilio (the /twilio upgrade, a TwiML webhook)."""
        if self.twilio is None:
            return ALLOWED
        url = public_url(headers, scheme, path, query, self.public_url)
        return self.twilio.check(url, params, headers.get("X-Twilio-Signature"))

    def check_client(self, headers: Mapping[str, str], query: str) -> tuple[Verdict, bool]:
        """A /client or /game connection: its Origin and bearer token; also whether to echo the subprotocol."""
        verdict = origin_allowed(headers, self.origins)
        if not verdict.ok:
            return verdict, False
        token, as_subprotocol = bearer_token(headers, query)
        return self.tokens.check(token), as_subprotocol
