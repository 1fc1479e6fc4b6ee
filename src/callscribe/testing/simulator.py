"""Twilio Media Streams call simulator: replays audio to a WebSocket server (callscribe's ``/twilio``)
the way a Twilio ``<Stream>`` sends it, and the ``callscribe simulate-call`` command.

This module is the simulator's public face; the work is done by

* :mod:`callscribe.testing.call_plan` -- pure: what a call sends and when (:class:`CallSpec`,
  :func:`plan_frames`, the message builders, :func:`call_messages`), with simulated packet loss,
  off-size chunks, a late outbound track and send-time jitter, all deterministic per seed;
* :mod:`callscribe.testing.twilio_playback` -- pure: Twilio's side of a bidirectional stream;
* :mod:`callscribe.testing.call_runner` -- trio: :func:`run_call` plays a call to a server.

What is defined here is the command-line glue (:func:`add_cli_arguments`, :func:`run_from_cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
import sys
import urllib.parse
import wave
from collections.abc import Callable
from typing import Any

import trio

from callscribe import argtypes
from callscribe.core import audio as mulaw
from callscribe.testing.call_plan import (
    BYTES_PER_MS,
    CallSpec,
    PlannedFrame,
    call_messages,
    connected_message,
    dtmf_message,
    parse_dtmf,
    plan_frames,
    start_message,
    stop_message,
    twilio_media_event,
)
from callscribe.testing.call_runner import CallConnectionError, SimulationReport, check_call_url, run_call
from callscribe.testing.twilio_playback import Playback

__all__ = [
    "DEFAULT_URL",
    "CallConnectionError",
    "CallSpec",
    "PlannedFrame",
    "Playback",
    "SimulationReport",
    "add_cli_arguments",
    "call_messages",
    "connected_message",
    "dtmf_message",
    "plan_frames",
    "run_call",
    "run_from_cli",
    "save_wav",
    "start_message",
    "stop_message",
    "twilio_media_event",
]

#: Where ``callscribe simulate-call`` connects by default.
DEFAULT_URL = "ws://127.0.0.1:5000/twilio"


def _add_pair_option(parser: argparse.ArgumentParser, flag: str, key: str, separator: str, help_: str) -> None:
    """A repeatable option of ``KEY<separator>VALUE`` pairs, ``key`` naming the KEY; it collects a list
    of ``(key, value)``. With ``:`` (HTTP headers) the value is stripped too."""
    metavar = f"{key}{separator}VALUE"

    def pair(text: str) -> tuple[str, str]:
        name, sep, value = text.partition(separator)
        name = name.strip()
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected {metavar}, got {text!r}")
        return name, value.strip() if separator == ":" else value

    parser.add_argument(flag, type=pair, action="append", default=[], metavar=metavar, help=help_)


#: The options that set a :class:`CallSpec` field of the same name (``--frame-ms``: ``frame_ms``),
#: each defaulting to the field's default: field, type, metavar, help.
_SPEC_OPTIONS: tuple[tuple[str, Callable[[str], object], str | None, str], ...] = (
    ("outbound_start_ms", argtypes.non_negative_int, "MS", "outbound track starts this late"),
    ("frame_ms", argtypes.positive_int, "MS", "chunk length (default %(default)s)"),
    ("jitter_ms", argtypes.non_negative_float, "MS", "random send delay up to MS"),
    ("loss", argtypes.probability, "P", "probability a chunk is not sent"),
    ("off_size", argtypes.probability, "P", "probability a chunk is split or merged"),
    ("seed", int, None, "random seed for loss/off-size/jitter (default %(default)s)"),
)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``callscribe simulate-call`` options to ``parser``."""
    parser.add_argument("--url", default=DEFAULT_URL, help=f"WebSocket URL of the server (default {DEFAULT_URL})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--wav",
        metavar="FILE",
        help="WAV file (PCM or mu-law, any rate); channel 0 is the caller (inbound), "
        "channel 1 the other party (outbound)",
    )
    source.add_argument("--mulaw", metavar="FILE", help="raw 8 kHz mu-law file for the inbound track")
    parser.add_argument("--outbound-mulaw", metavar="FILE", help="raw 8 kHz mu-law file for the outbound track")
    parser.add_argument(
        "--duration",
        type=argtypes.positive_float,
        default=None,
        metavar="SECONDS",
        help="length of the generated tone (default 5); with a file, play at most this much",
    )
    parser.add_argument(
        "--tracks",
        choices=["inbound", "both"],
        default=None,
        help="inbound-only or both tracks (default: both if there is outbound audio; "
        "'both' with generated audio adds a second tone)",
    )
    parser.add_argument(
        "--speed",
        type=argtypes.non_negative_float,
        default=1.0,
        help="1 = real time (default), 0 = as fast as possible",
    )
    spec_defaults = {field.name: field.default for field in dataclasses.fields(CallSpec)}
    for name, type_, metavar, help_ in _SPEC_OPTIONS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=type_, default=spec_defaults[name], metavar=metavar, help=help_)
    parser.add_argument("--call-sid", default=None, help="CallSid to send (default: random)")
    _add_pair_option(parser, "--param", "KEY", "=", "start.customParameters entry (repeatable)")
    _add_pair_option(parser, "--header", "NAME", ":", "extra HTTP header on the WebSocket upgrade (repeatable)")
    parser.add_argument("--ca-file", metavar="PEM", help="trust this CA certificate for wss:// URLs")
    parser.add_argument(
        "--connect-timeout", type=argtypes.positive_float, default=5.0, metavar="SECONDS", help="default 5"
    )
    parser.add_argument(
        "--close-wait",
        type=argtypes.non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the server to close after stop (default 5)",
    )
    parser.add_argument("--no-stop", action="store_true", help="hang up without sending stop")
    parser.add_argument(
        "--dtmf",
        metavar="KEYS",
        help='keys the caller presses: "4,2,#" (from 1 s on, 0.5 s apart) or with times, "4@3,2@3.5,#@4" '
        "(seconds since the stream started)",
    )
    parser.add_argument(
        "--one-way",
        action="store_true",
        help="ignore what the server sends back; by default an inbound-only stream (what <Connect><Stream> "
        "gives) is two-way like Twilio's: the server's audio is played in real time, marks are echoed "
        "once it has played, clear is honoured",
    )
    parser.add_argument(
        "--save-heard",
        metavar="FILE.wav",
        help="write what the caller heard (the server's audio, when it played) to this WAV file",
    )


