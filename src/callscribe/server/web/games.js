// Games: the codes in use and the call each is patched to (from the call feed).

import { el } from "./api.js";

export class Games {
  constructor(feed) {
    this.feed = feed;
    this.body = document.querySelector("#games tbody");
    this.empty = document.getElementById("games-empty");
    feed.addEventListener("change", () => this.render());
  }

  render() {
    const games = [...this.feed.games].sort((a, b) => a.code.localeCompare(b.code, undefined, { numeric: true }));
    this.body.replaceChildren(
      ...games.map((game) =>
        el(
          "tr",
          { "data-code": game.code },
          el("td", { class: "code", text: game.code }),
          el(
            "td",
            {},
            game.callSid
              ? el("a", { href: `#/calls/${encodeURIComponent(game.callSid)}`, text: this.describe(game.callSid) })
              : el("span", { class: "muted", text: "waiting for a caller" }),
          ),
        ),
      ),
    );
    this.empty.hidden = games.length > 0;
  }

  describe(callSid) {
    const call = this.feed.calls.get(callSid);
    return call && call.from ? `${call.from} (${callSid})` : callSid;
  }
}
