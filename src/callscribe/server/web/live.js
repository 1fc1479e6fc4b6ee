// The call feed (/api/events): the live calls and games, kept up to date, and the Live page.

import { clock, el, openSocket, tracksText } from "./api.js";

const RETRY_MS = [500, 1000, 2000, 5000, 10000];

const STATE_TEXT = {
  streaming: "streaming",
  reconnecting: "reconnecting to Deepgram",
  failed: "transcription failed",
};

// The feed: a snapshot, then events. Listeners get "change" (calls or games changed) and
// "ended" (detail: the call.ended event).
export class Feed extends EventTarget {
  constructor(statusNode) {
    super();
    this.calls = new Map();
    this.games = [];
    this.clockOffset = 0; // server time - this browser's, from the snapshot
    this.statusNode = statusNode;
    this.failures = 0;
    this.socket = null;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    if (this.socket) this.socket.close(1000, "page closed");
  }

  connect() {
    const socket = openSocket("/api/events");
    this.socket = socket;
    socket.addEventListener("message", (message) => this.receive(JSON.parse(message.data)));
    socket.addEventListener("close", () => {
      if (this.socket !== socket || this.stopped) return;
      const delay = RETRY_MS[Math.min(this.failures, RETRY_MS.length - 1)];
      this.failures += 1;
      this.status(`Live updates interrupted; retrying in ${Math.round(delay / 1000)} s…`, "down");
      setTimeout(() => this.connect(), delay);
    });
  }

  status(text, state) {
    this.statusNode.textContent = text;
    this.statusNode.dataset.state = state;
  }

  now() {
    return Date.now() + this.clockOffset;
  }

  receive(event) {
    switch (event.type) {
      case "snapshot":
        this.failures = 0;
        this.status("Live", "up");
        this.clockOffset = Date.parse(event.now) - Date.now();
        this.calls = new Map(event.calls.map((call) => [call.callSid, call]));
        this.games = event.games;
        break;
      case "call.started":
      case "call.updated":
        this.calls.set(event.call.callSid, event.call);
        break;
      case "call.ended":
        this.calls.delete(event.callSid);
        this.dispatchEvent(new CustomEvent("ended", { detail: event }));
        break;
      case "games":
        this.games = event.games;
        break;
      default:
        return; // a newer server's event: nothing to do with it
    }
    this.dispatchEvent(new Event("change"));
  }
}

function numbers(call) {
  if (call.from || call.to) return `${call.from || "unknown"} → ${call.to || "unknown"}`;
  return call.here ? "Unknown numbers" : "On another callscribe process";
}

// The Live page's list of calls: one card per call, durations ticking once a second.
export class LiveList {
  constructor(feed, list, empty) {
    this.feed = feed;
    this.list = list;
    this.empty = empty;
    feed.addEventListener("change", () => this.render());
    setInterval(() => this.tick(), 1000);
  }

  render() {
    const calls = [...this.feed.calls.values()].sort((a, b) => b.startedAt.localeCompare(a.startedAt));
    this.list.replaceChildren(...calls.map((call) => this.card(call)));
    this.empty.hidden = calls.length > 0;
    this.tick();
  }

  card(call) {
    const link = el("a", { href: `#/calls/${encodeURIComponent(call.callSid)}`, class: "card-link" },
      el("span", { class: "numbers", text: numbers(call) }));
    const state = el("span", { class: "badge", "data-state": call.deepgram, text: STATE_TEXT[call.deepgram] || call.deepgram });
    if (call.deepgramMessage) state.title = call.deepgramMessage;
    return el(
      "li",
      { class: "card", "data-call": call.callSid },
      link,
      el("span", { class: "sid", text: call.callSid }),
      el(
        "span",
        { class: "facts" },
        el("span", { class: "duration", "data-since": call.startedAt }),
        tracksText(call.tracks) ? el("span", { text: tracksText(call.tracks) }) : "",
        state,
        call.gameCode ? el("span", { class: "badge game", text: `game ${call.gameCode}` }) : "",
      ),
    );
  }

  tick() {
    for (const node of this.list.querySelectorAll("[data-since]")) {
      node.textContent = clock((this.feed.now() - Date.parse(node.dataset.since)) / 1000);
    }
  }
}

export { STATE_TEXT };
