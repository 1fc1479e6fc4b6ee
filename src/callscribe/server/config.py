"""Server settings: the values of `callscribe serve`'s options (options.py), checked and parsed
into `ServerSettings`.

Every problem is reported as one `ConfigError` line; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx

from callscribe.core import deepgram
from callscribe.core.access import MIN_SECRET_BYTES
from callscribe.core.codes import CodePool
from callscribe.core.mixer import MAX_WINDOW_MS, MIN_WINDOW_MS
from callscribe.core.transcript import SpeakerLabels
from callscribe.core.twiml import stream_url
from callscribe.core.webhooks import RetryPolicy, check_receiver_url
from callscribe.server.call_settings import CallSettings
from callscribe.server.games import NO_PHONE_NUMBER, GameSettings
from callscribe.server.options import option_values
from callscribe.server.store import DEFAULT_DATA_DIR, NO_STORE, SCHEME_POSTGRES, STORE_FILE, StoreSettings


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line meant for the person starting the server."""


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    call: CallSettings
    certfile: str | None = None
    keyfile: str | None = None
    shutdown_grace_s: float = 10.0
    stall_timeout_s: float = 20.0
    read_tick_ms: int = 0
    """0: each Twilio socket's reader wakes when its next window's frames have come (plain TCP) or
    can have come (TLS); else all wake on one shared tick."""
    log_level: int = logging.INFO
    games: GameSettings = field(default_factory=GameSettings)
    public_url: str | None = None
    forward_number: str | None = None
    speech: Literal["auto", "aura", "espeak"] = "espeak"
    speak_url: str = "https://api.deepgram.com/v1/speak"
    twilio_auth_token: str | None = None
    tokens: frozenset[str] = frozenset()
    token_secret: str | None = None
    allowed_origins: frozenset[str] = frozenset()
    redis_url: str | None = None
    run_file: str | None = None
    store: StoreSettings = field(default_factory=StoreSettings)
    """The call store; the default here (unlike `callscribe serve`'s) is none."""
    # -- several processes
    workers: int = 1
    lease_s: float = 30.0

    @property
    def tls(self) -> bool:
        return self.certfile is not None


