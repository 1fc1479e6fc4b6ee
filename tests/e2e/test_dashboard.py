"""The dashboard in real Chromium against a real callscribe, the fake Deepgram and simulated calls.

One browser and one Trio stack (tests/browser.py) serve the whole module; each test starts its own
server. Every page fails its test if it logs a console error.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket
import webvtt

import browser
from callscribe.core.access import TokenCheck
from callscribe.core.transcript import SpeakerLabels
from callscribe.server.games import GameSettings
from callscribe.server.store import StoreSettings
from callscribe.testing.demo import CONVERSATION, DEMO_NUMBER, LINE_S
from callscribe.testing.fake_deepgram import FakeDeepgramSession
from callscribe.testing.simulator import CallSpec, run_call
from conftest import noise

reason = browser.unavailable_reason()
if reason is not None:
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

TOKEN_SECRET = "dashboard-test-secret-0123456789abcdef"
INTERIMS = "?interim_results=true"
TRANSCRIPT = "please cancel my parrot subscription"

# Records, in the page, when each transcript line first became final (ms since the epoch).
LINE_TIMES = """
window.finalAt = [];
new MutationObserver((records) => {
  for (const node of document.querySelectorAll('#transcript .line.final:not([data-seen])')) {
    node.dataset.seen = '1';
    window.finalAt.push({channel: node.classList.contains('ch1') ? 1 : 0, start: node.dataset.start, at: Date.now()});
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['class']});
"""


@pytest.fixture(scope="module")
def stack() -> Iterator[browser.Stack]:
    with browser.stack() as running:
        yield running


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=browser.CHROMIUM, args=browser.CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def open_page(chromium: Browser) -> Iterator[Any]:
    """Pages in fresh contexts (own sessionStorage), each checked for console errors when the test ends."""
    opened: list[tuple[Any, browser.ConsoleErrors]] = []

    def open_one(width: int = 1280, height: int = 860) -> Page:
        context = chromium.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(10_000)
        errors = browser.ConsoleErrors()
        errors.watch(page)
        page.add_init_script(LINE_TIMES)
        opened.append((context, errors))
        return page

    yield open_one
    for context, _ in opened:
        context.close()
    logged = [message for _, errors in opened for message in errors.messages]
    assert not logged, f"the page logged errors: {logged}"


class Sent:
    """When the fake Deepgram sent each final that says something (seconds since the epoch), per
    channel; the empty ones after CloseStream show no line."""

    def __init__(self) -> None:
        self.finals: list[dict[str, Any]] = []

    def __call__(self, session: FakeDeepgramSession, text: str) -> None:
        message = json.loads(text)
        if message.get("type") == "Results" and message.get("is_final") and message["duration"] > 0:
            self.finals.append({"message": message, "at": time.time()})


def store_in(tmp_path: Path) -> StoreSettings:
    return StoreSettings(location=str(tmp_path / "callscribe.db"))


def call_spec(seconds: float, *, both: bool = True, **extra: Any) -> CallSpec:
    return CallSpec(
        inbound=noise(seconds, 1),
        outbound=noise(seconds, 2) if both else None,
        custom_parameters={"From": "+15550100", "To": "+15550199"},
        **extra,
    )


async def simulate(url: str, spec: CallSpec, bidirectional: bool = False, speed: float = 2.0) -> None:
    """A call, by default at twice real time (the fake Deepgram's results follow the audio, not the clock)."""
    await run_call(url, spec, speed=speed, bidirectional=bidirectional)


def lanes(page: Page) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {0: [], 1: []}
    for line in page.locator("#transcript .line.final").all():
        channel = 1 if "ch1" in (line.get_attribute("class") or "") else 0
        found[channel].append(f"{line.get_attribute('data-start')} {line.locator('.text').inner_text()}")
    return found


def wait_for_feed(page: Page) -> None:
    page.wait_for_selector("#feed-status[data-state=up]")


def test_a_call_is_live_in_two_lanes_then_ends_and_is_found_in_history(
    stack: browser.Stack, open_page: Any, tmp_path: Path
) -> None:
    sent = Sent()
    served = stack.serve(
        store=StoreSettings(
            location=str(tmp_path / "callscribe.db"), speaker_labels=SpeakerLabels("Customer", "Agent")
        ),
        deepgram={"transcript": TRANSCRIPT, "result_every_s": 1.0},
        on_send=sent,
        deepgram_url_query=INTERIMS,
    )
    page = open_page()
    page.goto(served.http + "/")
    wait_for_feed(page)
    assert page.locator("#open-banner").is_visible()  # no tokens configured: said so

    spec = call_spec(4.0)
    started = time.time()
    call = stack.start(simulate, served.twilio, spec)
    card = page.locator(f"#live-calls li[data-call={spec.call_sid}]")
    card.wait_for()
    assert time.time() - started < 1.0, "the call took over a second to show in Live"
    assert "+15550100 → +15550199" in card.inner_text() and "both tracks" in card.inner_text()
    assert card.locator(".badge[data-state=streaming]").is_visible()

    card.locator("a").click()
    page.wait_for_selector("#call-status[data-state=streaming]")
    interim = page.wait_for_selector("#transcript .line.interim")
    page.wait_for_function("line => line.classList.contains('final')", arg=interim)  # replaced in place
    call.result(timeout=20)

    page.wait_for_selector("#call-status[data-state=ended]")
    page.wait_for_selector("#call-end:not([hidden])")
    assert "ended normally" in page.locator("#call-outcome").inner_text()
    # Every final the fake sent is in its speaker's lane, in order, each within a second.
    expected: dict[int, list[str]] = {0: [], 1: []}
    for final in sent.finals:
        message = final["message"]
        start = message["start"]
        expected[message["channel_index"][0]].append(f"{start:.2f} {TRANSCRIPT}")
    assert lanes(page) == expected and len(expected[0]) >= 3
    shown = page.evaluate("window.finalAt")
    for final in sent.finals:
        channel, start = final["message"]["channel_index"][0], final["message"]["start"]
        (at,) = [s["at"] for s in shown if s["channel"] == channel and s["start"] == f"{start:.2f}"]
        assert at / 1000 - final["at"] < 1.0, f"a final took {at / 1000 - final['at']:.2f} s to show"
    assert page.locator("#announcer").inner_text().endswith(TRANSCRIPT)
    assert page.locator("#lane-heads").inner_text().split("\n") == ["Customer", "Agent"]  # --speaker-labels

    with page.expect_download() as downloading:
        page.locator("#downloads a[data-kind=vtt]").click()
    captions = webvtt.read(downloading.value.path())
    assert len(captions) == len(sent.finals)
    assert {caption.voice for caption in captions} == {"Customer", "Agent"}

    page.locator("[data-nav=history]").click()
    page.fill("#history-form input[name=q]", "zebra")
    page.press("#history-form input[name=q]", "Enter")
    page.wait_for_function("() => document.querySelector('#history-summary').textContent === 'No call matches.'")
    page.fill("#history-form input[name=q]", "parrot")
    page.fill("#history-form input[name=number]", "+1 555 0199")  # To, by its digits
    page.fill("#history-form input[name=since]", time.strftime("%Y-%m-%d"))  # today
    page.press("#history-form input[name=q]", "Enter")
    row = page.locator(f"#history tr[data-call={spec.call_sid}]")
    row.wait_for()
    page.fill("#history-form input[name=number]", "+1 555 0000")
    page.press("#history-form input[name=q]", "Enter")
    row.wait_for(state="detached")
    page.fill("#history-form input[name=number]", "")
    page.fill("#history-form input[name=since]", "")
    page.fill("#history-form input[name=until]", time.strftime("%Y-%m-%d", time.localtime(time.time() - 2 * 86400)))
    page.press("#history-form input[name=q]", "Enter")
    page.wait_for_selector("#history-summary:text('No call matches.')")
    page.fill("#history-form input[name=until]", "")
    page.press("#history-form input[name=q]", "Enter")
    row.wait_for()
    assert "ended normally" in row.inner_text() and "parrot" in row.inner_text()
    row.locator("a").click()  # a past call opens the same way
    page.wait_for_selector("#call-end:not([hidden])")
    assert lanes(page) == expected


def test_with_tokens_the_page_asks_for_one_and_a_call_token_opens_that_call_only(
    stack: browser.Stack, open_page: Any, tmp_path: Path
) -> None:
    served = stack.serve(store=store_in(tmp_path), token_secret=TOKEN_SECRET, tokens=frozenset({"team-token"}))
    mine, other = call_spec(3.0), call_spec(3.0)
    calls = [stack.start(simulate, served.twilio, spec) for spec in (mine, other)]

    page = open_page()
    page.goto(served.http + "/")
    page.wait_for_selector("#view-login:not([hidden])")  # no token: the page asks
    assert page.locator("#open-banner").is_hidden()
    assert page.evaluate("() => document.activeElement.id") == "token-input"
    page.fill("#token-input", "not-a-token")
    page.press("#token-input", "Enter")
    page.wait_for_selector("#login-error:text('Not accepted: unknown token')")

    call_token = TokenCheck(secret=TOKEN_SECRET).issue(ttl_s=600, call_sid=mine.call_sid)
    page.fill("#token-input", call_token)
    page.press("#token-input", "Enter")
    page.wait_for_selector("#view-call:not([hidden])")
    assert page.url.endswith(f"#/calls/{mine.call_sid}")
    page.wait_for_selector("#transcript .line.final")
    assert page.locator("[data-nav]:visible").count() == 0
    wait_for_feed(page)
    assert page.locator("#live-calls li").evaluate_all("cards => cards.map(card => card.dataset.call)") == [
        mine.call_sid
    ]
    page.evaluate(f"() => {{ location.hash = '#/calls/{other.call_sid}'; }}")
    page.wait_for_function(f"() => location.hash === '#/calls/{mine.call_sid}'")  # sent back to its call
    for call in calls:
        call.result(timeout=20)
    page.wait_for_selector("#call-end:not([hidden])")  # downloads work with the token as a header
    with page.expect_download() as downloading:
        page.locator("#downloads a[data-kind=txt]").click()
    assert Path(downloading.value.path()).read_text().startswith("[00:00] Caller: ")

    team = open_page()  # a token for everything sees both calls in History
    team.goto(served.http + "/")
    team.fill("#token-input", "team-token")
    team.press("#token-input", "Enter")
    wait_for_feed(team)
    team.locator("[data-nav=history]").click()
    team.wait_for_selector(f"#history tr[data-call={mine.call_sid}]")
    team.wait_for_selector(f"#history tr[data-call={other.call_sid}]")


def test_deepgram_dropped_mid_call_shows_reconnecting_then_streaming_with_no_duplicate_lines(
    stack: browser.Stack, open_page: Any, tmp_path: Path
) -> None:
    served = stack.serve(
        store=store_in(tmp_path),
        deepgram={"transcript": TRANSCRIPT, "result_every_s": 0.5, "drop_after_audio_s": 2.5},
        backoff_initial_s=0.3,
        backoff_max_s=0.5,
        replay_rate=2.0,
    )
    page = open_page()
    page.goto(served.http + "/")
    wait_for_feed(page)
    page.evaluate("""() => {
      window.states = [];
      new MutationObserver(() => {
        const state = document.querySelector('#call-status').dataset.state;
        if (state && state !== window.states[window.states.length - 1]) window.states.push(state);
      }).observe(document.querySelector('#call-status'), {attributes: true});
    }""")
    spec = call_spec(5.0)
    call = stack.start(simulate, served.twilio, spec)
    page.locator(f"#live-calls li[data-call={spec.call_sid}] a").click()
    call.result(timeout=30)
    page.wait_for_selector("#call-status[data-state=ended]")
    states = page.evaluate("window.states")  # every change, however brief (a reconnect takes ~0.3 s here)
    assert states[:3] == ["streaming", "reconnecting", "streaming"] and states[-1] == "ended", states
    shown = lanes(page)
    for channel in (0, 1):
        assert len(shown[channel]) == len(set(shown[channel])) >= 8, shown[channel]
    assert len(served.deepgram.sessions) >= 2  # it really dropped


def test_a_late_opener_sees_the_call_so_far_then_live(stack: browser.Stack, open_page: Any, tmp_path: Path) -> None:
    sent = Sent()
    served = stack.serve(
        store=store_in(tmp_path), deepgram={"transcript": TRANSCRIPT, "result_every_s": 0.5}, on_send=sent
    )
    spec = call_spec(4.0, both=False)
    call = stack.start(simulate, served.twilio, spec)
    deadline = time.monotonic() + 10
    while len(sent.finals) < 3 and time.monotonic() < deadline:  # the call is well under way
        time.sleep(0.05)
    page = open_page()
    page.goto(f"{served.http}/#/calls/{spec.call_sid}")
    page.wait_for_selector("#transcript .line.final")
    assert page.locator("#transcript .line.final").count() >= 3  # what was said before it opened
    call.result(timeout=20)
    page.wait_for_selector("#call-status[data-state=ended]")
    shown = lanes(page)
    assert shown[1] == [] and len(shown[0]) == len(sent.finals) == len(set(shown[0]))
    assert page.locator("#lane-heads").inner_text() == "Caller"  # an inbound-only call has one lane
    assert "caller only" in page.locator("#call-meta").inner_text()


def test_a_two_thousand_line_call_keeps_the_page_small(stack: browser.Stack, open_page: Any) -> None:
    served = stack.serve()
    page = open_page()
    page.goto(served.http + "/")
    wait_for_feed(page)
    result = page.evaluate("""async () => {
      const { Transcript, MAX_LINES } = await import('/ui/call_view.js');
      const make = (tag) => document.body.appendChild(document.createElement(tag));
      const container = make('div');
      container.className = 'transcript';
      const transcript = new Transcript({container, heads: make('div'), earlier: make('button'),
                                         jump: make('button'), announcer: make('div')});
      transcript.live = true;
      const said = (channel, start, words, final) => transcript.results({type: 'Results',
        channel_index: [channel, 2], is_final: final, start, duration: 1,
        channel: {alternatives: [{transcript: words}]}});
      const began = performance.now();
      for (let i = 0; i < 2000; i++) {
        said(i % 2, i, 'half of it', false);
        said(i % 2, i, `line ${i}`, true);
      }
      const took = performance.now() - began;
      const shown = () => container.querySelectorAll('.line').length;
      const capped = shown();
      const last = container.lastElementChild.querySelector('.text').textContent;
      transcript.earlier.click();
      const expanded = shown();
      const first = container.firstElementChild.querySelector('.text').textContent;
      transcript.follow();
      return {took, max: MAX_LINES, lines: transcript.lineCount, capped, last, expanded, first,
              refollowed: shown(), note: transcript.earlier.textContent};
    }""")
    print(f"2,000 finals (and as many interims) taken in {result['took']:.0f} ms")
    assert result["lines"] == 2000 and result["capped"] == result["max"] == 400
    assert result["last"] == "line 1999"
    assert result["expanded"] == 800 and result["first"] == "line 1200"
    assert result["refollowed"] == 400 and result["note"] == "Show earlier lines (1600 not shown)"


def test_by_keyboard_at_360_pixels_with_finals_announced(stack: browser.Stack, open_page: Any, tmp_path: Path) -> None:
    served = stack.serve(store=store_in(tmp_path), deepgram={"transcript": TRANSCRIPT, "result_every_s": 0.25})
    page = open_page(width=360, height=740)
    page.goto(served.http + "/")
    wait_for_feed(page)
    spec = call_spec(5.0)
    call = stack.start(simulate, served.twilio, spec)
    page.locator(f"#live-calls li[data-call={spec.call_sid}]").wait_for()
    for _ in range(12):  # skip link, sections, ... the call
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.closest('#live-calls li')?.dataset.call") == spec.call_sid:
            break
    else:
        pytest.fail("the live call cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#view-call:not([hidden])")
    assert page.evaluate("() => document.activeElement.id") == "call-title"
    page.wait_for_function("() => document.querySelectorAll('#transcript .line.final').length >= 16")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360  # nothing wider than the screen
    announced = page.locator("#announcer").inner_text()
    assert announced in (f"Caller: {TRANSCRIPT}", f"Other party: {TRANSCRIPT}")
    assert page.locator("#announcer").get_attribute("aria-live") == "polite"

    page.focus("#transcript")
    page.keyboard.press("Home")  # the reader scrolls up: following pauses
    page.wait_for_selector("#jump-live:not([hidden])")
    page.wait_for_function("() => document.querySelector('#transcript').scrollTop === 0")
    lines = page.locator("#transcript .line").count()
    page.wait_for_function(f"() => document.querySelectorAll('#transcript .line').length > {lines}")
    assert page.evaluate("() => document.querySelector('#transcript').scrollTop") == 0  # more came; we stayed
    page.focus("#jump-live")
    page.keyboard.press("Enter")
    page.wait_for_selector("#jump-live", state="hidden")
    assert (
        page.evaluate(
            "() => { const t = document.querySelector('#transcript'); return t.scrollHeight - t.scrollTop - t.clientHeight; }"
        )
        < 48
    )
    call.result(timeout=20)


def test_games_show_their_codes_and_the_calls_patched_to_them(
    stack: browser.Stack, open_page: Any, tmp_path: Path
) -> None:
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"game_codes": ["42"]}))
    served = stack.serve(store=store_in(tmp_path), games=GameSettings(phone_number="+15550000", codes_file=str(codes)))
    leave = trio.Event()
    game = stack.start(play_game, served.server.url("/game"), leave)
    page = open_page()
    page.goto(served.http + "/#/games")
    row = page.locator("#games tr[data-code='42']")
    row.wait_for()
    assert "waiting for a caller" in row.inner_text()

    spec = call_spec(3.0, both=False, dtmf=[(0.3, "4"), (0.4, "2")])
    spec.custom_parameters["route"] = "game"
    call = stack.start(simulate, served.twilio, spec, True)
    page.wait_for_selector(f"#games tr[data-code='42'] a[href='#/calls/{spec.call_sid}']")
    assert "+15550100" in row.inner_text()
    page.locator("[data-nav=live]").click()
    card = page.locator(f"#live-calls li[data-call={spec.call_sid}]")
    card.locator(".badge.game").wait_for()
    assert card.locator(".badge.game").inner_text() == "game 42"
    call.result(timeout=20)
    page.locator(f"#recent tr[data-call={spec.call_sid}]").wait_for()  # the ended call moves on its own
    card.wait_for(state="detached")
    stack.call(leave.set)
    assert game.result(timeout=10) == "42"
    page.locator("[data-nav=games]").click()
    page.wait_for_selector("#games-empty:not([hidden])")


