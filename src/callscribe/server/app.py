"""The Quart-Trio application: its routes, each a thin handler over the supervisor and the hub.

Routes:
- `/twilio`      (WebSocket) Twilio Media Streams, served by callscribe's own code (listener.py,
                 websocket.py); each stream is a call run by the supervisor (supervisor.py).
- `/client`      (WebSocket) subscribers: sent the live callSids, reply with one, receive its messages;
                 `?wait=SECONDS` lets them name a call that has not started yet; see subscribers.py.
                 Served by callscribe's own code too (one write per message), and by Quart for a
                 connection that reaches Hypercorn (HTTP/2, or after another request on it).
- `/game`        (WebSocket) games: sent the phone number and a code; see games.py.
- `/twiml`       (POST) TwiML that streams a call here and dials FORWARD_NUMBER.
- `/twiml/game`  (POST) TwiML that asks for a game code and streams the call here, both ways.
- `/api/calls`   (GET, DELETE) the call store's REST API, see api.py.
- `/metrics`     (GET) Prometheus metrics.
- `/healthz`     (GET) JSON with the live counts.
- `/`, `/ui/...`, `/api/session`, `/api/games`, `/api/events`: the dashboard, see dashboard.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict, Unpack, cast

import trio
from quart import Request, Response, Websocket, request, websocket
from quart_trio import QuartTrio
from websockets.http11 import Request as UpgradeRequest

from callscribe.core.access import BEARER_SUBPROTOCOL, Access, Verdict
from callscribe.core.transcript import SpeakerLabels
from callscribe.core.twiml import call_parameters, game_twiml, transcription_twiml
from callscribe.server.api import CallsApi, add_routes
from callscribe.server.call import Call, Connector
from callscribe.server.call_feed import CallFeed, ObservedHub
from callscribe.server.call_settings import CallSettings
from callscribe.server.call_waiters import CallWaiters
from callscribe.server.dashboard import Dashboard
from callscribe.server.dashboard import add_routes as add_dashboard_routes
from callscribe.server.games import Game, GameRegistry, GameSettings, error_message
from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    Hub,
    HubUnavailable,
    InMemoryHub,
)
from callscribe.server.listener import Route
from callscribe.server.metrics import CONTENT_TYPE
from callscribe.server.store import NO_RECORDER
from callscribe.server.subscriber_socket import QuartSocket, ReaderSocket, StallWatch
from callscribe.server.subscribers import Subscribers
from callscribe.server.supervisor import Supervisor
from callscribe.server.websocket import ReadTick, ServedWebSocket
from callscribe.server.websocket_accept import Admission, FirstValues, accept_websocket

if TYPE_CHECKING:
    from callscribe.server.store_writer import StoreRecorder

log = logging.getLogger(__name__)

SUBSCRIBER_SEND_TIMEOUT_S = 10.0
"""A subscriber whose socket has not taken one message for this long has stopped reading."""
MAX_WEBSOCKET_MESSAGE = 64 * 1024
"""Twilio frames are ~300 bytes and subscribers send one callSid: 64 KiB is generous, 16 MiB (the
usual library default) would let one client make us buffer a lot."""
MAX_REQUEST_BODY = 64 * 1024
"""Twilio's webhooks are a few KB. Quart's default (16 MiB) let anyone make /twiml parse a form of
millions of fields in the event loop before the signature could be checked; over this: 413."""


def _refuse(verdict: Verdict, status: int, what: str, peer: str) -> Response:
    log.warning("refused %s from %s: %s", what, peer, verdict.reason)
    return Response(verdict.reason + "\n", status=status, mimetype="text/plain")


class ServerOptions(TypedDict, total=False):
    """What `create_app` passes on to its `Server` as it is (see `Server`'s defaults)."""

    hub: Hub | None
    connect: Connector | None
    subscriber_send_timeout_s: float
    games: GameRegistry | None
    forward_number: str | None
    read_tick: ReadTick | None
    store: StoreRecorder | None


class Server:
    """The routes' shared state: access policy, settings, and the supervisor that owns the calls."""

    def __init__(
        self,
        settings: CallSettings,
        hub: Hub | None = None,
        connect: Connector | None = None,
        *,
        subscriber_send_timeout_s: float = SUBSCRIBER_SEND_TIMEOUT_S,
        games: GameRegistry | None = None,
        forward_number: str | None = None,
        access: Access | None = None,
        read_tick: ReadTick | None = None,
        store: StoreRecorder | None = None,
    ) -> None:
        self.access = access or Access()
        self.store = store
        """The call store (None: --store none)."""
        self.read_tick = read_tick
        self.routes: dict[str, Route] = {"/twilio": self.handle_twilio, "/client": self.handle_client_socket}
        """WebSocket routes served by callscribe's own code rather than Quart (see listener.py)."""
        self.subscriber_send_timeout_s = subscriber_send_timeout_s
        self.games = games if games is not None else GameRegistry(GameSettings(), speech=None)
        self.forward_number = forward_number
        self.feed = CallFeed(self._live_call, self.games)
        """The dashboard's call feed: it sees what calls tell the hub (call_feed.py)."""
        inner = hub if hub is not None else InMemoryHub()
        waiters = CallWaiters(inner)
        self.hub: Hub = ObservedHub(inner, self.feed, waiters.registered)
        self.supervisor = Supervisor(settings, self.hub, self.games, connect, store or NO_RECORDER, waiters)
        self.metrics = self.supervisor.metrics
        if store is not None:
            self.metrics.store.watch(store, store.delivery)
        self.api = CallsApi(self.access, store)
        self.stall = StallWatch(subscriber_send_timeout_s)
        self.subscribers = Subscribers(self.hub, self.supervisor, self._live_call, self.stall)
        """The `/client` protocol (subscribers.py)."""

    @property
    def calls(self) -> set[Call]:
        return self.supervisor.calls

    def _live_call(self, call_sid: str) -> Call | None:
        return next((call for call in self.supervisor.calls if call.call_sid == call_sid), None)

    async def shutdown(self, grace_s: float) -> None:
        await self.supervisor.shutdown(grace_s)

    # -- /twilio and /client on callscribe's own sockets ----------------------------------------

    async def _accept(
        self,
        stream: trio.abc.Stream,
        head: bytes,
        peer: str,
        check: Callable[[UpgradeRequest], Admission],
        what: str,
        read_tick: ReadTick | None = None,
    ) -> ServedWebSocket | None:
        return await accept_websocket(
            stream,
            head,
            peer,
            check=check,
            max_message=MAX_WEBSOCKET_MESSAGE,
            stall_timeout_s=self.subscriber_send_timeout_s,
            read_tick=read_tick,
            what=what,
        )

    async def handle_twilio(self, stream: trio.abc.Stream, head: bytes, peer: str) -> None:
        """A Twilio Media Stream, served outside Quart and Hypercorn (see listener.py and
        websocket.py). The call runs in the supervisor's nursery and reads the socket in its own
        reader task; this waits for it, then closes the socket with the call's close code."""
        scheme = "wss" if isinstance(stream, trio.SSLStream) else "ws"

        def check(request: UpgradeRequest) -> Admission:
            path, _, query = request.path.partition("?")
            verdict = self.access.check_twilio(FirstValues(request.headers), scheme, path, query, {})
            return Admission() if verdict.ok else Admission(403, verdict.reason)

        ws = await self._accept(stream, head, peer, check, "Twilio socket", self.read_tick)
        if ws is None:
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.writer)
                if not self.supervisor.accepting:
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")
                    return
                call = self.supervisor.start_call(
                    ws.receive_batch, ws.send, ws.wake_after if ws.wakes_on_bytes else None
                )
                try:
                    await call.finished.wait()
                finally:
                    call.end_input()
                await ws.close(call.close_code, call.close_reason)
        finally:
            await ws.aclose()

    async def handle_client_socket(self, stream: trio.abc.Stream, head: bytes, peer: str) -> None:
        """A subscriber whose connection's first request is the upgrade: served outside Quart and
        Hypercorn, so that each message costs one write (listener.py, websocket.py)."""
        verdict = Verdict(False, "")

        def check(request: UpgradeRequest) -> Admission:
            nonlocal verdict
            verdict, as_subprotocol = self.access.check_client(
                FirstValues(request.headers), request.path.partition("?")[2]
            )
            if not verdict.ok:
                return Admission(verdict.status, verdict.reason)
            return Admission(subprotocol=BEARER_SUBPROTOCOL if as_subprotocol else None)

        ws = await self._accept(stream, head, peer, check, "subscriber")
        if ws is None:
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.writer)
                if self.supervisor.closing:
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down")
                else:
                    try:
                        await self.subscribers.serve(ws, verdict)  # closes it, unless the peer left
                    finally:
                        # Ends the writer in every case; a close frame goes only if serve failed.
                        with trio.CancelScope(shield=True):
                            await ws.close(CLOSE_INTERNAL_ERROR, "server error")
        finally:
            await ws.aclose()

    # -- /client and /game: admission ----------------------------------------------------------

    async def _admit(self, ws: Websocket, what: str, *, any_call: bool = False) -> Verdict | Response | None:
        """Check a /client or /game connection's Origin and token. A Response refuses the upgrade;
        None means the socket was accepted and closed again (shutting down); a Verdict, go on.
        `any_call`: the connection may reach any call (a game), which a token limited to one may not."""
        verdict, as_subprotocol = self.access.check_client(ws.headers, ws.query_string.decode("latin-1"))
        if verdict.ok and any_call and verdict.call_sid is not None:
            verdict = Verdict(False, f"a token limited to one call cannot open {what}", status=403)
        if not verdict.ok:
            return _refuse(verdict, verdict.status, what, QuartSocket(ws).peer)
        await ws.accept(subprotocol=BEARER_SUBPROTOCOL if as_subprotocol else None)
        if self.supervisor.closing:
            await QuartSocket(ws).close(CLOSE_GOING_AWAY, "server shutting down")
            return None
        return verdict

    async def handle_client(self, ws: Websocket) -> Response | None:
        """A subscriber that reached Quart (see `handle_client_socket` for the others)."""
        verdict = await self._admit(ws, "a subscriber")
        if not isinstance(verdict, Verdict):
            return verdict
        await self.subscribers.serve(QuartSocket(ws), verdict)
        return None

    # -- /game ---------------------------------------------------------------------------------

    async def handle_game(self, quart_ws: Websocket) -> Response | None:
        admitted = await self._admit(quart_ws, "a game", any_call=True)
        if not isinstance(admitted, Verdict):
            return admitted
        ws: ReaderSocket = QuartSocket(quart_ws)
        peer = ws.peer
        try:
            game = await self.games.join(peer)
        except HubUnavailable as error:
            log.warning("game %s turned away: %s", peer, error)
            await ws.send(error_message(f"game codes are unavailable: {error}"))
            await ws.close(CLOSE_TRY_AGAIN_LATER, "game codes unavailable, try again later")
            return None
        if game is None:
            log.warning("game %s refused: all %d codes are in use", peer, len(self.games.pool))
            await ws.send(error_message(f"all {len(self.games.pool)} game codes are in use; try again later"))
            await ws.close(CLOSE_TRY_AGAIN_LATER, "no game code free")
            return None
        log.info("game %s joined with code %s", peer, game.code)
        try:
            with self.supervisor.connection():
                await ws.send(self.games.settings.phone_number)
                await ws.send(game.code)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_game_commands, ws, game)
                    with game.outbox.cancel_scope:
                        async for message in game.outbox:
                            await self.stall.send(ws, game.outbox, message)
                    nursery.cancel_scope.cancel()
        finally:
            self.stall.check_cut_off(ws, game.outbox)
            self.games.leave(game)
            log.info("game %s with code %s left (%s)", peer, game.code, game.outbox.close_reason)
        await ws.close(game.outbox.close_code, game.outbox.close_reason)
        return None

    # -- TwiML -----------------------------------------------------------------------------------

    async def twiml(self, http_request: Request, build: Callable[[str, dict[str, str]], str]) -> Response:
        form = await http_request.form
        verdict = self.access.check_twilio(
            http_request.headers,
            http_request.scheme,
            http_request.path,
            http_request.query_string.decode("latin-1"),
            {key: form[key] for key in form},
        )
        if not verdict.ok:
            return _refuse(verdict, 403, "a TwiML request", http_request.remote_addr or "unknown")
        try:
            twiml = build(self.base_url(http_request), call_parameters(form))
        except ValueError as error:  # the request's Host or X-Forwarded-* make no stream URL
            reason = f"cannot tell this server's address from the request ({error}); set PUBLIC_URL"
            return _refuse(Verdict(False, reason), 400, "a TwiML request", http_request.remote_addr or "unknown")
        return Response(twiml, mimetype="text/xml")

    def base_url(self, http_request: Request) -> str:
        """This server's public address: PUBLIC_URL, or what the request (and any proxy) says."""
        if self.access.public_url:
            return self.access.public_url
        # As the signature check rebuilds it (access.public_url): an empty header is no header.
        scheme = (http_request.headers.get("X-Forwarded-Proto") or "").split(",")[0].strip() or http_request.scheme
        host = (http_request.headers.get("X-Forwarded-Host") or "").split(",")[0].strip() or http_request.host
        return f"{scheme}://{host}"


