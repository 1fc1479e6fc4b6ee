"""A call's transcript over Deepgram reconnects: `AudioBacklog` and `DeepgramPolicy` together, as the
shell drives them, against a fake Deepgram that finalizes arbitrary stretches of each channel and is
lost at arbitrary points (mid-window, after a final, during a replay or its initial burst). Pure."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.backlog import AudioBacklog
from callscribe.core.deepgram import MessageKind, rebase
from callscribe.core.deepgram_policy import DeepgramPolicy, Reconnect

RATE = 8000
WINDOW = 800  # samples per channel: 100 ms


def window(n: int, channels: int, samples: int = WINDOW) -> bytes:
    """Window n of the call: its number in every 4 bytes, so that the fake can tell where it was."""
    return (n.to_bytes(4, "big") * samples)[: samples * channels]


def window_number(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


@dataclass
class FakeDeepgram:
    """One connection: the windows it got (call sample, samples) and how far its finals reached per channel."""

    channels: int
    base: int
    """The call sample where the connection started (where silence first would be)."""
    got: list[tuple[int | None, int]] = field(default_factory=list)
    """(call sample, samples) of each window received; silence (None) follows the audio before it."""
    finalized: list[int] = field(default_factory=list)
    samples: int = 0

    def __post_init__(self) -> None:
        self.finalized = [0] * self.channels

    def receive(self, data: bytes) -> None:
        size = len(data) // self.channels
        self.got.append((None if data == b"\xff" * len(data) else window_number(data) * WINDOW, size))
        self.samples += size

    def call_sample(self, sample: int) -> int:
        """The call's sample (per channel) that is this connection's `sample`, ends mapped to window ends."""
        starts: list[int] = []
        for index, (start, _) in enumerate(self.got):
            if start is None:
                start = starts[-1] + self.got[index - 1][1] if starts else self.base
            starts.append(start)
        done = 0
        for start, (_, size) in zip(starts, self.got, strict=True):
            if sample <= done + size:
                return start + sample - done
            done += size
        raise AssertionError("beyond the audio received")

    def results(self, channel: int, end: int, *, final: bool) -> tuple[MessageKind, str]:
        """Results for `channel` from its last final to connection sample `end`, times rounded as Deepgram's."""
        start = self.finalized[channel]
        start_s, duration_s = round(start / RATE, 6), round((end - start) / RATE, 6)
        message = {
            "type": "Results",
            "channel_index": [channel, self.channels],
            "start": start_s,
            "duration": duration_s,
            "is_final": final,
            "channel": {"alternatives": [{"transcript": "x", "words": []}]},
        }
        text = json.dumps(message)
        kind = MessageKind("Results", final, [channel, self.channels], start_s, duration_s)
        if final:
            self.finalized[channel] = end
        return kind, text


@dataclass
class Subscribers:
    """What subscribers got, checked as it comes: per channel the finals' stretches of call samples."""

    channels: int
    finals: list[list[tuple[int, int]]] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    """Per channel: the furthest call sample published finals reached."""

    def __post_init__(self) -> None:
        self.finals = [[] for _ in range(self.channels)]
        self.end = [0] * self.channels

    def covered(self, channel: int) -> int:
        """How far from the call's start the published finals cover `channel` without a hole."""
        reached = 0
        for start, end in sorted(self.finals[channel]):
            if start > reached:
                break
            reached = max(reached, end)
        return reached


