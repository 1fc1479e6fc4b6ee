"""Server settings: command-line flags, each with an environment variable as its default.

The unprefixed names (`PROXY_URL`, `DEEPGRAM_URL`, `DEEPGRAM_API_KEY`, `CERT_PEM`, `KEY_PEM`) are
kept for the set-ups that already use them.
Every problem is reported as one `ConfigError` line; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from callscribe.core import deepgram
from callscribe.core.access import MIN_SECRET_BYTES
from callscribe.core.codes import CodePool
from callscribe.core.mixer import MAX_WINDOW_MS, MIN_WINDOW_MS
from callscribe.core.transcript import SpeakerLabels
from callscribe.core.twiml import stream_url
from callscribe.core.webhooks import RetryPolicy, check_receiver_url
from callscribe.server.call import CallSettings
from callscribe.server.games import NO_PHONE_NUMBER, GameSettings
from callscribe.server.store import DEFAULT_DATA_DIR, NO_STORE, SCHEME_POSTGRES, STORE_FILE, StoreSettings


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line meant for the person starting the server."""


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    help: str
    default: str | None = None
    secret: bool = False
    many: bool = False
    """The flag may be given several times (the variable separates values with commas)."""


OPTIONS = [
    Option("--listen", "PROXY_URL", "host:port to listen on", "127.0.0.1:5000"),
    Option(
        "--deepgram-url",
        "DEEPGRAM_URL",
        "Deepgram live endpoint and options; encoding, sample_rate, channels and"
        " multichannel are always set from the call's audio",
        deepgram.DEFAULT_URL,
    ),
    Option("--deepgram-api-key", "DEEPGRAM_API_KEY", "Deepgram API key (required)", secret=True),
    Option("--deepgram-ca-file", "DEEPGRAM_CA_FILE", "extra CA certificates (PEM) to trust for wss:// to Deepgram"),
    Option("--cert", "CERT_PEM", "TLS certificate chain (PEM); with --key the server speaks https/wss"),
    Option("--key", "KEY_PEM", "TLS private key (PEM); with --cert"),
    Option(
        "--window-ms", "CALLSCRIBE_WINDOW_MS", f"audio per Deepgram message, {MIN_WINDOW_MS}-{MAX_WINDOW_MS} ms", "100"
    ),
    Option(
        "--jitter-ms", "CALLSCRIBE_JITTER_MS", "how far one track may run ahead before a silent track is padded", "40"
    ),
    Option(
        "--deepgram-backlog",
        "CALLSCRIBE_DEEPGRAM_BACKLOG",
        "seconds of audio kept while Deepgram is unreachable, replayed on reconnect",
        "60",
    ),
    Option(
        "--deepgram-retries",
        "CALLSCRIBE_DEEPGRAM_RETRIES",
        "retries in a row after a failed or lost Deepgram connection before a call gives up on transcription",
        "8",
    ),
    Option(
        "--finalize-timeout",
        "CALLSCRIBE_FINALIZE_TIMEOUT",
        "seconds to wait for Deepgram's final results at call end",
        "5",
    ),
    Option("--shutdown-grace", "CALLSCRIBE_SHUTDOWN_GRACE", "seconds live calls get to finish on SIGTERM/SIGINT", "10"),
    Option(
        "--stall-timeout",
        "CALLSCRIBE_STALL_TIMEOUT",
        "seconds a client may leave our data untaken before it is disconnected",
        "20",
    ),
    Option(
        "--read-tick-ms",
        "CALLSCRIBE_READ_TICK_MS",
        "0 (off) or 1-100: read every Twilio socket on one shared tick of this many ms, trading up to"
        " that much latency for less CPU per frame",
        "0",
    ),
    Option("--log-level", "CALLSCRIBE_LOG_LEVEL", "debug, info, warning or error", "info"),
    Option(
        "--public-url",
        "PUBLIC_URL",
        "the server's public https:// (or wss://) address, used in the TwiML it"
        " serves; default: taken from each request's Host and X-Forwarded-* headers",
    ),
    Option(
        "--forward-number",
        "FORWARD_NUMBER",
        "number the transcription TwiML (POST /twiml) dials after starting the stream",
    ),
    Option("--phone-number", "TWILIO_PHONE_NUMBER", "phone number /game shows to games", NO_PHONE_NUMBER),
    Option(
        "--game-codes", "CALLSCRIBE_GAME_CODES", 'JSON file {"game_codes": [...]} of the codes games get (default 0-99)'
    ),
    Option(
        "--route",
        "CALLSCRIBE_ROUTE",
        "transcribe, or game to route every call to games (calls with the stream"
        " parameter route=game always go to games)",
        "transcribe",
    ),
    Option(
        "--speech",
        "CALLSCRIBE_SPEECH",
        "speech engine for talking back: aura, espeak, or auto (Aura when"
        " Deepgram is api.deepgram.com or DEEPGRAM_SPEAK_URL is set, else espeak-ng)",
        "auto",
    ),
    Option(
        "--twilio-auth-token",
        "TWILIO_AUTH_TOKEN",
        "check X-Twilio-Signature on /twilio and the TwiML routes with this Twilio auth token",
        secret=True,
    ),
    Option("--tokens", "CALLSCRIBE_TOKENS", "comma-separated bearer tokens accepted on /client and /game", secret=True),
    Option(
        "--token-secret",
        "CALLSCRIBE_TOKEN_SECRET",
        "secret for signed bearer tokens (callscribe token mints them; they expire and may be limited to one call)",
        secret=True,
    ),
    Option(
        "--allowed-origins",
        "CALLSCRIBE_ALLOWED_ORIGINS",
        "comma-separated Origins browsers may connect from (default: any)",
    ),
    Option(
        "--redis-url",
        "CALLSCRIBE_REDIS_URL",
        "redis:// URL of a Redis shared by several callscribe processes"
        " (calls streaming into one can be followed from any); default: this process only",
    ),
    Option(
        "--speak-url",
        "DEEPGRAM_SPEAK_URL",
        "Deepgram Aura text-to-speech endpoint",
        "https://api.deepgram.com/v1/speak",
    ),
    # Operations: where `serve` says where it listens, for `healthcheck` (Docker's HEALTHCHECK).
    Option(
        "--run-file",
        "CALLSCRIBE_RUN_FILE",
        "file where serve writes the addresses it listens on (JSON) while it runs; healthcheck"
        " reads it, so the check follows --listen and --cert given as flags",
    ),
]

