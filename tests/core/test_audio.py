"""Tests for callscribe.core.audio: the G.711 mu-law codec, WAV reading and test signals."""

from __future__ import annotations

import array
import itertools
import math
import struct
import wave
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callscribe.core import audio as mulaw

ALL_SAMPLES = range(-32768, 32768)


def pcm16(samples: list[int] | range) -> bytes:
    """Signed samples -> PCM16 little-endian bytes."""
    return struct.pack(f"<{len(samples)}h", *samples)


def samples_of(pcm: bytes) -> list[int]:
    """PCM16 little-endian bytes -> signed samples."""
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def max_error(code: int) -> int:
    """Largest quantisation error for a mu-law code: half the step of its segment."""
    segment = ((~code & 0xFF) >> 4) & 0x07
    return 1 << (segment + 2)


def clip(sample: float) -> float:
    return max(-mulaw.CLIP, min(mulaw.CLIP, sample))


# ----------------------------------------------------------------------------- codec


@pytest.mark.parametrize(
    ("sample", "code"),
    [
        (0, 0xFF),
        (1, 0xFF),
        (-1, 0x7F),
        (8, 0xFE),
        (100, 0xF2),
        (-100, 0x72),
        (1000, 0xCE),
        (32124, 0x80),
        (32767, 0x80),
        (-32124, 0x00),
        (-32768, 0x00),
    ],
)
def test_encode_known_vectors(sample: int, code: int) -> None:
    assert mulaw.encode_sample(sample) == code
    assert mulaw.encode(pcm16([sample])) == bytes([code])


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0xFF, 0), (0x7F, 0), (0xFE, 8), (0xF2, 104), (0x72, -104), (0x80, 32124), (0x00, -32124), (0xCE, 988)],
)
def test_decode_known_vectors(code: int, sample: int) -> None:
    assert mulaw.decode_sample(code) == sample
    assert mulaw.decode(bytes([code])) == pcm16([sample])


def test_silence_constant() -> None:
    assert mulaw.SILENCE == 0xFF
    assert mulaw.decode(bytes([mulaw.SILENCE])) == b"\x00\x00"
    assert mulaw.encode(b"\x00\x00") == bytes([mulaw.SILENCE])


def test_encode_table_matches_reference_for_every_sample() -> None:
    encoded = mulaw.encode(pcm16(ALL_SAMPLES))
    assert encoded == bytes(mulaw.encode_sample(s) for s in ALL_SAMPLES)


def test_decode_table_matches_reference_for_every_code() -> None:
    assert samples_of(mulaw.decode(bytes(range(256)))) == [mulaw.decode_sample(u) for u in range(256)]


def test_round_trip_within_quantisation_error_for_every_sample() -> None:
    codes = mulaw.encode(pcm16(ALL_SAMPLES))
    decoded = samples_of(mulaw.decode(codes))
    previous = -32768
    for sample, code, value in zip(ALL_SAMPLES, codes, decoded, strict=True):
        assert abs(value - clip(sample)) <= max_error(code), (sample, code, value)
        assert value >= previous  # companding is monotonic
        assert value == 0 or (value > 0) == (sample > 0)  # sign is kept
        previous = value


def test_encode_of_decode_is_identity_except_negative_zero() -> None:
    codes = bytes(range(256))
    expected = codes.replace(b"\x7f", b"\xff")  # -0 decodes to 0, which encodes as +0
    assert mulaw.encode(mulaw.decode(codes)) == expected


def test_encode_rejects_odd_length() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        mulaw.encode(b"\x00\x00\x00")


def test_encode_accepts_bytes_like() -> None:
    pcm = pcm16([0, 100, -100, 32767])
    assert mulaw.encode(bytearray(pcm)) == mulaw.encode(memoryview(pcm)) == mulaw.encode(pcm)
    assert mulaw.decode(bytearray(b"\x00\xff")) == mulaw.decode(memoryview(b"\x00\xff"))
    assert mulaw.encode(b"") == b"" and mulaw.decode(b"") == b""


def test_reference_functions_reject_out_of_range() -> None:
    with pytest.raises(ValueError):
        mulaw.encode_sample(32768)
    with pytest.raises(ValueError):
        mulaw.decode_sample(256)


@given(st.lists(st.integers(-32768, 32767), max_size=400))
def test_property_round_trip_error(samples: list[int]) -> None:
    codes = mulaw.encode(pcm16(samples))
    assert len(codes) == len(samples)
    decoded = samples_of(mulaw.decode(codes))
    for sample, code, value in zip(samples, codes, decoded, strict=True):
        assert abs(value - clip(sample)) <= max_error(code)


