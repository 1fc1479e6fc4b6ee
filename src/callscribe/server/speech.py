"""Text to speech for talking back to callers: raw 8 kHz mu-law audio, streamed as it is made.

Every engine has the same small interface (:class:`SpeechEngine`)::

    async with engine.synthesize("Welcome to the game.") as audio:
        async for chunk in audio:      # bytes of 8 kHz mu-law, no header, any length >= 1
            ...                        # e.g. base64 into a Twilio "media" message

Chunks are yielded as soon as they exist, so playback can start before synthesis ends. Leaving
the ``async with`` early (barge-in, cancellation) stops the synthesis and frees its resources.
Failures raise :class:`SpeechError` with a message fit for a log line: on entering the block when
the engine cannot start (espeak-ng missing, Deepgram refused the request), or from the iteration
when it breaks down mid-way. Blank text gives no audio and no error.

Engines:

* :class:`AuraEngine`: Deepgram Aura (``POST /v1/speak``), streamed with httpx, which runs under
  trio through anyio. Asks for ``encoding=mulaw&sample_rate=8000&container=none``: Twilio's
  format, no conversion needed.
* :class:`EspeakEngine`: the local ``espeak-ng`` program (no account needed; robotic voice). It
  writes a 22050 Hz 16-bit mono WAV stream to stdout, converted here as it arrives by
  :class:`WavToMulaw` (header parser, :class:`LinearResampler`, :func:`callscribe.core.audio.encode`).
* :func:`engine_from_settings` picks Aura when a Deepgram key is set, espeak-ng otherwise.

:class:`FakeAura` is a fake of Deepgram's ``/v1/speak`` for tests (a small HTTP/1.1 server on
h11 and trio), with misbehaviour options.
"""

from __future__ import annotations

import array
import json
import logging
import math
import os
import shutil
import struct
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit

import h11
import httpx
import trio

from callscribe.core import audio as mulaw

__all__ = [
    "DEFAULT_AURA_MODEL",
    "DEFAULT_AURA_URL",
    "ESPEAK_MAX_TEXT_BYTES",
    "AuraEngine",
    "EspeakEngine",
    "FakeAura",
    "FakeAuraBehaviour",
    "FakeAuraRequest",
    "LinearResampler",
    "SpeechEngine",
    "SpeechError",
    "WavToMulaw",
    "engine_from_settings",
]

logger = logging.getLogger(__name__)

DEFAULT_AURA_URL: Final = "https://api.deepgram.com/v1/speak"
DEFAULT_AURA_MODEL: Final = "aura-2-thalia-en"
#: Query parameters always sent to Aura: Twilio's audio format, without a container.
AURA_AUDIO_PARAMS: Final = {"encoding": "mulaw", "sample_rate": "8000", "container": "none"}

_BIG_ENDIAN_HOST = sys.byteorder == "big"
_ERROR_BODY_LIMIT = 4096
#: Longest text :class:`EspeakEngine` speaks (it goes on the command line; Linux allows 128 KiB).
ESPEAK_MAX_TEXT_BYTES: Final = 100_000


