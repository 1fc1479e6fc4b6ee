"""What the benchmark measures at the fake Deepgram: its hooks, and the latencies they give.

:class:`Tracker` is the fake Deepgram's ``on_audio``/``on_send`` hooks. It tells which call an audio
stream belongs to (the tag in each call's first caller frame), counts the audio, and turns each audio
message into the latency of every Twilio frame it completes; it notes when each result left the fake
so that subscribers can report how long it took to reach them (:meth:`Tracker.delivered`).

All times are ``time.monotonic()`` (CLOCK_MONOTONIC), read in this one process.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from callscribe.bench.calls import FRAME_BYTES, SimCall, tag_index
from callscribe.testing.fake_deepgram import FakeDeepgramSession


@dataclass
class _SessionTrack:
    call: SimCall
    channels: int
    samples: int = 0
    completed_ticks: int = 0


@dataclass
class Tracker:
    """The fake Deepgram's hooks and everything measured from them."""

    calls: dict[int, SimCall] = field(default_factory=dict)
    window: tuple[float, float] = (float("inf"), float("-inf"))
    """Only frames sent, and results sent, within this interval are measured."""
    audio_latency: list[float] = field(default_factory=list)
    """Per Twilio frame pair: from leaving the simulator to its last byte reaching the fake."""
    added_latency: list[float] = field(default_factory=list)
    """Per Deepgram audio message: from the last frame it completes leaving the simulator to its arrival."""
    sessions: dict[str, _SessionTrack] = field(default_factory=dict)
    """By the fake's request id (unique per connection)."""
    session_of_call: dict[int, FakeDeepgramSession] = field(default_factory=dict)
    unidentified_sessions: int = 0
    sent_at: dict[bytes, float] = field(default_factory=dict)
    fanout_latency: list[float] = field(default_factory=list)
    fanout_worst: dict[bytes, float] = field(default_factory=dict)
    fanout_count: Counter[bytes] = field(default_factory=Counter)
    deliveries: int = 0
    unmatched_deliveries: int = 0
    results_sent_in_window: int = 0

    def on_audio(self, session: FakeDeepgramSession, data: bytes) -> None:
        now = time.monotonic()
        track = self.sessions.get(session.request_id)
        if track is None:
            channels = max(1, session.channels)
            index = tag_index(bytes(data[0::channels][:6]))
            call = self.calls.get(index) if index is not None else None
            if call is None:
                self.unidentified_sessions += 1
                return
            track = self.sessions[session.request_id] = _SessionTrack(call, channels)
            self.session_of_call[index] = session  # type: ignore[index]
        track.samples += len(data) // track.channels
        done = track.samples // FRAME_BYTES
        first = track.completed_ticks
        if done <= first:
            return
        sent = track.call.tick_times
        last = min(done, len(sent))
        start, end = self.window
        append = self.audio_latency.append
        for k in range(first, last):
            t = sent[k]
            if start <= t <= end:
                append(now - t)
        if last > first:
            t = sent[last - 1]
            if start <= t <= end:
                self.added_latency.append(now - t)
        track.completed_ticks = done

    def on_send(self, session: FakeDeepgramSession, text: str) -> None:
        now = time.monotonic()
        self.sent_at[text.encode()] = now
        start, end = self.window
        if start <= now <= end:
            self.results_sent_in_window += 1

    def delivered(self, payload: bytes, now: float) -> None:
        sent = self.sent_at.get(payload)
        if sent is None:
            self.unmatched_deliveries += 1
            return
        self.deliveries += 1
        start, end = self.window
        if start <= sent <= end:
            latency = now - sent
            self.fanout_latency.append(latency)
            self.fanout_count[payload] += 1
            if latency > self.fanout_worst.get(payload, -1.0):
                self.fanout_worst[payload] = latency

    def forget_before(self, moment: float) -> None:
        """Drop send times older than ``moment`` (long runs)."""
        old = [key for key, at in self.sent_at.items() if at < moment]
        for key in old:
            del self.sent_at[key]
            self.fanout_count.pop(key, None)
