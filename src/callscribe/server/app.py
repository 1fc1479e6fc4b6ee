"""The Quart-Trio application: its routes, each a thin handler over the supervisor and the hub.

Routes:
- `/twilio`      (WebSocket) Twilio Media Streams, served by callscribe's own code (listener.py,
                 media_socket.py); each stream is a call run by the supervisor (supervisor.py).
- `/client`      (WebSocket) subscribers: sent the live callSids, reply with one, receive its messages;
                 `?wait=SECONDS` lets them name a call that has not started yet.
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
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs

import trio
from quart import Request, Response, Websocket, request, websocket
from quart_trio import QuartTrio
from websockets.http11 import Request as UpgradeRequest

from callscribe.core.access import BEARER_SUBPROTOCOL, Access, Verdict
from callscribe.core.catch_up import CatchUp
from callscribe.core.fanout import ResumeRequest, resume_request
from callscribe.core.transcript import SpeakerLabels
from callscribe.core.twiml import call_parameters, game_twiml, transcription_twiml
from callscribe.server.api import CallsApi, add_routes
from callscribe.server.call import Call, CallSettings, Connector
from callscribe.server.call_feed import CallFeed, ObservedHub
from callscribe.server.dashboard import Dashboard
from callscribe.server.dashboard import add_routes as add_dashboard_routes
from callscribe.server.games import Game, GameRegistry, GameSettings, error_message
from callscribe.server.hub import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN_LATER,
    Hub,
    HubUnavailable,
    InMemoryHub,
    Subscription,
    UnknownCall,
)
from callscribe.server.hypercorn_fixes import connection_fate
from callscribe.server.listener import Route
from callscribe.server.media_socket import ReadTick, Refusal, accept_media_socket
from callscribe.server.metrics import CONTENT_TYPE
from callscribe.server.store import NO_RECORDER, StoreUnavailable
from callscribe.server.supervisor import Supervisor

if TYPE_CHECKING:
    from callscribe.server.store_writer import StoreRecorder

log = logging.getLogger(__name__)

SUBSCRIBER_SEND_TIMEOUT_S = 10.0
"""A subscriber whose socket has not taken one message for this long has stopped reading."""
SUBSCRIBE_TIMEOUT_S = 30.0
"""A subscriber has this long to name its call."""
MAX_WAIT_S = 3600.0
"""`/client?wait=SECONDS`: the longest a subscriber may wait for its call to start."""
WAIT_POLL_S = (0.05, 0.25)
"""While a subscriber waits for its call, the hub is asked this often (first, then at most)."""
CLOSE_TIMEOUT_S = 2.0
"""Sending a close frame to a peer that stopped reading gives up after this."""
MAX_WEBSOCKET_MESSAGE = 64 * 1024
"""Twilio frames are ~300 bytes and subscribers send one callSid: 64 KiB is generous, 16 MiB (the
usual library default) would let one client make us buffer a lot."""
MAX_CLOSE_REASON = 120
"""Close reasons must fit a control frame (125 bytes, 2 of them the code)."""
HISTORY_TIMEOUT_S = 5.0
"""A late subscriber waits at most this long for the call's finals so far; then it gets live messages only."""


