"""Real Chromium against a real callscribe: the dashboard's tests and its screenshots.

Playwright's Python API drives the system's Chromium (`/usr/bin/chromium`, Debian's package, which
`scripts/setup test` installs); no browser is ever downloaded. Playwright's synchronous API blocks
its thread, and the server, the fake Deepgram and the simulator are Trio code that must keep
running meanwhile, so they run in a Trio loop of their own in a background thread (`Stack`); the
test drives the browser from its own thread and hands the loop work with `Stack.run` (wait for it)
or `Stack.start` (let it run).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from callscribe.testing.fake_deepgram import FakeDeepgram, FakeDeepgramBehaviour, FakeDeepgramSession
from conftest import API_KEY, RunningServer, start_server

CHROMIUM = os.environ.get("CALLSCRIBE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
T = TypeVar("T")


def unavailable_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if shutil.which(CHROMIUM) is None:
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; scripts/setup test does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (scripts/setup test installs it)"
    return None


@dataclass
class Served:
    """One callscribe with its own fake Deepgram, in the stack's loop."""

    server: RunningServer
    deepgram: FakeDeepgram

    @property
    def http(self) -> str:
        return self.server.http_url

    @property
    def twilio(self) -> str:
        return self.server.url("/twilio")


@dataclass
class Stack:
    """A Trio loop in a thread of its own, holding servers and calls for a browser test."""

    _token: trio.lowlevel.TrioToken | None = None
    _nursery: trio.Nursery | None = None
    _stop: trio.Event | None = None
    _thread: threading.Thread | None = None
    _served: list[Served] = field(default_factory=list)

    def open(self) -> None:
        ready = threading.Event()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()

        self._thread = threading.Thread(target=trio.run, args=(main,), name="callscribe-stack", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test stack's Trio loop did not start")

    def close(self) -> None:
        for served in self._served:
            self.run(_stop_server, served.server)
        assert self._token is not None and self._stop is not None and self._thread is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)

    def run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `function(*args)` in the loop and wait for its result."""
        return trio.from_thread.run(function, *args, trio_token=self._token)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Call the synchronous `function(*args)` in the loop (to set a trio.Event, say)."""
        return trio.from_thread.run_sync(function, *args, trio_token=self._token)

    def start(self, function: Callable[..., Awaitable[T]], *args: Any) -> Future[T]:
        """Start `function(*args)` in the loop; its result (or exception) comes in the future."""
        future: Future[T] = Future()

        async def task() -> None:
            try:
                future.set_result(await function(*args))
            except BaseException as error:  # handed to the test thread, which raises it
                future.set_exception(error)
                if not isinstance(error, Exception):
                    raise

        def spawn() -> None:
            assert self._nursery is not None
            self._nursery.start_soon(task)

        trio.from_thread.run_sync(spawn, trio_token=self._token)
        return future

    def serve(
        self,
        *,
        deepgram: dict[str, Any] | None = None,
        on_send: Callable[[FakeDeepgramSession, str], None] | None = None,
        deepgram_url_query: str = "",
        **settings: Any,
    ) -> Served:
        """A callscribe (and its fake Deepgram, behaving as `deepgram` says, reporting each message it
        sends to `on_send`) on free loopback ports, stopped by `close`."""

        async def start() -> Served:
            assert self._nursery is not None
            fake = FakeDeepgram(FakeDeepgramBehaviour(api_key=API_KEY, **(deepgram or {})), on_send=on_send)
            await self._nursery.start(fake.serve)
            server = await start_server(self._nursery, fake, deepgram_url=fake.url + deepgram_url_query, **settings)
            return Served(server, fake)

        served = self.run(start)
        self._served.append(served)
        return served


async def _stop_server(server: RunningServer) -> None:
    server.stop.set()
    with trio.fail_after(15):
        await server.done.wait()


@contextmanager
def stack() -> Iterator[Stack]:
    running = Stack()
    running.open()
    try:
        yield running
    finally:
        running.close()


@dataclass
class ConsoleErrors:
    """What a page logged as an error (console.error, failed loads, uncaught exceptions)."""

    messages: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", lambda message: message.type == "error" and self.messages.append(message.text))
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