async def _game_commands(ws: ReaderSocket, game: Game) -> None:
    while True:
        game.command(await ws.receive())


def _current(proxy: Websocket) -> Websocket:
    """The websocket object itself rather than Quart's context-local proxy to it, for tasks that
    outlive the handler's context."""
    return cast(Websocket, proxy._get_current_object())  # type: ignore[attr-defined]  # a LocalProxy


def create_app(
    settings: CallSettings,
    *,
    public_url: str | None = None,
    access: Access | None = None,
    **options: Unpack[ServerOptions],
) -> QuartTrio:
    """The app; `app.extensions["callscribe"]` is its `Server`, whose `routes` go to
    `listener.serve` alongside it. Without `access`, the one made for `public_url` is used."""
    app = QuartTrio("callscribe")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BODY
    server = Server(settings, access=access or Access(public_url=public_url), **options)
    app.extensions["callscribe"] = server
    add_routes(app, server.api)

    @app.before_serving
    async def start_supervisor() -> None:
        await app.nursery.start(server.supervisor.run)
        if server.read_tick is not None:
            app.nursery.start_soon(server.read_tick.run)

    @app.websocket("/client")
    async def client() -> Response | None:
        return await server.handle_client(_current(websocket))

    @app.websocket("/game")
    async def game() -> Response | None:
        return await server.handle_game(_current(websocket))

    @app.post("/twiml")
    async def twiml() -> Response:
        return await server.twiml(
            request, lambda base, parameters: transcription_twiml(base, server.forward_number, parameters=parameters)
        )

    @app.post("/twiml/game")
    async def twiml_game() -> Response:
        return await server.twiml(request, lambda base, parameters: game_twiml(base, parameters=parameters))

    @app.get("/metrics")
    async def metrics() -> Response:
        # With tokens required, so are they here (labels name webhook receivers, whose paths may
        # hold their secrets); a token limited to one call is a viewer's, not a scraper's.
        verdict, _ = server.access.check_client(request.headers, request.query_string.decode("latin-1"))
        if not verdict.ok:
            refusal, status = verdict.reason, verdict.status
        elif verdict.call_sid is not None:
            refusal, status = "a token limited to one call cannot read the metrics", 403
        else:
            return Response(server.metrics.render(), content_type=CONTENT_TYPE)
        return Response(json.dumps({"error": refusal}), status=status, mimetype="application/json")

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, object], int]:
        return server.supervisor.health(), 200

    labels = server.store.engine.labels if server.store is not None else SpeakerLabels()
    add_dashboard_routes(
        app,
        Dashboard(server, server.feed, history=server.store is not None, labels=(labels.caller, labels.other_party)),
    )

    return app