def _refuse(verdict: Verdict, status: int, what: str, peer: str) -> Response:
    log.warning("refused %s from %s: %s", what, peer, verdict.reason)
    return Response(verdict.reason + "\n", status=status, mimetype="text/plain")


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
        self.routes: dict[str, Route] = {"/twilio": self.handle_twilio}
        """WebSocket routes served by callscribe's own code rather than Quart (see listener.py)."""
        self.subscriber_send_timeout_s = subscriber_send_timeout_s
        self.games = games if games is not None else GameRegistry(GameSettings(), speech=None)
        self.forward_number = forward_number
        self.feed = CallFeed(self._live_call, self.games)
        """The dashboard's call feed: it sees what calls tell the hub (call_feed.py)."""
        self.hub: Hub = ObservedHub(hub if hub is not None else InMemoryHub(), self.feed)
        self.supervisor = Supervisor(settings, self.hub, self.games, connect, store or NO_RECORDER)
        self.metrics = self.supervisor.metrics
        if store is not None:
            self.metrics.store.watch(store, store.delivery)
        self.api = CallsApi(self.access, store)

    @property
    def calls(self) -> set[Call]:
        return self.supervisor.calls

    def _live_call(self, call_sid: str) -> Call | None:
        return next((call for call in self.supervisor.calls if call.call_sid == call_sid), None)

    async def shutdown(self, grace_s: float) -> None:
        await self.supervisor.shutdown(grace_s)

    # -- /twilio -------------------------------------------------------------------------------

    async def handle_twilio(self, stream: trio.abc.Stream, head: bytes, peer: str) -> None:
        """A Twilio Media Stream, served outside Quart and Hypercorn (see listener.py and
        media_socket.py). The call runs in the supervisor's nursery and reads the socket in its own
        reader task; this waits for it, then closes the socket with the call's close code."""
        scheme = "wss" if isinstance(stream, trio.SSLStream) else "ws"

        def check(request: UpgradeRequest) -> Refusal | None:
            path, _, query = request.path.partition("?")
            verdict = self.access.check_twilio(request.headers, scheme, path, query, {})
            return None if verdict.ok else (403, verdict.reason)

        ws = await accept_media_socket(
            stream,
            head,
            peer,
            check=check,
            max_message=MAX_WEBSOCKET_MESSAGE,
            stall_timeout_s=self.subscriber_send_timeout_s,
            read_tick=self.read_tick,
        )
        if ws is None:
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ws.writer)
                if not self.supervisor.accepting:
                    await ws.close(CLOSE_GOING_AWAY, "server shutting down", CLOSE_TIMEOUT_S)
                    return
                call = self.supervisor.start_call(ws.receive_batch, ws.send)
                try:
                    await call.finished.wait()
                finally:
                    call.end_input()
                await ws.close(call.close_code, call.close_reason, CLOSE_TIMEOUT_S)
        finally:
            await ws.aclose()

    # -- /client ---------------------------------------------------------------------------------

    async def _admit(self, ws: Websocket, what: str) -> Verdict | Response | None:
        """Check a /client or /game connection's Origin and token. A Response refuses the upgrade;
        None means the socket was accepted and closed again (shutting down); a Verdict, go on."""
        verdict, as_subprotocol = self.access.check_client(ws.headers, ws.query_string.decode("latin-1"))
        if not verdict.ok:
            return _refuse(verdict, 401 if "token" in verdict.reason else 403, what, _peer(ws))
        await ws.accept(subprotocol=BEARER_SUBPROTOCOL if as_subprotocol else None)
        if self.supervisor.closing:
            await _close(ws, CLOSE_GOING_AWAY, "server shutting down")
            return None
        return verdict

    async def handle_client(self, ws: Websocket) -> Response | None:
        peer = _peer(ws)
        verdict = await self._admit(ws, "a subscriber")
        if not isinstance(verdict, Verdict):
            return verdict
        with_history = parse_qs(ws.query_string.decode("latin-1")).get("history", ["1"])[0] != "0"
        wait_s = _wait_seconds(ws.query_string.decode("latin-1"))
        if isinstance(wait_s, str):
            log.info("subscriber %s refused: %s", peer, wait_s)
            await ws.send(_error_json(wait_s))
            await _close(ws, CLOSE_POLICY, "bad wait parameter")
            return None
        with self.supervisor.connection() as scope:
            try:
                calls = await self.hub.active_calls()
            except HubUnavailable as error:
                await _hub_unavailable(ws, peer, error)
                return None
            if verdict.call_sid is not None:  # a token for one call sees only that call
                calls = [sid for sid in calls if sid == verdict.call_sid]
            await ws.send(json.dumps(calls))
            reply: str | bytes | None = None
            with trio.move_on_after(SUBSCRIBE_TIMEOUT_S) as waiting:
                reply = await ws.receive()
            if waiting.cancelled_caught:
                reason = f"no callSid received within {SUBSCRIBE_TIMEOUT_S:g} s"
                log.info("subscriber %s closed: %s", peer, reason)
                await ws.send(_error_json(f"{reason}; send one of the listed callSids after connecting"))
                await _close(ws, CLOSE_POLICY, reason)
                return None
            call_sid = _text(reply).strip()
            if verdict.call_sid is not None and call_sid != verdict.call_sid:
                log.warning("subscriber %s: token is for call %s, not %s", peer, verdict.call_sid, call_sid[:64])
                await ws.send(
                    json.dumps(
                        {"type": "Error", "source": "callscribe", "message": "this token is not valid for that call"}
                    )
                )
                await _close(ws, CLOSE_POLICY, "token not valid for this call")
                return None
            resume = resume_request(ws.query_string.decode("latin-1"))
            if resume.error:
                await _refuse_resume(ws, peer, resume.error)
                return None
            if wait_s > 0 and not await self._wait_for_call(ws, peer, call_sid, wait_s):
                return None
            # A subscriber with ids resumes from the hub's history of the call (?after=0-0 for all
            # of it), whose messages carry the ids; the store's history is for the others.
            await self._subscribe(ws, peer, call_sid, resume, with_history and not resume.ids)
        if scope.cancelled_caught:
            await _close(ws, CLOSE_GOING_AWAY, "server shutting down")
        return None

    async def _subscribe(
        self, ws: Websocket, peer: str, call_sid: str, resume: ResumeRequest, with_history: bool
    ) -> None:
        try:
            # A call on another process: its finals published since its store last committed are
            # in no store yet, so the hub's history from the start fills that in (core/catch_up.py).
            catch_up = (
                with_history
                and not resume.ids
                and self._live_call(call_sid) is None
                and call_sid in await self.hub.active_calls()
            )
            ids, after = (True, "0-0") if catch_up else (resume.ids, resume.after)
            async with self.hub.subscribe(call_sid, ids=ids, after=after) as subscription:
                log.info("call %s: subscriber %s joined", call_sid, peer)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_discard_incoming, ws)
                        with subscription.cancel_scope:
                            # Subscribed first, so the live messages queue while the history is read;
                            # finals in both are sent once (the history's copy, in its place).
                            history = await self._history(call_sid, peer) if with_history else []
                            for message in history:
                                await self._send_to_subscriber(ws, subscription, message, peer)
                            follow = CatchUp(history)
                            async for message in subscription:
                                text = follow.offer(message) if catch_up else message
                                if text is None or (not catch_up and follow.sent_already(text)):
                                    continue
                                await self._send_to_subscriber(ws, subscription, text, peer)
                        nursery.cancel_scope.cancel()
                finally:
                    self._check_cut_off(ws, subscription, peer)
                    if subscription.close_code == CLOSE_POLICY:
                        self.metrics.dropped.inc()
                    log.info(
                        "call %s: subscriber %s left after %d messages (%s)",
                        call_sid,
                        peer,
                        subscription.delivered,
                        # Not ended by the call, the hub or a drop: Quart cancelled us as the peer went away.
                        subscription.close_reason if subscription.ended else "subscriber disconnected",
                    )
        except UnknownCall:
            log.info("subscriber %s asked for unknown call %r", peer, call_sid[:64])
            await ws.send(_error_json(f"unknown callSid: {call_sid[:64]!r}"))
            await _close(ws, CLOSE_POLICY, "unknown callSid")
            return
        except HubUnavailable as error:
            await _hub_unavailable(ws, peer, error)
            return
        await _close(ws, subscription.close_code, subscription.close_reason)

    async def _history(self, call_sid: str, peer: str) -> list[str]:
        """The call's finals so far, for a subscriber who joins it now ([] when nothing is kept)."""
        with trio.move_on_after(HISTORY_TIMEOUT_S) as waiting:
            try:
                return await self.supervisor.recorder.history(call_sid)
            except StoreUnavailable as error:
                log.warning(
                    "call %s: subscriber %s gets live messages only: the store cannot answer: %s", call_sid, peer, error
                )
                return []
        if waiting.cancelled_caught:
            log.warning(
                "call %s: subscriber %s gets live messages only: the store did not answer in time", call_sid, peer
            )
        return []

    # -- /client?wait=SECONDS: naming a call before it starts -------------------------------------

    async def _wait_for_call(self, ws: Websocket, peer: str, call_sid: str, wait_s: float) -> bool:
        """Wait until `call_sid` is live (True), or up to `wait_s` seconds: then tell the subscriber
        and close (False). An app learns a CallSid from Twilio's voice webhook before the stream
        starts, so it may subscribe first. The hub is asked every WAIT_POLL_S; Quart cancels this
        when the subscriber goes away, the supervisor at shutdown."""
        delay, most = WAIT_POLL_S
        try:
            if call_sid not in await self.hub.active_calls():
                log.info("subscriber %s waits up to %g s for call %r to start", peer, wait_s, call_sid[:64])
            with trio.move_on_after(wait_s):
                while call_sid not in await self.hub.active_calls():
                    await trio.sleep(delay)
                    delay = min(delay * 2, most)
                return True
        except HubUnavailable as error:
            await _hub_unavailable(ws, peer, error)
            return False
        log.info("subscriber %s waited %g s for call %r, which did not start", peer, wait_s, call_sid[:64])
        await ws.send(_error_json(f"call {call_sid[:64]!r} did not start within {wait_s:g} s"))
        await _close(ws, CLOSE_POLICY, "unknown callSid")
        return False

    async def _send_to_subscriber(self, ws: Websocket, subscription: Subscription, message: str, peer: str) -> None:
        """Send one message. Hypercorn's writes cannot be interrupted (they are shielded); a peer that
        stops reading is cut off by the kernel (TCP_USER_TIMEOUT, see serve.py), and a send that took
        that long is recorded here as the reason, even if Quart cancels us as the socket dies."""
        started = trio.current_time()
        try:
            await ws.send(message)
        finally:
            took = trio.current_time() - started
            if took >= self.subscriber_send_timeout_s / 2:  # the kernel's clock may have started a little earlier
                self._drop_stalled(subscription, peer, f"subscriber stalled: a send took {took:.0f} s")

    def _check_cut_off(self, ws: Websocket, subscription: Subscription, peer: str) -> None:
        """The kernel may abort a peer that stopped reading while no send was waiting (our writes
        still fit its send buffer); the connection's fate tells."""
        fate = connection_fate(ws.scope)
        if fate is not None and fate.timed_out and subscription.close_code != CLOSE_POLICY:
            self._drop_stalled(
                subscription, peer, f"subscriber stalled: took no data for {self.subscriber_send_timeout_s:g} s"
            )

    def _drop_stalled(self, subscription: Subscription, peer: str, reason: str) -> None:
        subscription.drop(reason)
        if subscription.call_sid:
            log.warning("call %s: dropping subscriber %s: %s", subscription.call_sid, peer, reason)
        else:
            log.warning("dropping game %s: %s", peer, reason)

    # -- /game ---------------------------------------------------------------------------------

    async def handle_game(self, ws: Websocket) -> Response | None:
        peer = _peer(ws)
        admitted = await self._admit(ws, "a game")
        if not isinstance(admitted, Verdict):
            return admitted
        try:
            game = await self.games.join(peer)
        except HubUnavailable as error:
            log.warning("game %s turned away: %s", peer, error)
            await ws.send(error_message(f"game codes are unavailable: {error}"))
            await _close(ws, CLOSE_TRY_AGAIN_LATER, "game codes unavailable, try again later")
            return None
        if game is None:
            log.warning("game %s refused: all %d codes are in use", peer, len(self.games.pool))
            await ws.send(error_message(f"all {len(self.games.pool)} game codes are in use; try again later"))
            await _close(ws, CLOSE_TRY_AGAIN_LATER, "no game code free")
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
                            await self._send_to_subscriber(ws, game.outbox, message, peer)
                    nursery.cancel_scope.cancel()
        finally:
            self._check_cut_off(ws, game.outbox, peer)
            self.games.leave(game)
            log.info("game %s with code %s left (%s)", peer, game.code, game.outbox.close_reason)
        await _close(ws, game.outbox.close_code, game.outbox.close_reason)
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
        return Response(build(self.base_url(http_request), call_parameters(form)), mimetype="text/xml")

    def base_url(self, http_request: Request) -> str:
        """This server's public address: PUBLIC_URL, or what the request (and any proxy) says."""
        if self.access.public_url:
            return self.access.public_url
        scheme = http_request.headers.get("X-Forwarded-Proto", http_request.scheme).split(",")[0].strip()
        host = http_request.headers.get("X-Forwarded-Host", http_request.host).split(",")[0].strip()
        return f"{scheme}://{host}"


