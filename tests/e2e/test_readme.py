"""Every recipe of the README, run as written, and what it prints checked against what the README shows.

Each recipe runs in a network namespace of its own (`recipes.Network`), so that its fixed ports
are free, with the venv activated as the README says; all of them run at once (they are real
time: calls of 5-14 s), and each test reports its recipe's outcome. Blocks that cannot run here
are listed in NOT_RUN with the reason, and a test checks that every shell block of the README is
either run or listed.
"""

from __future__ import annotations

import json
import re
import shutil
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme

from recipes import ROOT, Network, Readme, Terminal, namespaces_work, shown

README = Readme()
WHY_NOT = namespaces_work()
LISTENING = r".*callscribe listening on http://127\.0\.0\.1:5000"


@dataclass
class Session:
    """The terminals of one recipe, in one network namespace."""

    network: Network
    nursery: trio.Nursery
    folder: Path
    terminals: list[Terminal] = field(default_factory=list)

    async def run(self, command: str, *, cwd: Path = ROOT, name: str = "") -> Terminal:
        # Each recipe as on a machine of its own: its server's call store (./data by default) is
        # in its folder, not in the checkout that all recipes share.
        environment = {"CALLSCRIBE_DATA_DIR": str(self.folder / "data")}
        terminal = Terminal(self.network, command, cwd, name or command, environment)
        self.terminals.append(terminal)
        return await terminal.start(self.nursery)

    async def server(self, command: str, *, cwd: Path = ROOT) -> Terminal:
        terminal = await self.run(command, cwd=cwd)
        await terminal.wait_for(LISTENING)
        return terminal


Recipe = Callable[[Session], Awaitable[None]]
RECIPES: dict[str, Recipe] = {}


def recipe(function: Recipe) -> Recipe:
    RECIPES[function.__name__] = function
    return function


async def stop(terminal: Terminal) -> int:
    terminal.interrupt()
    return await terminal.exit_status()


# -- the recipes -------------------------------------------------------------------------------


@recipe
async def first_lines_serve(s: Session) -> None:
    serve, test, _demo = README.first().commands
    assert test == "scripts/test"  # the whole suite: CI runs it (.ci/run)
    server = await s.server(serve)
    health = await s.run("callscribe healthcheck")
    assert await health.exit_status() == 0 and json.loads(health.lines[-1])["status"] == "ok"
    assert await stop(server) == 0
    await server.wait_for(r".*callscribe stopped")


@recipe
async def first_lines_demo_and_listen_all(s: Session) -> None:
    *_, demo_command = README.first().commands
    demo = await s.run(demo_command)
    await demo.wait_for("follow the calls from another terminal too: callscribe listen --all")
    listen = await s.run(" && ".join(README.block("The demo", "sh", 0).commands))
    async with trio.open_nursery() as both:
        both.start_soon(demo.expect, shown(README.block("The demo", "text", 0)))
        both.start_soon(listen.expect, shown(README.block("The demo", "text", 1)))
    assert await stop(listen) == 0
    assert await stop(demo) == 0


@recipe
async def demo_game(s: Session) -> None:
    (command,) = README.block("The demo", "sh", 1).commands
    assert command == "scripts/demo --game"
    demo = await s.run(command)
    await demo.expect(shown(README.block("The demo", "text", 2)))
    assert await stop(demo) == 0


@recipe
async def demo_duration(s: Session) -> None:
    """`--duration SECONDS` ends the demo by itself: here one call of 10 s, the whole conversation
    up to its last line, and exit status 0."""
    assert "`--duration SECONDS` ends the demo by itself" in README.section("The demo")
    demo = await s.run("callscribe demo --duration 10")
    assert await demo.exit_status(40) == 0, demo.output
    transcript = [line for line in demo.lines if re.match(r"\d\d:\d\d  ", line)]
    assert transcript[0] == "00:00  Caller       Hi, I'm calling about my order; it hasn't arrived yet."
    assert transcript[1] == "00:01  Other party  Sorry to hear that. Can I have the order number?"
    assert len(transcript) == 7 and transcript[-1] == "00:09  Caller       Perfect, thank you very much."
    assert demo.lines[-1] == "-- call ended (1000 call ended)"
    assert re.fullmatch(r"call CA[0-9a-f]{32}: a caller and the other party, 10 s", demo.lines[2])