async def play_game(url: str, leave: trio.Event) -> str:
    """A game: takes a code, stays connected until `leave` is set; returns its code."""
    async with trio_websocket.open_websocket_url(url, connect_timeout=5) as ws:
        await ws.get_message()  # the phone number
        code = await ws.get_message()
        with trio.move_on_after(20):
            await leave.wait()
        return code


SCREENSHOTS = "CALLSCRIBE_SCREENSHOTS"
"""Set to a folder (scripts/screenshots sets docs/screenshots) to keep the README's screenshots."""


def test_screenshots_of_the_live_call_history_and_games(stack: browser.Stack, open_page: Any, tmp_path: Path) -> None:
    """The README's pictures, made as a user would see them: past calls, two games (one patched to a
    live call), and a live call followed since its start."""
    folder = Path(os.environ.get(SCREENSHOTS) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"game_codes": ["42", "57"]}))
    served = stack.serve(
        store=store_in(tmp_path),
        games=GameSettings(phone_number=DEMO_NUMBER, codes_file=str(codes)),
        deepgram={"result_every_s": LINE_S, "lines": CONVERSATION},
        deepgram_url_query=INTERIMS,
    )
    past = [
        CallSpec(
            inbound=noise(seconds, 3),
            outbound=noise(seconds, 4),
            custom_parameters={"From": number, "To": DEMO_NUMBER},
        )
        for number, seconds in (("+15555550123", 6.0), ("+15555550188", 3.0), ("+15555550142", 4.5))
    ]
    for ended in [stack.start(simulate, served.twilio, spec, False, 0.0) for spec in past]:  # as fast as it goes
        ended.result(timeout=30)
    leave = trio.Event()
    games = [stack.start(play_game, served.server.url("/game"), leave) for _ in range(2)]
    game_call = call_spec(16.0, both=False, dtmf=[(0.3, "4"), (0.4, "2")])
    game_call.custom_parameters.update({"route": "game", "From": "+15555550111", "To": DEMO_NUMBER})
    live = CallSpec(
        inbound=noise(11.0, 5),
        outbound=noise(11.0, 6),
        custom_parameters={"From": "+15555550199", "To": DEMO_NUMBER},
    )
    calls = [stack.start(simulate, served.twilio, game_call, True), stack.start(simulate, served.twilio, live)]

    page = open_page(width=1200, height=820)
    page.goto(f"{served.http}/#/calls/{live.call_sid}")
    page.wait_for_function("() => document.querySelectorAll('#transcript .line.ch1.final').length >= 3")
    page.wait_for_selector("#transcript .line.interim")
    page.screenshot(path=folder / "dashboard-call.png")
    page.locator("[data-nav=live]").click()
    page.wait_for_selector(f"#live-calls li[data-call={game_call.call_sid}] .badge.game")
    page.wait_for_selector("#recent tbody tr >> nth=2")
    page.screenshot(path=folder / "dashboard-live.png")
    page.locator("[data-nav=history]").click()
    page.fill("#history-form input[name=q]", "order")
    page.press("#history-form input[name=q]", "Enter")
    page.wait_for_selector("#history-summary:text('newest first')")
    page.screenshot(path=folder / "dashboard-history.png")
    page.locator("[data-nav=games]").click()
    page.wait_for_selector(f"#games a[href='#/calls/{game_call.call_sid}']")
    page.screenshot(path=folder / "dashboard-games.png")
    for name in ("call", "live", "history", "games"):
        assert (folder / f"dashboard-{name}.png").stat().st_size > 10_000
    for call in calls:
        call.result(timeout=30)
    stack.call(leave.set)
    for game in games:
        game.result(timeout=10)