class SpeechError(Exception):
    """Speech could not be produced; ``str()`` says why. ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class SpeechEngine(Protocol):
    """A text-to-speech engine producing 8 kHz mu-law (see the module documentation)."""

    name: str

    def synthesize(self, text: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """An async context manager giving an async iterator of mu-law chunks for ``text``."""
        ...


class _NoAudio:
    """The audio of blank text."""

    def __aiter__(self) -> _NoAudio:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


# ---------------------------------------------------------------------------------------------
# Sans-IO audio conversion
# ---------------------------------------------------------------------------------------------


class LinearResampler:
    """Streaming linear-interpolation resampler for mono 16-bit samples.

    Output sample ``k`` lies at input position ``k * src_rate / dst_rate``, interpolated
    between its two neighbours and rounded half up, in exact integer arithmetic. The state
    (position and the input samples still needed) carries over between :meth:`feed` calls, so
    any split of the input into chunks gives exactly the same output as one call: no clicks at
    chunk boundaries. After :meth:`finish` the output has ``floor(n * dst_rate / src_rate)``
    samples for ``n`` input samples; an output point past the last input sample repeats it.
    No anti-alias filter (speech from espeak-ng has little energy above 4 kHz).
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        if src_rate < 1 or dst_rate < 1:
            raise ValueError(f"sample rates must be positive, got {src_rate} and {dst_rate}")
        g = math.gcd(src_rate, dst_rate)
        self._src, self._dst = src_rate // g, dst_rate // g
        self._pending = array.array("h")  # input samples from index self._base on
        self._base = 0
        self._k = 0  # next output sample
        self._finished = False

    def feed(self, samples: Sequence[int]) -> array.array[int]:
        """Add input samples; returns every output sample that can now be computed."""
        if self._finished:
            raise ValueError("the resampler was already finished")
        self._pending.extend(samples)
        return self._run(final=False)

    def finish(self) -> array.array[int]:
        """No more input: returns the last output samples."""
        if self._finished:
            return array.array("h")
        self._finished = True
        return self._run(final=True)

    def _run(self, *, final: bool) -> array.array[int]:
        src, dst, base, pending = self._src, self._dst, self._base, self._pending
        total = base + len(pending)  # input samples seen so far
        stop = total * dst // src  # the output count once the input ends here
        if not final and total:
            # Output k needs input j + 1 (j = k*src // dst) unless it falls on sample j, i.e.
            # it can be computed once k*src <= (total - 1)*dst.
            stop = min(stop, (total - 1) * dst // src + 1)
        out = array.array("h", bytes(2 * max(stop - self._k, 0)))
        k = self._k
        for index in range(len(out)):
            j, rem = divmod(k * src, dst)
            a = pending[j - base]
            if rem and j + 1 < total:
                b = pending[j + 1 - base]
                a += ((b - a) * rem + dst // 2) // dst
            out[index] = a
            k += 1
        self._k = k
        keep_from = min((k * src) // dst, total) - base  # first input sample still needed
        if keep_from > 0:
            del pending[:keep_from]
            self._base = base + keep_from
        return out


_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_HEADER_LIMIT = 1 << 20  # bytes of chunks before "data" we are willing to skip or buffer


class WavToMulaw:
    """Streaming converter: a 16-bit PCM WAV byte stream in, 8 kHz mu-law out.

    Parses the RIFF header incrementally (chunks before ``data`` are skipped, ``fmt `` must be
    PCM or extensible PCM, 16 bits, any rate, any number of channels; only the first channel is
    kept), then resamples (:class:`LinearResampler`) and encodes. A ``data`` size of 0,
    0xFFFFFFFF or at least 0x7F000000 (espeak-ng writes 0x7FFFF000 when streaming to stdout) is
    a placeholder meaning "until the end of the stream"; any other size is honoured and bytes
    after the data are ignored. Raises :class:`ValueError` for anything it cannot convert.
    """

    def __init__(self, dst_rate: int = mulaw.SAMPLE_RATE) -> None:
        self._dst_rate = dst_rate
        self._buffer = bytearray()  # header bytes not parsed yet, or a partial frame
        self._riff_seen = False
        self._skip = 0  # bytes of a skipped chunk still to drop
        self._fmt: tuple[int, int] | None = None  # (channels, rate)
        self._in_data = False
        self._data_left: int | None = None  # None: until the end of the stream
        self._resampler: LinearResampler | None = None
        self._header_bytes = 0
        self._fed_anything = False

    @property
    def sample_rate(self) -> int | None:
        """The WAV's sample rate, once its header was read."""
        return self._fmt[1] if self._fmt else None

    @property
    def channels(self) -> int | None:
        """The WAV's channel count, once its header was read."""
        return self._fmt[0] if self._fmt else None

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add bytes of the WAV stream; returns the mu-law audio they complete."""
        data = bytes(data)
        if data:
            self._fed_anything = True
        if self._in_data:
            return self._audio(data)
        self._buffer += data
        self._header_bytes += len(data)
        if self._header_bytes > _HEADER_LIMIT:
            raise ValueError(f"no WAV 'data' chunk within the first {_HEADER_LIMIT} bytes")
        self._parse_header()
        if self._in_data:
            rest = bytes(self._buffer)
            self._buffer.clear()
            return self._audio(rest)
        return b""

    def finish(self) -> bytes:
        """End of stream: returns the last audio. An empty stream gives ``b""``."""
        if not self._fed_anything:
            return b""
        if not self._in_data:
            raise ValueError("the WAV stream ended before its header was complete")
        assert self._resampler is not None
        return self._encode(self._resampler.finish())

    def _parse_header(self) -> None:
        buf = self._buffer
        if not self._riff_seen:
            if len(buf) < 12:
                return
            if buf[0:4] != b"RIFF" or buf[8:12] != b"WAVE":
                raise ValueError("not a WAV stream (no RIFF/WAVE header)")
            del buf[:12]
            self._riff_seen = True
        # Each round consumes at least 8 buffered bytes or returns.
        for _ in range(len(buf) // 8 + 1):
            if self._skip:
                dropped = min(self._skip, len(buf))
                del buf[:dropped]
                self._skip -= dropped
                if self._skip:
                    return
            if len(buf) < 8:
                return
            chunk_id = bytes(buf[0:4])
            (size,) = struct.unpack_from("<I", buf, 4)
            if chunk_id == b"data":
                if self._fmt is None:
                    raise ValueError("WAV 'data' chunk before its 'fmt ' chunk")
                del buf[:8]
                placeholder = size in (0, 0xFFFFFFFF) or size >= 0x7F000000
                self._data_left = None if placeholder else size
                self._in_data = True
                self._resampler = LinearResampler(self._fmt[1], self._dst_rate)
                return
            if size > _HEADER_LIMIT:
                raise ValueError(f"WAV chunk {chunk_id!r} before the audio is too large ({size} bytes)")
            if chunk_id == b"fmt ":
                if len(buf) < 8 + size:
                    return  # wait for the whole chunk
                self._fmt = _parse_fmt(bytes(buf[8 : 8 + size]))
                del buf[: 8 + size]
                self._skip = size & 1  # pad byte
            else:
                del buf[:8]
                self._skip = size + (size & 1)

    def _audio(self, data: bytes) -> bytes:
        if self._data_left is not None:
            data = data[: self._data_left]
            self._data_left -= len(data)
        if not data:
            return b""
        assert self._fmt is not None and self._resampler is not None
        channels = self._fmt[0]
        frame = 2 * channels
        self._buffer += data
        usable = len(self._buffer) - len(self._buffer) % frame
        if not usable:
            return b""
        samples = array.array("h", bytes(self._buffer[:usable]))
        del self._buffer[:usable]
        if _BIG_ENDIAN_HOST:  # pragma: no cover - little-endian CI
            samples.byteswap()
        if channels > 1:
            samples = samples[::channels]
        return self._encode(self._resampler.feed(samples))

    @staticmethod
    def _encode(samples: array.array[int]) -> bytes:
        if not samples:
            return b""
        if _BIG_ENDIAN_HOST:  # pragma: no cover
            samples = array.array("h", samples)
            samples.byteswap()
        return mulaw.encode(samples.tobytes())


def _parse_fmt(body: bytes) -> tuple[int, int]:
    if len(body) < 16:
        raise ValueError("WAV 'fmt ' chunk is too short")
    tag, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        (tag,) = struct.unpack_from("<H", body, 24)
    if tag != _WAVE_FORMAT_PCM:
        raise ValueError(f"unsupported WAV encoding (format tag 0x{tag:04x}); need PCM")
    if bits != 16:
        raise ValueError(f"unsupported WAV sample size of {bits} bits; need 16")
    if channels < 1 or rate < 1:
        raise ValueError(f"WAV header says {channels} channel(s) at {rate} Hz")
    return channels, rate


# ---------------------------------------------------------------------------------------------
# Deepgram Aura
# ---------------------------------------------------------------------------------------------


class _ResponseAudio:
    """The body of a streamed Aura response, as mu-law chunks; transport errors -> SpeechError."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()

    def __aiter__(self) -> _ResponseAudio:
        return self

    async def __anext__(self) -> bytes:
        # Bounded: each round consumes a chunk of the (finite) response body.
        while True:
            try:
                chunk = await self._chunks.__anext__()
            except httpx.HTTPError as error:
                raise SpeechError(f"Deepgram Aura stream broke off: {_describe_http_error(error)}") from error
            if chunk:
                return chunk

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


def _describe_http_error(error: httpx.HTTPError) -> str:
    kind = type(error).__name__
    text = str(error)
    return f"{kind}: {text}" if text else kind


def _aura_error_message(status: int, body: bytes, headers: httpx.Headers) -> str:
    """``Deepgram Aura answered 401: INVALID_AUTH: Invalid credentials.`` from an error response."""
    detail = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [
            str(data[k])
            for k in ("err_code", "category", "err_msg", "message", "reason", "details")
            if isinstance(data.get(k), (str, int)) and str(data[k]).strip()
        ]
        detail = ": ".join(dict.fromkeys(parts))  # drop repeats, keep order
    if not detail:
        detail = body.decode("utf-8", "replace").strip()
    if not detail:
        detail = headers.get("dg-error", "") or "no details"
    if len(detail) > 300:
        detail = detail[:297] + "..."
    request_id = headers.get("dg-request-id")
    suffix = f" (request id {request_id})" if request_id else ""
    return f"Deepgram Aura answered {status}: {detail}{suffix}"


class AuraEngine:
    """Deepgram Aura text to speech (``POST /v1/speak``), streamed.

    Sends ``{"text": ...}`` with ``Authorization: Token <api_key>`` to ``url`` with ``model``
    and :data:`AURA_AUDIO_PARAMS` added to its query (other query parameters of ``url`` are
    kept). ``timeout`` (seconds) bounds connecting and each wait for data. Pass a shared
    ``client`` to reuse connections between requests (it is not closed here); without one each
    :meth:`synthesize` opens and closes its own.

    Errors: a non-2xx answer raises :class:`SpeechError` on entering ``synthesize`` with the
    status (``.status``) and Deepgram's error text; a connection failure or timeout raises it on
    entering; a stream that breaks off raises it from the iteration.
    """

    name = "aura"

    def __init__(
        self,
        api_key: str,
        *,
        url: str = DEFAULT_AURA_URL,
        model: str = DEFAULT_AURA_MODEL,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("Deepgram Aura needs an API key")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"Aura URL must be an http(s) URL, got {url!r}")
        self._api_key = api_key
        self.model = model
        self.url = str(parsed.copy_merge_params({"model": model, **AURA_AUDIO_PARAMS}))
        self._client = client
        self._timeout = httpx.Timeout(timeout)

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Speak ``text``: yields an async iterator of mu-law chunks (see the class doc)."""
        if not text.strip():
            yield _NoAudio()
            return
        async with AsyncExitStack() as stack:
            client = self._client
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(timeout=self._timeout))
            try:
                response = await stack.enter_async_context(
                    client.stream(
                        "POST",
                        self.url,
                        json={"text": text},
                        headers={"Authorization": f"Token {self._api_key}", "Accept": "audio/*"},
                        timeout=self._timeout,
                    )
                )
                if not response.is_success:
                    body = await _read_limited(response, _ERROR_BODY_LIMIT)
            except httpx.HTTPError as error:
                raise SpeechError(f"Deepgram Aura request failed: {_describe_http_error(error)}") from error
            if not response.is_success:
                raise SpeechError(
                    _aura_error_message(response.status_code, body, response.headers), status=response.status_code
                )
            audio = _ResponseAudio(response)
            stack.push_async_callback(audio.aclose)
            yield audio


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():  # bounded by `limit`
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


# ---------------------------------------------------------------------------------------------
# espeak-ng
# ---------------------------------------------------------------------------------------------


class _EspeakAudio:
    """espeak-ng's stdout converted to mu-law as it arrives."""

    def __init__(self, process: trio.Process, program: str) -> None:
        self.process = process
        self._program = program
        self._decoder = WavToMulaw()
        self._ended = False

    def __aiter__(self) -> _EspeakAudio:
        return self

    async def __anext__(self) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        # Bounded: each round reads from a pipe that ends when the process does.
        while not self._ended:
            data = await stdout.receive_some(65536)
            if not data:
                self._ended = True
                return await self._end()
            out = self._convert(self._decoder.feed, data)
            if out:
                return out
        raise StopAsyncIteration

    async def _end(self) -> bytes:
        status = await self.process.wait()
        if status != 0:
            message = " ".join((await self._stderr_text()).split()) or "no message"
            raise SpeechError(f"{self._program} failed (exit status {status}): {message}")
        tail = self._convert(self._decoder.finish)
        if tail:
            return tail
        raise StopAsyncIteration

    def _convert(self, step: Callable[..., bytes], *data: bytes) -> bytes:
        """One step of turning the program's audio into 8 kHz mu-law; bad audio is a SpeechError."""
        try:
            return step(*data)
        except ValueError as error:
            raise SpeechError(f"{self._program} wrote audio that cannot be converted: {error}") from error

    async def _stderr_text(self) -> str:
        """What the (exited) process wrote to stderr: a line or two, far below a pipe's buffer."""
        stderr = self.process.stderr
        assert stderr is not None
        text = bytearray()
        with trio.move_on_after(1):
            while len(text) < _ERROR_BODY_LIMIT and (chunk := await stderr.receive_some(4096)):
                text += chunk
        return text[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")


class EspeakEngine:
    """Local text to speech with the ``espeak-ng`` program.

    Runs ``espeak-ng --stdout -v VOICE [-s RATE] -- TEXT`` (after ``--`` text starting with
    ``-`` is never an option) and converts its WAV output (22050 Hz, 16-bit mono) to 8 kHz
    mu-law as it streams. ``rate`` is in words per minute (espeak-ng's default is 175). Text
    goes on the command line, so it is limited to :data:`ESPEAK_MAX_TEXT_BYTES` of UTF-8.
    A missing program or too long a text raises :class:`SpeechError` on entering
    ``synthesize``; a failing program (e.g. an unknown voice) raises it from the iteration with
    espeak-ng's message. Leaving the block early or being cancelled kills the process.
    """

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", rate: int | None = None, executable: str = "espeak-ng") -> None:
        if rate is not None and not 1 <= rate <= 1000:
            raise ValueError(f"espeak-ng rate must be 1..1000 words per minute, got {rate}")
        if not voice or voice.startswith("-"):
            raise ValueError(f"bad espeak-ng voice {voice!r}")
        self.voice = voice
        self.rate = rate
        self.executable = executable

    def available(self) -> bool:
        """Whether the program can be found (to warn at start-up rather than on first use)."""
        return shutil.which(self.executable) is not None

    def command(self, text: str, program: str | None = None) -> list[str]:
        """The command line that speaks ``text``."""
        cmd = [program or self.executable, "--stdout", "-v", self.voice]
        if self.rate is not None:
            cmd += ["-s", str(self.rate)]
        return [*cmd, "--", text.replace("\0", " ")]

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Speak ``text``: yields an async iterator of mu-law chunks (see the class doc)."""
        if not text.strip():
            yield _NoAudio()
            return
        size = len(text.encode("utf-8"))
        if size > ESPEAK_MAX_TEXT_BYTES:
            raise SpeechError(f"text too long for espeak-ng ({size} bytes of UTF-8; at most {ESPEAK_MAX_TEXT_BYTES})")
        program = shutil.which(self.executable)
        if program is None:
            raise SpeechError(
                f"{self.executable} is not installed (not found on PATH); install espeak-ng "
                "or set a Deepgram API key to use Deepgram Aura"
            )
        try:
            process = await trio.lowlevel.open_process(
                self.command(text, program),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            raise SpeechError(f"cannot run {program}: {error}") from error
        try:
            yield _EspeakAudio(process, os.path.basename(program))
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(5):
                    await process.wait()  # reaps it
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()


# ---------------------------------------------------------------------------------------------
# Choosing an engine
# ---------------------------------------------------------------------------------------------


def engine_from_settings(
    deepgram_api_key: str | None,
    *,
    aura_url: str | None = None,
    prefer: Literal["auto", "aura", "espeak"] = "auto",
    aura_model: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> AuraEngine | EspeakEngine:
    """The speech engine to use: Deepgram Aura when a key is set, espeak-ng otherwise.

    ``prefer="aura"`` insists on Aura (:class:`ValueError` without a key); ``prefer="espeak"``
    uses espeak-ng even with a key. ``aura_url``/``aura_model``/``client`` configure Aura.
    """
    if prefer not in ("auto", "aura", "espeak"):
        raise ValueError(f"speech engine must be auto, aura or espeak, got {prefer!r}")
    key = (deepgram_api_key or "").strip()
    if prefer == "espeak" or (prefer == "auto" and not key):
        return EspeakEngine()
    if not key:
        raise ValueError("Deepgram Aura speech needs a Deepgram API key")
    return AuraEngine(
        key,
        url=aura_url or DEFAULT_AURA_URL,
        model=aura_model or DEFAULT_AURA_MODEL,
        client=client,
    )


# ---------------------------------------------------------------------------------------------
# A fake Deepgram Aura, for tests
# ---------------------------------------------------------------------------------------------

SPEAK_PATH: Final = "/v1/speak"


@dataclass
class FakeAuraBehaviour:
    """How :class:`FakeAura` answers.

    * ``api_key``: the only key accepted (``Authorization: Token <key>``); others get 401.
    * ``reject_status``: answer every request with this error status (after the key check).
    * ``first_byte_delay_s``: wait this long before answering (slow first byte).
    * ``chunk_delay_s``: wait this long between audio chunks.
    * ``fail_after_chunks``: drop the connection after this many chunks, mid-body.
    * ``hold_after_chunks``: after this many chunks, wait for :meth:`FakeAura.release`.
    * ``chunk_bytes``: bytes of audio per chunk (800 = 100 ms).
    * ``ms_per_char``: audio length per character of text (at least one chunk's worth).
    """

    api_key: str = "test-key"
    reject_status: int | None = None
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    fail_after_chunks: int | None = None
    hold_after_chunks: int | None = None
    chunk_bytes: int = 800
    ms_per_char: int = 50


@dataclass
class FakeAuraRequest:
    """One request :class:`FakeAura` received, and how it was answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    text: str | None
    status: int = 0
    chunks_sent: int = 0  # audio chunks handed to the connection
    bytes_sent: int = 0
    completed: bool = False  # the whole body was sent


class _Reject(Exception):
    def __init__(self, status: int, err_code: str, err_msg: str) -> None:
        super().__init__(err_msg)
        self.status, self.err_code, self.err_msg = status, err_code, err_msg


_MAX_REQUESTS_PER_CONNECTION = 1000
_MAX_BODY = 1 << 20


class FakeAura:
    """A fake Deepgram Aura ``POST /v1/speak`` on loopback (HTTP/1.1, chunked responses).

    Checks the key, the method and path, the query (``encoding=mulaw``, ``sample_rate=8000``,
    ``container=none`` and a ``model``) and the JSON body ``{"text": "..."}``; refusals are
    JSON ``{"err_code", "err_msg", "request_id"}`` like Deepgram's. It answers with
    :meth:`expected_audio` of the text (a 440 Hz tone, ``ms_per_char`` per character) in chunks
    of ``chunk_bytes``, and misbehaves as :class:`FakeAuraBehaviour` says. Every request is
    recorded in :attr:`requests`.
    """

    def __init__(self, behaviour: FakeAuraBehaviour | None = None) -> None:
        self.behaviour = behaviour if behaviour is not None else FakeAuraBehaviour()
        self.requests: list[FakeAuraRequest] = []
        self.port = 0
        self._released = trio.Event()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/v1/speak``; valid once serving."""
        return f"http://127.0.0.1:{self.port}{SPEAK_PATH}"

    def release(self) -> None:
        """Let responses held by ``hold_after_chunks`` go on."""
        self._released.set()

    def expected_audio(self, text: str) -> bytes:
        """The mu-law audio answered for ``text``."""
        b = self.behaviour
        seconds = max(len(text) * b.ms_per_char, b.chunk_bytes // 8) / 1000
        return mulaw.generate_tone(seconds, 440.0, 0.3)

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; ``task_status.started(port)``."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(self.port)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            for _ in range(_MAX_REQUESTS_PER_CONNECTION):
                received = await self._receive_request(conn, stream)
                if received is None:
                    return
                keep_open = await self._answer(conn, stream, *received)
                if not keep_open or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as error:
            logger.debug("fake Aura: connection ended: %r", error)
        finally:
            await stream.aclose()

    @staticmethod
    async def _receive_request(conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request, bytes] | None:
        request: h11.Request | None = None
        body = bytearray()
        for _ in range(_MAX_BODY):  # bounded: every round consumes an event or some bytes
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            else:  # ConnectionClosed
                return None
        return None

    def _check(self, record: FakeAuraRequest, body: bytes) -> str:
        """The text to speak, or raises _Reject like Deepgram would."""
        b = self.behaviour
        auth = record.headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "token" or key.strip() != b.api_key:
            raise _Reject(401, "INVALID_AUTH", "Invalid credentials.")
        if b.reject_status is not None:
            raise _Reject(b.reject_status, "REJECTED", f"Rejected by the fake (status {b.reject_status}).")
        if record.path != SPEAK_PATH:
            raise _Reject(404, "NOT_FOUND", f"No such endpoint: {record.path}")
        if record.method != "POST":
            raise _Reject(405, "METHOD_NOT_ALLOWED", "Use POST.")
        for name, wanted in AURA_AUDIO_PARAMS.items():
            if record.query.get(name) != wanted:
                raise _Reject(400, "Bad Request", f"{name} must be {wanted}, got {record.query.get(name)!r}")
        if not record.query.get("model"):
            raise _Reject(400, "Bad Request", "model is required")
        try:
            data = json.loads(body)
        except ValueError:
            raise _Reject(
                400, "Bad Request", "Content-type was application/json, but we could not process the JSON payload."
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
            raise _Reject(400, "Bad Request", "text must be a non-empty string")
        text: str = data["text"]
        record.text = text
        return text

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes) -> bool:
        target = urlsplit(request.target.decode("ascii", "replace"))
        record = FakeAuraRequest(
            method=request.method.decode("ascii", "replace"),
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
            text=None,
        )
        self.requests.append(record)
        b = self.behaviour
        request_id = str(uuid.uuid4())
        if b.first_byte_delay_s:
            await trio.sleep(b.first_byte_delay_s)
        try:
            text = self._check(record, body)
        except _Reject as reject:
            record.status = reject.status
            payload = json.dumps(
                {"err_code": reject.err_code, "err_msg": reject.err_msg, "request_id": request_id}
            ).encode()
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(payload))),
                ("dg-request-id", request_id),
                ("dg-error", reject.err_msg),
            ]
            await stream.send_all(conn.send(h11.Response(status_code=reject.status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=payload)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return True
        record.status = 200
        headers = [
            ("content-type", "audio/basic"),
            ("dg-request-id", request_id),
            ("dg-model-name", record.query.get("model", "")),
            ("dg-char-count", str(len(text))),
        ]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        audio = self.expected_audio(text)
        size = max(b.chunk_bytes, 1)
        for offset in range(0, len(audio), size):
            if b.fail_after_chunks is not None and record.chunks_sent >= b.fail_after_chunks:
                await stream.aclose()  # abrupt: no terminating chunk
                return False
            if b.hold_after_chunks is not None and record.chunks_sent == b.hold_after_chunks:
                await self._released.wait()
            if record.chunks_sent and b.chunk_delay_s:
                await trio.sleep(b.chunk_delay_s)
            chunk = audio[offset : offset + size]
            record.chunks_sent += 1  # counted first: the client may read it before send_all returns
            record.bytes_sent += len(chunk)
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        record.completed = True
        return True