@recipe
async def piece_by_piece_and_every_subscriber(s: Session) -> None:
    fake_command, serve_command, listen_command, call_command = README.block("Piece by piece", "sh").commands
    fake = await s.run(fake_command)
    await fake.wait_for("fake Deepgram listening on ws://127.0.0.1:8765/v1/listen")
    await s.server(serve_command)
    server = s.terminals[-1]
    listen = await s.run(listen_command)
    (websocat_command,) = README.block("websocat", "sh").commands
    websocat = await s.run(websocat_command)
    piped = await s.run(README.inline("websocat", "echo CAdemo |"))
    as_json = await s.run("callscribe listen --json CAdemo")
    subscribers = [listen, piped, as_json]
    browser = await _browser(s)
    if browser is not None:
        subscribers.append(browser)
    async with trio.open_nursery() as typing:
        typing.start_soon(websocat.expect, shown(README.block("websocat", "text")))
        # Every subscriber has named the call before it starts, so that none misses its beginning.
        waiting = re.compile(r".*waits up to \d+ s for call 'CAdemo' to start")
        after = 0
        for _ in range(len(subscribers) + 1):
            after = await server.wait_for(waiting, after) + 1
        call = await s.run(call_command)
    await listen.expect(shown(README.block("Piece by piece", "text")))
    assert await listen.exit_status() == 0
    assert await call.exit_status() == 0 and "server closed with code 1000 (call ended)" in call.output
    assert await websocat.exit_status() == 0  # -E: it ends with the server's close
    # 5 s: five finals per channel, then CloseStream's empty final per channel (nothing was pending).
    assert await piped.exit_status() == 0 and sum('"type":"Results"' in line for line in piped.lines) == 12
    assert await as_json.exit_status() == 0
    messages = [json.loads(line) for line in as_json.lines if line.startswith("{")]
    assert [m["type"] for m in messages] == ["Results"] * 12 + ["Metadata"]
    assert as_json.lines[-1] == "callscribe listen: call CAdemo: closed: 1000 call ended"
    if browser is not None:
        assert await browser.exit_status() == 0
        assert browser.lines[:2] == ["Caller: audio 0.00 to 1.00", "Other party: audio 0.00 to 1.00"]
        assert browser.lines[-1] == "closed: 1000 call ended"


async def _browser(s: Session) -> Terminal | None:
    """The README's browser snippet, in Node's WebSocket (the browsers' API), where Node has one."""
    if shutil.which("node") is None:
        return None
    snippet = README.block("From a browser", "html").text
    script = re.search(r"<script>(.*)</script>", snippet, re.S)
    assert script is not None and '<pre id="log">' in snippet
    path = s.folder / "snippet.js"
    path.write_text(
        "const log = { textContent: '' };\n"  # the <pre id="log">: a browser makes it a global
        + script[1]
        + "\nws.addEventListener('close', () => setTimeout(() => process.stdout.write(log.textContent)));\n"
    )
    return await s.run(f"node --experimental-websocket --no-warnings {path}", name="browser snippet")


@recipe
async def games_by_hand(s: Session) -> None:
    write_codes, fake_command, serve_command, game_command, call_command = README.block("Games", "sh").commands
    assert await (await s.run(write_codes, cwd=s.folder)).exit_status() == 0
    fake = await s.run(fake_command, cwd=s.folder)
    await fake.wait_for("fake Deepgram Aura listening on http://127.0.0.1:8766/v1/speak")
    await s.server(serve_command, cwd=s.folder)
    game = await s.run(game_command, cwd=s.folder)
    await game.wait_for("42")
    call = await s.run(call_command, cwd=s.folder)
    await game.expect(shown(README.block("Games", "text")))
    await game.end_input()
    assert await game.exit_status() == 0
    assert await call.exit_status() == 0, call.output
    heard = re.escape(README.inline("Games", "what the caller heard: ")).replace(r"4\.2", r"\d+\.\d")
    await call.wait_for(heard)
    with wave.open(str(s.folder / "heard.wav")) as wav:
        assert wav.getframerate() == 8000 and wav.getnframes() > 8000  # the greeting, after the code


