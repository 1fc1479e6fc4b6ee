"""Webhook events, their signature, and when a failed delivery is tried again.

Events (POSTed as JSON to every `--webhook-url`):

- `call.started`      sequence 0; `data` is the call (from, to, direction, tracks, ...)
- `transcript.final`  one per Deepgram final result, sequence 1, 2, 3, ... (the final's place in
                      the call); `data` is `{"utterance": {...}, "result": <the final as Deepgram
                      sent it>}`
- `call.ended`        sequence = the call's finals + 1; `data` is the call with its outcome and
                      `utterances`, the whole transcript

Every event: `{"id": "evt_...", "type": ..., "createdAt": ISO time, "callSid": ...,
"sequence": n, "data": {...}}`. Delivery is at least once: a receiver de-duplicates by `id` (or by
callSid and sequence) and may rely on the order of one call's events.

Signature (`Callscribe-Signature: t=<unix seconds>,v1=<hex>`): HMAC-SHA256 with the webhook secret
over `<t>.` followed by the body's bytes. `t` is the time of that delivery attempt, so a receiver
can refuse old deliveries (replays). `verify` is the receiver's side.

Retries: attempt n (n = 1 after the first failure) waits `first_s * 2**(n-1)` seconds, at most
`max_delay_s`; an event still undelivered `give_up_after_s` after it was created is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from callscribe.core.call_record import StoredCall, iso_time
from callscribe.core.transcript import Utterance

SIGNATURE_HEADER = "Callscribe-Signature"
EVENT_ID_HEADER = "Callscribe-Event-Id"
EVENT_TYPE_HEADER = "Callscribe-Event-Type"
SIGNATURE_TOLERANCE_S = 300

CALL_STARTED = "call.started"
TRANSCRIPT_FINAL = "transcript.final"
CALL_ENDED = "call.ended"


def event_body(*, event_id: str, kind: str, call_sid: str, sequence: int, created_at: float, data: str) -> str:
    """The JSON of one event; `data` is already JSON (a final is spliced in as Deepgram wrote it)."""
    head = json.dumps(
        {"id": event_id, "type": kind, "createdAt": iso_time(created_at), "callSid": call_sid, "sequence": sequence},
        separators=(",", ":"),
    )
    return f'{head[:-1]},"data":{data}}}'


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def started_data(call: StoredCall) -> str:
    return _json(call.json())


def final_data(utterance: Utterance) -> str:
    return f'{{"utterance":{_json(utterance.json())},"result":{utterance.raw}}}'


def ended_data(call: StoredCall, utterances: Sequence[Utterance]) -> str:
    details = call.json()
    details["utterances"] = [u.json() for u in utterances if u.text]
    return _json(details)


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `Callscribe-Signature` header value of `body` sent at `timestamp`."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance_s: float = SIGNATURE_TOLERANCE_S) -> bool:
    """A receiver's check: the header signs `body` with `secret`, at most `tolerance_s` from `now`."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not stamps[0].isdigit() or abs(now - int(stamps[0])) > tolerance_s:
        return False
    expected = sign(secret, int(stamps[0]), body).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, given) for given in fields.get("v1", []))


@dataclass(frozen=True)
class RetryPolicy:
    first_s: float = 1.0
    """The wait before the first retry: with the delivery's own time, the first retry comes within ~2 s."""
    max_delay_s: float = 600.0
    give_up_after_s: float = 24 * 3600.0

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failed attempt in a row (1, 2, ...)."""
        exponent = min(max(failures, 1) - 1, 60)
        return min(self.first_s * 2.0**exponent, self.max_delay_s)

    def next_attempt(self, failures: int, created_at: float, now: float) -> float | None:
        """When to try an event again after its `failures`-th failure now; None: give it up."""
        retry_at = now + self.delay(failures)
        if retry_at - created_at > self.give_up_after_s:
            return None
        return retry_at


def receiver_name(url: str) -> str:
    """A receiver's URL for logs and metrics: without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def receiver_names(urls: Iterable[str]) -> dict[str, str]:
    """`receiver_name` of each URL, made distinct: two receivers that differ only in what the name
    leaves out get `#2`, `#3`... (one metric series each; Prometheus keeps one sample per label set)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for url in urls:
        name = base = receiver_name(url)
        n = 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        names[url] = name
        taken.add(name)
    return names


def check_receiver_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; ValueError (one line) otherwise."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  # raises for a bad port
    except ValueError as error:
        raise ValueError(f"webhook URL {url!r} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"webhook URL {url!r} must be an http:// or https:// URL with a host")
    return url.strip()
