// History: past calls, searched by words, number and dates, a page at a time; and the Live page's
// "Recent calls".

import { callQuery, callRow, getJson } from "./api.js";

const PAGE = 25;
const RECENT = 10;
const RECENT_TRIES = 10;

// A date input's day as the ISO time of its local midnight (`days` later).
function dayStart(value, days = 0) {
  if (!value) return "";
  const date = new Date(`${value}T00:00:00`);
  date.setDate(date.getDate() + days);
  return date.toISOString();
}

export class History {
  constructor(session) {
    this.session = session;
    this.form = document.getElementById("history-form");
    this.body = document.querySelector("#history tbody");
    this.summary = document.getElementById("history-summary");
    this.older = document.getElementById("history-older");
    this.newer = document.getElementById("history-newer");
    this.cursors = [null]; // the cursor of each page shown so far; the last is the current page's
    this.next = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.cursors = [null];
      this.load();
    });
    this.older.addEventListener("click", () => {
      this.cursors.push(this.next);
      this.load();
    });
    this.newer.addEventListener("click", () => {
      this.cursors.pop();
      this.load();
    });
  }

  filters() {
    const data = new FormData(this.form);
    return {
      q: data.get("q").trim(),
      number: data.get("number").trim(),
      since: dayStart(data.get("since")),
      until: dayStart(data.get("until"), 1),
    };
  }

  async load() {
    if (!this.session.history) {
      document.getElementById("history-off").hidden = false;
      this.form.hidden = true;
      return;
    }
    const cursor = this.cursors[this.cursors.length - 1];
    this.summary.textContent = "Searching…";
    let page;
    try {
      page = await getJson(callQuery({ ...this.filters(), limit: PAGE, cursor }));
    } catch (error) {
      this.summary.textContent = `Search failed: ${error.message}`;
      return;
    }
    this.body.replaceChildren(...page.calls.map(callRow));
    this.next = page.next;
    this.older.disabled = !page.next;
    this.newer.disabled = this.cursors.length < 2;
    const first = (this.cursors.length - 1) * PAGE + 1;
    this.summary.textContent = page.calls.length
      ? `Calls ${first}–${first + page.calls.length - 1}, newest first`
      : "No call matches.";
  }
}

// The few latest calls that ended, on the Live page; refreshed when a call ends.
export class Recent {
  constructor(session) {
    this.session = session;
    this.body = document.querySelector("#recent tbody");
    this.loading = null;
  }

  // The latest ended calls; with `callSid`, until that call is among them (the store writes a
  // call's end a moment after the feed says it ended).
  async load(callSid = null) {
    if (!this.session.history) {
      document.getElementById("recent-off").hidden = false;
      document.getElementById("recent").hidden = true;
      return;
    }
    for (let attempt = 0; attempt < RECENT_TRIES; attempt += 1) {
      let page;
      try {
        page = await getJson(callQuery({ live: "false", limit: RECENT }));
      } catch {
        return; // the next call's end tries again; the Live list above does not depend on it
      }
      this.body.replaceChildren(...page.calls.map(callRow));
      if (!callSid || page.calls.some((call) => call.callSid === callSid)) return;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  }
}