async def _game_commands(ws: Websocket, game: Game) -> None:
    while True:
        game.command(await ws.receive())


async def _discard_incoming(ws: Websocket) -> None:
    """Subscribers have nothing more to say; reading keeps Quart's inbox from filling up."""
    while True:
        await ws.receive()


async def _refuse_resume(ws: Websocket, peer: str, reason: str) -> None:
    """A subscriber's `ids`/`after` do not parse (see callscribe.core.fanout.resume_request)."""
    log.info("subscriber %s refused: %s", peer, reason)
    await ws.send(json.dumps({"type": "Error", "source": "callscribe", "message": reason}))
    await _close(ws, CLOSE_POLICY, "bad ids or after")


async def _hub_unavailable(ws: Websocket, peer: str, error: HubUnavailable) -> None:
    log.warning("subscriber %s turned away: %s", peer, error)
    await ws.send(_error_json(f"subscriptions are unavailable: {error}"))
    await _close(ws, CLOSE_TRY_AGAIN_LATER, "hub unavailable, try again later")


async def _close(ws: Websocket, code: int, reason: str) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        await ws.close(code, reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore"))


def _error_json(message: str) -> str:
    return json.dumps({"type": "Error", "source": "callscribe", "message": message})


def _wait_seconds(query: str) -> float | str:
    """`?wait=SECONDS` of a /client URL: 0 when absent, else the seconds, or what is wrong with it."""
    values = parse_qs(query).get("wait")
    if not values:
        return 0.0
    try:
        seconds = float(values[-1])
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_WAIT_S:  # also false for nan
        return f"wait must be a number of seconds from 0 to {MAX_WAIT_S:g}, not {values[-1][:32]!r}"
    return seconds


def _text(message: str | bytes | None) -> str:
    if message is None:
        return ""
    if isinstance(message, bytes):
        return message.decode("utf-8", "replace")
    return message


def _peer(ws: Websocket) -> str:
    client = ws.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


def _current(proxy: Websocket) -> Websocket:
    """The websocket object itself rather than Quart's context-local proxy to it, for tasks that
    outlive the handler's context."""
    return cast(Websocket, proxy._get_current_object())  # type: ignore[attr-defined]  # a LocalProxy


def create_app(
    settings: CallSettings,
    *,
    hub: Hub | None = None,
    connect: Connector | None = None,
    subscriber_send_timeout_s: float = SUBSCRIBER_SEND_TIMEOUT_S,
    games: GameRegistry | None = None,
    public_url: str | None = None,
    forward_number: str | None = None,
    access: Access | None = None,
    read_tick: ReadTick | None = None,
    store: StoreRecorder | None = None,
) -> QuartTrio:
    """The app; `app.extensions["callscribe"]` is its `Server`, whose `routes` go to
    `listener.serve` alongside it."""
    app = QuartTrio("callscribe")
    server = Server(
        settings,
        hub,
        connect,
        subscriber_send_timeout_s=subscriber_send_timeout_s,
        games=games,
        forward_number=forward_number,
        access=access or Access(public_url=public_url),
        read_tick=read_tick,
        store=store,
    )
    app.extensions["callscribe"] = server
    add_routes(app, server.api)

    @app.before_serving
    async def start_supervisor() -> None:
        await app.nursery.start(server.supervisor.run)
        if read_tick is not None:
            app.nursery.start_soon(read_tick.run)

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
        return Response(server.metrics.render(), mimetype=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, object], int]:
        return server.supervisor.health(), 200

    labels = server.store.engine.labels if server.store is not None else SpeakerLabels()
    add_dashboard_routes(
        app,
        Dashboard(server, server.feed, history=server.store is not None, labels=(labels.caller, labels.other_party)),
    )

    return app