# -- the call store and webhooks -------------------------------------------------------------------

OPTIONS += [
    Option(
        "--data-dir",
        "CALLSCRIBE_DATA_DIR",
        f"directory of the default store file ({STORE_FILE}); /data in the Docker image",
        DEFAULT_DATA_DIR,
    ),
    Option(
        "--store",
        "CALLSCRIBE_STORE",
        "where calls and transcripts are kept: a SQLite file, a postgresql:// URL (shared by several"
        f" processes), or none (default: {STORE_FILE} in the data directory)",
    ),
    Option(
        "--store-queue",
        "CALLSCRIBE_STORE_QUEUE",
        "records that may wait for a slow or unreachable store before transcript finals are dropped",
        "10000",
    ),
    Option(
        "--retention-days",
        "CALLSCRIBE_RETENTION_DAYS",
        "delete calls that started longer ago than this many days (0 keeps them)",
        "0",
    ),
    Option(
        "--speaker-labels",
        "CALLSCRIBE_SPEAKER_LABELS",
        "names of channel 0 (the caller) and channel 1 (the other party) in transcripts",
        "Caller,Other party",
    ),
    Option(
        "--webhook-url",
        "CALLSCRIBE_WEBHOOK_URL",
        "URL that call events are POSTed to (repeat the flag, or separate URLs with commas, for several)",
        many=True,
    ),
    Option(
        "--webhook-secret",
        "CALLSCRIBE_WEBHOOK_SECRET",
        "key of the HMAC-SHA256 signature of webhook events",
        secret=True,
    ),
    Option(
        "--webhook-retry-first",
        "CALLSCRIBE_WEBHOOK_RETRY_FIRST",
        "seconds before a failed webhook delivery is retried the first time; the wait then doubles",
        "1",
    ),
    Option(
        "--webhook-retry-max",
        "CALLSCRIBE_WEBHOOK_RETRY_MAX",
        "longest wait between two retries of a webhook delivery, seconds",
        "600",
    ),
    Option(
        "--webhook-retry-for",
        "CALLSCRIBE_WEBHOOK_RETRY_FOR",
        "hours a webhook event is retried before it is dropped",
        "24",
    ),
]

