"""8 kHz mu-law, Twilio's audio format: the G.711 codec, WAV input, resampling and test signals.

* :func:`encode` / :func:`decode`: G.711 mu-law with the standard library's ``audioop`` (the
  ``audioop-lts`` package provides it from Python 3.13). Its encoder is Sun's reference one: a
  sample keeps only its top 14 bits (``sample & ~3``, so negative samples round towards minus
  infinity) before companding. Decoding is the standard table.
* :class:`WavToMulaw`: a WAV byte stream in, one channel of 8 kHz mu-law out, converted as the
  bytes arrive (the header is parsed by :func:`parse_wav_header` once it is complete).
  :func:`read_wav_as_mulaw` reads a whole file, every channel.
* :class:`Resampler`: anti-aliased streaming resampling with soxr (libsoxr, "HQ" quality).
* :func:`generate_tone` / :func:`generate_silence`: test signals.
"""

from __future__ import annotations

import os
import struct
import sys
import warnings
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soxr

with warnings.catch_warnings():
    # Python 3.11 and 3.12 warn that audioop goes away in 3.13, where audioop-lts takes its place.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "HEADER_LIMIT",
    "SAMPLE_RATE",
    "SILENCE",
    "Resampler",
    "WavHeader",
    "WavToMulaw",
    "decode",
    "encode",
    "generate_silence",
    "generate_tone",
    "parse_wav_header",
    "read_wav_as_mulaw",
]

#: Sample rate of Twilio Media Streams audio.
SAMPLE_RATE: Final = 8000
#: mu-law byte for a zero sample (silence).
SILENCE: Final = 0xFF

_BIG_ENDIAN_HOST = sys.byteorder == "big"  # audioop works in the host's byte order


def encode(pcm16le: bytes | bytearray | memoryview) -> bytes:
    """Encode signed 16-bit little-endian PCM to mu-law, one byte per sample.

    Raises :class:`ValueError` if the input has an odd number of bytes.
    """
    data = memoryview(pcm16le).cast("B")
    if len(data) % 2:
        raise ValueError(f"PCM16 input must have an even number of bytes, got {len(data)}")
    if _BIG_ENDIAN_HOST:  # pragma: no cover - little-endian CI
        data = memoryview(audioop.byteswap(data, 2))
    return audioop.lin2ulaw(data, 2)