def parse_host_port(text: str, name: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not _digits(port_text) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{name} must be host:port (like 127.0.0.1:5000 or 0.0.0.0:443), not {text!r}")
    return host, int(port_text)


def _number(
    values: dict[str, str | None], env: str, low: float, high: float, kind: Callable[[str], float] = float
) -> float:
    text = values[env] or ""
    try:
        number = kind(text)
    except ValueError:
        raise ConfigError(f"{env} must be a number, not {text!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{env} must be between {low:g} and {high:g}, not {text}")
    return number


def _readable(path: str, env: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ConfigError(f"{env}: cannot read {path}: {error.strerror}") from None


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerSettings:
    """The settings of `callscribe serve`: its flags, then `environ` (None: the process environment)."""
    env = os.environ if environ is None else environ
    values = option_values(args, env)
    host, port = parse_host_port(values["PROXY_URL"] or "", "PROXY_URL")

    api_key = values["DEEPGRAM_API_KEY"]
    if not api_key:
        raise ConfigError(
            "DEEPGRAM_API_KEY (or --deepgram-api-key) is required; try `callscribe fake-deepgram` for a local key-less run"
        )
    if problem := deepgram.api_key_problem(api_key):
        raise ConfigError(f"DEEPGRAM_API_KEY {problem}")
    url = values["DEEPGRAM_URL"] or ""
    try:
        deepgram.listen_url(url, channels=1)
    except ValueError as error:
        raise ConfigError(f"DEEPGRAM_URL: {error}") from None

    deepgram_ssl: ssl.SSLContext | None = None
    if ca_file := values["DEEPGRAM_CA_FILE"]:
        _readable(ca_file, "DEEPGRAM_CA_FILE")
        deepgram_ssl = ssl.create_default_context()
        try:
            deepgram_ssl.load_verify_locations(ca_file)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(f"DEEPGRAM_CA_FILE: {ca_file} holds no usable certificate: {error}") from None

    certfile, keyfile = values["CERT_PEM"], values["KEY_PEM"]
    if bool(certfile) != bool(keyfile):
        given, missing = ("CERT_PEM", "KEY_PEM") if certfile else ("KEY_PEM", "CERT_PEM")
        raise ConfigError(f"{given} is set but {missing} is not: TLS needs both the certificate and its key")
    if certfile and keyfile:
        _readable(certfile, "CERT_PEM")
        _readable(keyfile, "KEY_PEM")
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
        except ssl.SSLError as error:
            raise ConfigError(
                f"CERT_PEM/KEY_PEM: cannot load the certificate and key: {error.reason or error}"
            ) from None

    window_ms = int(_number(values, "CALLSCRIBE_WINDOW_MS", MIN_WINDOW_MS, MAX_WINDOW_MS, int))
    jitter_ms = int(_number(values, "CALLSCRIBE_JITTER_MS", 0, 1000, int))
    finalize = _number(values, "CALLSCRIBE_FINALIZE_TIMEOUT", 0, 60)
    backlog = _number(values, "CALLSCRIBE_DEEPGRAM_BACKLOG", 1, 600)
    retries = int(_number(values, "CALLSCRIBE_DEEPGRAM_RETRIES", 0, 100, int))
    grace = _number(values, "CALLSCRIBE_SHUTDOWN_GRACE", 0, 300)
    stall = _number(values, "CALLSCRIBE_STALL_TIMEOUT", 1, 600)
    read_tick_ms = int(_number(values, "CALLSCRIBE_READ_TICK_MS", 0, 100, int))
    level_name = (values["CALLSCRIBE_LOG_LEVEL"] or "").upper()
    if level_name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"CALLSCRIBE_LOG_LEVEL must be debug, info, warning or error, not {values['CALLSCRIBE_LOG_LEVEL']!r}"
        )

    public_url = (values["PUBLIC_URL"] or "").strip() or None
    if public_url:
        try:
            stream_url(public_url)
        except ValueError as error:
            raise ConfigError(f"PUBLIC_URL: {error}") from None
    route = (values["CALLSCRIBE_ROUTE"] or "").lower()
    if route not in ("transcribe", "game"):
        raise ConfigError(f"CALLSCRIBE_ROUTE must be transcribe or game, not {values['CALLSCRIBE_ROUTE']!r}")
    codes_file = values["CALLSCRIBE_GAME_CODES"] or None
    if codes_file:
        try:
            CodePool.from_file(codes_file)
        except ValueError as error:
            raise ConfigError(f"CALLSCRIBE_GAME_CODES: {error}") from None
    choice = (values["CALLSCRIBE_SPEECH"] or "").lower()
    if choice not in ("auto", "aura", "espeak"):
        raise ConfigError(f"CALLSCRIBE_SPEECH must be auto, aura or espeak, not {values['CALLSCRIBE_SPEECH']!r}")
    speak_url = values["DEEPGRAM_SPEAK_URL"] or ""
    if choice == "auto":
        explicit_speak_url = bool(getattr(args, "speak_url", None) or env.get("DEEPGRAM_SPEAK_URL"))
        choice = "aura" if explicit_speak_url or urlsplit(url).hostname == "api.deepgram.com" else "espeak"
    speech: Literal["aura", "espeak"] = "aura" if choice == "aura" else "espeak"

    token_secret = values["CALLSCRIBE_TOKEN_SECRET"] or None
    if token_secret and len(token_secret.encode("utf-8", "surrogateescape")) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"CALLSCRIBE_TOKEN_SECRET must be at least {MIN_SECRET_BYTES} bytes long (an HS256 key);"
            " `openssl rand -hex 32` makes one"
        )

    redis_url = values["CALLSCRIBE_REDIS_URL"] or None
    if redis_url and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"CALLSCRIBE_REDIS_URL must be a redis://, rediss:// or unix:// URL, not {redis_url!r}")

    store = _store_settings(values)
    workers = _workers(values["CALLSCRIBE_WORKERS"] or "")
    if workers > 1 and not redis_url:
        raise ConfigError(
            f"CALLSCRIBE_WORKERS={values['CALLSCRIBE_WORKERS']} runs {workers} processes, which share calls, subscribers"
            " and game codes through Redis: set CALLSCRIBE_REDIS_URL (or run one worker)"
        )
    lease = _number(values, "CALLSCRIBE_REDIS_LEASE", 1, 3600)

    call = CallSettings(
        deepgram_url=url,
        deepgram_api_key=api_key,
        window_ms=window_ms,
        jitter_ms=jitter_ms,
        finalize_timeout_s=finalize,
        backlog_s=backlog,
        max_reconnects=retries,
        deepgram_ssl_context=deepgram_ssl,
    )
    return ServerSettings(
        host=host,
        port=port,
        call=call,
        certfile=certfile or None,
        keyfile=keyfile or None,
        shutdown_grace_s=grace,
        stall_timeout_s=stall,
        read_tick_ms=read_tick_ms,
        log_level=getattr(logging, level_name),
        games=GameSettings(
            phone_number=values["TWILIO_PHONE_NUMBER"] or NO_PHONE_NUMBER,
            route_all_calls=route == "game",
            codes_file=codes_file,
        ),
        public_url=public_url,
        forward_number=values["FORWARD_NUMBER"] or None,
        speech=speech,
        speak_url=speak_url,
        twilio_auth_token=values["TWILIO_AUTH_TOKEN"] or None,
        tokens=_list(values["CALLSCRIBE_TOKENS"]),
        token_secret=token_secret,
        allowed_origins=frozenset(o.rstrip("/") for o in _list(values["CALLSCRIBE_ALLOWED_ORIGINS"])),
        redis_url=redis_url,
        run_file=values["CALLSCRIBE_RUN_FILE"] or None,
        store=store,
        workers=workers,
        lease_s=lease,
    )


