"""A fake Deepgram live speech-to-text server (``/v1/listen``), for tests and for trying callscribe.

It speaks the wire protocol of ``wss://api.deepgram.com/v1/listen`` closely enough that a client
which works against it should work against Deepgram, and it can misbehave on request the way the
real service does. It does no speech recognition: every result describes the audio it covers
("audio 1.00 to 2.00") or carries a fixed transcript.

What it reproduces from the real protocol (Deepgram's live streaming documentation):

* **Handshake.** The key comes as ``Authorization: Token <key>`` or as the subprotocols
  ``Sec-WebSocket-Protocol: token, <key>`` (then ``token`` is echoed back). A refused upgrade is
  a plain HTTP error with ``dg-error`` and ``dg-request-id`` headers and a JSON body
  ``{"err_code", "err_msg", "request_id"}`` (401 ``INVALID_AUTH`` / ``Invalid credentials.``).
  ``encoding`` without ``sample_rate`` is a 400. Accepted upgrades carry ``dg-request-id`` too.
* **Audio.** Binary frames of raw audio (``mulaw``, ``alaw`` or ``linear16``), interleaved
  sample by sample when ``channels`` > 1. With ``multichannel=true`` each channel is transcribed
  on its own (``channel_index`` ``[ch, channels]``); otherwise the channels are "mixed" and
  results come for ``[0, 1]``. Without ``encoding`` Deepgram expects a container format it can
  sniff; raw audio then fails to decode, so the fake closes ``1008 DATA-0000`` on the first audio.
  An empty binary frame is a client error: it is recorded and ignored.
* **Results.** One final ``Results`` per channel per ``result_every_s`` of that channel's audio;
  each final covers only the audio since the previous final, with ``start``/``duration`` in
  seconds of audio since the connection opened and words spread evenly over the segment. With
  ``interim_results=true`` a non-final result is sent about half-way through each segment.
  ``speech_final`` is true on a timed final only (not on a flush's, nor with ``endpointing=false``).
* **Voice events.** With ``vad_events=true``, ``SpeechStarted`` before the first result with words
  after silence; with ``utterance_end_ms`` (and interim results), ``UtteranceEnd`` after the first
  final without words that far past the last word. Both say ``channel``, not ``channel_index``.
* **Control messages** (text frames): ``KeepAlive`` (keeps the connection alive, no reply),
  ``Finalize`` (flush: finals for pending audio with ``from_finalize: true``; nothing if none is
  pending), ``CloseStream`` (flush likewise, an empty final of duration 0 for a channel with nothing
  pending, ``Metadata`` with the SHA-256 and duration of the audio, then close 1000). Unknown or
  malformed text is ignored.
* **Timeouts and close codes.** Neither audio nor ``KeepAlive`` for ``idle_timeout_s`` (10 s
  like Deepgram) closes ``1011 NET-0001``.

Misbehaviours, set on :class:`FakeDeepgramBehaviour`: refuse every handshake with a given status
(``reject_status``), drop the connection with ``1011 NET-0000`` after some audio
(``drop_after_audio_s``), and answer slowly (``response_delay_s``; receiving audio goes on).

Not reproduced: speech recognition, endpointing (finals come at fixed intervals), containerised or
compressed encodings (rejected with 400), the 1.25x real-time rate limit.

Every accepted connection is recorded as a :class:`FakeDeepgramSession` (audio per channel,
message sizes, control messages, close code) for tests to inspect; a fake that runs for long (the
``callscribe fake-deepgram`` command, ``callscribe demo``) keeps no audio and only its last sessions
(:meth:`FakeDeepgram.for_long_runs`). A failure while handling one
connection is logged and ends only that connection (``1011 NET-0000``); the server carries on.

This module holds the server (:class:`FakeDeepgram`) and the ``callscribe fake-deepgram`` command;
the handshake rules are in :mod:`~callscribe.testing.fake_deepgram_handshake`, one connection in
:mod:`~callscribe.testing.fake_deepgram_connection`, and what the fake says (results, metadata, when
they are due) in :mod:`~callscribe.testing.fake_deepgram_results`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import ssl
import sys
import uuid
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer

from callscribe import argtypes
from callscribe.testing.fake_deepgram_connection import (
    CLOSE_TIMEOUT,
    Connection,
    FakeDeepgramBehaviour,
    FakeDeepgramSession,
    Hooks,
)
from callscribe.testing.fake_deepgram_handshake import Rejection, audio_format, offered_key
from callscribe.testing.fake_deepgram_results import MODEL_UUID, results_message

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LISTEN_PATH",
    "MODEL_UUID",
    "FakeDeepgram",
    "FakeDeepgramBehaviour",
    "FakeDeepgramSession",
    "add_cli_arguments",
    "behaviour_from_args",
    "fake_from_args",
    "results_message",
    "run_from_cli",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
DEFAULT_SPEAK_PORT: Final = 8766
LISTEN_PATH: Final = "/v1/listen"

#: Seconds a client gets to finish its opening handshake.
_HANDSHAKE_TIMEOUT: Final = 10.0
#: Sessions kept by a fake that runs for long (:meth:`FakeDeepgram.for_long_runs`).
LONG_RUN_SESSIONS: Final = 100


class FakeDeepgram:
    """A fake Deepgram live STT server; see the module docstring for what it reproduces.

    ``behaviour`` may be changed between connections; each connection uses the behaviour as it
    was when its handshake arrived.

    By default every session is kept in :attr:`sessions` with all its audio, for tests to compare.
    ``keep_audio=False``: sessions count their samples (``samples_by_channel``) but keep no audio
    (``audio_by_channel`` stays empty); results are the same. ``keep_sessions=N``: only the last N
    sessions stay in :attr:`sessions` (:attr:`accepted` counts them all).
    """

    def __init__(
        self,
        behaviour: FakeDeepgramBehaviour | None = None,
        *,
        on_audio: Callable[[FakeDeepgramSession, bytes], None] | None = None,
        on_send: Callable[[FakeDeepgramSession, str], None] | None = None,
        keep_audio: bool = True,
        keep_sessions: int | None = None,
    ) -> None:
        """``on_audio(session, data)`` and ``on_send(session, text)`` are optional instrumentation
        hooks (used by ``callscribe bench``): the first is called as each binary (audio) message
        arrives, before it is handled; the second just before each text message is written to the
        socket. They run on the fake's own tasks, so they must be quick and must not raise."""
        if keep_sessions is not None and keep_sessions < 0:
            raise ValueError(f"keep_sessions must be None or >= 0, not {keep_sessions}")
        self.behaviour = behaviour if behaviour is not None else FakeDeepgramBehaviour()
        self._hooks = Hooks(on_audio, on_send)
        self.keep_audio = keep_audio
        self.keep_sessions = keep_sessions
        self.sessions: list[FakeDeepgramSession] = []
        self.accepted = 0
        """Connections accepted so far, whether their sessions are still kept or not."""
        self.rejected = 0
        self.port = 0
        self._url_host = DEFAULT_HOST
        self._scheme = "ws"
        self._sessions_changed = trio.Event()

    @classmethod
    def for_long_runs(cls, behaviour: FakeDeepgramBehaviour) -> FakeDeepgram:
        """A fake whose memory does not grow with the calls it serves: no audio, the last sessions."""
        return cls(behaviour, keep_audio=False, keep_sessions=LONG_RUN_SESSIONS)

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/v1/listen`` (``wss://`` with TLS); valid once serving."""
        return f"{self._scheme}://{self._url_host}:{self.port}{LISTEN_PATH}"

    async def serve(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: a free port) until cancelled; ``task_status.started(port)``.

        Binding errors (e.g. the port is taken) are raised as a plain :class:`OSError`.
        """
        listeners: list[Any]
        if ssl_context is None:
            listeners = list(await trio.open_tcp_listeners(port, host=host))
        else:
            listeners = list(
                await trio.open_ssl_over_tcp_listeners(port, ssl_context, host=host, https_compatible=True)
            )
        server = WebSocketServer(
            self._handle,
            listeners,
            connect_timeout=_HANDSHAKE_TIMEOUT,
            disconnect_timeout=CLOSE_TIMEOUT,
        )
        endpoint = server.listeners[0]
        self.port = endpoint.port if not isinstance(endpoint, str) else port
        self._scheme = "wss" if ssl_context is not None else "ws"
        self._url_host = _url_host(host)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            logger.debug("fake Deepgram listening on %s", self.url)
            task_status.started(self.port)

    async def wait_for_sessions(self, count: int) -> list[FakeDeepgramSession]:
        """Wait until at least ``count`` connections were accepted (:attr:`accepted`, not only the
        kept sessions); returns :attr:`sessions`."""
        while self.accepted < count:
            await self._sessions_changed.wait()
        return self.sessions

    def _add_session(self, session: FakeDeepgramSession) -> None:
        self.accepted += 1
        self.sessions.append(session)
        if self.keep_sessions is not None:
            del self.sessions[: max(0, len(self.sessions) - self.keep_sessions)]
        self._sessions_changed.set()
        self._sessions_changed = trio.Event()

    async def _handle(self, request: WebSocketRequest) -> None:
        """trio-websocket handler: never lets an exception out (that would stop the server)."""
        try:
            await self._handle_request(request)
        except ConnectionClosed:
            logger.info("fake Deepgram: client went away during the handshake")
        except Exception:
            logger.exception("fake Deepgram: handshake failed")

    async def _handle_request(self, request: WebSocketRequest) -> None:
        behaviour = dataclasses.replace(self.behaviour)
        request_id = str(uuid.uuid4())
        target = urlsplit(request.path)
        query = dict(parse_qsl(target.query, keep_blank_values=True))
        try:
            if behaviour.reject_status is not None:
                raise Rejection(behaviour.reject_status)
            key, subprotocol = offered_key(request.headers, request.proposed_subprotocols)
            if key != behaviour.api_key:
                raise Rejection(401)
            audio = audio_format(query)
        except Rejection as rejection:
            self.rejected += 1
            logger.info("fake Deepgram: refusing handshake: %d %s", rejection.status, rejection.message)
            await request.reject(
                rejection.status, extra_headers=rejection.headers(request_id), body=rejection.body(request_id)
            )
            return

        ws = await request.accept(subprotocol=subprotocol, extra_headers=[(b"dg-request-id", request_id.encode())])
        session = FakeDeepgramSession(
            path=target.path,
            query=query,
            channels=audio.channels,
            audio_by_channel=[bytearray() for _ in range(audio.channels)],
            request_id=request_id,
        )
        self._add_session(session)
        logger.info("fake Deepgram %s: connection accepted for %s", request_id, request.path)
        try:
            await Connection(ws, session, behaviour, audio, self._hooks, keep_audio=self.keep_audio).run()
        except Exception:
            logger.exception("fake Deepgram %s: connection failed; closing it with 1011 NET-0000", request_id)
            if session.close_code is None:
                session.close_code, session.close_reason = 1011, "NET-0000"
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose(1011, "NET-0000")
        finally:
            session.closed.set()
            logger.info("fake Deepgram %s: connection over (close code %s)", request_id, session.close_code)


def _url_host(host: str) -> str:
    """The host to put in :attr:`FakeDeepgram.url` for a bind address."""
    if host in ("", "0.0.0.0"):
        return DEFAULT_HOST
    if host == "::":
        return "[::1]"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]" if address.version == 6 else host


# ---- command line ------------------------------------------------------------------------------


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {text!r}")
    return value


def _error_status(text: str) -> int:
    value = int(text)
    if not 400 <= value <= 599:
        raise argparse.ArgumentTypeError(f"must be an HTTP error status (400-599), not {text!r}")
    return value


#: The options that set a :class:`FakeDeepgramBehaviour` field (``--api-key`` aside, whose default
#: comes from the environment), each defaulting to the field's default: flag (whose attribute in the
#: parsed options argparse names, as always: ``--delay`` is ``args.delay``), field, type, metavar, help.
_BEHAVIOUR_OPTIONS: Final[tuple[tuple[str, str, Callable[[str], object], str | None, str], ...]] = (
    ("--reject-status", "reject_status", _error_status, "STATUS",
     "refuse every handshake with this HTTP status, e.g. 401 or 429"),
    ("--drop-after", "drop_after_audio_s", argtypes.non_negative_float, "SECONDS",
     "close each connection with 1011 NET-0000 after this much audio"),
    ("--delay", "response_delay_s", argtypes.non_negative_float, "SECONDS",
     "delay every message by this much (default %(default)s)"),
    ("--result-every", "result_every_s", argtypes.positive_float, "SECONDS",
     "one final result per channel per this much audio (default %(default)s)"),
    ("--transcript", "transcript", str, None,
     "words to put in every result (default: describe the audio, e.g. 'audio 1.00 to 2.00')"),
    ("--idle-timeout", "idle_timeout_s", argtypes.positive_float, "SECONDS",
     "close 1011 NET-0001 after this long without audio or KeepAlive (default %(default)s)"),
)  # fmt: skip


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``callscribe fake-deepgram``."""
    defaults = FakeDeepgramBehaviour()
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port, 0 for any free one (default %(default)s)"
    )
    parser.add_argument(
        "--speak-port",
        type=_port,
        default=DEFAULT_SPEAK_PORT,
        help="port of a fake Deepgram Aura (text to speech: a tone as long as the text) at "
        "http://HOST:PORT/v1/speak, for games talking back; 0 for any free one (default %(default)s)",
    )
    parser.add_argument("--no-speak", action="store_true", help="no fake Aura")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("DEEPGRAM_API_KEY") or defaults.api_key,
        help="key clients must send as 'Authorization: Token <key>' "
        f"(default: $DEEPGRAM_API_KEY, else {defaults.api_key!r})",
    )
    for flag, field, type_, metavar, help_ in _BEHAVIOUR_OPTIONS:
        parser.add_argument(flag, type=type_, default=getattr(defaults, field), metavar=metavar, help=help_)


