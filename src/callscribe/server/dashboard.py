"""The dashboard: the page callscribe serves at `/`, and the routes made for it.

- `/`                 the page (`web/index.html`); it loads its modules and style from `/ui/...`.
- `/ui/<file>`        the page's files, shipped in the package (no CDN, no build step).
- `/api/session`      (GET) what the page needs to know before anything else: whether tokens are
                      required, whether the one it sent is good (and for which call), whether there
                      is a call store (history). Always 200: the answer is in the JSON.
- `/api/games`        (GET) the game codes in use and the call patched to each.
- `/api/events`       (WebSocket) the call feed (call_feed.py): a snapshot of the live calls and
                      games, then an event for each change.

`/api/games` and `/api/events` take the tokens `/client` takes (the page sends the subprotocol
`bearer, <token>` and `Authorization: Bearer`); a token for one call sees that call only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import trio
from quart import Quart, Request, Response, Websocket, jsonify, request, websocket

from callscribe.core.access import Verdict
from callscribe.core.transcript import DEFAULT_SPEAKER_LABELS
from callscribe.server.call_feed import CallFeed

if TYPE_CHECKING:
    from callscribe.server.app import Server

log = logging.getLogger(__name__)

WEB_FILES = ("index.html", "app.js", "api.js", "live.js", "call_view.js", "history.js", "games.js", "style.css")
"""The page's files, in `callscribe/server/web/`."""
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page runs its own modules only, talks to this server only, and cannot be framed."""
CLOSE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class WebFile:
    body: bytes
    content_type: str
    etag: str


def load_web_files() -> dict[str, WebFile]:
    """The page's files, read once from the package."""
    folder = resources.files("callscribe.server").joinpath("web")
    files = {}
    for name in WEB_FILES:
        body = folder.joinpath(name).read_bytes()
        suffix = name[name.rindex(".") :]
        files[name] = WebFile(body, CONTENT_TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:16] + '"')
    return files


class Dashboard:
    def __init__(
        self, server: Server, feed: CallFeed, *, history: bool, labels: tuple[str, str] = DEFAULT_SPEAKER_LABELS
    ) -> None:
        self.server = server
        self.feed = feed
        self.history = history
        self.labels = labels
        """What the lanes of channels 0 and 1 are called (--speaker-labels)."""
        self.files = load_web_files()

    def file(self, name: str, http_request: Request) -> Response:
        found = self.files.get(name)
        if found is None:
            return Response("not found\n", status=404, mimetype="text/plain")
        if http_request.headers.get("If-None-Match") == found.etag:
            response = Response(b"", status=304)
        else:
            response = Response(found.body, content_type=found.content_type)
        response.headers["ETag"] = found.etag
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def session(self, http_request: Request) -> Response:
        access = self.server.access
        verdict, _ = access.check_client(http_request.headers, http_request.query_string.decode("latin-1"))
        return jsonify(
            {
                "tokensRequired": access.tokens.enabled,
                "authorized": verdict.ok,
                "reason": verdict.reason or None,
                "callSid": verdict.call_sid,
                "history": self.history,
                "speakerLabels": list(self.labels),
            }
        )

    def games(self, http_request: Request) -> Response:
        verdict, _ = self.server.access.check_client(http_request.headers, http_request.query_string.decode("latin-1"))
        if not verdict.ok:
            log.warning("refused GET /api/games from %s: %s", http_request.remote_addr or "unknown", verdict.reason)
            response = jsonify({"error": verdict.reason})
            response.status_code = verdict.status
            return response
        games = [{"code": code, "callSid": sid} for code, sid in sorted(self.feed.patches().items())]
        if verdict.call_sid is not None:
            games = [game for game in games if game["callSid"] == verdict.call_sid]
        return jsonify({"games": games})

    async def events(self, ws: Websocket) -> Response | None:
        """A viewer of the call feed: its events until it leaves, is too slow, or the server stops."""
        peer = _peer(ws)
        admitted = await self.server._admit(ws, "a dashboard viewer")
        if not isinstance(admitted, Verdict):
            return admitted
        log.info("dashboard viewer %s joined%s", peer, f" (call {admitted.call_sid})" if admitted.call_sid else "")
        with self.server.supervisor.connection() as scope, self.feed.watch(admitted.call_sid) as viewer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_discard_incoming, ws)
                with viewer.cancel_scope:
                    async for message in viewer:
                        await ws.send(message)
                nursery.cancel_scope.cancel()
        log.info("dashboard viewer %s left (%s)", peer, viewer.close_reason)
        code, reason = (
            (1001, "server shutting down") if scope.cancelled_caught else (viewer.close_code, viewer.close_reason)
        )
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await ws.close(code, reason)
        return None


async def _discard_incoming(ws: Websocket) -> None:
    while True:
        await ws.receive()


def _peer(ws: Websocket) -> str:
    client = ws.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def add_routes(app: Quart, dashboard: Dashboard) -> None:
    @app.get("/")
    async def index() -> Response:
        return dashboard.file("index.html", request)

    @app.get("/ui/<name>")
    async def web_file(name: str) -> Response:
        return dashboard.file(name, request)

    @app.get("/api/session")
    async def session() -> Response:
        return dashboard.session(request)

    @app.get("/api/games")
    async def games() -> Response:
        return dashboard.games(request)

    @app.websocket("/api/events")
    async def events() -> Response | None:
        return await dashboard.events(websocket._get_current_object())  # type: ignore[attr-defined]


__all__ = ["Dashboard", "add_routes"]