class Run:
    """The shell's part: a connection per `open`, windows sent in order, each message through the policy."""

    def __init__(self, channels: int, backlog_s: float) -> None:
        self.channels = channels
        self.backlog = AudioBacklog(channels, backlog_s)
        self.policy = DeepgramPolicy(max_retries=10**6, rng=random.Random(1))
        self.subscribers = Subscribers(channels)
        self.appended = 0
        self.sizes: list[int] = []
        self.reached: set[int] = set()
        """Windows that reached some connection."""
        self.in_flight: bytes | None = None
        self.deepgram = self._open()

    def _open(self) -> FakeDeepgram:
        rewind_s = self.backlog.rewind()
        self.policy.opened(rewind_s)
        return FakeDeepgram(self.channels, round(rewind_s * RATE))

    def append(self, count: int, samples: int = WINDOW) -> None:
        for _ in range(count):
            data = window(self.appended, self.channels, samples)
            self.backlog.append(data)
            self.sizes.append(len(data))
            self.appended += 1
            assert self.backlog._held <= self.backlog.max_bytes  # (4) bounded

    def begin_send(self) -> None:
        if self.in_flight is None:
            self.in_flight = self.backlog.next_unsent()

    def finish_send(self) -> None:
        if self.in_flight is not None:
            self.deepgram.receive(self.in_flight)
            self.reached.add(window_number(self.in_flight))
            self.backlog.mark_sent(self.in_flight)
            self.in_flight = None

    def send_all(self) -> None:
        for _ in range(self.appended + 1):
            self.begin_send()
            if self.in_flight is None:
                return
            self.finish_send()

    def lose(self, went_out: bool) -> None:
        """The connection is lost; a window being sent may or may not have reached Deepgram."""
        if went_out and self.in_flight is not None:
            self.deepgram.receive(self.in_flight)
            self.reached.add(window_number(self.in_flight))
        self.in_flight = None
        assert isinstance(self.policy.lost(0.0, "closed with 1011"), Reconnect)
        self.deepgram = self._open()

    def say(self, channel: int, fraction: float, *, final: bool = True) -> None:
        """Deepgram says a result for `channel` up to `fraction` of what it has not finalized yet."""
        deepgram = self.deepgram
        if channel >= self.channels:
            return
        start = deepgram.finalized[channel]
        end = start + round(fraction * (deepgram.samples - start))
        if not deepgram.got:
            return
        true_start, true_end = deepgram.call_sample(start), deepgram.call_sample(end)
        kind, text = deepgram.results(channel, end, final=final)
        delivery = self.policy.received(kind)
        if delivery.covered is not None:
            self.backlog.acknowledge(*delivery.covered)
        subscribers = self.subscribers
        if not final:
            # no live caption of what subscribers have
            if delivery.publish and self.policy.connections > 1 and true_end > true_start:
                assert true_end > subscribers.end[channel], (channel, true_start, true_end, subscribers.end)
            return
        if delivery.publish:
            message = json.loads(rebase(text, delivery.offset_s))
            # (2) in call time, as the audio Deepgram finalized really is
            assert abs(message["start"] - true_start / RATE) <= 1e-6, (message, true_start)
            assert abs(message["start"] + message["duration"] - true_end / RATE) <= 2e-6, (message, true_end)
            if true_end > true_start:
                # (1) nothing subscribers have whole again
                if self.policy.connections > 1:
                    assert true_end > subscribers.end[channel], (channel, true_start, true_end, subscribers.end)
                subscribers.finals[channel].append((true_start, true_end))
                subscribers.end[channel] = max(subscribers.end[channel], true_end)
        else:
            # (1) dropped only what subscribers have
            assert true_end > true_start and true_end <= subscribers.covered(channel), (channel, true_start, true_end)

    def close_stream(self) -> None:
        """Twilio's stop: the rest goes out, CloseStream; Deepgram finalizes all it has, then flushes empty finals."""
        self.finish_send()
        self.send_all()
        # (4) what never reached Deepgram is counted
        assert self.backlog.lost >= sum(size for n, size in enumerate(self.sizes) if n not in self.reached)
        for channel in range(self.channels):
            self.say(channel, 1.0)
            self.say(channel, 0.0)


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4), st.just(0.0)),
        st.tuples(st.just("begin"), st.just(0), st.just(0.0)),
        st.tuples(st.just("finish"), st.just(0), st.just(0.0)),
        st.tuples(st.just("send_all"), st.just(0), st.just(0.0)),
        st.tuples(st.just("final"), st.integers(0, 1), st.floats(0.0, 1.0)),
        st.tuples(st.just("interim"), st.integers(0, 1), st.floats(0.0, 1.0)),
        st.tuples(st.just("lose"), st.integers(0, 1), st.just(0.0)),
    ),
    max_size=80,
)


def play(run: Run, steps: list[tuple[str, int, float]], *, silent: int | None = None) -> None:
    for op, number, fraction in steps:
        if op == "append":
            run.append(number)
        elif op == "begin":
            run.begin_send()
        elif op == "finish":
            run.finish_send()
        elif op == "send_all":
            run.send_all()
        elif op in ("final", "interim") and number != silent:
            run.say(number, fraction, final=op == "final")
        elif op == "lose":
            run.lose(bool(number))
    run.append(1, WINDOW // 3)  # the mixer's last, partial window
    run.close_stream()


@settings(max_examples=500, deadline=None)
@given(channels=st.sampled_from([1, 2]), silent=st.sampled_from([None, 1]), steps=STEPS)
def test_each_stretch_of_audio_is_published_once_in_call_time(
    channels: int, silent: int | None, steps: list[tuple[str, int, float]]
) -> None:
    """A backlog that never fills: every sample of every channel is in exactly one published stretch
    (overlaps only where a final reaches past what subscribers have), nothing is lost; a channel
    Deepgram finalizes only at the end holds the other's audio back from no one."""
    run = Run(channels, backlog_s=1000.0)
    play(run, steps, silent=silent)
    total = run.backlog.end // channels
    for channel in range(channels):
        assert run.subscribers.covered(channel) == total
    assert run.backlog.lost == 0


@settings(max_examples=500, deadline=None)
@given(
    channels=st.sampled_from([1, 2]),
    backlog_s=st.sampled_from([0.2, 0.3, 0.5, 1.0]),
    silent=st.sampled_from([None, 1]),
    steps=STEPS,
)
def test_a_full_backlog_stays_bounded_counts_its_loss_and_keeps_times_right(
    channels: int, backlog_s: float, silent: int | None, steps: list[tuple[str, int, float]]
) -> None:
    """A small backlog (and a channel Deepgram never finalizes until the end): memory stays bounded,
    what never reached Deepgram is counted, and whatever is published is in call time, never twice."""
    run = Run(channels, backlog_s)
    play(run, steps, silent=silent)