def _store_settings(values: dict[str, str | None]) -> StoreSettings:
    location = values["CALLSCRIBE_STORE"] or str(Path(values["CALLSCRIBE_DATA_DIR"] or DEFAULT_DATA_DIR) / STORE_FILE)
    if location.strip().lower() == NO_STORE:
        store_at: str | None = None
    elif location.startswith(SCHEME_POSTGRES) or "://" not in location:
        store_at = location
    else:
        raise ConfigError(f"CALLSCRIBE_STORE must be a file path, a postgresql:// URL or none, not {location!r}")
    try:
        labels = SpeakerLabels.parse(values["CALLSCRIBE_SPEAKER_LABELS"] or "")
    except ValueError as error:
        raise ConfigError(f"CALLSCRIBE_SPEAKER_LABELS: {error}") from None
    try:
        receivers = tuple(dict.fromkeys(_webhook_url(url) for url in _list_in_order(values["CALLSCRIBE_WEBHOOK_URL"])))
    except ValueError as error:
        raise ConfigError(f"CALLSCRIBE_WEBHOOK_URL: {error}") from None
    if receivers and store_at is None:
        raise ConfigError(
            "CALLSCRIBE_WEBHOOK_URL needs a store (events wait in its outbox until delivered): not with CALLSCRIBE_STORE=none"
        )
    first = _number(values, "CALLSCRIBE_WEBHOOK_RETRY_FIRST", 0.01, 3600)
    longest = _number(values, "CALLSCRIBE_WEBHOOK_RETRY_MAX", first, 7 * 86400)
    hours = _number(values, "CALLSCRIBE_WEBHOOK_RETRY_FOR", 0.001, 24 * 30)
    return StoreSettings(
        location=store_at,
        queue_size=int(_number(values, "CALLSCRIBE_STORE_QUEUE", 10, 10_000_000, int)),
        retention_days=_number(values, "CALLSCRIBE_RETENTION_DAYS", 0, 100 * 365),
        speaker_labels=labels,
        webhook_urls=receivers,
        webhook_secret=values["CALLSCRIBE_WEBHOOK_SECRET"] or None,
        webhook_retry=RetryPolicy(first_s=first, max_delay_s=longest, give_up_after_s=hours * 3600),
    )


def _list_in_order(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _workers(text: str) -> int:
    """`CALLSCRIBE_WORKERS`: a count from 1 to 64, or auto (the CPU cores this process may use)."""
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if not _digits(text.strip()) or not 1 <= int(text) <= 64:
        raise ConfigError(f"CALLSCRIBE_WORKERS must be a number from 1 to 64, or auto, not {text!r}")
    return int(text)


def _list(text: str | None) -> frozenset[str]:
    return frozenset(item.strip() for item in (text or "").split(",") if item.strip())


def _webhook_url(url: str) -> str:
    """A receiver's URL as `check_receiver_url` and the HTTP client (httpx) both take it."""
    checked = check_receiver_url(url)
    try:
        httpx.URL(checked)
    except httpx.InvalidURL as error:
        raise ValueError(f"webhook URL {url!r} is not a valid URL: {error}") from None
    return checked


def _digits(text: str) -> bool:
    """ASCII digits only: `str.isdigit` takes "²", which `int` refuses."""
    return text.isascii() and text.isdigit()
