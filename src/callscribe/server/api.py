"""The REST API over the call store: `/api/calls`, one call, its transcript, and erasing it.

- `GET /api/calls?q=&number=&since=&until=&live=&limit=&cursor=`  calls newest first (core/call_query.py)
- `GET /api/calls/{callSid}`                   the call and its utterances
- `GET /api/calls/{callSid}/transcript.{txt,vtt,srt,json}`  the transcript (core/transcript.py)
- `DELETE /api/calls/{callSid}`                erase an ended call and everything kept of it

Access is `/client`'s: a bearer token (header, `?token=` or the browser subprotocol is not possible
over HTTP: header or query), and allowed Origins; a token limited to one call sees that call only.
Every error is JSON, `{"error": "..."}`, with its status: 400 a bad parameter, 401 no or a bad
token, 403 an Origin not allowed or a token for another call, 404 no such call (or no store), 409
erasing a live call, 503 the database cannot answer now.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from quart import Quart, Request, Response, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from callscribe.core.access import Access, Verdict
from callscribe.core.call_query import BadQuery, encode_cursor, parse_query
from callscribe.core.call_record import StoredCall
from callscribe.core.transcript import FORMATS, Utterance, export
from callscribe.core.twilio import MAX_SID_LENGTH
from callscribe.server.store import Deleted, StoreUnavailable

if TYPE_CHECKING:
    from callscribe.server.store_writer import StoreRecorder

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class CallsApi:
    def __init__(self, access: Access, store: StoreRecorder | None) -> None:
        self.access = access
        self.store = store

    def _admit(self, http_request: Request) -> Verdict | Response:
        verdict, _ = self.access.check_client(http_request.headers, http_request.query_string.decode("latin-1"))
        if not verdict.ok:
            status = verdict.status
            log.warning("refused an API request from %s: %s", http_request.remote_addr or "unknown", verdict.reason)
            return error(status, verdict.reason)
        if self.store is None:
            return error(404, "no call store: this server runs with --store none")
        return verdict

    def _store(self) -> StoreRecorder:
        assert self.store is not None
        return self.store

    async def list_calls(self, http_request: Request) -> Response:
        verdict = self._admit(http_request)
        if isinstance(verdict, Response):
            return verdict
        try:
            query = parse_query(http_request.args.to_dict(), call_sid=verdict.call_sid)
        except BadQuery as bad:
            return error(400, str(bad))
        store = self._store()
        try:
            calls, after = await store.in_thread(store.engine.list_calls, query)
        except StoreUnavailable as failure:
            return self._unavailable(failure)
        return jsonify(
            {"calls": [call.summary() for call in calls], "next": encode_cursor(after) if after is not None else None}
        )

    def _call_for(self, http_request: Request, call_sid: str, *, erase: bool = False) -> Response | None:
        """None if the request may see (or `erase`) `call_sid`, else the error to answer. A token
        limited to one call is a viewer's: it may read that call, not erase it."""
        verdict = self._admit(http_request)
        if isinstance(verdict, Response):
            return verdict
        if verdict.call_sid is not None and verdict.call_sid != call_sid:
            return error(403, "this token is not valid for that call")
        if erase and verdict.call_sid is not None:
            return error(403, "a token limited to one call cannot erase it")
        if len(call_sid) > MAX_SID_LENGTH or not call_sid.isprintable():  # no call has such an id
            return error(404, f"unknown call: {call_sid[:64]!r}")
        return None

    async def _read_call(self, call_sid: str) -> tuple[StoredCall, list[Utterance]] | Response:
        """The call and its utterances, else the error to answer (404 unknown, 503 unavailable)."""
        store = self._store()
        try:
            call = await store.in_thread(store.engine.get_call, call_sid)
            utterances = [] if call is None else await store.in_thread(store.engine.utterances, call_sid)
        except StoreUnavailable as failure:
            return self._unavailable(failure)
        if call is None:
            return error(404, f"unknown call: {call_sid[:64]!r}")
        return call, utterances

    async def get_call(self, http_request: Request, call_sid: str) -> Response:
        refused = self._call_for(http_request, call_sid)
        if refused is not None:
            return refused
        found = await self._read_call(call_sid)
        if isinstance(found, Response):
            return found
        call, utterances = found
        details = call.json()
        details["utterances"] = [u.json() for u in utterances if u.text]
        return jsonify(details)

    async def transcript(self, http_request: Request, call_sid: str, kind: str) -> Response:
        refused = self._call_for(http_request, call_sid)
        if refused is not None:
            return refused
        if kind not in FORMATS:
            return error(404, f"no transcript format {kind[:16]!r}: one of {', '.join(FORMATS)}")
        found = await self._read_call(call_sid)
        if isinstance(found, Response):
            return found
        _, utterances = found
        response = Response(export(utterances, kind), content_type=FORMATS[kind])
        response.headers["Content-Disposition"] = f'inline; filename="{_file_name(call_sid)}.{kind}"'
        return response

    async def delete_call(self, http_request: Request, call_sid: str) -> Response:
        refused = self._call_for(http_request, call_sid, erase=True)
        if refused is not None:
            return refused
        store = self._store()
        try:
            result = await store.in_thread(store.engine.delete_call, call_sid)
        except StoreUnavailable as failure:
            return self._unavailable(failure)
        if result is Deleted.UNKNOWN:
            return error(404, f"unknown call: {call_sid[:64]!r}")
        if result is Deleted.LIVE:
            return error(409, "the call is live: erase it once it has ended")
        log.info("call %s erased (DELETE /api/calls from %s)", call_sid, http_request.remote_addr or "unknown")
        return Response("", status=204)

    def _unavailable(self, failure: StoreUnavailable) -> Response:
        log.warning("API request answered 503: the store cannot answer: %s", failure)
        return error(503, "the call store cannot answer now; try again later")  # (its words are logged)


def add_routes(app: Quart, api: CallsApi) -> None:
    @app.get("/api/calls")
    async def calls() -> Response:
        return await api.list_calls(request)

    # `path`: a callSid may hold a "/" (Twilio's never do; the server keeps any printable one), sent as %2F.
    @app.get("/api/calls/<path:call_sid>")
    async def call(call_sid: str) -> Response:
        return await api.get_call(request, call_sid)

    @app.get("/api/calls/<path:call_sid>/transcript.<kind>")
    async def transcript(call_sid: str, kind: str) -> Response:
        return await api.transcript(request, call_sid, kind)

    @app.delete("/api/calls/<path:call_sid>")
    async def delete(call_sid: str) -> Response:
        return await api.delete_call(request, call_sid)

    async def json_for_api(failure: HTTPException) -> Response | HTTPException:
        """An unknown path or method under /api/, or a bug (500, its traceback logged), is answered
        in JSON too; elsewhere (a WebSocket upgrade to a path without a WebSocket route included:
        there is no `request` then) as before."""
        if has_request_context() and request.path.startswith("/api/"):
            return error(failure.code or 500, f"{failure.name}: {request.method} {request.path[:100]}")
        return failure

    app.register_error_handler(404, json_for_api)
    app.register_error_handler(405, json_for_api)
    app.register_error_handler(500, json_for_api)


def _file_name(call_sid: str) -> str:
    """`call_sid` as a file name in a header: letters, digits, '.', '-' and '_' kept, others '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", call_sid)
