"""The benchmark client's WebSocket framing agrees with RFC 6455."""

from __future__ import annotations

import struct

from callscribe.bench.ws_frames import OP_PING, OP_TEXT, FrameReader, client_frame, close_payload, mask, parse_close


def test_masking_round_trips_and_frames_parse_back() -> None:
    key = b"\x01\x02\x03\x04"
    payload = bytes(range(256)) * 3
    assert mask(key, mask(key, payload)) == payload
    frame = client_frame(OP_TEXT, payload, key)
    assert frame[:4] == bytes((0x81, 0x80 | 126)) + struct.pack("!H", len(payload)) and frame[4:8] == key
    reader = FrameReader()
    # fed one byte at a time: partial headers and payloads are carried over
    frames = [f for i in range(len(frame)) for f in reader.feed(frame[i : i + 1])]
    assert frames == [(OP_TEXT, payload)]


def test_frame_reader_reassembles_fragments_around_a_ping() -> None:
    first = bytes((0x01, 3)) + b"abc"
    ping = bytes((0x89, 1)) + b"p"
    last = bytes((0x80, 2)) + b"de"
    short = bytes((0x81, 126)) + struct.pack("!H", 300) + b"x" * 300
    assert FrameReader().feed(first + ping + last + short) == [
        (OP_PING, b"p"),
        (OP_TEXT, b"abcde"),
        (OP_TEXT, b"x" * 300),
    ]


def test_close_payloads() -> None:
    assert parse_close(close_payload(1001, "going away")) == (1001, "going away")
    assert parse_close(b"") == (1005, "")
    assert len(close_payload(1000, "x" * 200)) == 2 + 120  # fits a control frame