class _UsageError(Exception):
    pass


def _read_mulaw_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise _UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not data:
        raise _UsageError(f"{what} {path} is empty")
    return data


def _spec_from_args(args: argparse.Namespace) -> CallSpec:
    outbound: bytes | None = None
    generated = False
    if args.wav:
        try:
            channels = mulaw.read_wav_as_mulaw(args.wav)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
        except OSError as exc:
            raise _UsageError(f"cannot read WAV file {args.wav}: {exc.strerror or exc}") from None
        inbound = channels[0]
        if len(channels) > 1:
            if args.outbound_mulaw:
                raise _UsageError(
                    "--outbound-mulaw conflicts with a stereo --wav (its channel 1 is the outbound track)"
                )
            outbound = channels[1]
        if not inbound:
            raise _UsageError(f"WAV file {args.wav} has no audio")
    elif args.mulaw:
        inbound = _read_mulaw_file(args.mulaw, "mu-law file")
    else:
        generated = True
        inbound = mulaw.generate_tone(args.duration or 5.0, 440.0)
    if args.outbound_mulaw:
        outbound = _read_mulaw_file(args.outbound_mulaw, "outbound mu-law file")
    if args.duration is not None and not generated:
        limit = round(args.duration * mulaw.SAMPLE_RATE)
        inbound = inbound[:limit]
        if outbound is not None:
            outbound = outbound[: max(0, limit - args.outbound_start_ms * BYTES_PER_MS)]

    if args.tracks == "inbound":
        if args.outbound_mulaw:
            raise _UsageError("--outbound-mulaw needs --tracks both")
        outbound = None
    elif args.tracks == "both" and outbound is None:
        if not generated:
            raise _UsageError("--tracks both needs outbound audio: a stereo --wav or --outbound-mulaw")
        seconds = max(0.0, (args.duration or 5.0) - args.outbound_start_ms / 1000)
        outbound = mulaw.generate_tone(seconds, 660.0)

    extra: dict[str, Any] = {}
    if args.call_sid:
        extra["call_sid"] = args.call_sid
    if args.dtmf:
        if outbound is not None:
            raise _UsageError("--dtmf: Twilio sends dtmf on bidirectional streams, which carry the inbound track only")
        try:
            extra["dtmf"] = parse_dtmf(args.dtmf)
        except ValueError as exc:
            raise _UsageError(f"--dtmf: {exc}") from None
    return CallSpec(
        inbound=inbound,
        outbound=outbound,
        custom_parameters=dict(args.param),
        **{name: getattr(args, name) for name, *_ in _SPEC_OPTIONS},
        **extra,
    )


