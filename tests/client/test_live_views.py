"""The live views as a user meets them: `callscribe listen` in a pipe, a terminal and against odd
servers and messages; the /client protocol's resume with `wait`; the dashboard's call page after
its connection broke (its scripts under Node with a small DOM stand-in)."""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import unicodedata

import pytest
import trio
import trio_websocket

from callscribe.client.listen import ListenError, Server, add_cli_arguments, listen
from callscribe.client.outputs import HumanOutput
from callscribe.client.terminal import Terminal
from callscribe.client.transcript_view import TranscriptView
from conftest import RunningServer, free_port


def result(transcript: str, *, start: float = 0.0, is_final: bool = True, channel: int = 0) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, 2],
            "start": start,
            "duration": 1.0,
            "is_final": is_final,
            "channel": {"alternatives": [{"transcript": transcript}]},
        }
    )


def columns(text: str) -> int:
    """How many terminal columns `text` takes (East Asian wide/fullwidth: 2)."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


async def serve_fake_client(nursery: trio.Nursery, messages: list[str], delay_s: float = 0.0) -> int:
    """A minimal /client: the list, the callSid, then `messages`, then close 1000."""
    port = free_port()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            await ws.send_message(json.dumps(["CAx"]))
            await ws.get_message()
            for message in messages:
                await ws.send_message(message)
                await trio.sleep(delay_s)
            await ws.aclose(1000, "call ended")
        except trio_websocket.ConnectionClosed:
            pass

    await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", port, None)
    return port


# -- `listen CALLSID | head`: a traceback and status 1 --------------------------------------------


@pytest.mark.parametrize("json_flag", [["--json"], []])
async def test_listen_one_call_piped_into_head_exits_quietly(json_flag: list[str]) -> None:
    messages = [result(f"line {i}", start=float(i)) for i in range(300)]
    async with trio.open_nursery() as nursery:
        port = await serve_fake_client(nursery, messages, delay_s=0.005)
        env = {k: v for k, v in os.environ.items() if k not in ("CALLSCRIBE_TOKEN",)}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        command = (
            f"{sys.executable} -m callscribe listen {' '.join(json_flag)} CAx --url ws://127.0.0.1:{port} | head -n 2"
        )
        with trio.fail_after(30):
            done = await trio.run_process(
                ["bash", "-c", command + "; echo status=${PIPESTATUS[0]} >&2"],
                capture_stdout=True,
                capture_stderr=True,
                env=env,
            )
        nursery.cancel_scope.cancel()
    stderr = done.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert "status=0" in stderr, stderr


# -- an outbound-only call (<Stream track="outbound_track">): channel 0 is the other party --------


async def serve_call_and_feed(nursery: trio.Nursery, tracks: list[str]) -> int:
    """A minimal server: /client as `serve_fake_client` with one final on channel 0, and the call
    feed (/api/events), whose snapshot lists CAx with `tracks`."""
    port = free_port()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            if request.path == "/api/events":
                call = {"callSid": "CAx", "from": None, "to": None, "tracks": tracks, "startedAt": "", "here": True}
                await ws.send_message(json.dumps({"type": "snapshot", "now": "", "calls": [call], "games": []}))
                await ws.get_message()  # until the client leaves
                return
            await ws.send_message(json.dumps(["CAx"]))
            await ws.get_message()
            await ws.send_message(result("thanks for calling", channel=0))
            await ws.aclose(1000, "call ended")
        except trio_websocket.ConnectionClosed:
            pass

    await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", port, None)
    return port


@pytest.mark.parametrize(("tracks", "speaker"), [(["outbound"], "Other party"), (["inbound", "outbound"], "Caller")])
async def test_listen_names_each_channel_by_the_calls_tracks(
    monkeypatch: pytest.MonkeyPatch, tracks: list[str], speaker: str
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    async with trio.open_nursery() as nursery:
        port = await serve_call_and_feed(nursery, tracks)
        with trio.fail_after(10):
            status = await listen(
                Server(f"ws://127.0.0.1:{port}"), HumanOutput(Terminal(out)), "CAx", follow_all=False, wait_s=0.0
            )
        nursery.cancel_scope.cancel()
    assert status == 0
    assert f"00:00  {speaker:<11}  thanks for calling" in out.getvalue().splitlines(), out.getvalue()


# -- an interim of wide characters wraps and cannot be taken back --------------------------------


def test_an_interim_of_wide_characters_fits_the_terminal_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "40")
    out = io.StringIO()
    output = HumanOutput(Terminal(out, tty=True))
    output.message("CAx", result("こんにちは今日はいい天気ですね本当にそう思います", is_final=False))
    drawn = out.getvalue().rsplit("\x1b[K", 1)[-1]
    # More than 39 columns wraps onto a second row: the next "\r\x1b[K" only erases that row.
    assert columns(drawn) <= 39, (columns(drawn), drawn)


# -- escape sequences in a transcript reach the terminal as they are ---------------------------


@pytest.mark.parametrize(
    "evil",
    [
        "\x1b]0;owned\x07",  # OSC: sets the terminal's title
        "\x1b[2J\x1b[H",  # clears the screen
        "\x1b[1A\x1b[2K",  # moves up and erases the previous (already printed) line
        "\x9b2J",  # C1 CSI
    ],
)
def test_control_characters_in_a_transcript_are_not_written_to_the_terminal(
    monkeypatch: pytest.MonkeyPatch, evil: str
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    output = HumanOutput(Terminal(out, tty=False))
    output.message("CAx", result(f"hello {evil}world"))
    output.message("CAx", json.dumps({"type": "Reconnecting", "source": "callscribe", "message": f"x {evil}"}))
    written = out.getvalue()
    assert not any(unicodedata.category(ch) == "Cc" and ch != "\n" for ch in written), repr(written)


# -- a result whose start is not a finite number crashes the view ------------------------------


@pytest.mark.parametrize("start", ["1e400", "NaN", "Infinity", "1" + "0" * 400])
def test_a_result_with_a_huge_or_non_finite_start_does_not_crash_the_view(start: str) -> None:
    text = result("hello").replace('"start": 0.0', f'"start": {start}')
    assert f'"start": {start}' in text
    TranscriptView().receive(text)  # shows something or nothing; never raises


# -- `listen CALLSID --wait` above the server's limit -------------------------------------------


def test_listen_wait_above_the_servers_limit_is_bad_usage() -> None:
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert parser.parse_args(["CA1", "--wait", "3600"]).wait == 3600
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["CA1", "--wait", "4000"])
    assert exited.value.code == 2


async def test_an_error_instead_of_the_call_list_is_said_as_the_server_said_it(server: RunningServer) -> None:
    out = io.StringIO()
    output = HumanOutput(Terminal(out, tty=False))
    with trio.fail_after(10), pytest.raises(ListenError, match="wait must be a number of seconds from 0 to 3600"):
        await listen(Server(server.ws_url), output, "CAlater", follow_all=False, wait_s=4000.0)


# -- resuming (?after=) a call that just ended, with ?wait= in the URL ---------------------------


async def _collect(url: str, call_sid: str) -> tuple[list[str], int | None, str | None]:
    messages: list[str] = []
    async with trio_websocket.open_websocket_url(url) as ws:
        await ws.get_message()
        await ws.send_message(call_sid)
        try:
            while True:
                messages.append(str(await ws.get_message()))
        except trio_websocket.ConnectionClosed as closed:
            return messages, closed.reason.code, closed.reason.reason


async def test_resuming_a_call_that_just_ended_works_with_wait_as_without(server: RunningServer) -> None:
    from callscribe.core import audio
    from callscribe.testing.call_plan import CallSpec
    from callscribe.testing.call_runner import run_call

    spec = CallSpec(inbound=audio.generate_tone(2.0), call_sid="CAresume")
    async with trio.open_nursery() as nursery:
        first: list[tuple[list[str], int | None, str | None]] = []

        async def subscriber() -> None:
            first.append(await _collect(server.url("/client?ids=1&wait=10"), "CAresume"))

        nursery.start_soon(subscriber)
        await trio.sleep(0.3)
        await run_call(server.url("/twilio"), spec, speed=2)
    ((messages, code, _),) = first
    assert code == 1000 and messages
    # The subscriber drops just before the end and comes back with the id of its first message;
    # without ?wait it gets the rest and 1000 (the hub keeps an ended call for RESUME_WINDOW_S).
    after = json.loads(messages[0])["id"]
    with trio.fail_after(20):
        plain = await _collect(server.url(f"/client?after={after}"), "CAresume")
        waiting = await _collect(server.url(f"/client?after={after}&wait=3"), "CAresume")
    assert plain[1:] == (1000, "call ended")
    assert waiting == plain, waiting


# -- `listen` when the server says subscriptions are unavailable (1013) --------------------------


async def test_listen_reports_a_hub_outage_as_such_not_as_a_foreign_server() -> None:
    """What subscribers.py sends when the hub cannot list calls: an Error, then 1013 (README: `1013`
    subscriptions unavailable for now)."""
    from callscribe.client.listen import live_calls

    port = free_port()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        message = "subscriptions are unavailable: Redis: connection refused"
        await ws.send_message(json.dumps({"type": "Error", "source": "callscribe", "message": message}))
        await ws.aclose(1013, "hub unavailable, try again later")

    async with trio.open_nursery() as nursery:
        await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", port, None)
        with pytest.raises(ListenError) as error:
            await live_calls(Server(f"ws://127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()
    assert "is not a callscribe /client" not in str(error.value), str(error.value)


# -- the dashboard's call page after its /client connection broke and came back -----------------

WEB = os.path.join(os.path.dirname(__import__("callscribe").__file__), "server", "web")

DOM_STUB = r"""
class FakeElement {
  constructor(id = "") {
    this.id = id; this.dataset = {}; this.hidden = false; this.textContent = ""; this.children = [];
    this.attributes = {}; this.scrollTop = 0; this.scrollHeight = 0; this.clientHeight = 0;
    this.classList = { toggle() {}, replace() {}, add() {}, remove() {} };
  }
  addEventListener() {}
  setAttribute(k, v) { this.attributes[k] = v; }
  getAttribute(k) { return this.attributes[k]; }
  removeAttribute(k) { delete this.attributes[k]; }
  append(...c) { this.children.push(...c); }
  prepend(...c) { this.children.unshift(...c); }
  replaceChildren(...c) { this.children = c; }
  remove() {}
  querySelector() { return new FakeElement(); }
  querySelectorAll() { return []; }
  focus() {}
}
const elements = new Map();
globalThis.document = {
  getElementById(id) { if (!elements.has(id)) elements.set(id, new FakeElement(id)); return elements.get(id); },
  createElement(tag) { return new FakeElement(); },
  querySelector() { return new FakeElement(); },
  querySelectorAll() { return []; },
  body: new FakeElement(),
};
document.getElementById("call-status").dataset.state = "";
globalThis.sessionStorage = { getItem() { return null; }, setItem() {}, removeItem() {} };
globalThis.location = { protocol: "http:", host: "127.0.0.1:5000", hash: "" };
globalThis.requestAnimationFrame = () => {};
const realSetInterval = setInterval;
globalThis.setInterval = () => 0;
const sockets = [];
globalThis.WebSocket = class {
  constructor(url) { this.url = url; this.listeners = {}; this.sent = []; sockets.push(this); }
  addEventListener(type, f) { (this.listeners[type] ||= []).push(f); }
  send(d) { this.sent.push(d); }
  close() {}
  fire(type, event) { for (const f of this.listeners[type] || []) f(event); }
};
export { elements, sockets };
"""

SCENARIO = r"""
import { elements, sockets } from "./dom_stub.js";
const { Feed } = await import("./live.js");
const { CallView } = await import("./call_view.js");
const feed = new Feed(document.getElementById("feed-status"));
const view = new CallView(feed, { history: false, speakerLabels: ["Caller", "Other party"] });
const result = (start, text) => ({ data: JSON.stringify({
  type: "Results", channel_index: [0, 2], start, duration: 1, is_final: true,
  channel: { alternatives: [{ transcript: text }] } }) });
