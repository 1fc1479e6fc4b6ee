"""Who may connect: Twilio's request signature, bearer tokens for clients and games, allowed Origins.

- `/twilio` and the TwiML webhooks: when `TWILIO_AUTH_TOKEN` is set, `X-Twilio-Signature` must be
  valid, checked with Twilio's own `RequestValidator` over the URL Twilio used: the public
  `wss://` (or `https://`) address -- `PUBLIC_URL` if set, otherwise rebuilt from `Host` and the
  proxy headers `X-Forwarded-Proto` / `X-Forwarded-Host`.
- `/client` and `/game`: a bearer token, from `Authorization: Bearer ...`, a `token` query
  parameter, or (browsers cannot set headers on WebSockets) the subprotocol list
  `Sec-WebSocket-Protocol: bearer, <token>`. A token is either one of a static list, or a JWT
  (RFC 7519) signed with HS256 and `CALLSCRIBE_TOKEN_SECRET` (at least 32 bytes, as RFC 7518 asks
  of an HS256 key). Its claims:

  - `exp` (required): expiry, seconds since the epoch. Accepted up to `LEEWAY_S` (30 s) past it,
    and from `LEEWAY_S` before an optional `nbf`, to absorb clock differences with the minter.
  - `sub` (optional): who the token is for, free text; the routes get it as `Verdict.subject`.
  - `call_sid` (optional): a Twilio callSid; the token is then good for that call only.

  Any JWT library in any language can mint one; with PyJWT::

      import time, jwt

      claims = {"exp": int(time.time()) + 3600, "sub": "dashboard user 42", "call_sid": "CA0123..."}
      token = jwt.encode(claims, CALLSCRIBE_TOKEN_SECRET, algorithm="HS256")

  Refused: a bad signature, any algorithm but HS256 (`none` included), no `exp`, an expired or
  not yet valid token, an `aud` claim (callscribe is nobody's audience), a claim of the wrong type.
- Browsers: with an Origin allow-list, a request whose `Origin` is not on it is refused.

Everything here is pure: the routes hand it headers and URLs, it answers with a `Verdict`.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import jwt
from twilio.request_validator import RequestValidator

from callscribe.core.twilio import printable


class Headers(Protocol):
    """Request headers looked up case-insensitively (Werkzeug's, websockets', a plain dict in tests)."""

    def get(self, key: str, /) -> str | None: ...


BEARER_SUBPROTOCOL = "bearer"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    call_sid: str | None = None
    """For a signed token limited to one call: that call."""
    subject: str | None = None
    """For a signed token with a `sub` claim: who it was issued to."""
    status: int = 401
    """The HTTP status a refusal is answered with: 401 no or a bad token, 403 the rest (an Origin)."""


ALLOWED = Verdict(True)


def public_url(headers: Headers, scheme: str, path: str, query: str, configured: str | None) -> str:
    """The URL the peer used, as it signed it: `configured` (PUBLIC_URL) or rebuilt from proxy headers.

    WebSocket requests get ws/wss, HTTP requests http/https, matching what Twilio signs."""
    websocket = scheme in ("ws", "wss")
    if configured:
        parts = urlsplit(configured.strip())
        secure = parts.scheme in ("https", "wss")
        netloc = parts.netloc
        if websocket:  # Twilio opens (and signs) the stream URL of our TwiML: its host in lower case
            host = parts.hostname or ""
            netloc = f"[{host}]" if ":" in host else host
            if parts.port is not None:
                netloc += f":{parts.port}"
        base = f"{('wss' if secure else 'ws') if websocket else ('https' if secure else 'http')}://{netloc}"
        base += parts.path.rstrip("/")
    else:
        proto = (headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
        secure = proto in ("https", "wss") if proto else scheme in ("https", "wss")
        host = (headers.get("x-forwarded-host") or "").split(",")[0].strip() or (headers.get("host") or "")
        base = f"{('wss' if secure else 'ws') if websocket else ('https' if secure else 'http')}://{host}"
    return base + path + (f"?{query}" if query else "")


class TwilioSignatureCheck:
    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def check(self, url: str, params: Mapping[str, str], signature: str | None) -> Verdict:
        """A refusal's reason (logged) shows `url` `printable`: callscribe's own upgrade parser lets
        control characters through in its path and query."""
        if not signature:
            return Verdict(False, "missing X-Twilio-Signature")
        try:
            valid = self._validator.validate(url, dict(params), signature)
        except ValueError:  # the URL rebuilt from Host (or a proxy's header) does not parse: bad port, "["
            return Verdict(False, f"X-Twilio-Signature cannot match {printable(url)}: not a valid URL")
        if not valid:
            return Verdict(False, f"X-Twilio-Signature does not match {printable(url)}")
        return ALLOWED


TOKEN_ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
"""RFC 7518 section 3.2: an HS256 key must be at least as long as the hash (256 bits)."""
LEEWAY_S = 30.0
"""How far the clocks of the token's minter and this server may disagree."""
CALL_CLAIM = "call_sid"

