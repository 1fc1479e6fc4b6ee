"""The replay backlog and pacer (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core.backlog import AudioBacklog, Pacer
from callscribe.core.deepgram import rebase


def window(n: int, size: int = 800) -> bytes:
    return bytes([n % 256]) * size


def send_all(backlog: AudioBacklog) -> list[bytes]:
    sent = []
    while (w := backlog.next_unsent()) is not None:
        backlog.mark_sent(w)
        sent.append(w)
    return sent


def test_rewind_resends_from_the_first_window_no_final_covers() -> None:
    backlog = AudioBacklog(channels=1)
    for n in range(5):
        backlog.append(window(n))
    assert send_all(backlog) == [window(n) for n in range(5)]
    backlog.acknowledge(0, 0.2)  # finals cover the first two 100 ms windows
    assert backlog.rewind() == 0.2
    assert send_all(backlog) == [window(n) for n in range(2, 5)]


def test_all_channels_must_be_covered() -> None:
    backlog = AudioBacklog(channels=2)
    for n in range(4):
        backlog.append(window(n, 1600))
    send_all(backlog)
    backlog.acknowledge(0, 0.3)
    assert backlog.rewind() == 0.0  # channel 1 has no final yet
    send_all(backlog)
    backlog.acknowledge(1, 0.1)
    assert backlog.rewind() == 0.1
    send_all(backlog)
    backlog.acknowledge(1, 0.3)
    assert backlog.rewind() == 0.3


def test_unsent_windows_are_never_acknowledged_away() -> None:
    backlog = AudioBacklog(channels=1)
    backlog.append(window(0))
    backlog.append(window(1))
    backlog.acknowledge(0, 10.0)  # a confused final far ahead
    assert send_all(backlog) == [window(0), window(1)]


def test_a_full_backlog_drops_the_oldest_and_counts_the_loss() -> None:
    backlog = AudioBacklog(channels=1, max_seconds=0.3)
    for n in range(5):
        backlog.append(window(n))
    assert backlog.lost == 2 * 800
    assert backlog.rewind() == 0.2  # a connection opens
    assert send_all(backlog) == [window(2), window(3), window(4)]
    assert backlog.unsent_seconds == 0


@pytest.mark.parametrize("channels", [1, 2])
def test_audio_a_full_backlog_drops_before_it_went_out_is_sent_as_silence(channels: int) -> None:
    # A connection fell behind (a replay after a long outage, a send that stalled): windows it had
    # not sent yet leave the full backlog. Deepgram's times count the audio it got, so skipping them
    # would shift every later time on the connection (and compare its finals with the wrong ends):
    # silence of the same length goes in their place, and they count as lost.
    size = 800 * channels
    backlog = AudioBacklog(channels=channels, max_seconds=0.3)
    assert backlog.rewind() == 0.0  # the connection's time 0 is the call's
    for n in range(6):
        backlog.append(window(n, size))
    assert backlog.lost == 3 * size
    assert send_all(backlog) == [b"\xff" * size] * 3 + [window(n, size) for n in range(3, 6)]
    assert backlog.unsent_seconds == 0 and backlog.lost == 3 * size
    backlog.append(window(6, size))
    assert send_all(backlog) == [window(6, size)]
    assert backlog.abandon() == 0 and backlog.lost == 3 * size  # counted once


def test_a_window_being_sent_when_a_full_backlog_drops_it_goes_out_and_the_next_follows() -> None:
    # After an outage that filled the backlog, the replay starts at the oldest window kept; a live
    # window appended while it is on its way pushes it out of the backlog. It still goes out (not
    # lost), and the next window is the one after it: the connection's audio stays contiguous,
    # which its times' offset assumes.
    backlog = AudioBacklog(channels=1, max_seconds=0.3)
    for n in range(3):
        backlog.append(window(n))
    in_flight = backlog.next_unsent()
    assert in_flight == window(0)
    backlog.append(window(3))  # full: window 0, being sent, leaves the backlog
    backlog.mark_sent(in_flight)
    assert backlog.lost == 0
    assert send_all(backlog) == [window(1), window(2), window(3)]


@pytest.mark.parametrize("give_up", [False, True])
def test_a_window_a_full_backlog_drops_while_it_is_sent_is_lost_if_it_never_went_out(give_up: bool) -> None:
    backlog = AudioBacklog(channels=1, max_seconds=0.2)
    backlog.rewind()
    backlog.append(window(0))
    assert backlog.next_unsent() == window(0)
    backlog.append(window(1))
    backlog.append(window(2))  # full: window 0, being sent, leaves the backlog
    assert backlog.lost == 0
    # The send fails (the connection is lost): window 0 never reached Deepgram, nor will it.
    if give_up:
        assert backlog.abandon() == 0.3
    else:
        assert backlog.rewind() == 0.1
    assert backlog.lost == 800 * (3 if give_up else 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.booleans(), st.floats(0, 1)), max_size=40))
def test_sent_audio_over_reconnects_covers_everything_in_order(steps: list[tuple[int, bool, float]]) -> None:
    backlog = AudioBacklog(channels=1, max_seconds=1000)
    audio = bytearray()
    connections: list[tuple[float, bytearray]] = [(0.0, bytearray())]
    n = 0
    for count, reconnect, covered in steps:
        for _ in range(count):
            backlog.append(window(n))
            audio += window(n)
            n += 1
        base, sent = connections[-1]
        for w in send_all(backlog):
            sent += w
        backlog.acknowledge(0, base + covered * len(sent) / 8000)
        if reconnect:
            connections.append((backlog.rewind(), bytearray()))
    for w in send_all(backlog):
        connections[-1][1].extend(w)
    # Each connection's audio is the call's audio from its base, and together they leave no hole.
    position = 0
    for base, sent in connections:
        start = round(base * 8000)
        assert start <= position
        assert bytes(sent) == bytes(audio[start : start + len(sent)])
        position = max(position, start + len(sent))
    assert position == len(audio)


def test_pacer_lets_live_audio_through_and_holds_a_replay_to_the_rate() -> None:
    pacer = Pacer(rate=1.25, burst_s=0.5)
    now = 0.0
    for _ in range(50):  # live: 100 ms every 100 ms
        assert pacer.delay(now, 0.1) == 0
        now += 0.1
    pacer = Pacer(rate=1.25, burst_s=0.5)
    now = 0.0
    for _ in range(100):  # a 10 s backlog, sent as fast as allowed
        now += pacer.delay(now, 0.1)
    assert now >= (10 - 0.5) / 1.25 - 0.1 - 1e-9


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(1.0, 4.0),
    burst_s=st.floats(0.02, 2.0),
    windows=st.lists(st.tuples(st.floats(0, 2), st.floats(0.001, 1.0)), min_size=1, max_size=60),
)
def test_pacer_sends_at_most_the_burst_plus_rate_times_the_time_since_a_send(
    rate: float, burst_s: float, windows: list[tuple[float, float]]
) -> None:
    """Windows of at most `burst_s`, each ready `idle` s after the previous one went out (0: a backlog)."""
    pacer = Pacer(rate, burst_s)
    now = 0.0
    sent: list[tuple[float, float]] = []
    for idle, fraction in windows:
        now += idle
        audio = fraction * burst_s
        now += pacer.delay(now, audio)
        sent.append((now, audio))
    # From any send (the first included), the next T seconds carry at most burst_s + rate * T.
    for first, (start, _) in enumerate(sent):
        total = 0.0
        for at, audio in sent[first:]:
            total += audio
            assert total <= burst_s + rate * (at - start) + 1e-9 * (1 + total)


def test_rebase_shifts_every_time_and_leaves_the_rest() -> None:
    results = {
        "type": "Results",
        "start": 1.5,
        "duration": 1.0,
        "is_final": True,
        "channel": {"alternatives": [{"transcript": "hi there", "words": [{"word": "hi", "start": 1.5, "end": 1.7}]}]},
    }
    shifted = json.loads(rebase(json.dumps(results), 10.0))
    assert shifted["start"] == 11.5 and shifted["duration"] == 1.0
    assert shifted["channel"]["alternatives"][0]["words"][0] == {"word": "hi", "start": 11.5, "end": 11.7}
    assert json.loads(rebase('{"type":"UtteranceEnd","last_word_end":2.0}', 3.0))["last_word_end"] == 5.0
    assert json.loads(rebase('{"type":"SpeechStarted","timestamp":1.0}', 3.0))["timestamp"] == 4.0
    text = '{"type":"Metadata","duration":4.0}'
    assert rebase(text, 3.0) is text and rebase("not json", 3.0) == "not json"
    original = json.dumps(results)
    assert rebase(original, 0.0) is original


def test_abandoning_counts_what_deepgram_never_got_as_lost_once() -> None:
    backlog = AudioBacklog(channels=1, max_seconds=0.3)
    for n in range(5):
        backlog.append(window(n))  # the first two fall out of the full backlog
    backlog.rewind()  # before a connection opened
    first = backlog.next_unsent()
    assert first == window(2)
    backlog.mark_sent(first)
    assert backlog.lost == 2 * 800
    assert backlog.abandon() == 0.2  # windows 3 and 4 were never sent
    assert backlog.lost == 4 * 800 and backlog.next_unsent() is None and backlog.unsent_seconds == 0
    backlog.append(window(5))  # Twilio is still read to the end: its audio goes straight to `lost`
    assert backlog.lost == 5 * 800 and backlog.next_unsent() is None and backlog.unsent_seconds == 0
    assert backlog.end == 6 * 800
