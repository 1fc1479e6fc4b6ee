"""`callscribe` command line: serve, demo, listen, healthcheck, token, calls, fake-deepgram, simulate-call, bench.

A subcommand's module is imported only when that subcommand runs (`callscribe serve` loads neither
the fakes nor the benchmark): the parser gets the options of the chosen subcommand only, the
others are listed by name and help line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from callscribe import __version__

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
WORKERS_LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"
"""With --workers: which process said it."""
HEALTHCHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Runs the command; returns the exit status."""
    description: str | None = None


def _lazy(module: str, function: str) -> Callable[..., Any]:
    """`module.function`, the module imported when it is first called."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(module), function)(*args)

    return call


def _token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS", help="lifetime (default 3600)")
    parser.add_argument("--call", metavar="CALLSID", help="limit the token to this call (claim call_sid)")
    parser.add_argument("--sub", metavar="TEXT", help="who the token is for (claim sub)")


def _token(args: argparse.Namespace) -> int:
    import math
    import os

    from callscribe.core.access import TokenCheck

    secret = os.environ.get("CALLSCRIBE_TOKEN_SECRET")
    if not secret:
        print("callscribe: CALLSCRIBE_TOKEN_SECRET must be set to the server's token secret", file=sys.stderr)
        return 2
    if not (math.isfinite(args.ttl) and args.ttl > 0):  # float() takes "nan" and "inf"
        print("callscribe: --ttl must be positive", file=sys.stderr)
        return 2
    try:
        tokens = TokenCheck(secret=secret)
    except ValueError as error:
        print(f"callscribe: CALLSCRIBE_TOKEN_SECRET: {error}", file=sys.stderr)
        return 2
    print(tokens.issue(ttl_s=args.ttl, call_sid=args.call, subject=args.sub))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import functools

    import trio

    from callscribe.exception_groups import leaves
    from callscribe.server.config import ConfigError, settings_from
    from callscribe.server.serve import StartupError, serve

    try:
        settings = settings_from(args)
    except ConfigError as error:
        print(f"callscribe: {error}", file=sys.stderr)
        return 2
    from callscribe.server.workers import Supervisor, SupervisorError, worker_of

    worker = worker_of()
    several = settings.workers > 1 or worker is not None
    logging.basicConfig(level=settings.log_level, format=WORKERS_LOG_FORMAT if several else LOG_FORMAT)
    # A worker serves, whatever its command line says (argparse takes `--worker 2` for `--workers 2`,
    # which `worker_argv` does not drop): a worker that supervised would start workers of its own.
    if settings.workers > 1 and worker is None:
        try:
            return trio.run(Supervisor(settings, args.argv).run)
        except SupervisorError as error:
            print(f"callscribe: {error}", file=sys.stderr)
            return 2
    failure: BaseException | None = None
    from callscribe.server.gc_tuning import tune_for_serving

    tune_for_serving()
    try:
        if worker is None:
            trio.run(serve, settings)
        else:
            trio.run(_serve_worker, functools.partial(serve, settings, reuse_port=True), *worker)
    except* StartupError as group:
        failure = next(leaves(group))
    if failure is not None:
        print(f"callscribe: {failure}", file=sys.stderr)
        return 2
    return 0


async def _serve_worker(serve: Callable[..., Any], supervisor_pid: int, ready_fd: int) -> None:
    """A worker of `serve --workers N`: serve on the shared port, say so once listening, and drain
    if the supervisor goes away."""
    import trio

    from callscribe.server.workers import tell_ready, watch_supervisor

    async with trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(task_status=task_status)
            nursery.cancel_scope.cancel()  # (the watch)

        await nursery.start(serve_then_stop)
        tell_ready(ready_fd)
        nursery.start_soon(watch_supervisor, supervisor_pid)


def _healthcheck(args: argparse.Namespace) -> int:
    """GET /healthz of the server the settings describe: 0 when it answers 200, else 1 and one line
    (1, not 2: Docker reserves 2). The certificate is not checked: it is for the public name."""
    import httpx

    from callscribe.server.config import ConfigError
    from callscribe.server.run_file import health_url

    try:
        url = health_url(args)
    except ConfigError as error:
        print(f"callscribe: {error}", file=sys.stderr)
        return 1
    try:
        # trust_env=False: a proxy set for outgoing traffic (HTTP_PROXY...) must not carry this one.
        response = httpx.get(url, verify=False, timeout=HEALTHCHECK_TIMEOUT_S, trust_env=False)
    except httpx.HTTPError as error:
        print(f"callscribe: {url}: {error or type(error).__name__}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"callscribe: {url} answered {response.status_code} {response.reason_phrase}", file=sys.stderr)
        return 1
    print(response.text.strip())
    return 0


def _fake_deepgram(args: argparse.Namespace) -> int:
    from callscribe.testing import fake_deepgram

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return fake_deepgram.run_from_cli(args)


_SERVER_OPTIONS = _lazy("callscribe.server.options", "add_arguments")

COMMANDS = (
    Command(
        "serve",
        "run the relay server",
        _SERVER_OPTIONS,
        _serve,
        description="Run the relay: /twilio (Twilio Media Streams), /client (subscribers), /healthz. "
        "Every option can also be given by the environment variable named with it.",
    ),
    Command(
        "demo",
        "try callscribe with no account and no phone: a fake Deepgram, the server and a simulated call",
        _lazy("callscribe.testing.demo", "add_cli_arguments"),
        _lazy("callscribe.testing.demo", "run_from_cli"),
        description="Start a fake Deepgram, the server on 127.0.0.1:5000 and a two-party simulated call (one "
        "after another), and print the live transcript. The server stays up for `callscribe listen` and other "
        "subscribers until Ctrl-C, or for --duration seconds.",
    ),
    Command(
        "listen",
        "follow a call's transcript in the terminal (or every call, with --all)",
        _lazy("callscribe.client.listen", "add_cli_arguments"),
        _lazy("callscribe.client.listen", "run_from_cli"),
        description="Subscribe to /client and show each final result as a line (time into the call, speaker, "
        "words), the current interim result in place on a terminal, and callscribe's notices. Exit 0 when the "
        "call ends normally, 1 if the server cannot be reached or closes otherwise.",
    ),
    Command(
        "healthcheck",
        "exit 0 if the server these settings describe answers on /healthz, else 1 (for Docker's HEALTHCHECK)",
        _SERVER_OPTIONS,
        _healthcheck,
        description="GET /healthz on the address `serve` listens on with the same options and environment "
        "(127.0.0.1 for 0.0.0.0 or [::]; https, unverified, when a certificate is set). "
        "Exit 0 if it answers 200, else 1 with one line on stderr. Only --listen and --cert matter.",
    ),
    Command(
        "token",
        "mint a signed bearer token (a JWT) for /client and /game (needs CALLSCRIBE_TOKEN_SECRET)",
        _token_arguments,
        _token,
    ),
    Command(
        "calls",
        "list, show and export the calls in the call store",
        _lazy("callscribe.server.calls_command", "add_arguments"),
        _lazy("callscribe.server.calls_command", "run"),
        description="Read the call store that `callscribe serve` writes (--store or CALLSCRIBE_STORE, else "
        "callscribe.db in --data-dir or CALLSCRIBE_DATA_DIR, ./data by default): `calls list`, "
        "`calls show CALLSID`, `calls export CALLSID --format vtt`.",
    ),
    Command(
        "fake-deepgram",
        "run a local fake of Deepgram's live STT API",
        _lazy("callscribe.testing.fake_deepgram", "add_cli_arguments"),
        _fake_deepgram,
    ),
    Command(
        "simulate-call",
        "replay audio to a server as a Twilio Media Stream",
        _lazy("callscribe.testing.simulator", "add_cli_arguments"),
        _lazy("callscribe.testing.simulator", "run_from_cli"),
    ),
    Command(
        "bench",
        "measure calls per core, latency and memory (starts its own server and load)",
        _lazy("callscribe.bench.runner", "add_cli_arguments"),
        _lazy("callscribe.bench.runner", "run_from_cli"),
    ),
)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The command line, with the options of the `chosen` subcommand only (importing its module)."""
    parser = argparse.ArgumentParser(
        prog="callscribe",
        description="Live phone-call transcription: Twilio Media Streams in, Deepgram live STT, transcripts out over WebSockets.",
    )
    parser.add_argument("--version", action="version", version=f"callscribe {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        subparser = subparsers.add_parser(
            command.name, help=command.help, description=command.description or command.help
        )
        if command.name == chosen:
            command.add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # The top level's own options take no value: the first other argument names the subcommand.
    chosen = next((argument for argument in arguments if not argument.startswith("-")), None)
    args = build_parser(chosen).parse_args(arguments)
    args.argv = arguments
    command = next(command for command in COMMANDS if command.name == args.command)
    return command.run(args)
