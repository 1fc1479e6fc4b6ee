// The dashboard: asks for a token when the server wants one, then routes between the views.
//   #/            live calls and recent calls
//   #/calls/SID   one call, live or stored
//   #/history     search past calls
//   #/games       game codes in use

import { getJson, token } from "./api.js";
import { CallView } from "./call_view.js";
import { Games } from "./games.js";
import { History, Recent } from "./history.js";
import { Feed, LiveList } from "./live.js";

const VIEWS = ["login", "live", "call", "history", "games"];
const TITLES = { live: "Live calls", history: "History", games: "Games", login: "Sign in" };

function show(name) {
  for (const view of VIEWS) document.getElementById(`view-${view}`).hidden = view !== name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function focusHeading(name) {
  const heading = document.querySelector(`#view-${name} h1`);
  heading.tabIndex = -1;
  heading.focus({ preventScroll: true });
}

class App {
  constructor(session) {
    this.session = session;
    this.feed = new Feed(document.getElementById("feed-status"));
    this.live = new LiveList(this.feed, document.getElementById("live-calls"), document.getElementById("live-empty"));
    this.call = new CallView(this.feed, session);
    this.history = new History(session);
    this.recent = new Recent(session);
    this.games = new Games(this.feed);
    this.current = null;
    this.feed.addEventListener("ended", (event) => {
      if (this.current === "live") this.recent.load(event.detail.callSid);
      if (this.current === "history" && this.history.cursors.length === 1) this.history.load();
    });
    if (session.callSid) {
      for (const link of document.querySelectorAll("[data-nav]")) link.hidden = true; // one call only
    }
    if (!session.history) document.querySelector('[data-nav="history"]').hidden = true;
    window.addEventListener("hashchange", () => this.route());
    this.feed.start();
    this.route();
  }

  route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [section, ...rest] = hash.split("/");
    if (this.session.callSid && !(section === "calls" && rest.join("/") === this.session.callSid)) {
      location.replace(`#/calls/${encodeURIComponent(this.session.callSid)}`);
      return;
    }
    const name = section === "calls" && rest.length ? "call" : ["history", "games"].includes(section) ? section : "live";
    if (name !== "call") this.call.close();
    show(name);
    if (name === "call") {
      const callSid = decodeURIComponent(rest.join("/"));
      this.call.open(callSid);
      document.title = `Call ${callSid} · callscribe`;
    } else {
      document.title = `${TITLES[name]} · callscribe`;
    }
    if (name === "live") this.recent.load();
    if (name === "history") this.history.load();
    if (name === "games") this.games.render();
    if (this.current !== null) focusHeading(name); // not on first load: the page starts at its top
    this.current = name;
  }
}

async function sessionInfo() {
  return getJson("/api/session");
}

function askForToken(reason) {
  show("login");
  const form = document.getElementById("login-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("login-error");
  error.textContent = reason || "";
  input.focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    token.set(input.value.trim());
    const session = await sessionInfo();
    if (session.authorized) {
      input.value = "";
      new App(session);
    } else {
      token.clear();
      error.textContent = `Not accepted: ${session.reason}`;
      input.select();
    }
  });
}

async function main() {
  const session = await sessionInfo();
  document.getElementById("open-banner").hidden = session.tokensRequired;
  if (session.authorized) {
    new App(session);
  } else if (!session.tokensRequired) {
    show("login"); // refused for another reason than a token: say which, there is nothing to type
    document.getElementById("login-form").hidden = true;
    document.getElementById("login-error").textContent = `This server refuses this page: ${session.reason}`;
  } else {
    const had = token.get();
    token.clear();
    askForToken(had ? `The saved token was not accepted: ${session.reason}` : "");
  }
}

main();