view.open("CAx");
const withId = (id, message) => ({ data: message.data.replace("{", `{"id": "${id}", `) });
sockets[0].fire("message", { data: JSON.stringify(["CAx"]) });
sockets[0].fire("message", withId("17-0", result(0, "hello")));
const before = document.getElementById("call-status").textContent;
sockets[0].fire("close", { code: 1006, reason: "" });       // the network blipped
await new Promise((resolve) => setTimeout(resolve, 700));  // the page subscribes again
sockets[1].fire("message", { data: JSON.stringify(["CAx"]) });
sockets[1].fire("message", withId("18-0", result(1, "and we are back")));
console.log(JSON.stringify({ before, after: document.getElementById("call-status").textContent,
                             sockets: sockets.length, urls: sockets.map((s) => s.url) }));
"""


def run_page_scenario(tmp_path: pathlib.Path, scenario: str) -> dict[str, object]:
    """The dashboard's scripts under Node with the DOM stand-in: what `scenario` prints last, as JSON."""
    for name in os.listdir(WEB):
        if name.endswith(".js"):
            shutil.copy(os.path.join(WEB, name), tmp_path)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "dom_stub.js").write_text(DOM_STUB)
    (tmp_path / "scenario.js").write_text(scenario)
    done = subprocess.run(["node", "scenario.js"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    state: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return state


needs_node = pytest.mark.skipif(
    shutil.which("node") is None, reason="Node is not installed (scripts/setup installs it)"
)


@needs_node
def test_the_call_page_says_streaming_again_once_it_has_resubscribed(tmp_path: pathlib.Path) -> None:
    state = run_page_scenario(tmp_path, SCENARIO)
    assert state["sockets"] == 2 and state["before"] == "streaming"
    # Transcripts flow again on the new connection, but the badge still says "reconnecting".
    assert state["after"] == "streaming", state
    # With no call store, the hub's ids fill the gap: what it keeps of the call at first, then
    # everything after the last message seen (no final spoken during the break is lost).
    assert state["urls"] == [
        "ws://127.0.0.1:5000/client?ids=1&after=0-0",
        "ws://127.0.0.1:5000/client?ids=1&after=17-0",
    ]


OUTBOUND_ONLY = r"""
import { elements, sockets } from "./dom_stub.js";
const { Feed, LiveList } = await import("./live.js");
const { CallView } = await import("./call_view.js");
const feed = new Feed(document.getElementById("feed-status"));
const cards = document.getElementById("cards");
new LiveList(feed, cards, document.getElementById("no-calls"));
const view = new CallView(feed, { history: false, speakerLabels: ["Customer", "Agent"] });
view.open("CAx");  // before the feed knows the call: its lanes are named once it does
const now = new Date().toISOString();
feed.receive({ type: "snapshot", now, games: [], calls: [{ callSid: "CAx", from: "+15550100", to: "+15550199",
  tracks: ["outbound"], startedAt: now, deepgram: "streaming", gameCode: null, here: true }] });
sockets[0].fire("message", { data: JSON.stringify(["CAx"]) });
sockets[0].fire("message", { data: JSON.stringify({ type: "Results", channel_index: [0, 1], start: 0, duration: 1,
  is_final: true, channel: { alternatives: [{ transcript: "thanks for calling" }] } }) });
const texts = (node) =>
  (typeof node === "string" ? [node] : [node.textContent, ...node.children.flatMap(texts)]).filter(Boolean);
const byId = (id) => document.getElementById(id);
console.log(JSON.stringify({ heads: texts(byId("lane-heads")), lines: texts(byId("transcript")),
  announced: byId("announcer").textContent, meta: byId("call-meta").textContent, card: texts(cards) }));
"""


@needs_node
def test_the_call_page_names_an_outbound_only_calls_channel_0_the_other_party(tmp_path: pathlib.Path) -> None:
    # <Stream track="outbound_track">: Deepgram's channel 0 carries the other party.
    state = run_page_scenario(tmp_path, OUTBOUND_ONLY)
    assert state["heads"] == ["Agent"], state
    assert state["lines"] == ["Agent ", "00:00", "thanks for calling"], state
    assert state["announced"] == "Agent: thanks for calling", state
    assert str(state["meta"]).endswith("other party only") and "other party only" in state["card"], state


# -- what the server says besides transcripts: deeply nested JSON, control characters on stderr ---

NESTED = "[" * 100_000  # json.loads raises RecursionError, not ValueError


def test_a_deeply_nested_message_shows_nothing_and_never_raises() -> None:
    from callscribe.client.listen import _call_list
    from callscribe.client.outputs import JsonOutput

    assert TranscriptView().receive(NESTED) == []
    out, err = io.StringIO(), io.StringIO()
    JsonOutput(out, err, tag_calls=True).message("CAx", NESTED)  # --json --all: passed on as it is
    assert out.getvalue() == NESTED + "\n"
    with pytest.raises(ListenError, match="is not a callscribe /client"):
        _call_list(Server(), NESTED)


EVIL = "\x1b]0;owned\x07\x1b[2J\x9b1A"


def test_json_outputs_own_lines_show_control_characters_as_replacement() -> None:
    from callscribe.client.outputs import JsonOutput

    out, err = io.StringIO(), io.StringIO()
    output = JsonOutput(out, err)
    output.info(f"call CA{EVIL} started")
    output.closed(f"CA{EVIL}", 1008, f"bad {EVIL}")
    written = err.getvalue()
    assert not any(unicodedata.category(ch) == "Cc" and ch != "\n" for ch in written), repr(written)


async def test_listen_shows_the_servers_error_without_its_control_characters() -> None:
    """README: the server's message is shown, and control characters in what the server sends are
    shown as U+FFFD, never passed to the terminal (stderr is one too)."""
    port = free_port()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        message = f"subscriptions are unavailable: {EVIL}"
        await ws.send_message(json.dumps({"type": "Error", "source": "callscribe", "message": message}))
        await ws.aclose(1013, "hub unavailable, try again later")

    async with trio.open_nursery() as nursery:
        await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", port, None)
        env = {k: v for k, v in os.environ.items() if k != "CALLSCRIBE_TOKEN"}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        with trio.fail_after(30):
            done = await trio.run_process(
                [sys.executable, "-m", "callscribe", "listen", "--url", f"ws://127.0.0.1:{port}"],
                capture_stdout=True,
                capture_stderr=True,
                env=env,
                check=False,
            )
        nursery.cancel_scope.cancel()
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "subscriptions are unavailable" in stderr, stderr
    assert not any(unicodedata.category(ch) == "Cc" and ch != "\n" for ch in stderr), repr(stderr)
