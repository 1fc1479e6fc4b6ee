"""Plays a simulated Twilio call to a real WebSocket server, with trio and trio-websocket.

:func:`run_call` connects, sends the messages of :func:`callscribe.testing.call_plan.call_script` in
real time (or faster), collects whatever the server sends back and records how the server closed the
socket, as a :class:`SimulationReport`. With ``bidirectional=True`` a
:class:`~callscribe.testing.twilio_playback.Playback` plays what comes back and echoes marks.
"""

from __future__ import annotations

import json
import math
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import NoReturn

import trio
import trio_websocket

from callscribe.server.websocket_client import ConnectFailed, connect_websocket, describe_failure
from callscribe.testing.call_plan import CallSpec, PlannedFrame, ScriptedMessage, call_script, compact_json
from callscribe.testing.twilio_playback import Playback

__all__ = ["CallConnectionError", "SimulationReport", "check_call_url", "run_call"]


class CallConnectionError(ConnectionError):
    """The simulator could not open the WebSocket (refused, timeout, TLS, HTTP rejection)."""

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"cannot connect to {url}: {cause}")
        self.url = url
        self.cause = cause


@dataclass
class SimulationReport:
    """What :func:`run_call` did and saw."""

    call_sid: str
    frames: list[PlannedFrame] = field(default_factory=list)
    """Media frames actually sent (fewer than planned if the server closed early)."""
    sent_at: list[float] = field(default_factory=list)
    """``trio.current_time()`` right after each frame of ``frames`` was sent."""
    bytes_by_track: dict[str, int] = field(default_factory=dict)
    """Payload bytes sent per track."""
    close_code: int | None = None
    """Close code if the *server* closed the socket (1006: TCP closed without a close
    frame); ``None`` if it did not before the simulator closed it."""
    close_reason: str | None = None
    received: list[str] = field(default_factory=list)
    """Text messages the server sent (binary messages are ignored)."""
    started_at: float = 0.0
    """``trio.current_time()`` at stream start, the origin of ``PlannedFrame.send_at``."""
    stop_sent: bool = False
    """Whether the ``stop`` message was sent."""
    playback: Playback | None = None
    """With ``bidirectional=True``: what the server played to the caller, and the marks echoed."""


def check_call_url(url: str, ssl_context: ssl.SSLContext | None) -> None:
    """Raise :class:`ValueError` unless ``url`` is a ``ws://``/``wss://`` URL that ``ssl_context`` fits."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"URL must start with ws:// or wss://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"URL has no host: {url!r}")
    if ssl_context is not None and parts.scheme != "wss":
        raise ValueError(f"an SSL context only applies to wss:// URLs, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}: {exc}") from None


def _describe_connect_failure(exc: BaseException) -> str:
    """One line naming the real cause of a failed connection attempt."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        body = " ".join((exc.body or b"")[:200].decode("utf-8", "replace").split())
        text = f"server rejected the WebSocket upgrade with HTTP {exc.status_code}"
        return f"{text}: {body}" if body else text
    return describe_failure(exc)


async def run_call(
    url: str,
    spec: CallSpec,
    *,
    speed: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
    close_wait: float = 5.0,
    send_stop: bool = True,
    headers: list[tuple[str, str]] | None = None,
    bidirectional: bool = False,
) -> SimulationReport:
    """Play one call to ``url`` and report what happened.

    ``speed`` 1.0 sends in real time, ``n`` sends ``n`` times faster, 0 sends as fast as
    possible (still one checkpoint per message). After the last frame it sends ``stop``
    and waits up to ``close_wait`` seconds for the server to close the socket, then
    closes it itself; with ``send_stop=False`` it closes right away without ``stop``
    (Twilio hanging up). If the server closes earlier, sending stops there. With
    ``bidirectional=True`` it also plays what the server sends back like Twilio does for
    ``<Connect><Stream>``: marks are echoed once the audio before them has played.

    Raises :class:`CallConnectionError` (a :class:`ConnectionError`) if the connection
    or the WebSocket handshake fails, :class:`ValueError` for a bad URL or speed.
    """
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"speed must be a finite number >= 0, got {speed}")
    check_call_url(url, ssl_context)
    script = call_script(spec, include_stop=send_stop)
    report = SimulationReport(call_sid=spec.call_sid, bytes_by_track={t: 0 for t in spec.tracks})
    if bidirectional:
        report.playback = Playback(spec.stream_sid)
    try:
        async with trio.open_nursery() as nursery:  # runs trio-websocket's reader task
            ws = await _connect(nursery, url, ssl_context, headers, connect_timeout)
            try:
                await _play(ws, script, speed, close_wait, report)
            finally:
                with trio.move_on_after(close_wait) as closing:
                    closing.shield = True
                    await ws.aclose()  # no-op if already closed
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = _single_error(group)
        if isinstance(error, trio_websocket.HandshakeError):  # raised by the reader task
            raise CallConnectionError(url, _describe_connect_failure(error)) from error
        _reraise(error)
    return report


