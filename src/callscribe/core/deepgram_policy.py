"""What to do about a call's Deepgram connection: reconnect, give up, publish or drop, tell subscribers. No IO.

`DeepgramPolicy` is told what happened to the connection, with the time (`now`, seconds on any
monotonic clock) passed in, and answers with a decision; the Trio shell (server/deepgram_client.py)
only carries the sockets and the timers.

    event                                      decision
    opened(rewind_s)                           Opened: time offset of the new connection, notice
    received(kind)                             Delivery: publish or drop, droppable, offset, backlog ack
    lost(now, cause) / send_stalled(now, s)    Reconnect(delay_s, ...) or GiveUp
    refused(now, status, summary)              Reconnect or GiveUp (at once for a 4xx but 408/429)
    connect_failed(now, cause)                 Reconnect or GiveUp
    input_finished(now)                        the time by which reconnecting must succeed
    deadline_passed(now)                       GiveUp

States: CONNECTING --opened--> STREAMING --lost--> CONNECTING; any failure may lead to GAVE_UP.

Retries. `max_retries` (CALLSCRIBE_DEEPGRAM_RETRIES) is how many times a failure is retried in a row:
the first failed attempt (or a connection lost) is followed by at most `max_retries` more attempts,
so a call gives up after 1 + `max_retries` failed attempts in a row. A connection whose finals
covered audio no earlier final had before it was lost was productive: its loss starts the count
again at 1 (interim results alone are not progress). Retry n waits
min(`backoff_max_s`, `backoff_initial_s` * 2^(n-1)) times a random factor between 0.5 and 1. A handshake
refused with a 4xx other than 408 and 429 (bad key, bad options, no credit) is not retried.

The end of the call. Once the call's audio has ended (`input_finished`), reconnecting has
`finalize_timeout_s` more: a retry that could not start before then gives up at once, and the shell
cuts an attempt still waiting or connecting at `reconnect_deadline` (`deadline_passed`).

Replayed finals. A new connection starts at the backlog's rewind point (`opened(rewind_s)`), and
everything it says is shifted by that offset into call time. After a reconnect it repeats audio some
of whose finals subscribers already have: its final for channel c covering call time [start, end) is
dropped when it covers audio (duration > 0) and `end` is not past the furthest end of the finals
published for c (that end only moves forward; ends less than half a sample apart count as equal). A
final reaching past it is published, overlap and all; a final of duration 0 (Deepgram's flush after
CloseStream) covers nothing and is published. Interim results are dropped by the same rule: a
replay's interims of what subscribers have would show those words again as live captions.

Notices to subscribers (JSON by `Notice.json`, published sticky: a late subscriber gets the latest):

    {"type": "Reconnecting", "source": "callscribe", "callSid": "CA...", "message": "<cause>; reconnecting"}
    {"type": "Resumed", "source": "callscribe", "callSid": "CA...", "message": "transcription resumed: ..."}
    {"type": "Error", "source": "callscribe", "callSid": "CA...", "message": "<why it gave up>"}

"Reconnecting" comes with the first failure after the call started or after it last resumed (not
with each retry), "Resumed" when a connection opens after a "Reconnecting", "Error" when it gives up
(also at the first failure when no retry is allowed). Each replaces the previous sticky notice, so a
late subscriber never sees a "Reconnecting" that is over.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

import msgspec

from callscribe.core.deepgram import MessageKind

RETRYABLE_STATUS = frozenset({408, 429})
"""Handshake refusals worth retrying; any other 4xx (bad key, bad options, no credit) is final."""

_EPSILON_S = 0.5 / 8000
"""Ends this close count as equal: half a sample of the call's 8 kHz audio. Deepgram rounds start and
duration each, so one end can come out microseconds apart on two connections; a final reaching less than
half a sample past what subscribers have adds no audio."""


@dataclass(frozen=True)
class Notice:
    """Something callscribe tells a call's subscribers: `type` is Reconnecting, Resumed or Error."""

    type: str
    message: str

    def json(self, call_sid: str) -> str:
        return msgspec.json.encode(
            {"type": self.type, "source": "callscribe", "callSid": call_sid, "message": self.message}
        ).decode()


