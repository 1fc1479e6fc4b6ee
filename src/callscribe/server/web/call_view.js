// One call: its transcript in one lane per speaker, live over /client or from the store.

import {
  ApiError,
  SPEAKERS,
  channelLabels,
  clock,
  download,
  el,
  getJson,
  openSocket,
  outcomeText,
  token,
  tracksText,
  when,
} from "./api.js";
import { STATE_TEXT } from "./live.js";

export const MAX_LINES = 400; // lines in the page at once; the rest stay in memory ("show earlier")
const STICK_PX = 48; // this close to the bottom counts as following the live end
const RECONNECTS = 5;
const END_POLLS = 20;

// The lines of a transcript, in the order they appeared. An interim line holds its channel's place
// until the final replaces it, in the page and here, so the two always agree.
export class Transcript {
  constructor({ container, heads, earlier, jump, announcer }) {
    Object.assign(this, { container, heads, earlier, jump, announcer });
    this.live = false;
    this.stick = true;
    container.addEventListener("scroll", () => {
      this.stick = container.scrollHeight - container.scrollTop - container.clientHeight < STICK_PX;
      this.jump.hidden = this.stick || !this.live;
    });
    jump.addEventListener("click", () => this.follow());
    earlier.addEventListener("click", () => this.showEarlier());
    this.reset(2);
  }

  reset(channels, labels = SPEAKERS) {
    this.entries = []; // {channel, start, text, final, node}
    this.pending = new Map(); // channel -> its interim entry
    this.seen = new Set(); // finals already shown: "channel:start"
    this.hiddenBefore = 0; // entries before this index are not in the page
    this.container.replaceChildren();
    this.stick = true;
    this.jump.hidden = true;
    this.setLanes(channels, labels);
    this.updateEarlier();
  }

  setLanes(channels, labels = this.labels) {
    this.channels = Math.max(1, Math.min(2, channels));
    this.labels = labels;
    this.container.classList.toggle("one-lane", this.channels === 1);
    this.heads.classList.toggle("one-lane", this.channels === 1);
    this.heads.replaceChildren(
      ...this.labels.slice(0, this.channels).map((label, channel) => el("span", { class: `lane-head ch${channel}`, text: label })),
    );
  }

  // Name the lanes again (the call's tracks became known): the heads and the lines shown so far.
  rename(labels) {
    if (labels.join("\n") === this.labels.join("\n")) return;
    this.setLanes(this.channels, labels);
    for (const entry of this.entries) {
      entry.node.querySelector(".who").textContent = `${this.speaker(entry.channel)} `;
    }
  }

  speaker(channel) {
    return this.labels[channel] || `Channel ${channel + 1}`;
  }

  // A Deepgram Results message, as /client delivers it.
  results(message) {
    const alternative = message.channel && message.channel.alternatives && message.channel.alternatives[0];
    const text = ((alternative && alternative.transcript) || "").trim();
    const [channel, channels] = message.channel_index || [0, 1];
    if (channels && channels !== this.channels) this.setLanes(channels);
    this.add(channel, Number(message.start) || 0, text, Boolean(message.is_final));
  }

  // An utterance of a stored call (GET /api/calls/{callSid}).
  utterance(utterance) {
    this.add(utterance.channel, utterance.start, (utterance.text || "").trim(), true);
  }

