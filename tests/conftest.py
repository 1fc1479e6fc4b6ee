"""Shared fixtures: a fake Deepgram and a real callscribe server on loopback, and subscriber clients."""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
import trio
import trio_websocket
import trustme

import pg
from callscribe.server.call_settings import CallSettings
from callscribe.server.config import ServerSettings
from callscribe.server.serve import start_serving
from callscribe.testing.fake_aura import FakeAura, FakeAuraBehaviour
from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour

if TYPE_CHECKING:
    from redis_server import RedisServer

# Timing is the benchmark's business: a property test must not fail because a loaded machine made
# its examples slow to generate or to run.
hypothesis.settings.register_profile(
    "callscribe", deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow]
)
hypothesis.settings.load_profile("callscribe")

# Tests press Ctrl-C in the programs they start (SIGINT). A shell starts a background job
# (`scripts/test &`) with SIGINT ignored, and the children of an ignoring process ignore it too:
# those programs would never see the Ctrl-C. The tests' programs get it as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

FIRST = ("e2e", "server")
"""Test folders run first: they hold the long end-to-end tests. With a worker per core taking a file
at a time (scripts/test), the long files start at once and the short ones fill in at the end."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        folder = item.path.parent.name
        return FIRST.index(folder) if folder in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order within a folder stays


API_KEY = "test-key"


def noise(seconds: float, seed: int) -> bytes:
    """Audio in which every stretch of a few bytes is unique, so a slice can be found by content."""
    return random.Random(seed).randbytes(int(seconds * 8000))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a subprocess to bind, or to be refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LocalTls:
    """A throwaway CA (trustme) with a certificate for 127.0.0.1, as SSL contexts for both ends."""

    ca: trustme.CA
    server: ssl.SSLContext
    """Presents the certificate for 127.0.0.1."""
    client: ssl.SSLContext
    """Trusts the CA."""


def local_tls() -> LocalTls:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return LocalTls(ca, server, client)


@dataclass
class RunningServer:
    http_url: str
    ws_url: str
    stop: trio.Event
    done: trio.Event
    ssl_context: ssl.SSLContext | None = None

    def url(self, path: str) -> str:
        return self.ws_url + path


@dataclass
class Subscriber:
    calls_listed: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    arrived_at: list[float] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def types(self) -> list[str]:
        return [json.loads(m).get("type", "") for m in self.messages]


class _ExceptionRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_logged_exceptions(request: pytest.FixtureRequest) -> Iterator[None]:
    """The server keeps going when a call, a handler or a connection raises, logging the exception;
    a test fails if that happens unless it is marked `logged_exceptions_expected`."""
    handler = _ExceptionRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("logged_exceptions_expected") is None:
        lines = [f"{r.name}: {r.getMessage()}: {r.exc_info[1]!r}" for r in handler.records if r.exc_info]
        pytest.fail("exceptions were logged:\n" + "\n".join(lines), pytrace=False)


@pytest.fixture
async def fake_deepgram(nursery: trio.Nursery) -> FakeDeepgram:
    fake = FakeDeepgram(FakeDeepgramBehaviour(api_key=API_KEY))
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
async def fake_aura(nursery: trio.Nursery) -> FakeAura:
    aura = FakeAura(FakeAuraBehaviour(api_key=API_KEY))
    await nursery.start(aura.serve)
    return aura


async def stop_servers(*servers: RunningServer) -> None:
    """Stop the servers and wait until they are down (a server still shutting down would meet a
    Redis the test has already killed)."""
    for server in servers:
        server.stop.set()
    with trio.fail_after(10):
        for server in servers:
            await server.done.wait()


TEST_SERVER: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "shutdown_grace_s": 5.0,
    "stall_timeout_s": 10.0,
    "speak_url": "http://127.0.0.1:9/v1/speak",
}
"""A test server's settings where they are not `ServerSettings`' defaults: a free loopback port, quick
to stop, and no real Aura (port 9 refuses)."""

SERVER_FIELDS = frozenset(f.name for f in fields(ServerSettings))


def server_settings(fake: FakeDeepgram, **overrides: Any) -> ServerSettings:
    """`TEST_SERVER`'s settings with Deepgram at `fake`, changed by `overrides`: fields of `ServerSettings`
    or, the others, of `CallSettings`. A None for a `ServerSettings` field leaves it as it would be
    without the override: `TEST_SERVER`'s value, else the field's default (`store=None`: no call store)."""
    call: dict[str, Any] = {"deepgram_url": fake.url, "deepgram_api_key": API_KEY}
    server = dict(TEST_SERVER)
    for name, value in overrides.items():
        if name not in SERVER_FIELDS:
            call[name] = value
        elif value is not None:
            server[name] = value
    return ServerSettings(call=CallSettings(**call), **server)


async def start_server(
    nursery: trio.Nursery, fake: FakeDeepgram, *, client_ssl: ssl.SSLContext | None = None, **overrides: Any
) -> RunningServer:
    """A callscribe on a free loopback port using `fake`, with `server_settings`' `overrides`; `client_ssl`
    is what its clients trust (with `certfile`)."""
    settings = server_settings(fake, **overrides)
    stop = trio.Event()
    (bind,), done = await start_serving(nursery, settings, stop)
    scheme = "wss" if settings.tls else "ws"
    host_port = bind.split("://", 1)[1]
    return RunningServer(bind, f"{scheme}://{host_port}", stop, done, client_ssl)


@pytest.fixture
async def server(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> AsyncIterator[RunningServer]:
    running = await start_server(nursery, fake_deepgram)
    yield running
    await stop_servers(running)


async def subscribe(
    server: RunningServer,
    call_sid: str,
    into: Subscriber,
    *,
    wait_for_call: bool = True,
    query: str = "",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> Subscriber:
    """Subscribe to `call_sid` (waiting until it is live) and collect everything until the close frame;
    `query` is added to /client's URL (like "?history=0")."""
    started = False
    with trio.fail_after(15):
        while True:
            async with trio_websocket.open_websocket_url(
                server.url("/client" + query), server.ssl_context, connect_timeout=5
            ) as ws:
                into.calls_listed = json.loads(await ws.get_message())
                if call_sid not in into.calls_listed and wait_for_call:
                    await ws.aclose()
                    await trio.sleep(0.01)
                    continue
                await ws.send_message(call_sid)
                if not started:
                    task_status.started()
                    started = True
                try:
                    while True:
                        into.messages.append(await ws.get_message())
                        into.arrived_at.append(trio.current_time())
                except trio_websocket.ConnectionClosed as closed:
                    into.close_code, into.close_reason = closed.reason.code, closed.reason.reason
                return into


async def wait_until_live(server: RunningServer, call_sid: str) -> None:
    """Poll /client's list of live calls until `call_sid` is in it."""
    with trio.fail_after(10):
        while True:
            async with trio_websocket.open_websocket_url(
                server.url("/client"), server.ssl_context, connect_timeout=5
            ) as ws:
                if call_sid in json.loads(await ws.get_message()):
                    return
            await trio.sleep(0.01)


# -- PostgreSQL (for the call store) -------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg.Cluster]:
    """One PostgreSQL cluster for the session, started by the tests on a free port (see pg.py)."""
    reason = pg.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = pg.Cluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: pg.Cluster) -> str:
    """A new, empty database of the session's cluster."""
    return postgres_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a call store is: a SQLite file, or a new database of the tests' PostgreSQL cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "store" / "callscribe.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    """A redis-server of the test's own (see tests/redis_server.py), killed at the end."""
    from redis_server import RedisServer

    server = RedisServer()
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
