"""TwiML answers for Twilio's voice webhook, built with Twilio's own library.

Two kinds of call:

* **Transcription** (:func:`transcription_twiml`): ``<Start><Stream track="both_tracks">`` forks
  both legs' audio to ``/twilio`` and lets the TwiML go on; ``<Dial>`` then connects the caller
  to the other party. ``<Start><Stream>`` alone would end the call at once (nothing left to do),
  so without a number to forward to the call is held open with ``<Pause length="hold_s">``
  (default one hour): the caller is transcribed alone, as in dictation, and the call ends when
  they hang up or the pause runs out.
* **Game** (:func:`game_twiml`): ``<Say>`` the prompt, then ``<Connect><Stream>`` to ``/twilio``
  with ``<Parameter name="route" value="game"/>`` (Twilio strips query strings from stream URLs;
  parameters arrive in the ``start`` message's ``customParameters``). ``<Connect>`` is
  bidirectional, so the server can talk back, and holds the call until the server closes the
  WebSocket. Only the caller's (inbound) track is streamed.

Both pass the call's ``From``, ``To`` and ``Direction`` (the voice webhook's form fields, see
:func:`call_parameters`) as ``<Parameter>`` elements of the ``<Stream>``, so the stream's ``start``
carries them into the call store.

``public_url`` is the server's public base URL as Twilio reaches it, e.g.
``https://callscribe.example.com`` (or ``wss://...``, or with a path prefix behind a proxy:
``https://example.com/callscribe``). The stream URL is derived by :func:`stream_url`:
``http`` -> ``ws``, ``https`` -> ``wss``, the path prefix kept and ``/twilio`` appended. Twilio
itself only connects to ``wss://``; ``ws://`` is allowed for local tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from twilio.twiml.voice_response import Connect, Start, VoiceResponse

__all__ = [
    "CALL_PARAMETERS",
    "DEFAULT_GAME_PROMPT",
    "DEFAULT_HOLD_S",
    "STREAM_PATH",
    "call_parameters",
    "game_twiml",
    "stream_url",
    "transcription_twiml",
]

#: Where Twilio's Media Streams connect.
STREAM_PATH: Final = "/twilio"
DEFAULT_GAME_PROMPT: Final = "Please say your game code."
#: How long a transcribed call without a number to forward to is held open, in seconds.
DEFAULT_HOLD_S: Final = 3600
#: Twilio ends calls after four hours; a longer pause would be meaningless.
MAX_HOLD_S: Final = 4 * 3600

#: The voice webhook's form fields that are passed on to the stream as parameters of the same names.
CALL_PARAMETERS: Final = ("From", "To", "Direction")
#: Twilio's limit on a stream parameter's value is generous; a phone number or direction is short.
MAX_PARAMETER_CHARS: Final = 64

#: Characters XML 1.0 cannot hold even escaped (ElementTree writes them raw: Twilio cannot parse that).
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_WS_SCHEMES: Final = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}


def stream_url(public_url: str, path: str = STREAM_PATH) -> str:
    """The WebSocket URL of ``path`` on the server at ``public_url`` (see the module doc).

    Raises :class:`ValueError` for another scheme, a missing host, user credentials, a query
    string or a fragment (Twilio would strip or refuse them).
    """
    text = public_url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # validates the port
    except ValueError as error:
        raise ValueError(f"public URL {public_url!r} is not a valid URL: {error}") from None
    scheme = _WS_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(
            f"public URL {public_url!r} must start with https:// or wss:// (http:// or ws:// for local tests)"
        )
    if not parts.hostname:
        raise ValueError(f"public URL {public_url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"public URL {public_url!r} must not contain credentials")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(
            f"public URL {public_url!r} must not have a query string or fragment (Twilio strips them from stream URLs)"
        )
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    full_path = parts.path.rstrip("/") + "/" + path.lstrip("/")
    return urlunsplit((scheme, netloc, full_path, "", ""))


def call_parameters(form: Mapping[str, str]) -> dict[str, str]:
    """The :data:`CALL_PARAMETERS` a voice webhook's ``form`` has (non-empty, trimmed, at most
    :data:`MAX_PARAMETER_CHARS` characters, without characters XML cannot hold), in that order."""
    found = {}
    for name in CALL_PARAMETERS:
        value = _NOT_XML.sub("", str(form.get(name) or "")).strip()[:MAX_PARAMETER_CHARS]
        if value:
            found[name] = value
    return found


def transcription_twiml(
    public_url: str,
    forward_number: str | None,
    *,
    hold_s: int = DEFAULT_HOLD_S,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """TwiML that transcribes both legs of a call and forwards it to ``forward_number``.

    ``<Start><Stream url="wss://HOST/twilio" track="both_tracks"/></Start>`` then
    ``<Dial>forward_number</Dial>``; with no number (None or blank), ``<Pause length=hold_s/>``
    instead, keeping the call up (1 <= ``hold_s`` <= 14400, else :class:`ValueError`).
    ``parameters`` become ``<Parameter>`` elements of the stream.
    """
    url = stream_url(public_url)
    response = VoiceResponse()
    start = Start()
    stream = start.stream(url=url, track="both_tracks")
    for name, value in (parameters or {}).items():
        stream.parameter(name=name, value=value)
    response.append(start)
    number = (forward_number or "").strip()
    if number:
        response.dial(number)
    else:
        if isinstance(hold_s, bool) or not isinstance(hold_s, int) or not 1 <= hold_s <= MAX_HOLD_S:
            raise ValueError(f"hold_s must be a whole number of seconds from 1 to {MAX_HOLD_S}, got {hold_s!r}")
        response.pause(length=hold_s)
    return str(response.to_xml())


def game_twiml(
    public_url: str, prompt: str = DEFAULT_GAME_PROMPT, *, parameters: Mapping[str, str] | None = None
) -> str:
    """TwiML that asks for a game code and streams the caller to ``/twilio`` on the game route.

    ``<Say>prompt</Say>`` (left out when ``prompt`` is blank) then
    ``<Connect><Stream url="wss://HOST/twilio"><Parameter name="route" value="game"/></Stream></Connect>``,
    with ``parameters`` as more ``<Parameter>`` elements (``route`` is always ``game``).
    """
    url = stream_url(public_url)
    response = VoiceResponse()
    if prompt.strip():
        response.say(prompt.strip())
    connect = Connect()
    stream = connect.stream(url=url)
    stream.parameter(name="route", value="game")
    for name, value in (parameters or {}).items():
        if name != "route":
            stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml())