  add(channel, start, text, final) {
    const pending = this.pending.get(channel);
    if (!final) {
      if (!text) return;
      if (pending) {
        pending.text = text;
        pending.node.querySelector(".text").textContent = text;
      } else {
        const entry = { channel, start, text, final: false, node: null };
        entry.node = this.line(entry);
        this.pending.set(channel, entry);
        this.entries.push(entry);
        this.container.append(entry.node);
      }
      this.afterAppend();
      return;
    }
    const key = `${channel}:${start.toFixed(3)}`;
    if (this.seen.has(key)) return; // already shown (a history replay overlapping live)
    if (!text) {
      if (pending) this.drop(pending);
      return;
    }
    this.seen.add(key);
    let entry = pending;
    if (entry) {
      this.pending.delete(channel);
      Object.assign(entry, { start, text, final: true }); // the final takes the interim's place
      entry.node.classList.replace("interim", "final");
      entry.node.dataset.start = start.toFixed(2);
      entry.node.querySelector(".time").textContent = clock(start);
      entry.node.querySelector(".text").textContent = text;
    } else {
      entry = { channel, start, text, final: true, node: null };
      entry.node = this.line(entry);
      this.entries.push(entry);
      this.container.append(entry.node);
    }
    if (this.live) this.announcer.textContent = `${this.speaker(channel)}: ${text}`;
    this.trim();
    this.afterAppend();
  }

  line(entry) {
    return el(
      "p",
      { class: `line ch${entry.channel} ${entry.final ? "final" : "interim"}`, "data-start": entry.start.toFixed(2) },
      el("span", { class: "who", text: `${this.speaker(entry.channel)} ` }),
      el("time", { class: "time", text: clock(entry.start) }),
      el("span", { class: "text", text: entry.text }),
    );
  }

  drop(entry) {
    this.pending.delete(entry.channel);
    entry.node.remove();
    const index = this.entries.indexOf(entry);
    if (index >= 0) {
      this.entries.splice(index, 1);
      if (index < this.hiddenBefore) this.hiddenBefore -= 1;
    }
  }

  // Interims the call never finalised (it ended) go.
  settle() {
    for (const entry of [...this.pending.values()]) this.drop(entry);
  }

  // Keep at most MAX_LINES in the page while following the live end (a reader scrolled up keeps
  // what they are reading, up to twice that).
  trim() {
    const limit = this.stick ? MAX_LINES : 2 * MAX_LINES;
    while (this.entries.length - this.hiddenBefore > limit) {
      const first = this.entries[this.hiddenBefore];
      if (!first.final) break;
      first.node.remove();
      this.hiddenBefore += 1;
    }
    this.updateEarlier();
  }

  showEarlier() {
    const from = Math.max(0, this.hiddenBefore - MAX_LINES);
    const nodes = this.entries.slice(from, this.hiddenBefore).map((entry) => entry.node);
    const anchor = this.container.scrollHeight - this.container.scrollTop;
    this.container.prepend(...nodes);
    this.hiddenBefore = from;
    this.stick = false;
    this.container.scrollTop = this.container.scrollHeight - anchor; // the reader's place stays put
    this.jump.hidden = !this.live;
    this.updateEarlier();
  }

  updateEarlier() {
    this.earlier.hidden = this.hiddenBefore === 0;
    this.earlier.textContent = `Show earlier lines (${this.hiddenBefore} not shown)`;
  }

  // Follow the live end: once per frame at most, however many lines came (scrolling makes the
  // browser lay the page out; doing it per line would make a busy call slow).
  afterAppend() {
    if (!this.stick || this.scrolling) return;
    this.scrolling = true;
    requestAnimationFrame(() => {
      this.scrolling = false;
      if (this.stick) this.container.scrollTop = this.container.scrollHeight;
    });
  }

  follow() {
    this.stick = true;
    this.trim();
    this.container.scrollTop = this.container.scrollHeight;
    this.jump.hidden = true;
    this.container.focus();
  }

  get lineCount() {
    return this.entries.length;
  }
}

function byId(id) {
  return document.getElementById(id);
}

// The call page: title, state, transcript, and at the end the outcome and downloads.
export class CallView {
  constructor(feed, session) {
    this.feed = feed;
    this.session = session;
    this.transcript = new Transcript({
      container: byId("transcript"),
      heads: byId("lane-heads"),
      earlier: byId("show-earlier"),
      jump: byId("jump-live"),
      announcer: byId("announcer"),
    });
    this.socket = null;
    this.callSid = null;
    this.startedAt = null;
    setInterval(() => this.tick(), 1000);
    feed.addEventListener("change", () => this.fromFeed());
    for (const link of byId("downloads").querySelectorAll("a[data-kind]")) {
      link.addEventListener("click", (event) => {
        if (!token.get()) return; // a plain link does
        event.preventDefault();
        download(link.getAttribute("href"), link.getAttribute("download")).catch((error) =>
          this.message(`Download failed: ${error.message}`),
        );
      });
    }
  }