@given(st.binary(max_size=400))
def test_property_decode_then_encode(codes: bytes) -> None:
    pcm = mulaw.decode(codes)
    assert len(pcm) == 2 * len(codes)
    assert mulaw.encode(pcm) == codes.replace(b"\x7f", b"\xff")


@given(st.binary(max_size=400).filter(lambda b: len(b) % 2 == 0))
def test_property_encode_is_idempotent_after_decode(pcm: bytes) -> None:
    codes = mulaw.encode(pcm)
    assert mulaw.encode(mulaw.decode(codes)) == codes


# ----------------------------------------------------------------------------- signals


def test_generate_silence() -> None:
    assert mulaw.generate_silence(0.5) == b"\xff" * 4000
    assert mulaw.generate_silence(0) == b""
    with pytest.raises(ValueError):
        mulaw.generate_silence(-1)


def test_generate_tone() -> None:
    tone = mulaw.generate_tone(1.0, 440.0, 0.3)
    assert len(tone) == 8000
    samples = samples_of(mulaw.decode(tone))
    peak = max(abs(s) for s in samples)
    assert abs(peak - 0.3 * 32767) <= 0.3 * 32767 / 16
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    assert 870 <= crossings <= 890  # 440 Hz: two sign changes per period
    assert mulaw.generate_tone(0.02) == mulaw.generate_tone(1.0)[:160]  # starts at phase 0


@pytest.mark.parametrize(
    "kwargs", [{"amplitude": 1.5}, {"amplitude": -0.1}, {"freq_hz": math.nan}, {"seconds": math.inf}]
)
def test_generate_tone_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    args = {"seconds": 1.0, **kwargs}
    with pytest.raises(ValueError):
        mulaw.generate_tone(**args)


# ----------------------------------------------------------------------------- WAV


def write_pcm_wav(path: Path, channels: list[list[int]], rate: int = 8000, width: int = 2) -> Path:
    """Write signed 16-bit samples (one list per channel) as a PCM WAV of ``width`` bytes."""
    frames = bytearray()
    for frame in zip(*channels, strict=True):
        for sample in frame:
            if width == 1:
                frames.append((sample >> 8) + 128)
            else:  # extend 16-bit samples with zero low bytes
                frames += b"\x00" * (width - 2) + struct.pack("<h", sample)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return path


def write_riff(
    path: Path,
    *,
    tag: int,
    channels: int,
    rate: int,
    bits: int,
    data: bytes,
    extensible: bool = False,
    extra_chunks: bytes = b"",
) -> Path:
    """Write a WAV file by hand (for encodings the wave module cannot write)."""
    block_align = channels * ((bits + 7) // 8)
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block_align, block_align, bits)
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    elif tag != 1:
        fmt += struct.pack("<H", 0)  # cbSize
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


RAMP = [(i * 37) % 20000 - 10000 for i in range(800)]
OTHER = [(-i * 53) % 30000 - 15000 for i in range(800)]


def test_wav_pcm16_mono_8k(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [RAMP])
    assert mulaw.read_wav_as_mulaw(path) == [mulaw.encode(pcm16(RAMP))]
    assert mulaw.read_wav_as_mulaw(str(path)) == [mulaw.encode(pcm16(RAMP))]


def test_wav_pcm16_stereo_8k(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [RAMP, OTHER])
    assert mulaw.read_wav_as_mulaw(path) == [mulaw.encode(pcm16(RAMP)), mulaw.encode(pcm16(OTHER))]


@pytest.mark.parametrize("width", [1, 3, 4])
def test_wav_other_pcm_widths(tmp_path: Path, width: int) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [RAMP, OTHER], width=width)
    if width == 1:  # 8-bit keeps only the high byte
        expected = [[(s >> 8) << 8 for s in ch] for ch in (RAMP, OTHER)]
    else:
        expected = [RAMP, OTHER]
    assert mulaw.read_wav_as_mulaw(path) == [mulaw.encode(pcm16(ch)) for ch in expected]


def test_wav_integer_ratio_downsampling(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [RAMP], rate=16000)
    assert mulaw.read_wav_as_mulaw(path) == [mulaw.encode(pcm16(RAMP[::2]))]


