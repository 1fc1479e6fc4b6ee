// Talking to this server: the token (kept in sessionStorage), the REST API, WebSockets; formatting.

const TOKEN_KEY = "callscribe.token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers() {
  const value = token.get();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

// GET a JSON resource of the API; an error answer becomes an ApiError with the server's words.
export async function getJson(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `HTTP ${response.status}`);
  }
  return body;
}

// A download of an API file: a plain link without tokens; with one, fetched with the header and
// handed to the browser as a file (a token never goes into a URL).
export async function download(path, filename) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!response.ok) {
    throw new ApiError(response.status, `HTTP ${response.status}`);
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// A WebSocket to this server; the token goes as the subprotocols ["bearer", token].
export function openSocket(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const value = token.get();
  const url = `${scheme}//${location.host}${path}`;
  return value ? new WebSocket(url, ["bearer", value]) : new WebSocket(url);
}

// -- formatting -------------------------------------------------------------------------------------

export function clock(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${String(m).padStart(2, "0")}:${s}`;
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export const OUTCOMES = {
  ended: "ended normally",
  hung_up: "hung up",
  deepgram_failed: "transcription failed",
  shutdown: "server shut down",
  stream_error: "stream error",
  interrupted: "interrupted (server crashed)",
  error: "error",
};

export function outcomeText(outcome) {
  return outcome ? OUTCOMES[outcome] || outcome : "";
}

export const SPEAKERS = ["Caller", "Other party"];

// Who speaks on each channel: Deepgram's channel i is the call's track i, so an outbound-only
// stream's channel 0 is the other party; past the tracks (or without them) channel 0 is the caller.
export function channelLabels(tracks, labels = SPEAKERS) {
  const known = tracks || [];
  return labels.map((label, channel) => (channel < known.length ? labels[known[channel] === "outbound" ? 1 : 0] : label));
}

// What a call's tracks say: "both tracks", "caller only", "other party only"; "" while unknown.
export function tracksText(tracks) {
  if (!tracks || !tracks.length) return "";
  if (tracks.length > 1) return "both tracks";
  return tracks[0] === "outbound" ? "other party only" : "caller only";
}

// An element with text (never HTML) and attributes.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

// One row of a table of calls (history, recent calls).
export function callRow(call) {
  const link = el("a", { href: `#/calls/${encodeURIComponent(call.callSid)}`, text: when(call.startedAt) });
  return el(
    "tr",
    { "data-call": call.callSid },
    el("td", {}, link),
    el("td", { text: call.from || "—" }),
    el("td", { text: call.to || "—" }),
    el("td", { text: call.durationS === null || call.durationS === undefined ? "live" : clock(call.durationS) }),
    el("td", { text: call.live ? "live" : outcomeText(call.outcome) }),
    el("td", { class: "snippet", text: call.snippet || "" }),
  );
}

export function callQuery(params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  return `/api/calls?${query}`;
}