_REFUSALS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.InvalidSignatureError, "bad token signature"),
    (jwt.InvalidAlgorithmError, f"token algorithm must be {TOKEN_ALGORITHM}"),
    (jwt.MissingRequiredClaimError, "token has no exp (expiry) claim"),
    (jwt.InvalidAudienceError, "token has an aud (audience) claim; callscribe tokens have none"),
    (jwt.exceptions.InvalidSubjectError, "token claim sub must be a string"),
)
"""What PyJWT's refusals mean, in words for the log and the 401 (the first class that matches)."""


class TokenCheck:
    """Static bearer tokens, and JWTs signed with HS256 that expire (and may be limited to one call)."""

    def __init__(self, static_tokens: set[str] | frozenset[str] = frozenset(), secret: str | None = None) -> None:
        self.static_tokens = frozenset(t for t in static_tokens if t)
        # A secret from os.environ that is not UTF-8 holds its bytes as surrogates: they are the key.
        self._key = secret.encode("utf-8", "surrogateescape") if secret else None
        if self._key is not None and len(self._key) < MIN_SECRET_BYTES:
            raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes long for {TOKEN_ALGORITHM}")

    @property
    def enabled(self) -> bool:
        return bool(self.static_tokens) or self._key is not None

    def issue(
        self, *, ttl_s: float, call_sid: str | None = None, subject: str | None = None, now: float | None = None
    ) -> str:
        """A JWT good for `ttl_s` seconds from `now`, for `call_sid` only if given."""
        if self._key is None:
            raise ValueError("signed tokens need CALLSCRIBE_TOKEN_SECRET")
        issued = time.time() if now is None else now
        claims: dict[str, object] = {"iat": int(issued), "exp": int(issued + ttl_s)}
        if subject:
            claims["sub"] = subject
        if call_sid:
            claims[CALL_CLAIM] = call_sid
        return jwt.encode(claims, self._key, algorithm=TOKEN_ALGORITHM)

    def check(self, token: str | None, *, now: float | None = None) -> Verdict:
        if not self.enabled:
            return ALLOWED
        if not token:
            return Verdict(False, "a bearer token is required")
        given = token.encode("utf-8", "surrogatepass")
        if any(hmac.compare_digest(given, known.encode("utf-8", "surrogatepass")) for known in self.static_tokens):
            return ALLOWED
        if self._key is None or token.count(".") != 2:
            return Verdict(False, "unknown token")
        if not token.isascii():  # a JWT is base64url text and dots
            return Verdict(False, "malformed token")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[TOKEN_ALGORITHM],
                options={"require": ["exp"], "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidTokenError as error:
            reason = next((text for kind, text in _REFUSALS if isinstance(error, kind)), "malformed token")
            return Verdict(False, reason)
        return _judge_claims(claims, time.time() if now is None else now)


def _judge_claims(claims: dict[str, Any], now: float) -> Verdict:
    """The time and scope claims of a token whose signature is good (PyJWT checked it; time is ours)."""
    expires, not_before = claims["exp"], claims.get("nbf")
    if not _is_time(expires):
        return Verdict(False, "token claim exp must be a number of seconds since the epoch")
    if not (not_before is None or _is_time(not_before)):
        return Verdict(False, "token claim nbf must be a number of seconds since the epoch")
    if now >= expires + LEEWAY_S:
        return Verdict(False, "token expired")
    if not_before is not None and now + LEEWAY_S < not_before:
        return Verdict(False, "token not valid yet (nbf)")
    call = claims.get(CALL_CLAIM)
    if call is not None and not (isinstance(call, str) and call):
        return Verdict(False, f"token claim {CALL_CLAIM} must be a callSid string")
    return Verdict(True, call_sid=call, subject=claims.get("sub"))


def _is_time(value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def bearer_token(headers: Headers, query: str) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came as a subprotocol (to be echoed on accept)."""
    authorization = headers.get("authorization") or ""
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip(), False
    tokens = parse_qs(query).get("token")
    if tokens:
        return tokens[0], False
    offered = [p.strip() for p in (headers.get("sec-websocket-protocol") or "").split(",")]
    if len(offered) >= 2 and offered[0].lower() == BEARER_SUBPROTOCOL:
        return offered[1], True
    return None, False


def origin_allowed(headers: Headers, allowed: frozenset[str]) -> Verdict:
    """Browsers send Origin; other clients (websocat, games, servers) usually do not and are let through."""
    origin = headers.get("origin")
    if not allowed or origin is None or origin.rstrip("/") in allowed:
        return ALLOWED
    return Verdict(False, f"origin {printable(origin)} is not allowed", status=403)


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

    def check_twilio(self, headers: Headers, scheme: str, path: str, query: str, params: Mapping[str, str]) -> Verdict:
        """A request that claims to come from Twilio (the /twilio upgrade, a TwiML webhook)."""
        if self.twilio is None:
            return ALLOWED
        url = public_url(headers, scheme, path, query, self.public_url)
        return self.twilio.check(url, params, headers.get("X-Twilio-Signature"))

    def check_client(self, headers: Headers, query: str) -> tuple[Verdict, bool]:
        """A /client or /game connection: its Origin and bearer token; also whether to echo the subprotocol."""
        verdict = origin_allowed(headers, self.origins)
        if not verdict.ok:
            return verdict, False
        token, as_subprotocol = bearer_token(headers, query)
        return self.tokens.check(token), as_subprotocol