@dataclass(frozen=True)
class Opened:
    """A connection opened: add `offset_s` to its times; `replaying` if an earlier one existed."""

    offset_s: float
    replaying: bool
    notice: Notice | None = None


@dataclass(frozen=True)
class Delivery:
    """What to do with one Deepgram message."""

    publish: bool
    droppable: bool
    """An interim result: a lagging subscriber may skip it."""
    offset_s: float
    """Add to the message's times (see `deepgram.rebase`)."""
    covered: tuple[int, float] | None = None
    """(channel, call time): a final covers that channel's audio up to there (`AudioBacklog.acknowledge`)."""


@dataclass(frozen=True)
class Reconnect:
    """Try again after `delay_s`: retry number `retry` of at most `max_retries` in a row."""

    delay_s: float
    retry: int
    max_retries: int
    cause: str
    notice: Notice | None = None


@dataclass(frozen=True)
class GiveUp:
    """Stop trying: the call goes on untranscribed; `notice` is the Error for subscribers."""

    message: str

    @property
    def notice(self) -> Notice:
        return Notice("Error", self.message)


Decision = Reconnect | GiveUp


class LinkState(enum.Enum):
    CONNECTING = "connecting"
    """Waiting to retry, or an attempt is under way."""
    STREAMING = "streaming"
    GAVE_UP = "gave up"