def decode(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Decode mu-law bytes to signed 16-bit little-endian PCM (two bytes per sample)."""
    pcm = audioop.ulaw2lin(ulaw, 2)
    return audioop.byteswap(pcm, 2) if _BIG_ENDIAN_HOST else pcm


def generate_silence(seconds: float) -> bytes:
    """Return ``seconds`` of 8 kHz mu-law silence (``0xFF`` bytes)."""
    return bytes([SILENCE]) * _sample_count(seconds)


def generate_tone(seconds: float, freq_hz: float = 440.0, amplitude: float = 0.3) -> bytes:
    """Return ``seconds`` of an 8 kHz mu-law sine tone.

    ``amplitude`` is relative to full scale (0..1). The tone starts at phase 0.
    """
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude must be between 0 and 1, got {amplitude}")
    if not (np.isfinite(freq_hz) and freq_hz >= 0):
        raise ValueError(f"frequency must be a finite number >= 0, got {freq_hz}")
    phase = (2.0 * np.pi * freq_hz / SAMPLE_RATE) * np.arange(_sample_count(seconds))
    return encode(np.rint(amplitude * 32767.0 * np.sin(phase)).astype("<i2").tobytes())


def _sample_count(seconds: float) -> int:
    if not (np.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {seconds}")
    return round(seconds * SAMPLE_RATE)


# --------------------------------------------------------------------------- resampling


class Resampler:
    """Streaming resampler for mono 16-bit samples, anti-aliased (soxr, "HQ" quality).

    :meth:`feed` returns the output the input so far allows; :meth:`finish` flushes the rest.
    Output is delay-compensated (sample 0 is at time 0) and any split of the input gives the same
    output as one :meth:`feed`. For ``n`` input samples the output has about ``n * dst / src``.
    soxr works in float32 here; the output is rounded to the nearest integer and clipped.
    """

    def __init__(self, src_rate: int, dst_rate: int = SAMPLE_RATE) -> None:
        if src_rate < 1 or dst_rate < 1:
            raise ValueError(f"sample rates must be positive, got {src_rate} and {dst_rate}")
        self._stream = soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality="HQ")
        self._finished = False

    def feed(self, samples: npt.ArrayLike) -> npt.NDArray[np.int16]:
        """Add input samples; returns the output samples now available."""
        if self._finished:
            raise ValueError("the resampler was already finished")
        return self._run(samples, last=False)

    def finish(self) -> npt.NDArray[np.int16]:
        """No more input: returns the last output samples."""
        if self._finished:
            return np.zeros(0, np.int16)
        self._finished = True
        return self._run((), last=True)

    def _run(self, samples: npt.ArrayLike, *, last: bool) -> npt.NDArray[np.int16]:
        out: npt.NDArray[np.float32] = self._stream.resample_chunk(np.asarray(samples, np.float32).ravel(), last=last)
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------- WAV input

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_MULAW = 0x0007
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {
    0x0002: "MS ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0055: "MP3",
}
#: Bytes of a WAV stream :class:`WavToMulaw` buffers while looking for the ``data`` chunk.
HEADER_LIMIT: Final = 1 << 20


@dataclass(frozen=True)
class WavHeader:
    """What a WAV header says about the sample data that follows it."""

    encoding: Literal["pcm", "mulaw"]  # PCM: 8-bit unsigned, wider signed little-endian
    channels: int
    rate: int
    sample_width: int  # bytes per sample of one channel
    data_offset: int  # where the samples start
    data_size: int | None  # None: a placeholder size, the data runs to the end of the stream


def parse_wav_header(data: bytes | bytearray) -> WavHeader | None:
    """Parse the RIFF/WAVE header at the start of ``data``; ``None`` until it is complete.

    Chunks before ``data`` other than ``fmt `` are skipped. Accepts integer PCM of 1 to 4 bytes
    and 8-bit mu-law, plain or ``WAVE_FORMAT_EXTENSIBLE``. A ``data`` size of 0, 0xFFFFFFFF or at
    least 0x7F000000 (espeak-ng writes 0x7FFFF000 when streaming) is a placeholder. Raises
    :class:`ValueError` for a header it cannot use.
    """
    if not b"RIFF".startswith(data[:4]) or (len(data) >= 12 and data[8:12] != b"WAVE"):
        raise ValueError("not a WAV file (no RIFF/WAVE header)")
    fmt: tuple[int, int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):  # bounded: every round moves past a chunk
        chunk_id = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV 'data' chunk before its 'fmt ' chunk")
            placeholder = size in (0, 0xFFFFFFFF) or size >= 0x7F000000
            return _checked_header(*fmt, data_offset=pos + 8, data_size=None if placeholder else size)
        if chunk_id == b"fmt ":
            if pos + 8 + size > len(data):
                return None
            fmt = _parse_fmt(bytes(data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return None


def _parse_fmt(body: bytes) -> tuple[int, int, int, int, int]:
    if len(body) < 16:
        raise ValueError("WAV 'fmt ' chunk is too short")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 26:
            raise ValueError("WAV extensible 'fmt ' chunk is too short")
        (tag,) = struct.unpack_from("<H", body, 24)  # the sub-format GUID starts with the plain tag
    return tag, channels, rate, block_align, bits


def _checked_header(
    tag: int, channels: int, rate: int, block_align: int, bits: int, *, data_offset: int, data_size: int | None
) -> WavHeader:
    width = (bits + 7) // 8
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_MULAW):
        kind = _FORMAT_NAMES.get(tag, "unknown")
        raise ValueError(f"unsupported WAV encoding {kind} (format tag 0x{tag:04x}); need integer PCM or mu-law")
    if tag == _WAVE_FORMAT_MULAW and bits != 8:
        raise ValueError(f"mu-law WAV must have 8 bits per sample, header says {bits}")
    if not 1 <= width <= 4:
        raise ValueError(f"unsupported PCM sample size of {bits} bits (need 8, 16, 24 or 32)")
    if channels < 1 or rate < 1:
        raise ValueError(f"WAV header says {channels} channel(s) at {rate} Hz")
    if block_align != channels * width:
        raise ValueError(
            f"inconsistent WAV header (block align {block_align} for {channels} channel(s) of {bits} bits)"
        )
    encoding: Literal["pcm", "mulaw"] = "pcm" if tag == _WAVE_FORMAT_PCM else "mulaw"
    return WavHeader(encoding, channels, rate, width, data_offset, data_size)


class WavToMulaw:
    """Streaming converter: a WAV byte stream in, one of its channels as 8 kHz mu-law out.

    Feed it the stream's bytes as they come; each :meth:`feed` returns the audio they complete.
    Once :attr:`header` is known, PCM is taken to 16 bits (wider samples keep their top two bytes),
    resampled with :class:`Resampler` unless already at 8 kHz, and encoded. Mu-law at 8 kHz passes
    through unchanged. Bytes after a real (non-placeholder) ``data`` size are ignored. Raises
    :class:`ValueError` for a stream it cannot convert.
    """

    def __init__(self, channel: int = 0) -> None:
        self.channel = channel
        self.header: WavHeader | None = None
        self._buffer = bytearray()  # header bytes, then a partial frame
        self._data_left: int | None = None
        self._resampler: Resampler | None = None
        self._fed_anything = False

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add bytes of the WAV stream; returns the mu-law audio they complete."""
        self._fed_anything = self._fed_anything or len(data) > 0
        if self.header is None:
            self._buffer += data
            header = parse_wav_header(self._buffer)
            if header is None:
                if len(self._buffer) > HEADER_LIMIT:
                    raise ValueError(f"no WAV 'data' chunk within the first {HEADER_LIMIT} bytes")
                return b""
            self._start(header)
            data = self._buffer[header.data_offset :]
            self._buffer.clear()
        return self._convert(bytes(data))

    def finish(self) -> bytes:
        """End of stream: returns the last audio. An empty stream gives ``b""``."""
        if not self._fed_anything:
            return b""
        if self.header is None:
            raise ValueError("the WAV stream ended before its header was complete")
        return encode(self._resampler.finish().astype("<i2").tobytes()) if self._resampler else b""

    def _start(self, header: WavHeader) -> None:
        if not 0 <= self.channel < header.channels:
            raise ValueError(f"no channel {self.channel} in a WAV of {header.channels} channel(s)")
        self.header = header
        self._data_left = header.data_size
        if header.rate != SAMPLE_RATE:
            self._resampler = Resampler(header.rate)

    def _convert(self, data: bytes) -> bytes:
        header = self.header
        assert header is not None
        if self._data_left is not None:
            data = data[: self._data_left]
            self._data_left -= len(data)
        self._buffer += data
        frame = header.channels * header.sample_width
        usable = len(self._buffer) - len(self._buffer) % frame
        frames = bytes(self._buffer[:usable])
        del self._buffer[:usable]
        # One row per frame, one column per byte of the wanted channel's sample.
        raw = np.frombuffer(frames, np.uint8).reshape(-1, header.channels, header.sample_width)[:, self.channel]
        if header.encoding == "mulaw":
            if self._resampler is None:
                return raw[:, 0].tobytes()
            samples = np.frombuffer(decode(raw[:, 0].tobytes()), "<i2")
        elif header.sample_width == 1:  # unsigned: becomes the high byte of a signed sample
            samples = (raw[:, 0].astype(np.int16) - 128) << 8
        else:
            samples = np.ascontiguousarray(raw[:, -2:]).view("<i2")[:, 0]
        if self._resampler is not None:
            samples = self._resampler.feed(samples)
        return encode(samples.astype("<i2").tobytes())


def read_wav_as_mulaw(path: str | os.PathLike[str]) -> list[bytes]:
    """Read a WAV file as 8 kHz mu-law, one ``bytes`` per channel.

    Accepts what :func:`parse_wav_header` does, any number of channels, any sample rate (see
    :class:`WavToMulaw`). Raises :class:`ValueError` naming the file for anything it cannot read,
    and :class:`OSError` if the file cannot be opened.
    """
    name = os.fspath(path)
    with open(name, "rb") as file:
        data = file.read()
    try:
        header = parse_wav_header(data)
        if header is None:
            raise ValueError("incomplete WAV file (no 'data' chunk)")
        converters = [WavToMulaw(channel) for channel in range(header.channels)]
        return [converter.feed(data) + converter.finish() for converter in converters]
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
