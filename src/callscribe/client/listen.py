"""`callscribe listen`: follow calls' transcripts from a terminal (or a script, with `--json`).

    callscribe listen                 the only live call (or the next one to start)
    callscribe listen CALLSID         that call, waiting for it to start if it has not yet
    callscribe listen --all           every live call and each new one, until Ctrl-C

It is a plain `/client` subscriber: it reads the list of live calls, names one (with `?wait=` so a
call that has not started yet is waited for), and shows each message as it arrives through a
`TranscriptView` (`--json`: the messages themselves, one per line). `--all` asks for the list
every `POLL_S` seconds and subscribes to each call it has not seen. Before a call's first
message is shown, the call feed (`/api/events`) is asked for its tracks, whose order names the
speaker of each channel (an outbound-only stream's channel 0 is the other party); a call the
feed cannot describe (on another process, an older server) has the caller on channel 0.

Exit status: 0 when the call ended normally (close 1000), or on Ctrl-C with `--all`; 1 when the
server could not be reached or closed otherwise; 2 for bad usage; 130 on Ctrl-C following one call.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio
import trio_websocket

from callscribe import argtypes
from callscribe.client.outputs import HumanOutput, JsonOutput, Output
from callscribe.client.terminal import Terminal, stdout_gone, visible
from callscribe.client.transcript_view import close_description
from callscribe.core.fanout import MAX_WAIT_S
from callscribe.exception_groups import leaves
from callscribe.server.websocket_client import ConnectFailed, connect_websocket

__all__ = [
    "DEFAULT_URL",
    "DEFAULT_WAIT_S",
    "ListenError",
    "Server",
    "add_cli_arguments",
    "call_tracks",
    "follow",
    "listen",
    "live_calls",
    "run_from_cli",
]

DEFAULT_URL = "ws://127.0.0.1:5000"
DEFAULT_WAIT_S = 600.0
"""How long `listen CALLSID` waits for a call that has not started."""
POLL_S = 1.0
"""How often `--all` (and `listen` with no live call) asks for the list of live calls."""
CONNECT_TIMEOUT_S = 5.0
TRACKS_WAIT_S = 2.0
"""How long the first line of a call waits for the call feed to name its tracks (then: caller on 0)."""
TRACKS_CLOSE_S = 1.0
CLOSE_NORMAL = 1000


class ListenError(Exception):
    """The server could not be reached or refused us; one line for the person running `listen`."""


@dataclass(frozen=True)
class Server:
    """Where the subscriber connects, and how it proves it may."""

    url: str = DEFAULT_URL
    """ws(s)://host:port, with or without /client; http(s):// is taken for ws(s)://."""
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None

    def client_url(self, wait_s: float = 0.0, endpoint: str = "/client") -> str:
        """The URL of `/client` (or of another `endpoint` of the same server)."""
        parts = urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        path = parts.path.rstrip("/").removesuffix("/client") + endpoint
        query = parts.query
        if wait_s > 0:
            query = "&".join(q for q in (query, urlencode({"wait": f"{wait_s:g}"})) if q)
        return urlunsplit((scheme, parts.netloc, path, query, ""))

    def check(self) -> None:
        """ValueError unless the URL can be a subscriber's."""
        url = self.client_url()
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"--url must be ws://host:port or wss://host:port, not {self.url!r}")
        if self.ssl_context is not None and parts.scheme != "wss":
            raise ValueError("--ca-file only applies to wss:// URLs")


async def _connect(
    nursery: trio.Nursery, server: Server, wait_s: float = 0.0, endpoint: str = "/client"
) -> trio_websocket.WebSocketConnection:
    url = server.client_url(wait_s, endpoint)
    headers = [("Authorization", f"Bearer {server.token}")] if server.token else []
    try:
        return await connect_websocket(
            nursery, url, headers=headers, connect_timeout=CONNECT_TIMEOUT_S, ssl_context=server.ssl_context
        )
    except ConnectFailed as error:
        raise ListenError(f"cannot connect to {server.client_url()}: {error.cause}") from None
    except trio_websocket.ConnectionRejected as error:
        raise _refused(server, error) from None


def _refused(server: Server, error: trio_websocket.ConnectionRejected) -> ListenError:
    body = " ".join((error.body or b"")[:200].decode("utf-8", "replace").split())
    return ListenError(f"{server.client_url()} refused the subscriber: HTTP {error.status_code} {body}".rstrip())


