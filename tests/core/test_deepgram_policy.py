"""The Deepgram connection policy (pure): retries, backoff, giving up, the end of the call, replayed finals, notices."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.deepgram import MessageKind
from callscribe.core.deepgram_policy import (
    DeepgramPolicy,
    Delivery,
    GiveUp,
    LinkState,
    Notice,
    Reconnect,
)

CALL_SID = "CA00000000000000000000000000000001"


class Highest(random.Random):
    """A jitter source that always draws the top of the range: the backoff without jitter."""

    def uniform(self, a: float, b: float) -> float:
        return b


def policy(**overrides: object) -> DeepgramPolicy:
    options: dict[str, object] = {"rng": random.Random(7)} | overrides
    return DeepgramPolicy(**options)  # type: ignore[arg-type]


def results(start: float = 0.0, duration: float = 0.0, *, final: bool = True, channel: int = 0) -> MessageKind:
    return MessageKind("Results", final, [channel, 2], start, duration)


def reconnect(decision: Reconnect | GiveUp) -> Reconnect:
    assert isinstance(decision, Reconnect), decision
    return decision


def give_up(decision: Reconnect | GiveUp) -> GiveUp:
    assert isinstance(decision, GiveUp), decision
    return decision


# -- the connection and what it says ---------------------------------------------------------


def test_the_first_connection_publishes_everything_in_its_own_time() -> None:
    p = policy()
    opened = p.opened(0.0)
    assert (opened.offset_s, opened.replaying, opened.notice) == (0.0, False, None)
    assert p.state is LinkState.STREAMING
    assert p.received(results(0.0, 0.5, final=False)) == Delivery(True, True, 0.0)
    assert p.received(results(0.0, 0.5, channel=1)) == Delivery(True, False, 0.0, (1, 0.5))
    assert p.received(results(0.0, 0.3, channel=1)) == Delivery(True, False, 0.0, (1, 0.3))  # not a replay
    for kind in (MessageKind("Metadata"), MessageKind("UtteranceEnd"), MessageKind()):  # "" = unparsable
        assert p.received(kind) == Delivery(True, False, 0.0)


def test_a_new_connection_is_offset_by_the_rewind_and_says_so() -> None:
    p = policy()
    p.opened(0.0)
    reconnect(p.lost(10.0, "closed with 1011 NET-0000"))
    opened = p.opened(2.5)
    assert (opened.offset_s, opened.replaying) == (2.5, True)
    assert p.received(results(1.0, 0.5)) == Delivery(True, False, 2.5, (0, 4.0))
    assert p.received(MessageKind("SpeechStarted")).offset_s == 2.5


def test_replayed_finals_subscribers_have_are_dropped_and_the_rest_pass() -> None:
    # The first connection finalized call time 0-0.15; the second replays from 0.1.
    p = policy()
    p.opened(0.0)
    assert p.received(results(0.0, 0.15)).publish
    reconnect(p.lost(1.0, "closed with 1011"))
    p.opened(0.1)
    said = [
        (0.0, 0.0, True),  # no audio: repeats nothing
        (0.0, 0.05, False),  # 0.1-0.15: published already
        (0.0, 0.1, True),  # 0.1-0.2: reaches past 0.15, overlap and all
        (0.1, 1.2, True),  # 0.2-1.4
        (1.0, 0.3, False),  # 1.1-1.4: within what was published
        (1.3, 0.2, True),  # 1.4-1.6
        (1.5, 0.0, True),  # the flush after CloseStream
    ]
    for start, duration, published in said:
        delivery = p.received(results(start, duration))
        assert delivery.publish is published, (start, duration)
        assert delivery.covered == (0, pytest.approx(0.1 + start + duration))  # dropped or not, it covers audio


def test_a_replayed_final_rounded_to_end_a_microsecond_later_is_still_a_replay() -> None:
    # Deepgram rounds start and duration each to the microsecond: the same end can come out 2 us
    # apart on two connections, and 8 kHz audio has nothing shorter than a sample (125 us).
    p = policy()
    p.opened(0.0)
    assert p.received(results(1.0, 3.27)).publish  # ends at 4.27 (really up to 4.270001)
    reconnect(p.lost(1.0, "closed with 1011"))
    p.opened(33600 / 8000)  # the backlog's rewind: 4.2
    assert not p.received(results(0.0, 0.070001)).publish  # ends at 4.270001 (really from 4.2700005)
    assert p.received(results(0.0, 0.070125)).publish  # a sample more


def test_replayed_interims_of_what_subscribers_have_are_dropped() -> None:
    # A replay's interim results of audio whose finals subscribers have would show those words again
    # as live captions (and no final would clear them, since its replay is dropped).
    p = policy()
    p.opened(0.0)
    assert p.received(results(0.0, 2.0, final=False)) == Delivery(True, True, 0.0)  # the first connection: all
    assert p.received(results(0.0, 2.0)).publish
    reconnect(p.lost(1.0, "closed with 1011"))
    p.opened(1.5)
    assert p.received(results(0.0, 0.4, final=False)) == Delivery(False, True, 1.5)  # 1.5-1.9: have it
    assert p.received(results(0.0, 0.5, final=False)) == Delivery(False, True, 1.5)  # 1.5-2.0: have it
    assert p.received(results(0.0, 0.6, final=False)) == Delivery(True, True, 1.5)  # reaches past 2.0
    assert p.received(results(0.0, 0.1, final=False, channel=1)).publish  # channel 1 has nothing yet
    assert p.received(results(0.5, 0.0, final=False)).publish  # no audio: repeats nothing


def test_each_channel_keeps_its_own_published_end() -> None:
    p = policy()
    p.opened(0.0)
    p.received(results(0.0, 2.0, channel=0))
    reconnect(p.lost(1.0, "closed"))
    p.opened(0.0)
    assert not p.received(results(0.0, 1.0, channel=0)).publish
    assert p.received(results(0.0, 1.0, channel=1)).publish


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404])
def test_a_4xx_refusal_gives_up_at_once(status: int) -> None:
    p = policy()
    decision = give_up(p.refused(0.0, status, f"HTTP {status}: nope (dg-request-id r1)"))
    assert decision.message == (
        f"Deepgram refused the connection: HTTP {status}: nope (dg-request-id r1); not retrying:"
        " the call goes on untranscribed"
    )
    assert decision.notice == Notice("Error", decision.message)
    assert p.state is LinkState.GAVE_UP
    with pytest.raises(RuntimeError):
        p.connect_failed(1.0, "late")
    with pytest.raises(RuntimeError):
        p.opened(0.0)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 302])
def test_other_refusals_are_retried(status: int) -> None:
    decision = reconnect(policy().refused(0.0, status, f"HTTP {status}"))
    assert decision.cause == f"Deepgram refused the connection: HTTP {status}"
    assert decision.retry == 1


def test_retries_back_off_exponentially_up_to_the_maximum() -> None:
    p = policy(max_retries=7, backoff_initial_s=0.5, backoff_max_s=8.0, rng=Highest())
    delays = [reconnect(p.connect_failed(0.0, "refused")).delay_s for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_the_jitter_draws_from_half_to_all_of_the_backoff_and_is_seeded() -> None:
    first = [reconnect(policy(rng=random.Random(3)).connect_failed(0.0, "x")).delay_s for _ in range(2)]
    assert first[0] == first[1]
    delays = []
    p = policy(max_retries=100, backoff_initial_s=1.0, backoff_max_s=1.0, rng=random.Random(1))
    for _ in range(100):
        delays.append(reconnect(p.connect_failed(0.0, "x")).delay_s)
    assert all(0.5 <= d <= 1.0 for d in delays) and max(delays) - min(delays) > 0.3


def test_the_retries_in_a_row_are_the_setting_and_the_messages_say_so() -> None:
    p = policy(max_retries=3)
    retries = [
        reconnect(p.connect_failed(float(n), "dg.example:443: [Errno 111] Connection refused")) for n in range(3)
    ]
    assert [(r.retry, r.max_retries) for r in retries] == [(1, 3), (2, 3), (3, 3)]
    assert retries[0].cause == "cannot reach Deepgram: dg.example:443: [Errno 111] Connection refused"
    decision = give_up(p.connect_failed(3.0, "dg.example:443: [Errno 111] Connection refused"))
    assert decision.message == (
        "giving up on Deepgram after 3 retries (cannot reach Deepgram: dg.example:443: [Errno 111] Connection"
        " refused); the call goes on untranscribed"
    )
    assert p.failures == 4  # the first attempt and 3 retries


def test_one_retry_and_no_retry() -> None:
    p = policy(max_retries=1)
    reconnect(p.connect_failed(0.0, "x"))
    assert "after 1 retry (" in give_up(p.connect_failed(1.0, "x")).message
    assert give_up(policy(max_retries=0).connect_failed(0.0, "x")).message == (
        "giving up on Deepgram (cannot reach Deepgram: x; retrying is off); the call goes on untranscribed"
    )


def test_a_productive_connection_starts_the_count_again() -> None:
    p = policy(max_retries=2)
    reconnect(p.connect_failed(0.0, "x"))
    reconnect(p.connect_failed(1.0, "x"))
    p.opened(0.0)
    p.received(results(0.0, 0.1))  # a final covering audio: progress
    assert reconnect(p.lost(5.0, "closed with 1011")).retry == 1
    assert reconnect(p.connect_failed(6.0, "x")).retry == 2
    give_up(p.connect_failed(7.0, "x"))


def test_interims_or_replayed_finals_alone_do_not_start_the_count_again() -> None:
    # A connection that always fails after an interim (or after finals of audio already covered)
    # would otherwise be retried forever at the shortest backoff, replaying the same audio.
    p = policy(max_retries=2)
    p.opened(0.0)
    p.received(results(0.0, 1.0))  # covers 0-1 s
    assert reconnect(p.lost(1.0, "closed with 1011")).retry == 1
    p.opened(0.0)
    p.received(results(0.0, 0.5, final=False))
    p.received(results(0.0, 1.0))  # the same second again: dropped, no progress
    assert reconnect(p.lost(2.0, "closed with 1011")).retry == 2
    p.opened(0.0)
    p.received(results(0.0, 0.5, final=False))
    give_up(p.lost(3.0, "closed with 1011"))


def test_a_connection_that_produced_nothing_does_not_start_the_count_again() -> None:
    p = policy(max_retries=2)
    reconnect(p.connect_failed(0.0, "x"))
    p.opened(0.0)
    p.received(MessageKind("Metadata"))  # not Results
    assert reconnect(p.lost(1.0, "closed with 1011")).retry == 2
    p.opened(0.0)
    assert (
        "after 2 retries (Deepgram connection lost: closed with 1011)"
        in give_up(p.lost(2.0, "closed with 1011")).message
    )


def test_a_silent_connection_is_a_lost_connection() -> None:
    p = policy(max_retries=2)
    p.opened(0.0)
    decision = reconnect(p.silent(30.0, 30.0))
    assert decision.retry == 1
    assert p.cause == "Deepgram connection lost: no message for 30 s while as much audio was sent"


def test_a_stalled_send_is_a_lost_connection() -> None:
    p = policy()
    p.opened(0.0)
    assert reconnect(p.send_stalled(1.0, 10.0)).cause == "Deepgram connection lost: a send stalled for 10 s"


# -- the end of the call --------------------------------------------------------------------------


def test_after_the_audio_ends_a_retry_that_cannot_start_in_time_gives_up_at_once() -> None:
    p = policy(max_retries=8, backoff_initial_s=0.5, backoff_max_s=8.0, finalize_timeout_s=5.0, rng=Highest())
    for _ in range(4):  # delays 0.5, 1, 2, 4: up to t = 7.5
        reconnect(p.connect_failed(0.0, "x"))
    assert p.input_finished(10.0) == 15.0
    assert p.input_finished(12.0) == 15.0  # the first end counts
    assert p.reconnect_deadline == 15.0
    decision = give_up(p.connect_failed(10.0, "dg.example:443: timed out"))  # the next wait is 8 s: past 15
    assert decision.message == (
        "giving up on Deepgram: the call's audio has ended and it is still unreachable (cannot reach Deepgram:"
        " dg.example:443: timed out); the audio not yet sent is not transcribed"
    )


def test_after_the_audio_ends_a_retry_in_time_is_made() -> None:
    p = policy(finalize_timeout_s=5.0, rng=Highest())
    p.opened(0.0)
    p.input_finished(100.0)
    assert reconnect(p.lost(101.0, "closed with 1011")).delay_s == 0.5
    p.opened(0.0)
    give_up(p.lost(104.6, "closed with 1011"))  # the next retry would wait 1 s: 105.6 > 105


def test_the_deadline_passing_while_connecting_gives_up_with_the_last_cause() -> None:
    p = policy(finalize_timeout_s=5.0)
    reconnect(p.connect_failed(0.0, "dg.example:443: timed out"))
    p.input_finished(1.0)
    with pytest.raises(RuntimeError):
        p.deadline_passed(5.9)
    decision = p.deadline_passed(6.0)
    assert decision.message == (
        "giving up on Deepgram 5 s after the call's audio ended (cannot reach Deepgram: dg.example:443: timed out);"
        " the audio not yet sent is not transcribed"
    )
    q = policy(finalize_timeout_s=2.0)
    q.input_finished(0.0)
    assert "(still connecting)" in q.deadline_passed(2.0).message  # the first attempt never finished


# -- notices ------------------------------------------------------------------------------------


def test_the_first_failure_is_announced_then_the_recovery_then_the_next_failure() -> None:
    p = policy(max_retries=3)
    first = reconnect(p.connect_failed(0.0, "dg.example:443: [Errno 111] Connection refused"))
    assert first.notice == Notice(
        "Reconnecting", "cannot reach Deepgram: dg.example:443: [Errno 111] Connection refused; reconnecting"
    )
    assert reconnect(p.refused(1.0, 429, "HTTP 429: slow down")).notice is None  # not with every retry
    assert p.opened(0.0).notice == Notice("Resumed", "transcription resumed: Deepgram connection restored (retry 2)")
    p.received(results(0.0, 1.0))
    assert reconnect(p.lost(5.0, "closed with 1011 NET-0000")).notice == Notice(
        "Reconnecting", "Deepgram connection lost: closed with 1011 NET-0000; reconnecting"
    )
    reconnect(p.connect_failed(6.0, "x"))
    reconnect(p.connect_failed(7.0, "x"))
    assert give_up(p.connect_failed(8.0, "x")).notice.type == "Error"


def test_no_notice_while_all_is_well() -> None:
    p = policy()
    assert p.opened(0.0).notice is None
    p.input_finished(1.0)


def test_notice_json_has_the_shape_of_callscribe_notices() -> None:
    notice = Notice("Reconnecting", 'cannot reach Deepgram: "x"; reconnecting')
    assert json.loads(notice.json(CALL_SID)) == {
        "type": "Reconnecting",
        "source": "callscribe",
        "callSid": CALL_SID,
        "message": 'cannot reach Deepgram: "x"; reconnecting',
    }


def test_misuse_is_a_programming_error() -> None:
    p = policy()
    with pytest.raises(RuntimeError):
        p.received(results())
    p.opened(0.0)
    with pytest.raises(RuntimeError):
        p.opened(0.0)
    with pytest.raises(ValueError):
        DeepgramPolicy(max_retries=-1)
    with pytest.raises(ValueError):
        DeepgramPolicy(backoff_initial_s=0)


# -- properties ---------------------------------------------------------------------------------

FAILURE = st.one_of(
    st.tuples(st.just("connect_failed"), st.just(0)),
    st.tuples(st.just("refused"), st.sampled_from([400, 401, 403, 408, 429, 500, 503])),
)
STEP = st.one_of(
    FAILURE,
    st.tuples(st.just("open"), st.booleans()),  # opens; True: it produces results before it is lost
    st.tuples(st.just("wait"), st.floats(0, 20)),
    st.tuples(st.just("input_finished"), st.just(0)),
    st.tuples(st.just("deadline"), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(
    max_retries=st.integers(0, 6),
    backoff_initial_s=st.floats(0.01, 4.0),
    backoff_max_s=st.floats(0.01, 10.0),
    finalize_timeout_s=st.floats(0.0, 10.0),
    seed=st.integers(0, 2**32),
    steps=st.lists(STEP, max_size=60),
)
def test_decisions_keep_to_the_settings_whatever_happens(
    max_retries: int,
    backoff_initial_s: float,
    backoff_max_s: float,
    finalize_timeout_s: float,
    seed: int,
    steps: list[tuple[str, object]],
) -> None:
    p = DeepgramPolicy(
        max_retries=max_retries,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        finalize_timeout_s=finalize_timeout_s,
        rng=random.Random(seed),
    )
    now = 0.0
    failed_in_a_row = 0  # attempts (or a lost unproductive connection) that failed since the last productive one
    progress = 0.0
    announced = False
    notices: list[str] = []
    for kind, value in steps:
        if p.state is LinkState.GAVE_UP:
            break
        decision: Reconnect | GiveUp | None = None
        permanent = False
        if kind == "wait":
            now += float(value)  # type: ignore[arg-type]
            continue
        if kind == "input_finished":
            assert p.input_finished(now) <= now + finalize_timeout_s
            continue
        if kind == "deadline":
            if p.state is LinkState.CONNECTING and now >= p.reconnect_deadline:
                decision = p.deadline_passed(now)
                assert isinstance(decision, GiveUp)
            else:
                continue
        elif kind == "open":
            if p.state is not LinkState.CONNECTING:
                continue
            opened = p.opened(now)
            if opened.notice is not None:
                assert announced and opened.notice.type == "Resumed"
                announced = False
                notices.append("Resumed")
            else:
                assert not announced
            if value:  # a final of audio no earlier one covered
                progress += 1.0
                p.received(results(progress, 0.1))
            productive = bool(value)
            decision = p.lost(now, "closed with 1011")
            failed_in_a_row = 1 if productive else failed_in_a_row + 1
        else:
            if p.state is not LinkState.CONNECTING:
                continue
            status = int(value)  # type: ignore[call-overload]
            decision = p.refused(now, status, f"HTTP {status}") if kind == "refused" else p.connect_failed(now, "x")
            failed_in_a_row += 1
            permanent = kind == "refused" and 400 <= status < 500 and status not in (408, 429)
            if permanent:
                assert isinstance(decision, GiveUp)  # at once
        if isinstance(decision, Reconnect):
            assert 0 < decision.delay_s <= backoff_max_s
            assert decision.delay_s >= 0.5 * min(backoff_initial_s, backoff_max_s) - 1e-12
            assert decision.retry == failed_in_a_row <= max_retries  # never more attempts than the setting
            assert now + decision.delay_s < p.reconnect_deadline
            if decision.notice is not None:
                assert not announced and decision.notice.type == "Reconnecting"
                announced = True
                notices.append("Reconnecting")
            else:
                assert announced  # every failure streak is announced at its first failure
            now += decision.delay_s
        elif isinstance(decision, GiveUp):
            if permanent:
                assert "not retrying" in decision.message
            elif failed_in_a_row > max_retries:
                assert decision.message.startswith(
                    "giving up on Deepgram (" if max_retries == 0 else "giving up on Deepgram after"
                )
            else:  # the call's audio ended and no retry could be made by the deadline
                assert "the call's audio" in decision.message and p.reconnect_deadline < math.inf
            notices.append("Error")
    # Reconnecting and Resumed alternate, and Error, if any, is the last word.
    assert all(a != b for a, b in itertools.pairwise(notices))
    assert "Error" not in notices[:-1]
    assert not notices or notices[0] in ("Reconnecting", "Error")


SEGMENTS = st.lists(st.floats(0.0, 2.0).map(lambda d: round(d, 3)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    segments=SEGMENTS,
    connections=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=5),
)
def test_a_replayed_final_is_published_at_most_once_per_stretch(
    segments: list[float], connections: list[tuple[int, int]]
) -> None:
    """Deepgram finalizes one channel in the same stretches on every connection; each connection
    starts at the end of a stretch already finalized (where the backlog rewinds) and says some of them."""
    bounds = [0.0]
    for duration in segments:
        bounds.append(round(bounds[-1] + duration, 6))
    p = policy(max_retries=100)
    finalized = 0  # stretches finalized so far: a connection may start at any of their ends
    published: list[tuple[float, float]] = []
    for number, (start_at, count) in enumerate(connections):
        if number:
            reconnect(p.lost(0.0, "closed"))
        first = min(start_at, finalized)
        offset = bounds[first]
        p.opened(offset)
        for index in range(first, min(first + count, len(segments))):
            start, end = bounds[index], bounds[index + 1]
            delivery = p.received(results(start - offset, end - start))
            if end - start == 0:
                assert delivery.publish  # zero-duration finals always pass
            elif delivery.publish:
                published.append((start, end))
            finalized = max(finalized, index + 1)
    assert len(published) == len(set(published))
    # Nothing finalized was withheld: every stretch said is published once.
    assert sorted(set(published)) == sorted({(bounds[i], bounds[i + 1]) for i in range(finalized) if segments[i] > 0})


@settings(max_examples=300, deadline=None)
@given(
    finals=st.lists(
        st.lists(st.tuples(st.integers(0, 1), st.floats(0.0, 5.0), st.floats(0.0, 2.0), st.booleans()), max_size=10),
        min_size=1,
        max_size=5,
    ),
    offsets=st.lists(st.floats(0.0, 5.0), min_size=5, max_size=5),
)
def test_after_a_reconnect_a_published_final_always_reaches_past_what_subscribers_have(
    finals: list[list[tuple[int, float, float, bool]]], offsets: list[float]
) -> None:
    """Whatever Deepgram says: a result of audio published on a later connection extends its channel's
    published end, that end never moves back, a result of no audio passes, and no result is dropped
    unless subscribers have its whole stretch."""
    p = policy(max_retries=100)
    furthest: dict[int, float] = {}
    for number, said in enumerate(finals):
        if number:
            reconnect(p.lost(0.0, "closed"))
        p.opened(offsets[number])
        for channel, start, duration, is_final in said:
            delivery = p.received(results(start, duration, final=is_final, channel=channel))
            end = offsets[number] + start + duration
            previous = furthest.get(channel, -math.inf)
            if duration == 0 or number == 0:
                assert delivery.publish
            else:  # (interims too: a replay's interims of what subscribers have are dropped)
                assert delivery.publish is (end > previous + 0.5 / 8000)
            if delivery.publish and is_final:
                furthest[channel] = max(previous, end)