@recipe
async def go_live(s: Session) -> None:
    tunnel, serve_command, curl_command = (README.block("Go live with Twilio", "sh", i).commands[0] for i in range(3))
    assert tunnel.startswith("ngrok http 5000")  # needs the internet: not run (NOT_RUN)
    await s.server(serve_command)
    curl = await s.run(curl_command)
    assert await curl.exit_status() == 0
    assert curl.output.strip() == README.block("Go live with Twilio", "xml", 0).text.strip()


@recipe
async def tls(s: Session) -> None:
    certificate = trustme.CA().issue_cert("callscribe.example.com")
    (s.folder / "fullchain.pem").write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    (s.folder / "privkey.pem").write_bytes(certificate.private_key_pem.bytes())
    serve_command, health_command = README.block("TLS", "sh").commands
    server = await s.run(serve_command, cwd=s.folder)
    await server.wait_for(r".*callscribe listening on https://0\.0\.0\.0:443")
    health = await s.run(health_command, cwd=s.folder)
    assert await health.exit_status() == 0, health.output
    assert json.loads(health.lines[-1])["status"] == "ok"


NOT_RUN = {
    "ngrok http 5000": "a tunnel needs the internet; what it is for is checked by go_live",
    "callscribe listen": "a synopsis (CA0123... stands for a callSid); each form is run elsewhere",
    "docker build -t callscribe .": "no Docker daemon in the tests; tests/e2e/test_healthcheck.py runs the image's commands",
    "callscribe fake-deepgram --api-key demo &": "needs a redis-server on its port 6379: tests/e2e/test_scale_out.py"
    " runs the block with its own Redis and fake Deepgram (test_workers_share_the_port_and_every_call)",
    "CALLSCRIBE_TOKEN_SECRET=...": "a placeholder secret; tests/e2e/test_cli.py mints tokens",
    "callscribe calls list": "needs a store with calls in it: tests/e2e/test_calls_command.py runs the block as written",
}


# -- running them --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BaseException | None]:
    """Runs the recipes at once (those whose tests were selected), each in its own network
    namespace; the outcome of each."""
    if WHY_NOT is not None:
        pytest.skip(WHY_NOT)
    selected = {item.callspec.params.get("name") for item in request.session.items if hasattr(item, "callspec")}
    chosen = {name: RECIPES[name] for name in RECIPES if name in selected} or RECIPES
    if any(item.name == "test_every_shell_block_is_run_or_said_why_not" for item in request.session.items):
        chosen = RECIPES
    results: dict[str, BaseException | None] = {}

    async def run(name: str, function: Recipe) -> None:
        began = trio.current_time()
        try:
            async with Network() as network, trio.open_nursery() as nursery:
                session = Session(network, nursery, tmp_path_factory.mktemp(name))
                try:
                    with trio.fail_after(120):
                        await function(session)
                finally:
                    for terminal in session.terminals:
                        terminal.kill()
            results[name] = None
        except Exception as error:
            results[name] = error
        print(f"recipe {name}: {trio.current_time() - began:.1f} s")

    async def run_all() -> None:
        async with trio.open_nursery() as nursery:
            for name, function in chosen.items():
                nursery.start_soon(run, name, function)

    trio.run(run_all)
    return results


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe(name: str, outcomes: dict[str, BaseException | None]) -> None:
    error = outcomes.get(name)
    if error is not None:
        raise error


def test_every_shell_block_is_run_or_said_why_not(outcomes: dict[str, BaseException | None]) -> None:
    """A recipe added to the README is run by a recipe here, or NOT_RUN says why it cannot be."""
    for block in Readme().blocks():
        if block.language != "sh" or block in README.used:
            continue
        first = block.commands[0]
        assert any(first.startswith(prefix) for prefix in NOT_RUN), f"no test runs the README's {first!r}"