def behaviour_from_args(args: argparse.Namespace) -> FakeDeepgramBehaviour:
    """The behaviour the parsed options of :func:`add_cli_arguments` ask for."""
    fields = {field: getattr(args, _dest(flag)) for flag, field, *_ in _BEHAVIOUR_OPTIONS}
    return FakeDeepgramBehaviour(api_key=args.api_key, **fields)


def fake_from_args(args: argparse.Namespace) -> FakeDeepgram:
    """The fake the command runs: as the options ask, keeping no audio and only the last sessions."""
    return FakeDeepgram.for_long_runs(behaviour_from_args(args))


def run_from_cli(args: argparse.Namespace, *, announce: Callable[[str], None] | None = None) -> int:
    """Run the fake until Ctrl-C; prints ``fake Deepgram listening on ws://...`` once listening
    (and where the fake Aura listens, unless ``--no-speak``).

    Returns 0 after Ctrl-C, 1 if the address cannot be bound.
    """
    fake = fake_from_args(args)
    say = announce if announce is not None else (lambda line: print(line, flush=True))

    binding = args.port

    async def main() -> None:
        nonlocal binding
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve, args.host, args.port)
            say(f"fake Deepgram listening on {fake.url}")
            if not args.no_speak:
                from callscribe.testing.fake_aura import SPEAK_PATH, FakeAura, FakeAuraBehaviour

                binding = args.speak_port
                aura = FakeAura(FakeAuraBehaviour(api_key=args.api_key))
                await nursery.start(aura.serve, args.host, args.speak_port)
                say(f"fake Deepgram Aura listening on http://{_url_host(args.host)}:{aura.port}{SPEAK_PATH}")

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:
        _, rest = group.split(KeyboardInterrupt)
        if rest is None:
            return 0
        bind_errors, rest = rest.split(OSError)
        if rest is None and bind_errors is not None:
            first: BaseException = bind_errors
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            print(f"fake Deepgram: cannot listen on {args.host}:{binding}: {first}", file=sys.stderr)
            return 1
        raise
    except OSError as exc:
        print(f"fake Deepgram: cannot listen on {args.host}:{binding}: {exc}", file=sys.stderr)
        return 1
    return 0


def _dest(flag: str) -> str:
    """The attribute argparse stores a long option under (`--drop-after`: `drop_after`)."""
    return flag.removeprefix("--").replace("-", "_")
