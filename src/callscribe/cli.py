"""`callscribe` command line: serve, fake-deepgram, simulate-call."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from callscribe import __version__

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    from callscribe.server import config
    from callscribe.testing import fake_deepgram, simulator

    parser = argparse.ArgumentParser(
        prog="callscribe",
        description="Live phone-call transcription: Twilio Media Streams in, Deepgram live STT, transcripts out over WebSockets.",
    )
    parser.add_argument("--version", action="version", version=f"callscribe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the relay server",
        description="Run the relay: /twilio (Twilio Media Streams), /client (subscribers), /healthz. "
        "Every option can also be given by the environment variable named with it.",
    )
    config.add_arguments(serve)

    fake = commands.add_parser("fake-deepgram", help="run a local fake of Deepgram's live STT API")
    fake_deepgram.add_cli_arguments(fake)

    simulate = commands.add_parser("simulate-call", help="replay audio to a server as a Twilio Media Stream")
    simulator.add_cli_arguments(simulate)

    bench = commands.add_parser(
        "bench", help="measure calls per core, latency and memory (starts its own server and load)"
    )
    from callscribe.bench import runner as bench_module

    bench_module.add_cli_arguments(bench)

    token = commands.add_parser(
        "token", help="mint a signed bearer token for /client and /game (needs CALLSCRIBE_TOKEN_SECRET)"
    )
    token.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS", help="lifetime (default 3600)")
    token.add_argument("--call", metavar="CALLSID", help="limit the token to this call")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "token":
        return _token(args)
    if args.command == "bench":
        from callscribe.bench import runner as bench

        return bench.run_from_cli(args)
    if args.command == "fake-deepgram":
        from callscribe.testing import fake_deepgram

        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        return fake_deepgram.run_from_cli(args)
    from callscribe.testing import simulator

    return simulator.run_from_cli(args)


def _token(args: argparse.Namespace) -> int:
    import os

    from callscribe.core.access import TokenCheck

    secret = os.environ.get("CALLSCRIBE_TOKEN_SECRET")
    if not secret:
        print("callscribe: CALLSCRIBE_TOKEN_SECRET must be set to the server's token secret", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("callscribe: --ttl must be positive", file=sys.stderr)
        return 2
    print(TokenCheck(secret=secret).issue(ttl_s=args.ttl, call_sid=args.call))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from callscribe.server.config import ConfigError, settings_from
    from callscribe.server.serve import serve

    try:
        settings = settings_from(args)
    except ConfigError as error:
        print(f"callscribe: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    failure: OSError | None = None
    try:
        trio.run(serve, settings)
    except* OSError as group:
        failure = group.exceptions[0]  # type: ignore[assignment]
    if failure is not None:
        print(
            f"callscribe: cannot listen on {settings.host}:{settings.port}: {failure.strerror or failure}",
            file=sys.stderr,
        )
        return 1
    return 0
