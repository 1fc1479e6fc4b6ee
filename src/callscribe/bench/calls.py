"""The benchmark's simulated Twilio calls: both tracks, 100 frames per second, written without a task.

A :class:`SimCall`'s messages are exactly those of :mod:`callscribe.testing.call_plan` (``connected``,
``start``, ``media``..., ``stop``), built from a template per frame out of :class:`Audio` shared by every
call. The first 6 bytes of every call's caller audio carry a tag with the call's number
(:func:`tag_index`), so the fake Deepgram can tell which call an audio stream belongs to.
"""

from __future__ import annotations

import base64
import time
from array import array

import trio

from callscribe.bench.ws import ClientConnection
from callscribe.bench.ws_frames import OP_TEXT
from callscribe.core import audio as mulaw
from callscribe.testing.call_plan import CallSpec, connected_message, start_message, stop_message

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * 8
TAG = b"\xa5\x5a"
"""Start of the first caller frame of every simulated call; 4 bytes of call number follow."""

_MEDIA = (
    '{"event":"media","sequenceNumber":"%d","media":{"track":"%s","chunk":"%d","timestamp":"%d",'
    '"payload":"%s"},"streamSid":"%s"}'
)
"""`call_plan.twilio_media_event`, as a template (the tests check they agree)."""


class Audio:
    """One second of each track, pre-encoded in base64 per 20 ms frame, shared by every call."""

    def __init__(self) -> None:
        inbound = mulaw.generate_tone(1.0, 440.0)
        outbound = mulaw.generate_tone(1.0, 660.0)
        self.frames_per_loop = len(inbound) // FRAME_BYTES
        self._raw_inbound = inbound
        self.inbound = [
            base64.b64encode(inbound[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]).decode()
            for i in range(self.frames_per_loop)
        ]
        self.outbound = [
            base64.b64encode(outbound[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]).decode()
            for i in range(self.frames_per_loop)
        ]

    def tagged_first_frame(self, index: int) -> str:
        """The caller's first frame of call ``index``: the tag and the number, then the tone."""
        payload = TAG + index.to_bytes(4, "big") + self._raw_inbound[6:FRAME_BYTES]
        return base64.b64encode(payload).decode()


def tag_index(channel0: bytes) -> int | None:
    """The call number in the first bytes of a call's channel 0, or None if they carry no tag."""
    if len(channel0) >= 6 and channel0[:2] == TAG:
        return int.from_bytes(channel0[2:6], "big")
    return None


def media_text(seq: int, track: str, chunk: int, timestamp_ms: int, payload_b64: str, stream_sid: str) -> str:
    """A Twilio ``media`` event from already base64-encoded audio."""
    return _MEDIA % (seq, track, chunk, timestamp_ms, payload_b64, stream_sid)


class SimCall:
    """One simulated Twilio stream (both tracks).

    With ``coalesce_tracks`` a tick's two frames (caller, other party) are written with one ``send``,
    so they usually arrive in one TCP segment; by default each frame is its own ``send`` (and
    segment), the costlier case.
    """

    def __init__(
        self, index: int, audio: Audio, *, stop_after_ticks: int | None = None, coalesce_tracks: bool = False
    ) -> None:
        self.index = index
        self.audio = audio
        self.spec = CallSpec(inbound=b"\xff" * FRAME_BYTES, outbound=b"\xff" * FRAME_BYTES)
        self.call_sid = self.spec.call_sid
        self.stream_sid = self.spec.stream_sid
        self._first = audio.tagged_first_frame(index)
        self._coalesce_tracks = coalesce_tracks
        self.conn: ClientConnection | None = None
        self.ticks = 0
        self.tick_times = array("d")
        """``time.monotonic()`` as frame pair ``k`` (caller, then other party) started leaving."""
        self.stop_after_ticks = stop_after_ticks
        self.stop_requested = False
        self.stop_sent = False
        self.started = trio.Event()
        self.finished = trio.Event()
        self.failure: str | None = None

    @property
    def frames_sent(self) -> int:
        return 2 * self.ticks

    def opening(self) -> bytes:
        """The ``connected`` and ``start`` frames."""
        assert self.conn is not None
        frame = self.conn.frame
        return frame(OP_TEXT, connected_message().encode()) + frame(OP_TEXT, start_message(self.spec, 1).encode())

    def tick(self) -> bool:
        """Send the next 20 ms of both tracks (or ``stop``); False once the call has no more to send."""
        conn = self.conn
        assert conn is not None
        if conn.closed:
            return False
        k = self.ticks
        if self.stop_requested or (self.stop_after_ticks is not None and k >= self.stop_after_ticks):
            conn.send_now(conn.frame(OP_TEXT, stop_message(self.spec, 2 + 2 * k).encode()))
            self.stop_sent = True
            return False
        audio = self.audio
        loop = k % audio.frames_per_loop
        timestamp = k * FRAME_MS
        sid = self.stream_sid
        inbound = media_text(
            2 + 2 * k, "inbound", k + 1, timestamp, self._first if k == 0 else audio.inbound[loop], sid
        )
        outbound = media_text(3 + 2 * k, "outbound", k + 1, timestamp, audio.outbound[loop], sid)
        inbound_frame = conn.frame(OP_TEXT, inbound.encode())
        outbound_frame = conn.frame(OP_TEXT, outbound.encode())
        now = time.monotonic()
        if self._coalesce_tracks:
            conn.send_now(inbound_frame + outbound_frame)
        else:
            conn.send_now(inbound_frame)
            conn.send_now(outbound_frame)
        self.tick_times.append(now)
        self.ticks = k + 1
        return True
