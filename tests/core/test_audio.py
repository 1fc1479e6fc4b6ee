"""Tests for callscribe.core.audio: the G.711 mu-law codec, resampling, WAV input and test signals."""

from __future__ import annotations

import itertools
import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callscribe.core import audio as mulaw

ALL_SAMPLES = range(-32768, 32768)
BIAS, CLIP = 0x84, 32635  # G.711 mu-law: bias added to the magnitude, clip level before it


def reference_encode(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample, straight from the standard's segment/mantissa definition."""
    magnitude, mask = (-sample, 0x7F) if sample < 0 else (sample, 0xFF)
    magnitude = min(magnitude, CLIP) + BIAS
    segment = magnitude.bit_length() - 8
    return ((segment << 4) | ((magnitude >> (segment + 3)) & 0x0F)) ^ mask


def reference_decode(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + BIAS) << ((u & 0x70) >> 4)
    return BIAS - t if u & 0x80 else t - BIAS


def pcm16(samples: list[int] | range) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def samples_of(pcm: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(pcm) // 2}h", pcm))


def max_error(code: int) -> int:
    """Largest quantisation error for a mu-law code: half its step, plus 3 for the 14-bit truncation."""
    segment = ((~code & 0xFF) >> 4) & 0x07
    return (1 << (segment + 2)) + 3


def sine(rate: int, seconds: float, freq: float, amplitude: float = 10000.0) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)


# ----------------------------------------------------------------------------- codec


ENCODED = [(0, 0xFF), (1, 0xFF), (-1, 0x7E), (-4, 0x7E), (8, 0xFE), (100, 0xF2), (-100, 0x72), (1000, 0xCE),
           (32124, 0x80), (32767, 0x80), (-32124, 0x00), (-32768, 0x00)]  # fmt: skip


@pytest.mark.parametrize(("sample", "code"), ENCODED)
def test_encode_known_vectors(sample: int, code: int) -> None:
    assert mulaw.encode(pcm16([sample])) == bytes([code])


def test_encode_is_g711_of_the_top_14_bits_for_every_sample() -> None:
    encoded = mulaw.encode(pcm16(ALL_SAMPLES))
    assert encoded == bytes(reference_encode(s & ~3) for s in ALL_SAMPLES)
    # audioop truncates to 14 bits first (Sun's reference encoder): only negative samples just
    # below one of the 127 decision levels come out one step louder than exact G.711.
    differing = [s for s, code in zip(ALL_SAMPLES, encoded, strict=True) if code != reference_encode(s)]
    assert len(differing) == 3 * 127 and all(s < 0 for s in differing)


def test_decode_is_g711_for_every_code() -> None:
    assert samples_of(mulaw.decode(bytes(range(256)))) == [reference_decode(u) for u in range(256)]
    assert [reference_decode(c) for c in (0xFF, 0x7F, 0xFE, 0x80, 0x00)] == [0, 0, 8, 32124, -32124]


def test_round_trip_within_quantisation_error_for_every_sample() -> None:
    codes = mulaw.encode(pcm16(ALL_SAMPLES))
    decoded = samples_of(mulaw.decode(codes))
    assert decoded == sorted(decoded)  # companding is monotonic
    for sample, code, value in zip(ALL_SAMPLES, codes, decoded, strict=True):
        assert abs(value - max(-CLIP, min(CLIP, sample))) <= max_error(code), (sample, code, value)
        assert value == 0 or (value > 0) == (sample > 0)  # sign is kept


def test_silence_and_encode_of_decode() -> None:
    assert mulaw.decode(bytes([mulaw.SILENCE])) == b"\x00\x00" and mulaw.encode(b"\x00\x00") == b"\xff"
    codes = bytes(range(256))
    assert mulaw.encode(mulaw.decode(codes)) == codes.replace(b"\x7f", b"\xff")  # -0 decodes to 0


def test_encode_rejects_odd_length_and_accepts_bytes_like() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        mulaw.encode(b"\x00\x00\x00")
    pcm = pcm16([0, 100, -100, 32767])
    assert mulaw.encode(bytearray(pcm)) == mulaw.encode(memoryview(pcm)) == mulaw.encode(pcm)
    assert mulaw.decode(bytearray(b"\x00\xff")) == mulaw.decode(memoryview(b"\x00\xff"))
    assert mulaw.encode(b"") == b"" and mulaw.decode(b"") == b""


@given(st.binary(max_size=400))
def test_property_decode_then_encode(codes: bytes) -> None:
    pcm = mulaw.decode(codes)
    assert len(pcm) == 2 * len(codes)
    assert mulaw.encode(pcm) == codes.replace(b"\x7f", b"\xff")


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
    assert abs(max(abs(s) for s in samples) - 0.3 * 32767) <= 0.3 * 32767 / 16
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    assert 870 <= crossings <= 890  # 440 Hz: two sign changes per period
    assert mulaw.generate_tone(0.02) == mulaw.generate_tone(1.0)[:160]  # starts at phase 0


@pytest.mark.parametrize(
    "kwargs", [{"amplitude": 1.5}, {"amplitude": -0.1}, {"freq_hz": math.nan}, {"seconds": math.inf}]
)
def test_generate_tone_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        mulaw.generate_tone(**{"seconds": 1.0, **kwargs})


# ----------------------------------------------------------------------------- resampling


def resample(samples: np.ndarray, src: int, dst: int = 8000, cuts: list[int] | None = None) -> np.ndarray:
    resampler = mulaw.Resampler(src, dst)
    bounds = [0, *sorted(min(c, len(samples)) for c in cuts or []), len(samples)]
    parts = [resampler.feed(samples[a:b]) for a, b in itertools.pairwise(bounds)]
    return np.concatenate([*parts, resampler.finish()])


def test_resampler_anti_aliases() -> None:
    middle = slice(200, -200)  # away from the filter's transients at the start and end
    speech_band = resample(sine(22050, 1.0, 440), 22050)
    assert len(speech_band) == 8000
    expected = sine(8000, 1.0, 440)
    assert np.max(np.abs(speech_band - expected)[middle]) <= 2  # the tone passes as it is
    # 6 kHz is above 8 kHz's Nyquist frequency: without a filter it would alias to 2 kHz at full level.
    assert np.max(np.abs(resample(sine(22050, 1.0, 6000), 22050)[middle])) <= 10  # below -60 dB


@pytest.mark.parametrize(("src", "dst"), [(22050, 8000), (16000, 8000), (44100, 8000), (4000, 8000), (8000, 8000)])
def test_resampler_keeps_a_tone_at_any_ratio(src: int, dst: int) -> None:
    out = resample(sine(src, 0.5, 300), src, dst)
    assert abs(len(out) - dst // 2) <= 1
    assert np.max(np.abs(out - sine(dst, 0.5, 300)[: len(out)])[200:-200]) <= 2


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, 5000), max_size=20), src=st.sampled_from([22050, 16000, 11025, 48000]))
def test_resampler_streaming_equals_one_shot(cuts: list[int], src: int) -> None:
    samples = np.random.default_rng(src).integers(-20000, 20000, 5000)
    assert np.array_equal(resample(samples, src, cuts=cuts), resample(samples, src))


