"""`callscribe calls list|show|export`: the call store on the command line.

It reads the store a server writes (the same `--store` / `CALLSCRIBE_STORE` and `--data-dir` /
`CALLSCRIBE_DATA_DIR`), beside a running server or without one, and never changes it. Exit status:
0, 1 when the call asked for is not in the store, 2 when the store cannot be read or a parameter
is wrong (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from callscribe.core.call_query import BadQuery, parse_query
from callscribe.core.call_record import StoredCall, iso_time
from callscribe.core.transcript import FORMATS, export, to_text
from callscribe.server.store import (
    DEFAULT_DATA_DIR,
    NO_STORE,
    STORE_FILE,
    Engine,
    StoreError,
    StoreUnavailable,
    open_engine,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="CALLSCRIBE_STORE",
        help="the store: a SQLite file or a postgresql:// URL (default: $CALLSCRIBE_STORE, else"
        f" {STORE_FILE} in the data directory)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="CALLSCRIBE_DATA_DIR",
        help=f"data directory (default $CALLSCRIBE_DATA_DIR, else {DEFAULT_DATA_DIR})",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="calls, newest first", description="Calls, newest first.")
    listing.add_argument("--q", default="", help="words that must occur in the transcript")
    listing.add_argument("--number", default="", help="a phone number: calls from or to it")
    listing.add_argument("--since", default="", help="calls that started at or after this ISO 8601 time")
    listing.add_argument("--until", default="", help="calls that started before this ISO 8601 time")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--live", action="store_const", const="true", dest="live", default="", help="live calls only")
    state.add_argument("--ended", action="store_const", const="false", dest="live", help="ended calls only")
    listing.add_argument("--limit", default="50", help="at most this many calls (default 50, at most 200)")
    listing.add_argument("--json", action="store_true", help="JSON, as GET /api/calls answers")
    show = actions.add_parser("show", help="a call and its transcript", description="A call and its transcript.")
    show.add_argument("call_sid", metavar="CALLSID")
    show.add_argument("--json", action="store_true", help="JSON, as GET /api/calls/{callSid} answers")
    out = actions.add_parser("export", help="a call's transcript as a file", description="A call's transcript.")
    out.add_argument("call_sid", metavar="CALLSID")
    out.add_argument("--format", choices=tuple(FORMATS), default="txt", help="txt (default), vtt, srt or json")


def store_location(args: argparse.Namespace) -> str:
    location = args.store or os.environ.get("CALLSCRIBE_STORE")
    if location:
        return str(location)
    return str(Path(args.data_dir or os.environ.get("CALLSCRIBE_DATA_DIR") or DEFAULT_DATA_DIR) / STORE_FILE)


def run(args: argparse.Namespace) -> int:
    location = store_location(args)
    if location.strip().lower() == NO_STORE:
        return _fail("CALLSCRIBE_STORE is none: there is no store to read")
    engine = open_engine(location)
    try:
        engine.open(migrate=False)
    except StoreError as error:
        return _fail(str(error))
    try:
        if args.action == "list":
            return _list(engine, args)
        return _show(engine, args)
    except StoreUnavailable as error:
        return _fail(f"cannot read the store at {engine.where}: {error}")
    finally:
        engine.close()


def _list(engine: Engine, args: argparse.Namespace) -> int:
    params = {"q": args.q, "number": args.number, "since": args.since, "until": args.until, "live": args.live}
    try:
        query = parse_query({**params, "limit": args.limit})
    except BadQuery as error:
        return _fail(str(error))
    calls, _ = engine.list_calls(query)
    if args.json:
        print(json.dumps({"calls": [call.summary() for call in calls]}, indent=2))
        return 0
    for call in calls:
        print(_line(call))
    return 0


def _line(call: StoredCall) -> str:
    duration = "live" if call.live else f"{call.duration_s:.0f} s"
    parties = f"{call.from_number or '?'} -> {call.to_number or '?'}"
    return f"{iso_time(call.started_at)}  {call.call_sid}  {parties}  {duration}  {call.outcome or ''}  {call.snippet}".rstrip()


def _show(engine: Engine, args: argparse.Namespace) -> int:
    call = engine.get_call(args.call_sid)
    if call is None:
        print(f"callscribe: no call {args.call_sid!r} in the store at {engine.where}", file=sys.stderr)
        return 1
    utterances = engine.utterances(args.call_sid)
    if args.action == "export":
        sys.stdout.write(export(utterances, args.format))
        return 0
    if args.json:
        details = call.json()
        details["utterances"] = [u.json() for u in utterances if u.text]
        print(json.dumps(details, indent=2))
        return 0
    for key, value in call.json().items():
        if value not in (None, [], {}):
            print(f"{key}: {value}")
    print()
    sys.stdout.write(to_text(utterances))
    return 0


def _fail(message: str) -> int:
    print(f"callscribe: {message}", file=sys.stderr)
    return 2