def _ssl_context_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.ca_file:
        return None
    if urllib.parse.urlsplit(args.url).scheme != "wss":
        raise _UsageError("--ca-file only applies to wss:// URLs")
    if not os.path.isfile(args.ca_file):
        raise _UsageError(f"CA file {args.ca_file} does not exist")
    try:
        return ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise _UsageError(f"cannot load CA file {args.ca_file}: {exc}") from None


def _error(message: str) -> None:
    print(f"callscribe simulate-call: error: {message}", file=sys.stderr)


def run_from_cli(args: argparse.Namespace) -> int:
    """Run ``callscribe simulate-call``; returns the exit status.

    0 on success (whether or not the server closed the socket), 1 if the connection
    failed, 2 for bad usage (bad options, unreadable or unsupported files).
    """
    try:
        spec = _spec_from_args(args)
        ssl_context = _ssl_context_from_args(args)
        check_call_url(args.url, ssl_context)
        if args.save_heard and not os.path.isdir(os.path.dirname(os.path.abspath(args.save_heard))):
            raise _UsageError(f"--save-heard: no such directory for {args.save_heard}")
    except (_UsageError, ValueError, TypeError) as exc:
        _error(str(exc))
        return 2
    two_way = spec.outbound is None and not args.one_way
    if args.save_heard and not two_way:
        _error("--save-heard needs a two-way stream: inbound only (--tracks inbound), without --one-way")
        return 2
    speed = "as fast as possible" if args.speed == 0 else f"{args.speed:g}x real time"
    way = ", two-way" if two_way else ""
    print(
        f"call {spec.call_sid} -> {args.url}, {spec.duration_s:.1f} s, tracks {'+'.join(spec.tracks)}{way}, {speed}",
        flush=True,
    )
    try:
        report = trio.run(
            lambda: run_call(
                args.url,
                spec,
                speed=args.speed,
                ssl_context=ssl_context,
                connect_timeout=args.connect_timeout,
                close_wait=args.close_wait,
                send_stop=not args.no_stop,
                headers=list(args.header) or None,
                bidirectional=two_way,
            )
        )
    except ConnectionError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    print(_summary(spec, report, args.close_wait))
    if args.save_heard and report.playback is not None:
        try:
            save_wav(args.save_heard, bytes(report.playback.heard))
        except OSError as exc:
            _error(f"cannot write {args.save_heard}: {exc.strerror or exc}")
            return 1
        print(f"what the caller heard: {args.save_heard} ({len(report.playback.heard) / mulaw.SAMPLE_RATE:.1f} s)")
    return 0


def save_wav(path: str, ulaw: bytes) -> None:
    """Write 8 kHz mu-law audio as a 16-bit PCM WAV file, which every player reads."""
    with wave.open(path, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(mulaw.SAMPLE_RATE)
        wav.writeframes(mulaw.decode(ulaw))


def _summary(spec: CallSpec, report: SimulationReport, close_wait: float) -> str:
    counts = {track: sum(1 for f in report.frames if f.track == track) for track in spec.tracks}
    sent = ", ".join(
        f"{counts[track]} {track} frames ({report.bytes_by_track.get(track, 0)} bytes)" for track in spec.tracks
    )
    elapsed = (report.sent_at[-1] - report.started_at) if report.sent_at else 0.0
    parts = [f"sent {sent} over {elapsed:.2f} s", "stop sent" if report.stop_sent else "no stop"]
    if report.received:
        parts.append(f"{len(report.received)} messages received")
    if spec.dtmf:
        parts.append(f"keys pressed: {''.join(key for _, key in sorted(spec.dtmf, key=lambda press: press[0]))}")
    if report.playback is not None:
        playback = report.playback
        parts.append(
            f"{len(playback.audio) / mulaw.SAMPLE_RATE:.1f} s of audio played, {len(playback.marks)} marks echoed"
        )
    if report.close_code is not None:
        reason = f" ({report.close_reason})" if report.close_reason else ""
        parts.append(f"server closed with code {report.close_code}{reason}")
    elif report.stop_sent:
        parts.append(f"server did not close within {close_wait:g} s")
    else:
        parts.append("simulator hung up")
    return "; ".join(parts)