# -- several processes ---------------------------------------------------------------------------

OPTIONS += [
    Option(
        "--workers",
        "CALLSCRIBE_WORKERS",
        "server processes sharing the port (SO_REUSEPORT), supervised; auto = one per CPU core;"
        " more than 1 needs CALLSCRIBE_REDIS_URL",
        "1",
    ),
    Option(
        "--redis-lease",
        "CALLSCRIBE_REDIS_LEASE",
        "seconds within which the death of a process sharing Redis or the call store is noticed: its"
        " calls end for subscribers elsewhere (1011) and in the store (interrupted), its game codes are freed",
        "30",
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        shown = "" if option.secret or option.default is None else f" (default {option.default})"
        parser.add_argument(
            option.flag,
            metavar=option.env,
            action="append" if option.many else "store",
            help=f"{option.help}{shown}; env {option.env}",
        )


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
    """0: each Twilio socket's reader wakes when its data arrives; else all wake on one shared tick."""
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


def _raw(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for option in OPTIONS:
        value = getattr(args, option.flag[2:].replace("-", "_"), None)
        if isinstance(value, list):
            value = ",".join(value)
        if value is None:
            value = environ.get(option.env) or option.default
        values[option.env] = value
    return values


def parse_host_port(text: str, name: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
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
    values = _raw(args, env)
    host, port = parse_host_port(values["PROXY_URL"] or "", "PROXY_URL")

    api_key = values["DEEPGRAM_API_KEY"]
    if not api_key:
        raise ConfigError(
            "DEEPGRAM_API_KEY (or --deepgram-api-key) is required; try `callscribe fake-deepgram` for a local key-less run"
        )
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

    public_url = values["PUBLIC_URL"] or None
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
    if token_secret and len(token_secret.encode()) < MIN_SECRET_BYTES:
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
        receivers = tuple(
            dict.fromkeys(check_receiver_url(url) for url in _list_in_order(values["CALLSCRIBE_WEBHOOK_URL"]))
        )
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


def health_url(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """Where this machine reaches the `/healthz` of the server these settings describe.

    `--listen`/`--cert` given to the health check itself win; then the run file of a running
    server (`CALLSCRIBE_RUN_FILE`: what it really listens on, whatever flags it was given); then
    `PROXY_URL` and `CERT_PEM`. https when a certificate is configured; a wildcard address
    (`0.0.0.0`, `[::]`) is reached at 127.0.0.1, which a dual-stack `[::]` also accepts."""
    values = _raw(args, os.environ if environ is None else environ)
    run_file = values["CALLSCRIBE_RUN_FILE"]
    if run_file and getattr(args, "listen", None) is None and getattr(args, "cert", None) is None:
        listening = read_run_file(run_file)
        if listening:
            scheme, _, address = listening[0].partition("://")
            return _health_url("https" if scheme == "https" else "http", address)
    return _health_url("https" if values["CERT_PEM"] else "http", values["PROXY_URL"] or "")


def _health_url(scheme: str, address: str) -> str:
    host, port = parse_host_port(address, "PROXY_URL")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}/healthz"


def write_run_file(path: str, urls: list[str]) -> None:
    """Say where this server listens (`{"urls": [...], "pid": N}`), atomically; OSError if it cannot."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"urls": urls, "pid": os.getpid()}, f)
    os.replace(temporary, path)


def read_run_file(path: str) -> list[str]:
    """The URLs a running server wrote to `path`; none if there is no such file or it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    urls = data.get("urls") if isinstance(data, dict) else None
    return [url for url in urls if isinstance(url, str) and "://" in url] if isinstance(urls, list) else []


def remove_run_file(path: str) -> None:
    """The server stops: its run file goes (unless another server has written its own since)."""
    if _run_file_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            os.remove(path)


def _run_file_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            pid = json.load(f).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def _workers(text: str) -> int:
    """`CALLSCRIBE_WORKERS`: a count from 1 to 64, or auto (the CPU cores this process may use)."""
    if text.strip().lower() == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if not text.strip().isdigit() or not 1 <= int(text) <= 64:
        raise ConfigError(f"CALLSCRIBE_WORKERS must be a number from 1 to 64, or auto, not {text!r}")
    return int(text)


def _list(text: str | None) -> frozenset[str]:
    return frozenset(item.strip() for item in (text or "").split(",") if item.strip())