def test_resampler_rules() -> None:
    resampler = mulaw.Resampler(22050)
    assert resampler.feed(np.full(4000, 40000)).max() == 32767  # clipped, not wrapped
    resampler.finish()
    assert len(resampler.finish()) == 0
    with pytest.raises(ValueError, match="already finished"):
        resampler.feed([1])
    with pytest.raises(ValueError, match="positive"):
        mulaw.Resampler(0)


# ----------------------------------------------------------------------------- WAV


def riff(
    data: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 8000,
    bits: int = 16,
    size: int | None = None,
    align: int | None = None,
) -> bytes:
    """A WAV by hand: any format tag; ``size`` and ``align`` override the data size and block align."""
    align = channels * ((bits + 7) // 8) if align is None else align
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    body = (
        b"WAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data) if size is None else size)
    )
    return b"RIFF" + struct.pack("<I", 0x7FFFF024) + body + data


def extensible(wav: bytes, tag: int) -> bytes:
    """``wav`` (from :func:`riff`) with its 'fmt ' chunk in WAVE_FORMAT_EXTENSIBLE form."""
    guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = b"\xfe\xff" + wav[22:36] + struct.pack("<HHI", 22, struct.unpack_from("<H", wav, 34)[0], 0) + guid
    return wav[:12] + b"fmt " + struct.pack("<I", len(fmt)) + fmt + wav[36:]


def convert(data: bytes, step: int | None = None, channel: int = 0) -> bytes:
    converter = mulaw.WavToMulaw(channel)
    steps = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    return b"".join(converter.feed(part) for part in steps) + converter.finish()


TONE = np.rint(sine(22050, 0.3, 300, 8000)).astype("<i2")
TONE_ULAW = convert(riff(TONE.tobytes(), rate=22050))


def test_wav_header_is_parsed_incrementally() -> None:
    listing = b"LIST" + struct.pack("<I", 5) + b"abcde\x00"  # odd size + pad byte
    wav = riff(b"")
    wav = wav[:36] + listing + wav[36:]
    assert [mulaw.parse_wav_header(wav[:n]) for n in range(len(wav))] == [None] * len(wav)
    assert mulaw.parse_wav_header(wav) == mulaw.WavHeader("pcm", 1, 8000, 2, len(wav), None)
    assert mulaw.parse_wav_header(riff(b"ab", size=2)) == mulaw.WavHeader("pcm", 1, 8000, 2, 44, 2)


@pytest.mark.parametrize("step", [None, 1, 3, 44, 45, 1000])
@pytest.mark.parametrize("size", [None, 0, 0xFFFFFFFF, 0x7FFFF000])
def test_wav_stream_converts_any_split(step: int | None, size: int | None) -> None:
    assert convert(riff(TONE.tobytes(), rate=22050, size=size), step) == TONE_ULAW
    middle = np.frombuffer(mulaw.decode(TONE_ULAW), "<i2")[200:-200]
    assert np.max(np.abs(middle - sine(8000, 0.3, 300, 8000)[200:-200])) <= 8000 / 16


def test_wav_stream_honours_a_real_data_size_and_picks_a_channel() -> None:
    assert convert(riff(TONE.tobytes(), rate=22050) + b"junk" * 10, 7) == TONE_ULAW
    stereo = np.stack([np.full(len(TONE), 12345, "<i2"), TONE], axis=1).tobytes()
    assert convert(riff(stereo, channels=2, rate=22050), 5, channel=1) == TONE_ULAW
    assert convert(b"") == b"" and convert(riff(b"")) == b""
    with pytest.raises(ValueError, match="no channel 2"):
        convert(riff(stereo, channels=2), channel=2)


def test_wav_stream_filters_what_8khz_cannot_carry() -> None:
    high = np.rint(sine(22050, 0.5, 6000)).astype("<i2").tobytes()
    decoded = np.frombuffer(mulaw.decode(convert(riff(high, rate=22050), 4096)), "<i2")
    assert np.max(np.abs(decoded[200:-200])) <= 16  # a 6 kHz tone is silence at 8 kHz, not a 2 kHz alias


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"RIFX" + bytes(40), "not a WAV"),
        (riff(bytes(10), bits=40), "40 bits"),
        (riff(bytes(8), tag=3, bits=32), r"IEEE float \(format tag 0x0003\)"),
        (riff(bytes(8), tag=6, bits=8), "A-law"),
        (riff(bytes(8), tag=7, bits=16), "8 bits per sample"),
        (riff(bytes(8), channels=2, bits=8, align=1), "inconsistent WAV header"),
        (b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00", "before its 'fmt ' chunk"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt \x04\x00\x00\x00abcd", "too short"),
        (b"RIFF\x00\x00\x00\x00WAVEbig " + struct.pack("<I", 1 << 30) + bytes(mulaw.HEADER_LIMIT), "no WAV 'data'"),
        (b"RIFF\x00\x00\x00\x00WAVE", "ended before its header was complete"),
    ],
)
def test_wav_stream_rejects_what_it_cannot_convert(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        convert(data)


def write_pcm_wav(path: Path, channels: list[list[int]], rate: int = 8000, width: int = 2) -> Path:
    """Write 16-bit samples (one list per channel) with the wave module, as PCM of ``width`` bytes."""
    frames = bytearray()
    for frame in zip(*channels, strict=True):
        for sample in frame:
            frames += bytes([(sample >> 8) + 128]) if width == 1 else b"\x00" * (width - 2) + struct.pack("<h", sample)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return path


RAMP = [(i * 37) % 20000 - 10000 for i in range(800)]
OTHER = [(-i * 53) % 30000 - 15000 for i in range(800)]


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_file_pcm_8khz_every_width(tmp_path: Path, width: int) -> None:
    path = write_pcm_wav(tmp_path / "a.wav", [RAMP, OTHER], width=width)
    expected = [[(s >> 8) << 8 for s in ch] for ch in (RAMP, OTHER)] if width == 1 else [RAMP, OTHER]
    assert mulaw.read_wav_as_mulaw(path) == [mulaw.encode(pcm16(ch)) for ch in expected]
    assert mulaw.read_wav_as_mulaw(str(path)) == mulaw.read_wav_as_mulaw(path)


def test_wav_file_resampled(tmp_path: Path) -> None:
    tone = [round(s) for s in sine(16000, 0.5, 440)]
    (channel,) = mulaw.read_wav_as_mulaw(write_pcm_wav(tmp_path / "a.wav", [tone], rate=16000))
    assert channel == convert(riff(pcm16(tone), rate=16000)) and len(channel) == 4000


def test_wav_file_mulaw_passes_through_or_is_resampled(tmp_path: Path) -> None:
    codes = bytes(range(256)) * 4
    (tmp_path / "s.wav").write_bytes(riff(codes, tag=7, channels=2, bits=8))
    assert mulaw.read_wav_as_mulaw(tmp_path / "s.wav") == [codes[0::2], codes[1::2]]
    tone = mulaw.encode(np.rint(sine(16000, 0.5, 440)).astype("<i2").tobytes())
    (tmp_path / "r.wav").write_bytes(riff(tone, tag=7, rate=16000, bits=8))
    (channel,) = mulaw.read_wav_as_mulaw(tmp_path / "r.wav")
    decoded = np.frombuffer(mulaw.decode(channel), "<i2")
    assert len(channel) == 4000 and np.max(np.abs(decoded - sine(8000, 0.5, 440))[200:-200]) <= 10000 / 16


@pytest.mark.parametrize(("tag", "bits"), [(7, 8), (1, 16)])
def test_wav_file_extensible(tmp_path: Path, tag: int, bits: int) -> None:
    data = pcm16(RAMP) if tag == 1 else mulaw.encode(pcm16(RAMP))
    (tmp_path / "x.wav").write_bytes(extensible(riff(data, tag=tag, bits=bits), tag))
    assert mulaw.read_wav_as_mulaw(tmp_path / "x.wav") == [mulaw.encode(pcm16(RAMP))]


def test_wav_file_empty_data(tmp_path: Path) -> None:
    assert mulaw.read_wav_as_mulaw(write_pcm_wav(tmp_path / "a.wav", [[]])) == [b""]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello world, this is not audio", "not a WAV file"),
        (b"", "incomplete WAV file"),
        (riff(b"")[:36], "no 'data' chunk"),
        (riff(bytes(8), tag=6, bits=8), "A-law"),
    ],
)
def test_wav_file_errors_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        mulaw.read_wav_as_mulaw(path)
    assert str(info.value).startswith(f"{path}: ")


def test_wav_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mulaw.read_wav_as_mulaw(tmp_path / "missing.wav")
