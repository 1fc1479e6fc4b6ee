"""Running the app on Hypercorn's Trio worker, with TLS and a graceful shutdown on SIGTERM/SIGINT.

Hypercorn, once told to stop, drops the sockets still open after its `graceful_timeout` (peers see
1006). So the shutdown trigger first lets the live calls finish and closes every subscriber with
1001 itself (`Server.shutdown`), and only then hands over to Hypercorn.

Hypercorn writes to a socket inside a shielded cancel scope: a peer that stops reading (its TCP
window stays shut) blocks the writing task for good -- no timeout or shutdown can interrupt it. The
listening sockets therefore get TCP_USER_TIMEOUT, which the accepted sockets inherit: the kernel
aborts a connection whose data has not been taken for `stall_timeout_s`, the blocked write fails,
and the task moves on.

What keeps the server from starting -- its address taken or not this machine's, a certificate that
does not load, Redis not answering, the call store unusable, the app's start-up failing -- leaves `serve` as a `StartupError`
(alone, or inside the ExceptionGroups of its nurseries: catch it with `except*`), whose message is
one line for the person starting it. Whatever fails once the server runs is not a `StartupError`
and propagates as it is.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError
from quart_trio import QuartTrio

from callscribe.core.access import Access, TokenCheck, TwilioSignatureCheck
from callscribe.exception_groups import leaves
from callscribe.server import listener
from callscribe.server.app import Server, create_app
from callscribe.server.config import ServerSettings
from callscribe.server.games import GameRegistry
from callscribe.server.hub import Hub
from callscribe.server.run_file import remove_run_file, write_run_file
from callscribe.server.speech import AuraEngine, engine_from_settings
from callscribe.server.store import StoreError, StoreSettings
from callscribe.server.websocket import ReadTick

if TYPE_CHECKING:
    from callscribe.server.store_writer import StoreRecorder

log = logging.getLogger(__name__)

MAX_WEBSOCKET_MESSAGE = 64 * 1024
"""Twilio frames are ~300 bytes and subscribers send one callSid: 64 KiB is generous, 16 MiB (the
library default) would let one client make us buffer a lot."""


class StartupError(Exception):
    """The server could not start; the message is one line meant for the person starting it."""


class _Config(Config):
    """Hypercorn's config, whose listening sockets carry TCP_USER_TIMEOUT."""

    user_timeout_ms = 0

    def create_sockets(self):  # type: ignore[no-untyped-def]
        sockets = super().create_sockets()
        if self.user_timeout_ms and hasattr(socket, "TCP_USER_TIMEOUT"):
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.user_timeout_ms)
        return sockets


def hypercorn_config(settings: ServerSettings, *, reuse_port: bool = False) -> Config:
    config = _Config()
    if reuse_port:
        config.workers = 2  # what makes Hypercorn bind with SO_REUSEPORT (its workers are not used)
    config.user_timeout_ms = int(settings.stall_timeout_s * 1000)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    if settings.tls:
        config.certfile = settings.certfile
        config.keyfile = settings.keyfile
    config.websocket_max_message_size = MAX_WEBSOCKET_MESSAGE
    config.graceful_timeout = 2.0
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def start_serving(
    nursery: trio.Nursery, settings: ServerSettings, stop: trio.Event
) -> tuple[list[str], trio.Event]:
    """`serve(settings, stop=stop)` as a task of `nursery`, returned once it listens: the bound URLs,
    and an event set when it has stopped, however it ended (for a program or a test that runs a
    server beside other work and must wait for its drain)."""
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve(settings, stop=stop, task_status=task_status)
        finally:
            done.set()

    binds: list[str] = await nursery.start(run)
    return binds, done