  /** Each channel's speaker in a call of these tracks, by the names the server is configured with
   * (--speaker-labels), else the defaults. */
  labels(tracks = []) {
    return channelLabels(tracks, [...(this.session.speakerLabels || SPEAKERS)]);
  }

  open(callSid) {
    this.close();
    this.callSid = callSid;
    this.reconnects = 0;
    this.lastId = null;
    this.startedAt = null;
    this.transcript.live = false;
    this.transcript.reset(2, this.labels());
    byId("call-title").textContent = `Call ${callSid}`;
    byId("call-meta").textContent = "";
    byId("call-end").hidden = true;
    byId("call-game").hidden = true;
    byId("call-duration").textContent = "";
    this.message("");
    if (this.session.callSid && this.session.callSid !== callSid) {
      this.state("", "—");
      this.message(`This token opens call ${this.session.callSid} only.`);
      return;
    }
    this.state("", "connecting…");
    this.fromFeed();
    this.subscribe(callSid);
  }

  close() {
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.close(1000, "leaving the call");
    }
    this.callSid = null;
  }

  subscribe(callSid) {
    // With a call store, each subscription begins with the call's finals so far, which fills any
    // gap a broken connection left. Without one, the hub's message ids do: the first subscription
    // replays what the hub keeps of the call (?after=0-0), a later one resumes after the last id.
    const path = this.session.history ? "/client" : `/client?ids=1&after=${encodeURIComponent(this.lastId || "0-0")}`;
    const socket = openSocket(path);
    this.socket = socket;
    let named = false;
    socket.addEventListener("message", (message) => {
      if (this.socket !== socket) return;
      const data = JSON.parse(message.data);
      if (!named) {
        named = true;
        if (Array.isArray(data) && data.includes(callSid)) {
          socket.send(callSid);
          this.transcript.live = true;
          if (byId("call-status").dataset.state === "" || this.linkLost) {
            this.state("streaming", STATE_TEXT.streaming); // (a Reconnecting notice kept by the call comes next)
          }
          this.linkLost = false;
          this.reconnects = 0; // subscribed again: the next break starts a fresh count
        } else {
          this.socket = null;
          socket.close(1000, "not live");
          this.loadStored(callSid);
        }
        return;
      }
      if (typeof data.id === "string") this.lastId = data.id;
      this.received(data);
    });
    socket.addEventListener("close", (closed) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.closed(callSid, closed.code, closed.reason);
    });
  }

  received(message) {
    if (message.type === "Results") {
      this.transcript.results(message);
    } else if (message.source === "callscribe") {
      if (message.type === "Reconnecting") this.state("reconnecting", STATE_TEXT.reconnecting);
      else if (message.type === "Resumed") this.state("streaming", STATE_TEXT.streaming);
      else if (message.type === "Error") this.state("failed", STATE_TEXT.failed);
      this.message(message.message || "");
    }
  }

  closed(callSid, code, reason) {
    this.transcript.live = false;
    this.transcript.jump.hidden = true;
    if (code === 1000) {
      this.transcript.settle();
      this.state("ended", "ended");
      this.finish(callSid);
    } else if (code === 1008 && reason === "unknown callSid") {
      this.loadStored(callSid); // it ended between the list and our asking
    } else if (code === 1001 || code === 1008 || code === 1013 || this.reconnects >= RECONNECTS) {
      this.state("failed", "disconnected");
      this.message(`The server closed the transcript: ${reason || code}`);
    } else {
      this.reconnects += 1; // the connection broke: subscribe again (see `subscribe`: no gap)
      this.linkLost = true;
      this.state("reconnecting", "reconnecting");
      setTimeout(() => this.callSid === callSid && this.subscribe(callSid), 500 * this.reconnects);
    }
  }

  // After a live call ends: its outcome, once the store has written it.
  async finish(callSid) {
    if (!this.session.history) {
      this.message("The call has ended. This server keeps no calls, so there is nothing to download.");
      return;
    }
    for (let attempt = 0; attempt < END_POLLS && this.callSid === callSid; attempt += 1) {
      try {
        const call = await getJson(`/api/calls/${encodeURIComponent(callSid)}`);
        if (call.endedAt) {
          this.showEnd(call);
          return;
        }
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 404) {
          this.message(`Could not load how the call ended: ${error.message}`);
          return;
        }
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  async loadStored(callSid) {
    if (!this.session.history) {
      this.state("ended", "not live");
      this.message("This call is not live, and this server keeps no calls.");
      return;
    }
    let call;
    try {
      call = await getJson(`/api/calls/${encodeURIComponent(callSid)}`);
    } catch (error) {
      this.state("failed", "not found");
      this.message(error.status === 404 ? "No such call." : `Could not load the call: ${error.message}`);
      return;
    }
    if (this.callSid !== callSid) return;
    const channels = Math.max(1, (call.tracks || []).length);
    const labels = this.labels(call.tracks);
    for (const utterance of call.utterances) labels[utterance.channel] = utterance.speaker || labels[utterance.channel];
    this.transcript.reset(channels, labels);
    for (const utterance of call.utterances) this.transcript.utterance(utterance);
    this.describe(call);
    this.showEnd(call);
  }

  showEnd(call) {
    this.describe(call);
    this.state(call.live ? "streaming" : "ended", call.live ? "live" : "ended");
    const parts = [`Outcome: ${outcomeText(call.outcome) || "—"}`];
    if (call.durationS !== null && call.durationS !== undefined) parts.push(`duration ${clock(call.durationS)}`);
    if (call.reason && call.outcome !== "ended") parts.push(call.reason);
    byId("call-outcome").textContent = parts.join(" · ");
    for (const link of byId("downloads").querySelectorAll("a[data-kind]")) {
      const kind = link.dataset.kind;
      link.setAttribute("href", `/api/calls/${encodeURIComponent(call.callSid)}/transcript.${kind}`);
      link.setAttribute("download", `${call.callSid}.${kind}`);
    }
    byId("call-end").hidden = false;
    byId("call-duration").textContent = "";
    this.startedAt = null;
  }

  describe(call) {
    const from = call.from || "unknown";
    const to = call.to || "unknown";
    byId("call-meta").textContent = [`${from} → ${to}`, when(call.startedAt), tracksText(call.tracks)]
      .filter(Boolean)
      .join(" · ");
    if (call.gameCode) {
      byId("call-game").hidden = false;
      byId("call-game").textContent = `game ${call.gameCode}`;
    }
  }

  // What the feed knows of the open call, while it is live.
  fromFeed() {
    const call = this.callSid && this.feed.calls.get(this.callSid);
    if (!call) return;
    this.describe(call);
    this.startedAt = call.startedAt;
    if (call.tracks.length) {
      const labels = this.labels(call.tracks);
      if (this.transcript.entries.length) this.transcript.rename(labels);
      else this.transcript.setLanes(call.tracks.length, labels);
    }
    byId("call-game").hidden = !call.gameCode;
    this.tick();
  }

  tick() {
    if (this.startedAt && this.transcript.live) {
      byId("call-duration").textContent = clock((this.feed.now() - Date.parse(this.startedAt)) / 1000);
    }
  }

  state(state, text) {
    const badge = byId("call-status");
    badge.dataset.state = state;
    badge.textContent = text;
  }

  message(text) {
    byId("call-message").textContent = text;
  }
}
