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
* :class:`EspeakEngine` (speech_espeak.py): the local ``espeak-ng`` program (no account needed; robotic voice). It
  writes a 22050 Hz 16-bit mono WAV stream to stdout, converted as it arrives by
  :class:`callscribe.core.audio.WavToMulaw` (anti-aliased resampling to 8 kHz, then mu-law).
* :func:`engine_from_settings` picks Aura when a Deepgram key is set, espeak-ng otherwise.

A fake Aura for tests is :class:`callscribe.testing.fake_aura.FakeAura`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final, Literal

import httpx

from callscribe.core.deepgram import api_key_problem
from callscribe.server.speech_engine import ERROR_BODY_LIMIT, NoAudio, SpeechEngine, SpeechError
from callscribe.server.speech_espeak import ESPEAK_MAX_TEXT_BYTES, EspeakEngine

__all__ = [
    "AURA_AUDIO_PARAMS",
    "DEFAULT_AURA_MODEL",
    "DEFAULT_AURA_URL",
    "ESPEAK_MAX_TEXT_BYTES",
    "AuraEngine",
    "EspeakEngine",
    "SpeechEngine",
    "SpeechError",
    "engine_from_settings",
]

logger = logging.getLogger(__name__)

DEFAULT_AURA_URL: Final = "https://api.deepgram.com/v1/speak"
DEFAULT_AURA_MODEL: Final = "aura-2-thalia-en"
#: Query parameters always sent to Aura: Twilio's audio format, without a container.
AURA_AUDIO_PARAMS: Final = {"encoding": "mulaw", "sample_rate": "8000", "container": "none"}

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
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
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
    status (``.status``) and Deepgram's error text, as does an answer that is text or JSON rather
    than audio (a URL that is not Aura's); a connection failure or timeout raises it on entering;
    a stream that breaks off raises it from the iteration.
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
        if problem := api_key_problem(api_key):
            raise ValueError(f"the Deepgram API key {problem}")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"Aura URL must be an http(s) URL, got {url!r}")
        self._api_key = api_key
        self.model = model
        self.url = str(parsed.copy_merge_params({"model": model, **AURA_AUDIO_PARAMS}))
        self._timeout = httpx.Timeout(timeout)
        # One client for every Say, made now: making one loads the CA bundle (30-60 ms measured,
        # on the event loop, holding up every call of the process), and reuses the connection.
        self._owned = client is None
        self._client = httpx.AsyncClient(timeout=self._timeout) if client is None else client

    async def aclose(self) -> None:
        """Close the HTTP client this engine made (not one it was given)."""
        if self._owned:
            await self._client.aclose()

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Speak ``text``: yields an async iterator of mu-law chunks (see the class doc)."""
        if not text.strip():
            yield NoAudio()
            return
        async with AsyncExitStack() as stack:
            client = self._client
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
                    body = await _read_limited(response, ERROR_BODY_LIMIT)
            except httpx.HTTPError as error:
                raise SpeechError(f"Deepgram Aura request failed: {_describe_http_error(error)}") from error
            if not response.is_success:
                raise SpeechError(
                    _aura_error_message(response.status_code, body, response.headers), status=response.status_code
                )
            if not_audio := _not_audio(response.headers.get("content-type", "")):
                message = f"Deepgram Aura answered {response.status_code} with {not_audio}, not audio"
                raise SpeechError(message, status=response.status_code)
            audio = _ResponseAudio(response)
            stack.push_async_callback(audio.aclose)
            yield audio


def _not_audio(content_type: str) -> str:
    """The media type of an answer that is text (JSON, XML, ...: as mu-law, loud noise), else ""."""
    kind = content_type.partition(";")[0].strip().lower()
    return kind if kind.startswith("text/") or kind.endswith(("/json", "+json", "/xml", "+xml")) else ""


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_bytes():  # bounded by `limit`
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


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