async def serve(
    settings: ServerSettings,
    *,
    stop: trio.Event | None = None,
    hub: Hub | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set); `task_status` gets the bound URLs. With
    `reuse_port` the port is shared with other processes (SO_REUSEPORT: a worker, see workers.py)."""
    speech = engine_from_settings(
        settings.call.deepgram_api_key,
        prefer=settings.speech,
        aura_url=settings.speak_url,
    )
    games = GameRegistry(settings.games, speech)
    access = Access(
        twilio=TwilioSignatureCheck(settings.twilio_auth_token) if settings.twilio_auth_token else None,
        tokens=TokenCheck(settings.tokens, settings.token_secret),
        origins=settings.allowed_origins,
        public_url=settings.public_url,
    )
    if access.twilio is None:
        log.warning(
            "TWILIO_AUTH_TOKEN is not set: anyone who finds /twilio can stream audio (and run up the Deepgram bill)"
        )
    if not access.tokens.enabled:
        log.warning(
            "no CALLSCRIBE_TOKENS or CALLSCRIBE_TOKEN_SECRET: anyone can read every transcript on /client and /game"
        )
    config = hypercorn_config(settings, reuse_port=reuse_port)
    try:
        config.create_ssl_context()  # Hypercorn loads it again once listening: this is to say what failed
    except OSError as error:  # ssl.SSLError is one
        raise StartupError(f"CERT_PEM/KEY_PEM: cannot load the certificate and key: {_os_reason(error)}") from None
    if hub is None and settings.redis_url:
        from callscribe.server.redis_games import RedisGames
        from callscribe.server.redis_hub import RedisHub

        await reach_redis(settings.redis_url)
        hub = RedisHub(settings.redis_url, lease_s=settings.lease_s)
        RedisGames(hub, games)  # game codes and patches across processes, run by the hub
        log.info("hub: Redis at %s", _without_credentials(settings.redis_url))
    log.info("talk-back speech: %s", speech.name)
    store = await _open_store(settings.store, shared=reuse_port, lease_s=settings.lease_s)
    try:
        app = create_app(
            settings.call,
            hub=hub,
            subscriber_send_timeout_s=settings.stall_timeout_s,
            games=games,
            forward_number=settings.forward_number,
            access=access,
            read_tick=ReadTick(settings.read_tick_ms / 1000) if settings.read_tick_ms else None,
            store=store,
        )
        await _run(app, config, settings, trio.Event() if stop is None else stop, task_status)
    finally:
        with trio.CancelScope(shield=True):
            if store is not None:
                await trio.to_thread.run_sync(store.engine.close)
            if isinstance(speech, AuraEngine):
                await speech.aclose()
    log.info("callscribe stopped")


async def _run(
    app: QuartTrio, config: Config, settings: ServerSettings, stop: trio.Event, task_status: trio.TaskStatus[list[str]]
) -> None:
    """Serve `app` until `stop` is set or a signal comes."""
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0
    server: Server = app.extensions["callscribe"]

    async def shutdown_trigger() -> None:
        await stop.wait()
        log.info("shutting down: %d live calls get up to %g s to finish", len(server.calls), settings.shutdown_grace_s)
        await server.shutdown(settings.shutdown_grace_s)

    async def watch_signals() -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread gets signals; a program serving from another thread sets `stop`
        # Kept open until the server has stopped: closing it would give a second signal (Ctrl-C
        # reaches a worker as SIGINT and then as its supervisor's SIGTERM) its default action,
        # which kills the process in the middle of the drain. And when it closes, trio hands the
        # signals it has not given out yet to the handlers it found: ignoring ones, so that a
        # second signal that came as the server stopped does not kill the process at the end.
        found = {signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            with trio.open_signal_receiver(*found) as signals:
                async for signum in signals:
                    stopping = "; already stopping" if stop.is_set() else ""
                    log.info("received %s%s", signal.Signals(signum).name, stopping)
                    stop.set()
        finally:
            for signum, handler in found.items():
                signal.signal(signum, handler)

    address = f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            try:
                async with trio.open_nursery() as hypercorn_nursery:
                    try:
                        binds = await hypercorn_nursery.start(
                            lambda task_status: listener.serve(
                                app,
                                config,
                                shutdown_trigger=shutdown_trigger,
                                routes=server.routes,
                                task_status=task_status,
                            )
                        )
                    except* OSError as group:
                        failure = next(leaves(group))
                        raise StartupError(f"cannot listen on {address}: {_os_reason(failure)}") from None
                    log.info("callscribe listening on %s", ", ".join(binds))
                    if settings.run_file:
                        _write_run_file(settings.run_file, binds)
                    task_status.started(binds)
            finally:
                if settings.run_file:
                    remove_run_file(settings.run_file)
            nursery.cancel_scope.cancel()
    except* LifespanFailureError as group:
        # Quart logged the failure with its traceback; Hypercorn's error only says that it failed.
        failure = next(leaves(group))
        if not str(failure).startswith("Lifespan failure in startup"):
            raise
        cause = next(leaves(failure.__context__ or failure))
        detail = str(cause) if isinstance(cause, StartupError) else f"{type(cause).__name__}: {cause}"
        raise StartupError(f"the app failed to start: {detail}") from None


async def _open_store(settings: StoreSettings, *, shared: bool, lease_s: float) -> StoreRecorder | None:
    """The call store (None with --store none), its webhook delivery attached; `StartupError` if it
    cannot be used. `shared`: this process is one of the workers of `serve --workers N`; `lease_s`: the silence after which
    a process sharing the store is taken for dead (--redis-lease)."""
    if settings.location is None:
        log.info("call store: none (--store none): calls are not kept, late subscribers get live messages only")
        return None
    from callscribe.server.store_writer import open_store

    try:
        store = await open_store(settings, shared=shared, lease_s=lease_s)
    except StoreError as error:
        raise StartupError(str(error)) from None
    log.info("call store: %s %s", store.engine.kind, _where(store.engine.where))
    if settings.webhook_urls:
        from callscribe.server.webhook_delivery import WebhookDelivery

        store.delivery = WebhookDelivery(store, settings.webhook_secret)
        log.info("webhooks: %s", ", ".join(store.delivery.names.values()))
        if not settings.webhook_secret:
            log.warning("CALLSCRIBE_WEBHOOK_SECRET is not set: webhook events are sent unsigned")
    return store


def _where(location: str) -> str:
    return location if "://" in location else str(Path(location).resolve())


async def reach_redis(url: str) -> None:
    """Refuse to start when Redis does not answer (a wrong URL is found now, not at the first call);
    once running, `RedisHub` rides out Redis outages by itself."""
    import coredis

    from callscribe.server.redis_link import CONNECT_TIMEOUT_S, REDIS_ERRORS

    try:
        async with coredis.Redis.from_url(
            url, connect_timeout=CONNECT_TIMEOUT_S, stream_timeout=CONNECT_TIMEOUT_S
        ) as client:
            await client.ping()
    except* REDIS_ERRORS as group:
        reason = next(leaves(group))
        raise StartupError(f"cannot reach Redis at {_without_credentials(url)}: {reason}") from None


def _write_run_file(path: str, binds: list[str]) -> None:
    try:
        write_run_file(path, binds)
    except OSError as error:
        raise StartupError(f"CALLSCRIBE_RUN_FILE: cannot write {path}: {_os_reason(error)}") from None


def _without_credentials(url: str) -> str:
    return url.rsplit("@", 1)[-1]


def _os_reason(error: BaseException) -> str:
    return (isinstance(error, OSError) and error.strerror) or str(error)
