"""The options of `callscribe serve`: each a flag with an environment variable as its default (the
unprefixed names `PROXY_URL`, `DEEPGRAM_URL`, `DEEPGRAM_API_KEY`, `CERT_PEM`, `KEY_PEM` are kept for
the set-ups that already use them), and their raw values; config.py checks and parses them."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass

from callscribe.core import deepgram
from callscribe.core.mixer import MAX_WINDOW_MS, MIN_WINDOW_MS
from callscribe.server.games import NO_PHONE_NUMBER
from callscribe.server.store import DEFAULT_DATA_DIR, STORE_FILE


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
        "0 (off) or 1-100: read every Twilio socket on one shared tick of this many ms instead of when"
        " its next window's frames have come (up to that much more latency)",
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
        "names of the caller (the inbound track) and the other party (the outbound track) in transcripts",
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


def option_values(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str | None]:
    """Each option's value by its variable's name: the flag, else the variable in `environ`, else the default."""
    values: dict[str, str | None] = {}
    for option in OPTIONS:
        value = getattr(args, option.flag[2:].replace("-", "_"), None)
        if isinstance(value, list):
            value = ",".join(value)
        if value is None:
            value = environ.get(option.env) or option.default
        values[option.env] = value
    return values
