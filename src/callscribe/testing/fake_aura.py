"""A fake Deepgram Aura text-to-speech server (``POST /v1/speak``), for tests.

A small HTTP/1.1 server on h11 and trio that answers like Deepgram Aura when asked for raw 8 kHz
mu-law (``encoding=mulaw&sample_rate=8000&container=none``, what
:class:`callscribe.server.speech.AuraEngine` asks for): the "speech" is a 440 Hz tone whose length
follows the text. It can misbehave on request (:class:`FakeAuraBehaviour`) and records every
request (:class:`FakeAuraRequest`)::

    aura = FakeAura(FakeAuraBehaviour(api_key="test-key"))
    await nursery.start(aura.serve)
    engine = AuraEngine("test-key", url=aura.url)
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from callscribe.core.audio import generate_tone

__all__ = ["REQUIRED_AUDIO_PARAMS", "SPEAK_PATH", "FakeAura", "FakeAuraBehaviour", "FakeAuraRequest"]

logger = logging.getLogger(__name__)

SPEAK_PATH: Final = "/v1/speak"
#: The audio format the fake serves; requests asking for another are refused with 400.
REQUIRED_AUDIO_PARAMS: Final = {"encoding": "mulaw", "sample_rate": "8000", "container": "none"}


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
    * ``content_type``: the ``Content-Type`` of the audio answer (not audio: a misdirected URL).
    """

    api_key: str = "test-key"
    reject_status: int | None = None
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    fail_after_chunks: int | None = None
    hold_after_chunks: int | None = None
    chunk_bytes: int = 800
    ms_per_char: int = 50
    content_type: str = "audio/basic"


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
        return generate_tone(seconds, 440.0, 0.3)

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
        for name, wanted in REQUIRED_AUDIO_PARAMS.items():
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
            ("content-type", b.content_type),
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
        record.completed = True  # set first: the client may read the end before send_all returns
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return True
