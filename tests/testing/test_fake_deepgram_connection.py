"""Tests for callscribe.testing.fake_deepgram_connection's pure part (a connection's behaviour over the
network is tested through the server in test_fake_deepgram.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.testing.fake_deepgram_connection import Deinterleaver


@settings(max_examples=200, deadline=None)
@given(
    channels=st.integers(1, 4),
    bytes_per_sample=st.integers(1, 2),
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    keep=st.booleans(),
)
def test_deinterleaver_matches_reference(
    channels: int, bytes_per_sample: int, data: bytes, cuts: list[int], keep: bool
) -> None:
    outputs = [bytearray() for _ in range(channels)]
    splitter = Deinterleaver(outputs, bytes_per_sample, keep=keep)
    previous = 0
    for cut in [*sorted(min(c, len(data)) for c in cuts), len(data)]:
        splitter.feed(data[previous:cut])
        previous = cut
    whole = len(data) // bytes_per_sample
    samples = [data[i * bytes_per_sample : (i + 1) * bytes_per_sample] for i in range(whole)]
    expected = [b"".join(samples[c::channels]) for c in range(channels)]
    assert [bytes(o) for o in outputs] == (expected if keep else [b""] * channels)
    assert splitter.samples_by_channel == [len(e) // bytes_per_sample for e in expected]
    assert splitter.samples == whole