async def _connect(
    nursery: trio.Nursery,
    url: str,
    ssl_context: ssl.SSLContext | None,
    headers: list[tuple[str, str]] | None,
    timeout: float,
) -> trio_websocket.WebSocketConnection:
    """Open the WebSocket step by step (see `callscribe.server.websocket_client`), each step bounded by `timeout`."""
    try:
        return await connect_websocket(
            nursery, url, headers=headers or (), connect_timeout=timeout, ssl_context=ssl_context
        )
    except ConnectFailed as exc:
        raise CallConnectionError(url, exc.cause) from exc
    except trio_websocket.ConnectionRejected as exc:
        raise CallConnectionError(url, _describe_connect_failure(exc)) from exc


def _single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one non-Cancelled exception in a (nested) group, else the group itself."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                collect(sub)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


def _reraise(exc: BaseException) -> NoReturn:
    """Raise ``exc`` keeping its own context rather than the group it came in."""
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context


def _numbered(text: str, number: int) -> str:
    """A Twilio message with its `sequenceNumber` (placed after `event`, as Twilio places it)."""
    message = json.loads(text)
    message.pop("sequenceNumber", None)
    event = message.pop("event")
    return compact_json({"event": event, "sequenceNumber": str(number), **message})


async def _play(
    ws: trio_websocket.WebSocketConnection,
    script: list[ScriptedMessage],
    speed: float,
    close_wait: float,
    report: SimulationReport,
) -> None:
    """Send ``script`` on an open connection while collecting what the server sends."""
    server_closed = trio.Event()
    receiver_done = trio.Event()
    send_scope = trio.CancelScope()
    we_close = False

    def note_server_close(reason: trio_websocket.CloseReason | None) -> None:
        if server_closed.is_set() or we_close:
            return
        report.close_code = reason.code if reason else None
        report.close_reason = reason.reason if reason else None
        server_closed.set()
        send_scope.cancel()  # stop sending, even in the middle of a long sleep

    playback = report.playback
    wake = trio.Event()
    # Twilio numbers every message after `connected`, the marks it echoes included: the script's
    # numbers are moved up by the marks sent before them.
    numbered = 0  # messages sent after `connected`
    marks_sent = 0
    stopping = False

    async def receive() -> None:
        nonlocal wake
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str):
                    report.received.append(message)
                    if playback is not None:
                        playback.receive(message, trio.current_time())
                        wake.set()
        except trio_websocket.ConnectionClosed as exc:
            # Messages sent before a server-side close are all delivered first.
            note_server_close(exc.reason)
        finally:
            receiver_done.set()

    async def echo_marks() -> None:
        nonlocal wake, numbered, marks_sent
        assert playback is not None
        while True:
            due = playback.next_due()
            wake = trio.Event()
            with trio.move_on_at(due if due is not None else math.inf):
                await wake.wait()
            if stopping:  # `stop` is Twilio's last message: no echo after it
                return
            for echo in playback.due(trio.current_time()):
                if stopping:
                    return
                numbered, marks_sent = numbered + 1, marks_sent + 1
                try:
                    await ws.send_message(_numbered(echo, numbered))
                except trio_websocket.ConnectionClosed:
                    return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        if playback is not None:
            nursery.start_soon(echo_marks)
        report.started_at = start = trio.current_time()
        if playback is not None:
            playback.origin = start
        with send_scope:
            for item in script:
                if speed > 0:
                    await trio.sleep_until(start + item.send_at / speed)
                else:
                    await trio.lowlevel.checkpoint()
                text = item.text
                if item.event == "stop":
                    stopping = True
                    wake.set()  # the mark echoer ends
                if item.event != "connected":
                    numbered += 1
                    text = _numbered(text, numbered) if marks_sent else text
                try:
                    await ws.send_message(text)
                except trio_websocket.ConnectionClosed as exc:
                    note_server_close(exc.reason)  # we have not closed: the server did
                    break
                if item.event == "stop":
                    report.stop_sent = True
                if item.frame is not None:
                    report.frames.append(item.frame)
                    report.sent_at.append(trio.current_time())
                    report.bytes_by_track[item.frame.track] += len(item.frame.payload)
        if report.stop_sent and not server_closed.is_set():
            with trio.move_on_after(close_wait):
                await server_closed.wait()
        if ws.closed is not None:
            note_server_close(ws.closed)  # the server started closing meanwhile
        if not server_closed.is_set():
            we_close = True
            with trio.move_on_after(close_wait):
                await ws.aclose()
        with trio.move_on_after(close_wait):
            await receiver_done.wait()  # let it drain messages that came before a close
        nursery.cancel_scope.cancel()
