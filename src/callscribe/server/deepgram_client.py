"""A call's connection to Deepgram: opened, fed, read and reopened, as `DeepgramPolicy` decides.

    DeepgramClient.run
      _collect_windows   the mixer's windows -> AudioBacklog, whatever state Deepgram is in
      _keep_connected    one attempt after another, until the audio is done or the policy gives up
        _attempt         one connection, in its own nursery (which owns the socket and its tasks)
          _send_audio    AudioBacklog.next_unsent -> DeepgramStream.send_audio -> socket (paced), KeepAlive, CloseStream
          _read          socket -> DeepgramStream.receive -> policy.received -> rebase -> Hub.publish (and on_message)

The decisions (retry or give up, backoff, replayed finals, time offsets, notices) are the policy's
(core/deepgram_policy.py); this module carries the sockets and the timers. Every failure of a
connection reaches the policy once, at its nursery's boundary. Once the mixer's last window is in the
backlog, the policy's `reconnect_deadline` bounds the wait for a retry and the attempt under way.
Giving up abandons the backlog: the audio Deepgram never got is counted as lost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
import trio_websocket

from callscribe.core import deepgram
from callscribe.core.backlog import AudioBacklog, Pacer
from callscribe.core.deepgram import DeepgramState, DeepgramStream, MessageKind, rebase
from callscribe.core.deepgram_policy import Decision, DeepgramPolicy, GiveUp, Notice
from callscribe.exception_groups import leaves
from callscribe.server.call_settings import CallSettings
from callscribe.server.hub import Hub
from callscribe.server.websocket_client import ConnectFailed, connect_websocket, describe_failure

log = logging.getLogger(__name__)


class DeepgramConnection(Protocol):
    async def send_message(self, message: str | bytes) -> None: ...
    async def get_message(self) -> str | bytes: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


Connector = Callable[[trio.Nursery, str, list[tuple[str, str]]], Awaitable[DeepgramConnection]]
"""Opens a Deepgram connection whose background tasks run in the given nursery."""


class DeepgramLost(Exception):
    """The open connection ended before the call did; the text says how."""


class SendStalled(Exception):
    """A send to Deepgram did not complete within `send_timeout_s`."""


class DeepgramSilent(Exception):
    """The open connection said nothing for `answer_timeout_s` while that much audio went to it."""


_FAILURES = (
    trio_websocket.ConnectionRejected,
    ConnectFailed,
    SendStalled,
    DeepgramSilent,
    DeepgramLost,
    trio_websocket.HandshakeError,
)
"""What ends an attempt, most telling first: when several of a connection's tasks fail, the kind listed first is
reported (a refusal rather than the reader's HandshakeError, a stalled send rather than the close that followed)."""


class DeepgramClient:
    """Streams one call's audio to Deepgram and publishes what Deepgram says, over any reconnects.

    `on_message(kind, text, interim)` sees every published Deepgram message, in call time.
    """

    def __init__(
        self,
        call_sid: str,
        channels: int,
        *,
        settings: CallSettings,
        hub: Hub,
        connect: Connector | None = None,
        on_message: Callable[[MessageKind, str, bool], None] | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.settings = settings
        self.hub = hub
        self._connect = connect or self._connect_websocket
        self._on_message = on_message
        self.backlog = AudioBacklog(channels, settings.backlog_s)
        self.policy = DeepgramPolicy(
            max_retries=settings.max_reconnects,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
            finalize_timeout_s=settings.finalize_timeout_s,
        )
        self.streams: list[DeepgramStream] = []
        """The bookkeeping of each connection opened, in order."""
        self.error = ""
        """Why transcription was given up, if it was."""
        self._all_audio_in = False
        """The mixer's last window is in the backlog: after it, only CloseStream is left to send."""
        self._audio_ready = trio.Event()
        self._waiting: trio.CancelScope | None = None
        """The retry's wait and connect, while one is under way: cut at `policy.reconnect_deadline`."""

    async def run(self, windows: trio.MemoryReceiveChannel[bytes]) -> None:
        """Take the mixer's windows until it closes the channel; return once Deepgram is done with them."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._collect_windows, windows)
            await self._keep_connected()

    @property
    def audio_bytes_sent(self) -> int:
        return sum(stream.audio_bytes_sent for stream in self.streams)

    @property
    def results_received(self) -> int:
        return sum(stream.results_received for stream in self.streams)

    @property
    def unparsable(self) -> int:
        return sum(stream.unparsable for stream in self.streams)

    async def _collect_windows(self, windows: trio.MemoryReceiveChannel[bytes]) -> None:
        backlog = self.backlog
        async with windows:
            async for window in windows:
                backlog.append(window)
                self._audio_ready.set()
        self._all_audio_in = True
        deadline = self.policy.input_finished(trio.current_time())
        if self._waiting is not None:
            self._waiting.deadline = deadline
        self._audio_ready.set()

    async def _keep_connected(self) -> None:
        delay = 0.0
        while True:
            decision = await self._attempt(delay)
            if decision is None:
                return
            if isinstance(decision, GiveUp):
                self.error = decision.message
                abandoned = self.backlog.abandon()
                log.error("call %s: %s (%.2f s of audio abandoned)", self.call_sid, decision.message, abandoned)
                await self._notify(decision.notice)
                return
            log.warning(
                "call %s: %s; retry %d of %d in %.2f s (%.1f s of audio waiting)",
                self.call_sid,
                decision.cause,
                decision.retry,
                decision.max_retries,
                decision.delay_s,
                self.backlog.unsent_seconds,
            )
            if decision.notice is not None:
                await self._notify(decision.notice)
            delay = decision.delay_s

    async def _attempt(self, delay: float) -> Decision | None:
        """Wait `delay`, connect and stream. None once the audio is all done; else the policy's decision."""
        failure: BaseException | None = None
        too_late = False
        try:
            async with trio.open_nursery() as nursery:
                connection = await self._open(nursery, delay)
                if connection is None:
                    too_late = True
                    nursery.cancel_scope.cancel()
                else:
                    await self._stream(nursery, connection)
        except* _FAILURES as group:
            failure = _most_telling(group)
        if failure is not None:
            return self._decide(failure)
        if too_late:
            return self.policy.deadline_passed(trio.current_time())
        return None

    async def _open(self, nursery: trio.Nursery, delay: float) -> DeepgramConnection | None:
        """Sleep `delay` and connect; None if `policy.reconnect_deadline` comes first."""
        url = deepgram.listen_url(self.settings.deepgram_url, channels=self.backlog.channels)
        headers = [("Authorization", f"Token {self.settings.deepgram_api_key}")]
        with trio.CancelScope(deadline=self.policy.reconnect_deadline) as waiting:
            self._waiting = waiting
            try:
                await trio.sleep(delay)
                return await self._connect(nursery, url, headers)
            finally:
                self._waiting = None
        return None

    def _decide(self, failure: BaseException) -> Decision:
        now = trio.current_time()
        policy = self.policy
        if isinstance(failure, trio_websocket.ConnectionRejected):
            summary = deepgram.rejection_summary(failure.status_code, list(failure.headers or ()), failure.body)
            return policy.refused(now, failure.status_code, summary)
        if isinstance(failure, ConnectFailed):
            return policy.connect_failed(now, str(failure))
        if isinstance(failure, SendStalled):
            return policy.send_stalled(now, self.settings.send_timeout_s)
        if isinstance(failure, DeepgramSilent):
            return policy.silent(now, self.settings.answer_timeout_s)
        if isinstance(failure, DeepgramLost):
            return policy.lost(now, str(failure))
        return policy.connect_failed(now, f"WebSocket handshake failed: {describe_failure(failure)}")

    async def _stream(self, nursery: trio.Nursery, connection: DeepgramConnection) -> None:
        """Send the backlog and the rest of the audio, then CloseStream; wait (bounded) for Metadata."""
        opened = self.policy.opened(self.backlog.rewind())
        stream = DeepgramStream()
        self.streams.append(stream)
        finished = trio.Event()
        try:
            if opened.replaying:
                log.info(
                    "call %s: Deepgram connection %d open; replaying %.2f s of audio from call time %.2f s",
                    self.call_sid,
                    len(self.streams),
                    self.backlog.unsent_seconds,
                    opened.offset_s,
                )
            if opened.notice is not None:
                await self._notify(opened.notice)
            nursery.start_soon(self._read, connection, stream, finished)
            await self._send_audio(connection, stream)
            with trio.move_on_after(self.settings.finalize_timeout_s) as waiting:
                await finished.wait()
            if waiting.cancelled_caught:
                log.warning(
                    "call %s: no Metadata from Deepgram within %g s of CloseStream; closing",
                    self.call_sid,
                    self.settings.finalize_timeout_s,
                )
        finally:
            with trio.move_on_after(2, shield=True):
                await connection.aclose()
            nursery.cancel_scope.cancel()

    async def _send_audio(self, connection: DeepgramConnection, stream: DeepgramStream) -> None:
        """Send the backlog in order (at most `replay_rate` x real time), KeepAlive when idle, then CloseStream."""
        backlog = self.backlog
        settings = self.settings
        pacer = Pacer(settings.replay_rate)
        last_sent = trio.current_time()
        while True:
            window = backlog.next_unsent()
            if window is None:
                if self._all_audio_in:
                    break
                self._audio_ready = trio.Event()
                with trio.move_on_at(last_sent + settings.keepalive_s) as idle:
                    await self._audio_ready.wait()
                if idle.cancelled_caught:
                    await self._send(connection, stream.send_keepalive())
                    last_sent = trio.current_time()
                continue
            wait = pacer.delay(trio.current_time(), len(window) / backlog.bytes_per_second)
            if wait > 0:
                await trio.sleep(wait)
            await self._send(connection, stream.send_audio(window))
            backlog.mark_sent(window)
            last_sent = trio.current_time()
        await self._send(connection, stream.send_close_stream())

    async def _send(self, connection: DeepgramConnection, message: str | bytes) -> None:
        try:
            with trio.fail_after(self.settings.send_timeout_s):
                await connection.send_message(message)
        except trio.TooSlowError:
            raise SendStalled() from None
        except trio_websocket.ConnectionClosed as closed:
            raise DeepgramLost(_close_text(closed)) from None

    async def _read(self, connection: DeepgramConnection, stream: DeepgramStream, finished: trio.Event) -> None:
        """Publish what Deepgram says, in call time, as the policy says (replayed finals are dropped).

        A connection that ends before CloseStream, or after it but abnormally (a 1011 before Metadata),
        is lost: the finals of its last audio may never come, so the policy may reconnect and replay it.
        """
        policy = self.policy
        answer_s = self.settings.answer_timeout_s
        heard_at = trio.current_time()
        heard_bytes = stream.audio_bytes_sent
        try:
            while stream.state is not DeepgramState.FINISHED:
                # A Deepgram that accepted the connection and then says nothing (not even an empty
                # result) for `answer_s` while it got `answer_s` of audio is lost. Audio it got in a
                # pause of Twilio's may rightly wait for more (KeepAlive keeps the connection); after
                # CloseStream, the finalize timeout bounds the wait instead.
                unanswered_s = (stream.audio_bytes_sent - heard_bytes) / self.backlog.bytes_per_second
                if stream.state is not DeepgramState.STREAMING:
                    check_at = math.inf
                else:
                    # (no sooner than that much more audio can come live; and not too often in a pause)
                    wait_s = max(answer_s - unanswered_s, answer_s / 10)
                    check_at = max(heard_at + answer_s, trio.current_time() + wait_s)
                try:
                    with trio.move_on_at(check_at) as quiet:
                        message = await connection.get_message()
                    if quiet.cancelled_caught:
                        unanswered_s = (stream.audio_bytes_sent - heard_bytes) / self.backlog.bytes_per_second
                        if unanswered_s >= answer_s:
                            raise DeepgramSilent()
                        continue  # too little audio for an answer to be due: wait for more
                except trio_websocket.ConnectionClosed as closed:
                    if stream.state is DeepgramState.STREAMING or not _normal_closure(closed):
                        raise DeepgramLost(_close_text(closed)) from None
                    return  # closed normally after CloseStream, without Metadata: nothing more will come
                heard_at = trio.current_time()
                heard_bytes = stream.audio_bytes_sent
                if isinstance(message, bytes):
                    continue
                kind = stream.receive(message)
                delivery = policy.received(kind)
                if delivery.covered is not None:
                    self.backlog.acknowledge(*delivery.covered)
                if not delivery.publish:
                    continue
                message = rebase(message, delivery.offset_s)
                if self._on_message is not None:  # first: a final is recorded before anyone can receive it
                    self._on_message(kind, message, delivery.droppable)
                await self.hub.publish(self.call_sid, message, droppable=delivery.droppable)
        finally:
            finished.set()

    async def _notify(self, notice: Notice) -> None:
        await self.hub.publish(self.call_sid, notice.json(self.call_sid), sticky=True)

    async def _connect_websocket(self, nursery: trio.Nursery, url: str, headers: list[tuple[str, str]]) -> Any:
        return await connect_websocket(
            nursery,
            url,
            headers=headers,
            connect_timeout=self.settings.connect_timeout_s,
            ssl_context=self.settings.deepgram_ssl_context,
        )


def _most_telling(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure to report from a group of `_FAILURES` (nested as the nurseries were)."""
    return min(leaves(group), key=lambda error: next(i for i, kind in enumerate(_FAILURES) if isinstance(error, kind)))


def _normal_closure(closed: trio_websocket.ConnectionClosed) -> bool:
    return closed.reason is not None and closed.reason.code == 1000


def _close_text(closed: trio_websocket.ConnectionClosed) -> str:
    reason = closed.reason
    if reason is None:
        return "closed"
    return f"closed with {reason.code} {reason.reason or reason.name}".rstrip()


__all__ = ["Connector", "DeepgramClient", "DeepgramConnection", "DeepgramLost", "SendStalled"]