def test_wav_linear_interpolation_resampling(tmp_path: Path) -> None:
    ramp = [2 * i for i in range(11025)]  # one second at 11025 Hz: a straight line
    path = write_pcm_wav(tmp_path / "a.wav", [ramp], rate=11025)
    (channel,) = mulaw.read_wav_as_mulaw(path)
    assert len(channel) == 8000
    decoded = samples_of(mulaw.decode(channel))
    for k, (code, value) in enumerate(zip(channel, decoded, strict=True)):
        expected = 2 * k * 11025 / 8000  # interpolating a line gives the line
        assert abs(value - expected) <= max_error(code) + 1


def test_wav_upsampling(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [[0, 1000, 2000, 3000]], rate=4000)
    (channel,) = mulaw.read_wav_as_mulaw(path)
    assert samples_of(mulaw.decode(channel)) == samples_of(
        mulaw.decode(mulaw.encode(pcm16([0, 500, 1000, 1500, 2000, 2500, 3000, 3000])))
    )


def test_wav_mulaw_mono_and_stereo(tmp_path: Path) -> None:
    codes = bytes(range(256)) * 4
    mono = write_riff(tmp_path / "m.wav", tag=7, channels=1, rate=8000, bits=8, data=codes)
    assert mulaw.read_wav_as_mulaw(mono) == [codes]
    stereo = write_riff(tmp_path / "s.wav", tag=7, channels=2, rate=8000, bits=8, data=codes)
    assert mulaw.read_wav_as_mulaw(stereo) == [codes[0::2], codes[1::2]]


def test_wav_mulaw_resampled_and_odd_chunks(tmp_path: Path) -> None:
    codes = bytes(range(256)) * 2 + b"\x01"  # odd data size -> pad byte
    listing = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\x00"  # odd chunk before data
    path = write_riff(tmp_path / "m.wav", tag=7, channels=1, rate=16000, bits=8, data=codes, extra_chunks=listing)
    (channel,) = mulaw.read_wav_as_mulaw(path)
    # 513 samples at 16 kHz -> floor(513 / 2) = 256 samples at 8 kHz
    assert channel == codes[:512:2].replace(b"\x7f", b"\xff")


@pytest.mark.parametrize(("tag", "bits"), [(7, 8), (1, 16)])
def test_wav_extensible(tmp_path: Path, tag: int, bits: int) -> None:
    data = pcm16(RAMP) if tag == 1 else mulaw.encode(pcm16(RAMP))
    path = write_riff(tmp_path / "x.wav", tag=tag, channels=1, rate=8000, bits=bits, data=data, extensible=True)
    assert mulaw.read_wav_as_mulaw(path) == [mulaw.encode(pcm16(RAMP))]


def test_wav_empty_data(tmp_path: Path) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [[]])
    assert mulaw.read_wav_as_mulaw(path) == [b""]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello world, this is not audio", "not a WAV file"),
        (b"", "not a WAV file"),
        ("float", "IEEE float"),
        ("alaw", "A-law"),
        ("mulaw16", "8 bits per sample"),
        ("nodata", "no 'data' chunk"),
        ("badalign", "inconsistent WAV header"),
    ],
)
def test_wav_unsupported_files(tmp_path: Path, content: bytes | str, message: str) -> None:
    path = tmp_path / "bad.wav"
    if content == "float":
        write_riff(path, tag=3, channels=1, rate=8000, bits=32, data=b"\x00" * 8)
    elif content == "alaw":
        write_riff(path, tag=6, channels=1, rate=8000, bits=8, data=b"\xd5" * 8)
    elif content == "mulaw16":
        write_riff(path, tag=7, channels=1, rate=8000, bits=16, data=b"\xff" * 8)
    elif content == "nodata":
        fmt = struct.pack("<HHIIHHH", 7, 1, 8000, 8000, 1, 8, 0)
        body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
        path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    elif content == "badalign":
        fmt = struct.pack("<HHIIHHH", 7, 2, 8000, 8000, 1, 8, 0)
        body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data\x02\x00\x00\x00\xff\xff"
        path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        mulaw.read_wav_as_mulaw(path)
    assert str(path) in str(info.value)


def test_wav_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mulaw.read_wav_as_mulaw(tmp_path / "missing.wav")


def test_resample_linear_lengths() -> None:
    samples = array.array("h", range(100))
    assert len(mulaw._resample_linear(samples, 44100, 8000)) == 100 * 8000 // 44100
    upsampled = mulaw._resample_linear(samples, 8000, 16000)
    assert len(upsampled) == 200
    assert all(abs(value - min(k / 2, 99)) <= 0.5 for k, value in enumerate(upsampled))