@asynccontextmanager
async def _subscriber(
    server: Server, wait_s: float = 0.0, endpoint: str = "/client", close_timeout_s: float = CONNECT_TIMEOUT_S
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A /client (or `endpoint`) connection, closed at the end. trio-websocket reports a refused
    upgrade from its reader task, i.e. out of the nursery: what comes out is one error, never a group."""
    try:
        async with trio.open_nursery() as nursery:
            ws = await _connect(nursery, server, wait_s, endpoint)
            try:
                yield ws
            finally:
                with trio.move_on_after(close_timeout_s) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        errors = [error for error in leaves(group) if not isinstance(error, trio.Cancelled)]
        if len(errors) != 1:
            raise
        if isinstance(errors[0], trio_websocket.ConnectionRejected):
            raise _refused(server, errors[0]) from None
        raise errors[0] from None


async def live_calls(server: Server) -> list[str]:
    """The callSids the server lists as live."""
    async with _subscriber(server) as ws:
        try:
            first = await ws.get_message()
        except trio_websocket.ConnectionClosed as closed:
            raise ListenError(f"the server closed the connection: {_described(closed)}") from None
    return _call_list(server, first)


def _call_list(server: Server, first: str | bytes) -> list[str]:
    """The list of live calls a /client connection begins with; an Error from callscribe instead
    (the hub unavailable, a bad parameter) is raised as what it says."""
    try:
        calls = json.loads(first)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
        calls = None
    if isinstance(calls, dict) and calls.get("type") == "Error" and isinstance(calls.get("message"), str):
        raise ListenError(f"{server.client_url()}: {calls['message'][:300]}")
    if not isinstance(calls, list) or not all(isinstance(sid, str) for sid in calls):
        raise ListenError(f"{server.client_url()} is not a callscribe /client: it sent {str(first)[:80]!r}")
    return calls


async def call_tracks(server: Server, call_sid: str) -> tuple[str, ...]:
    """The live call's tracks in channel order, as the server's call feed (`/api/events`) lists
    them; () when it cannot tell (a call on another process, an older server, a refusal)."""
    with trio.move_on_after(TRACKS_WAIT_S):
        try:
            async with _subscriber(server, endpoint="/api/events", close_timeout_s=TRACKS_CLOSE_S) as ws:
                return _tracks_in_snapshot(await ws.get_message(), call_sid)
        except (ListenError, trio_websocket.ConnectionClosed):
            pass
    return ()


def _tracks_in_snapshot(text: str | bytes, call_sid: str) -> tuple[str, ...]:
    """The tracks of `call_sid` in the call feed's first message (`{"type": "snapshot", "calls": [...]}`)."""
    try:
        snapshot = json.loads(text)
    except (ValueError, RecursionError):
        return ()
    calls = snapshot.get("calls") if isinstance(snapshot, dict) else None
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict) and call.get("callSid") == call_sid:
            tracks = call.get("tracks")
            if isinstance(tracks, list) and all(isinstance(track, str) for track in tracks):
                return tuple(tracks)
    return ()


async def follow(
    server: Server,
    call_sid: str,
    on_message: Callable[[str], None],
    *,
    wait_s: float = 0.0,
    connected: trio.Event | None = None,
    before_first: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int | None, str | None]:
    """Subscribe to `call_sid` and give every message to `on_message` until the server closes;
    returns the close code and reason (None, None: the connection was lost without a close frame).
    `connected` is set once the call is named (with `wait_s`, the server now waits for it);
    `before_first` is awaited when the first message has come (the call has started), before it is given."""
    async with _subscriber(server, wait_s) as ws:
        try:
            _call_list(server, await ws.get_message())  # the list of live calls
            await ws.send_message(call_sid)
            if connected is not None:
                connected.set()
            while True:
                message = await ws.get_message()
                if before_first is not None:
                    await before_first()
                    before_first = None
                on_message(message if isinstance(message, str) else message.decode("utf-8", "replace"))
        except trio_websocket.ConnectionClosed as closed:
            reason = closed.reason
            return (None, None) if reason is None or reason.code == 1006 else (reason.code, reason.reason)


def _described(closed: trio_websocket.ConnectionClosed) -> str:
    reason = closed.reason
    return close_description(reason.code if reason else None, reason.reason if reason else None)


# -- the three ways to listen ----------------------------------------------------------------------


async def listen(server: Server, output: Output, call_sid: str | None, *, follow_all: bool, wait_s: float) -> int:
    """Follow one call (`call_sid`, or the only live one, or the next to start) or, with
    `follow_all`, every call until cancelled; returns the exit status."""
    if follow_all:
        await _follow_all(server, output)
    if call_sid is None:
        calls = await live_calls(server)
        if len(calls) > 1:
            raise _Usage(
                f"{len(calls)} live calls ({', '.join(calls)}): name one (callscribe listen CALLSID) or follow them all (--all)"
            )
        if calls:
            call_sid = calls[0]
        else:
            output.info("no live call yet; waiting for one to start (Ctrl-C to stop)")
            call_sid = await _next_call(server, set())
        wait_s = 0.0
    output.info(f"call {call_sid}" + (f" (waiting up to {wait_s:g} s for it to start)" if wait_s else ""))
    code, reason = await _follow_into(server, output, call_sid, wait_s)
    output.closed(call_sid, code, reason)
    return 0 if code == CLOSE_NORMAL else 1


