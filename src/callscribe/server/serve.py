"""Running the app on Hypercorn's Trio worker, with TLS and a graceful shutdown on SIGTERM/SIGINT.

Hypercorn, once told to stop, drops the sockets still open after its `graceful_timeout` (peers see
1006). So the shutdown trigger first lets the live calls finish and closes every subscriber with
1001 itself (`Server.shutdown`), and only then hands over to Hypercorn.

Hypercorn writes to a socket inside a shielded cancel scope: a peer that stops reading (its TCP
window stays shut) blocks the writing task for good -- no timeout or shutdown can interrupt it. The
listening sockets therefore get TCP_USER_TIMEOUT, which the accepted sockets inherit: the kernel
aborts a connection whose data has not been taken for `stall_timeout_s`, the blocked write fails,
and the task moves on.
"""

from __future__ import annotations

import logging
import signal
import socket

import trio
from hypercorn.config import Config

from callscribe.core.access import Access, TokenCheck, TwilioSignatureCheck
from callscribe.server import listener
from callscribe.server.app import Server, create_app
from callscribe.server.config import ServerSettings
from callscribe.server.games import GameRegistry
from callscribe.server.hub import Hub
from callscribe.server.speech import engine_from_settings

log = logging.getLogger(__name__)

MAX_WEBSOCKET_MESSAGE = 64 * 1024
"""Twilio frames are ~300 bytes and subscribers send one callSid: 64 KiB is generous, 16 MiB (the
library default) would let one client make us buffer a lot."""


class _Config(Config):
    """Hypercorn's config, whose listening sockets carry TCP_USER_TIMEOUT."""

    user_timeout_ms = 0

    def create_sockets(self):  # type: ignore[no-untyped-def]
        sockets = super().create_sockets()
        if self.user_timeout_ms and hasattr(socket, "TCP_USER_TIMEOUT"):
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.user_timeout_ms)
        return sockets


def hypercorn_config(settings: ServerSettings) -> Config:
    config = _Config()
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


async def serve(
    settings: ServerSettings,
    *,
    stop: trio.Event | None = None,
    hub: Hub | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set); `task_status` gets the bound URLs."""
    speech = engine_from_settings(
        settings.call.deepgram_api_key,
        prefer=settings.speech,
        aura_url=settings.speak_url,  # type: ignore[arg-type]
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
    if hub is None and settings.redis_url:
        from callscribe.server.redis_hub import RedisHub

        hub = RedisHub(settings.redis_url)
        log.info("hub: Redis at %s", settings.redis_url.rsplit("@", 1)[-1])
    app = create_app(
        settings.call,
        hub=hub,
        subscriber_send_timeout_s=settings.stall_timeout_s,
        games=games,
        forward_number=settings.forward_number,
        access=access,
    )
    log.info("talk-back speech: %s", speech.name)
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0
    server: Server = app.extensions["callscribe"]
    stop = trio.Event() if stop is None else stop

    async def shutdown_trigger() -> None:
        await stop.wait()
        log.info("shutting down: %d live calls get up to %g s to finish", len(server.calls), settings.shutdown_grace_s)
        await server.shutdown(settings.shutdown_grace_s)

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                stop.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals)
        async with trio.open_nursery() as hypercorn_nursery:
            binds = await hypercorn_nursery.start(
                lambda task_status: listener.serve(
                    app, hypercorn_config(settings), shutdown_trigger=shutdown_trigger, task_status=task_status
                )
            )
            log.info("callscribe listening on %s", ", ".join(binds))
            task_status.started(binds)
        nursery.cancel_scope.cancel()
    log.info("callscribe stopped")