class DeepgramPolicy:
    """The decisions about one call's Deepgram connection, over all its reconnects."""

    def __init__(
        self,
        *,
        max_retries: int = 8,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 8.0,
        finalize_timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_retries < 0 or backoff_initial_s <= 0 or backoff_max_s <= 0 or finalize_timeout_s < 0:
            raise ValueError("retries, backoff and timeout must not be negative (backoff above 0)")
        self.max_retries = max_retries
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.finalize_timeout_s = finalize_timeout_s
        self._rng = rng or random.Random()
        self.state = LinkState.CONNECTING
        self.failures = 0
        """Failed attempts in a row (a lost connection that was productive starts it again at 1)."""
        self.connections = 0
        """Connections opened so far."""
        self.offset_s = 0.0
        """Call time of the current connection's time 0."""
        self.cause = ""
        """What the last failure was."""
        self.reconnect_deadline = math.inf
        """Reconnecting must succeed by then: `finalize_timeout_s` after the call's audio ended."""
        self._productive = False
        self._announced = False
        self._published_end: dict[int, float] = {}

    # -- the connection --------------------------------------------------------------------

    def opened(self, rewind_s: float) -> Opened:
        """A connection is open; it starts with the audio at call time `rewind_s` (`AudioBacklog.rewind`)."""
        self._expect(LinkState.CONNECTING, "open a connection")
        self.state = LinkState.STREAMING
        self.connections += 1
        self.offset_s = rewind_s
        self._productive = False
        notice = None
        if self._announced:
            self._announced = False
            notice = Notice("Resumed", f"transcription resumed: Deepgram connection restored (retry {self.failures})")
        return Opened(rewind_s, self.connections > 1, notice)

    def received(self, kind: MessageKind) -> Delivery:
        """A message arrived on the open connection."""
        self._expect(LinkState.STREAMING, "receive")
        offset = self.offset_s
        if kind.type != "Results":
            return Delivery(True, False, offset)
        end = offset + kind.start + kind.duration
        previous = self._published_end.get(kind.channel, -math.inf)
        replayed = self.connections > 1 and kind.duration > 0 and end <= previous + _EPSILON_S
        if not kind.is_final:  # (a replayed one would show words subscribers have as live captions)
            return Delivery(not replayed, True, offset)
        covered = (kind.channel, end)
        if replayed:
            return Delivery(False, False, offset, covered)  # subscribers already have this stretch
        if end > previous:
            self._published_end[kind.channel] = end
            # Progress: a final covering audio no earlier final had. Interims are not (a connection
            # that always fails after one would reset the count forever and replay the same audio).
            self._productive = self._productive or kind.duration > 0
        return Delivery(True, False, offset, covered)

    def input_finished(self, now: float) -> float:
        """The call's audio ended (Twilio's stop or hang-up): returns `reconnect_deadline`."""
        if math.isinf(self.reconnect_deadline):
            self.reconnect_deadline = now + self.finalize_timeout_s
        return self.reconnect_deadline

    # -- failures --------------------------------------------------------------------------

    def lost(self, now: float, cause: str) -> Decision:
        """The open connection ended before the call did (`cause`: e.g. "closed with 1011 NET-0000")."""
        return self._failed(now, f"Deepgram connection lost: {cause}")

    def silent(self, now: float, quiet_s: float) -> Decision:
        """The open connection said nothing for `quiet_s` while that much audio went to it (accepted, then hung)."""
        return self._failed(now, f"Deepgram connection lost: no message for {quiet_s:g} s while as much audio was sent")

    def send_stalled(self, now: float, stalled_s: float) -> Decision:
        """A send on the open connection did not complete within `stalled_s`."""
        return self._failed(now, f"Deepgram connection lost: a send stalled for {stalled_s:g} s")

    def refused(self, now: float, status: int, summary: str) -> Decision:
        """Deepgram answered the handshake with HTTP `status` (`summary`: `deepgram.rejection_summary`)."""
        cause = f"Deepgram refused the connection: {summary}"
        if 400 <= status < 500 and status not in RETRYABLE_STATUS:
            self._expect_not_gave_up()
            return self._give_up(f"{cause}; not retrying: the call goes on untranscribed")
        return self._failed(now, cause)

    def connect_failed(self, now: float, cause: str) -> Decision:
        """No connection: TCP, TLS or the WebSocket handshake failed (`cause` says how)."""
        return self._failed(now, f"cannot reach Deepgram: {cause}")

    def deadline_passed(self, now: float) -> GiveUp:
        """`reconnect_deadline` came while waiting to retry or connecting."""
        self._expect(LinkState.CONNECTING, "pass the reconnect deadline")
        if now < self.reconnect_deadline:
            raise RuntimeError(f"the reconnect deadline is {self.reconnect_deadline:g}, not yet at {now:g}")
        cause = self.cause or "still connecting"
        return self._give_up(
            f"giving up on Deepgram {self.finalize_timeout_s:g} s after the call's audio ended ({cause});"
            " the audio not yet sent is not transcribed"
        )

    def _failed(self, now: float, cause: str) -> Decision:
        self._expect_not_gave_up()
        productive = self.state is LinkState.STREAMING and self._productive
        self.state = LinkState.CONNECTING
        self.failures = 1 if productive else self.failures + 1
        self.cause = cause
        if self.failures > self.max_retries:
            if self.max_retries == 0:
                return self._give_up(
                    f"giving up on Deepgram ({cause}; retrying is off); the call goes on untranscribed"
                )
            retries = f"{self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'}"
            return self._give_up(f"giving up on Deepgram after {retries} ({cause}); the call goes on untranscribed")
        delay = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** min(self.failures - 1, 64))
        delay *= self._rng.uniform(0.5, 1.0)
        if now + delay >= self.reconnect_deadline:
            return self._give_up(
                f"giving up on Deepgram: the call's audio has ended and it is still unreachable ({cause});"
                " the audio not yet sent is not transcribed"
            )
        notice = None
        if not self._announced:
            self._announced = True
            notice = Notice("Reconnecting", f"{cause}; reconnecting")
        return Reconnect(delay, self.failures, self.max_retries, cause, notice)

    def _give_up(self, message: str) -> GiveUp:
        self.state = LinkState.GAVE_UP
        self._announced = False
        return GiveUp(message)

    def _expect(self, state: LinkState, what: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"cannot {what} while {self.state.value}")

    def _expect_not_gave_up(self) -> None:
        if self.state is LinkState.GAVE_UP:
            raise RuntimeError("the policy already gave up on Deepgram")
