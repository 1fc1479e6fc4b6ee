"""The benchmark's machinery: its wire pieces agree with the real ones, and a tiny run measures real things.

Nothing here asserts speed: numbers come from `callscribe bench`, not from tests.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from callscribe.bench import load as bench_load
from callscribe.bench import report as bench_report
from callscribe.bench import runner as bench
from callscribe.bench import ws as bench_ws
from callscribe.bench.load import Audio, SimCall, tag_index
from callscribe.core.twilio import Media, TwilioStream
from callscribe.testing.simulator import PlannedFrame, media_message

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="the benchmark reads /proc (Linux)")


def test_masking_round_trips_and_frames_parse_back() -> None:
    key = b"\x01\x02\x03\x04"
    payload = bytes(range(256)) * 3
    assert bench_ws.mask(key, bench_ws.mask(key, payload)) == payload
    frame = bench_ws.client_frame(bench_ws.OP_TEXT, payload, key)
    assert frame[:4] == bytes((0x81, 0x80 | 126)) + struct.pack("!H", len(payload)) and frame[4:8] == key
    reader = bench_ws.FrameReader()
    # fed one byte at a time: partial headers and payloads are carried over
    frames = [f for i in range(len(frame)) for f in reader.feed(frame[i : i + 1])]
    assert frames == [(bench_ws.OP_TEXT, payload)]


def test_frame_reader_reassembles_fragments_around_a_ping() -> None:
    first = bytes((0x01, 3)) + b"abc"
    ping = bytes((0x89, 1)) + b"p"
    last = bytes((0x80, 2)) + b"de"
    short = bytes((0x81, 126)) + struct.pack("!H", 300) + b"x" * 300
    assert bench_ws.FrameReader().feed(first + ping + last + short) == [
        (bench_ws.OP_PING, b"p"),
        (bench_ws.OP_TEXT, b"abcde"),
        (bench_ws.OP_TEXT, b"x" * 300),
    ]


def test_simulated_calls_send_exactly_what_the_simulator_sends_and_parse_as_media() -> None:
    audio = Audio()
    call = SimCall(7, audio)
    k = 3
    ours = bench_load.media_text(2 + 2 * k, "outbound", k + 1, 20 * k, audio.outbound[k], call.stream_sid)
    import base64

    planned = PlannedFrame("outbound", 20 * k, k + 1, base64.b64decode(audio.outbound[k]), 0.0)
    assert ours == media_message(call.spec, planned, 2 + 2 * k)
    stream = TwilioStream()
    from callscribe.testing.simulator import connected_message, start_message

    stream.receive(connected_message())
    stream.receive(start_message(call.spec, 1))
    first = stream.receive(bench_load.media_text(2, "inbound", 1, 0, audio.tagged_first_frame(7), call.stream_sid))
    assert isinstance(first, Media) and len(first.media.payload) == 160
    assert tag_index(first.media.payload) == 7
    assert tag_index(b"\xff" * 160) is None


def test_statistics() -> None:
    assert bench.percentile([], 50) is None
    assert bench.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert bench.percentile(list(range(1, 101)), 99) == 99
    fit = bench.linear_fit([(x, 5.0 + 2.0 * x) for x in range(10)])
    assert fit is not None and abs(fit["slope"] - 2.0) < 1e-9 and fit["stderr"] < 1e-9
    flat = bench.linear_fit([(x, 100.0 + (-1) ** x) for x in range(50)])
    assert flat is not None and flat["ci95_low"] <= 0 <= flat["ci95_high"]


def test_profile_summary_reads_py_spy_folded_stacks(tmp_path: Path) -> None:
    folded = tmp_path / "p.folded"
    folded.write_text(
        "run (trio/_core/_run.py:10);handle (hypercorn/protocol/ws_stream.py:5);process (wsproto/frame_protocol.py:34) 3\n"
        "run (trio/_core/_run.py:10);_mix (callscribe/call.py:219) 1\n"
    )
    summary = bench_report.summarise_profile(folded)
    assert summary["samples"] == 4
    assert summary["packages"][0] == ("wsproto", 75.0)
    assert ("run (trio/_core/_run.py)", 100.0) in summary["inclusive"]


def test_a_tiny_run_measures_real_traffic_end_to_end(tmp_path: Path) -> None:
    """Two calls with two subscribers each against a real `callscribe serve` process, for a second."""
    opts = bench.Options(pin=False, log_dir=tmp_path / "logs", quiet=True, retries=0, drain_s=10.0)
    step = bench.run_step(opts, bench.StepPlan(calls=2, subscribers=2, measure_s=1.5, warmup_s=0.5))
    assert step["calls_started"] == 2 and step["calls_failed"] == 0
    # every frame sent is accounted for at the fake Deepgram, byte for byte, per call and channel
    assert step["frames_sent"] > 0
    assert step["frames_received"] == step["frames_sent"]
    assert step["calls_exact"] == 2
    assert step["frames_in_window"] > 0
    # latencies are measured, positive and plausible (audio waits for its 100 ms window)
    assert step["audio_samples"] > 0
    assert 0 < step["audio_p50_ms"] <= step["audio_p99_ms"]
    assert 0 < step["added_p50_ms"] <= step["audio_p99_ms"]
    assert step["server_cpu_pct"] > 0 and step["cpu_us_per_frame"] > 0
    assert step["rss_idle_kb"] > 0 and step["rss_kb"] >= step["rss_idle_kb"] * 0.9
    assert step["subscribers_ok"] == 4 and step["subscribers_failed"] == 0
    # results the fake sent in the window reached both subscribers of their call
    if step["results_sent_in_window"]:
        assert step["fanout_deliveries"] == 2 * step["results_sent_in_window"]
        assert step["fanout_p50_ms"] > 0

    results = {"machine": bench.machine_info(opts), "ramp": {"steps": [step], "max_sustained_calls": 2}}
    paths = bench_report.write_outputs(results, tmp_path)
    written = json.loads((tmp_path / bench_report.JSON_NAME).read_text())
    assert written["ramp"]["steps"][0]["frames_sent"] == step["frames_sent"]
    assert "| 2 |" in (tmp_path / bench_report.MD_NAME).read_text()
    assert all(path.exists() for path in paths)


def test_the_floor_server_forwards_every_frame(tmp_path: Path) -> None:
    opts = bench.Options(pin=False, log_dir=tmp_path / "logs", quiet=True, retries=0, drain_s=10.0)
    step = bench.run_step(
        opts, bench.StepPlan(kind="floor-forward", calls=2, subscribers=0, measure_s=1.0, warmup_s=0.3)
    )
    assert step["frames_sent"] > 0 and step["frames_received"] == step["frames_sent"]
    assert step["audio_p50_ms"] > 0