async def _next_call(server: Server, seen: set[str]) -> str:
    while True:
        fresh = [sid for sid in await live_calls(server) if sid not in seen]
        if fresh:
            return fresh[0]
        await trio.sleep(POLL_S)


async def _follow_all(server: Server, output: Output) -> NoReturn:
    """Subscribe to every live call and each new one, until cancelled (Ctrl-C) or the server
    can no longer be reached (ListenError)."""
    followed: set[str] = set()
    """Calls followed now, and those that ended but may still be listed for a moment."""
    running: set[str] = set()
    output.info("following every live call and each new one (Ctrl-C to stop)")
    async with trio.open_nursery() as nursery:
        while True:
            listed = set(await live_calls(server))
            followed &= listed | running
            for call_sid in sorted(listed - followed):
                followed.add(call_sid)
                running.add(call_sid)
                nursery.start_soon(_follow_one, server, output, call_sid, running)
            await trio.sleep(POLL_S)


async def _follow_one(server: Server, output: Output, call_sid: str, running: set[str]) -> None:
    output.info(f"call {call_sid} started")
    try:
        code, reason = await _follow_into(server, output, call_sid)
        output.closed(call_sid, code, reason)
    except ListenError as error:
        output.info(f"call {call_sid}: {error}")
    finally:
        running.discard(call_sid)


async def _follow_into(
    server: Server, output: Output, call_sid: str, wait_s: float = 0.0
) -> tuple[int | None, str | None]:
    """`follow` the call into `output`, telling it the call's tracks first if it names speakers."""

    async def learn_tracks() -> None:
        output.tracks(call_sid, await call_tracks(server, call_sid))

    before_first = learn_tracks if output.names_speakers else None
    return await follow(
        server, call_sid, lambda text: output.message(call_sid, text), wait_s=wait_s, before_first=before_first
    )


class _Usage(Exception):
    """Bad usage found once connected (several live calls and none named)."""


# -- command line ----------------------------------------------------------------------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "call_sid",
        nargs="?",
        metavar="CALLSID",
        help="the call to follow; it may not have started yet (default: the only live call, or the next to start)",
    )
    parser.add_argument("--all", action="store_true", help="follow every live call and each new one, until Ctrl-C")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server, ws(s)://host:port (default {DEFAULT_URL})")
    parser.add_argument(
        "--token",
        default=os.environ.get("CALLSCRIBE_TOKEN"),
        help="bearer token, when the server asks for one (default: $CALLSCRIBE_TOKEN)",
    )
    parser.add_argument("--json", action="store_true", help="print the messages themselves, one JSON object a line")
    parser.add_argument(
        "--wait",
        type=_wait_seconds,
        default=DEFAULT_WAIT_S,
        metavar="SECONDS",
        help=f"how long CALLSID may take to start, at most {MAX_WAIT_S:g} (default %(default)g)",
    )
    parser.add_argument("--ca-file", metavar="PEM", help="trust this CA certificate for wss:// URLs")


def _wait_seconds(text: str) -> float:
    seconds = argtypes.non_negative_float(text)
    if seconds > MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_WAIT_S:g} seconds (the server's limit), not {text}")
    return seconds


def run_from_cli(args: argparse.Namespace) -> int:
    if args.all and args.call_sid:
        return _error("name a call or use --all, not both", 2)
    try:
        ssl_context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    except (OSError, ssl.SSLError) as error:
        return _error(f"cannot load --ca-file {args.ca_file}: {error}", 2)
    server = Server(args.url, args.token, ssl_context)
    try:
        server.check()
    except ValueError as error:
        return _error(str(error), 2)
    output: Output
    if args.json:
        output = JsonOutput(sys.stdout, sys.stderr, tag_calls=args.all)
    else:
        output = HumanOutput(Terminal(sys.stdout), labelled=args.all)
    try:
        return trio.run(lambda: listen(server, output, args.call_sid, follow_all=args.all, wait_s=args.wait))
    except KeyboardInterrupt:
        return 0 if args.all else 130
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            return 0 if args.all else 130
        return _failure(rest)
    except (ListenError, _Usage, BrokenPipeError) as error:  # BrokenPipeError: `| head` went away
        return _failure(error)
    finally:
        _finish(output)


def _finish(output: Output) -> None:
    try:
        output.finish()
    except BrokenPipeError:
        stdout_gone()


def _failure(error: BaseException) -> int:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    if isinstance(error, BrokenPipeError):  # the reader went away (`| head`): nothing more to say
        stdout_gone()
        return 0
    if isinstance(error, _Usage):
        return _error(str(error), 2)
    if isinstance(error, ListenError):
        return _error(str(error), 1)
    raise error


def _error(message: str, status: int) -> int:
    print(f"callscribe listen: {visible(message)}", file=sys.stderr, flush=True)  # the server's words too
    return status
