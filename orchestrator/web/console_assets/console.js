// The operator console: one page, no build step, no third-party code. It steers the daemon through the same
// /api every other client uses; a session cookie (HttpOnly) authenticates it and every change carries the
// session's CSRF token. Everything shown is built with textContent (never innerHTML): room names,
// comments and vendor messages are data, not markup.
"use strict";

const session = { csrf: null, operator: null };
let cleanups = [];  // what the current view must stop when another one opens (streams, timers)

// -- small helpers --------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// replaceChildren() would print a null as "null": leave out what is not there.
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function toast(text) {
  const el = document.getElementById("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error_msg) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401 && !path.startsWith("/console/login")) {
    session.csrf = null;
    location.hash = "#/login";
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

async function act(what, fn) {
  try {
    const result = await fn();
    toast(`${what}: done`);
    return result;
  } catch (e) {
    toast(`${what}: ${e.message}${e.body && e.body.error_code ? " (" + e.body.error_code + ")" : ""}`);
    return null;
  }
}

function when(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  return d.toLocaleTimeString([], { hour12: false });
}

function localTime(iso) {
  // The room's own time zone, as the daemon wrote it (2026-12-07T20:00:00+08:00) -> "12-07 20:00 (+08:00)".
  if (!iso) return "—";
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::\d\d(?:\.\d+)?)?([+-]\d\d:\d\d|Z)$/.exec(iso);
  return m ? `${m[2]}-${m[3]} ${m[4]}:${m[5]} (${m[6]})` : iso;
}

function stream(url, handlers) {
  const source = new EventSource(url, { withCredentials: true });
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  }
  cleanups.push(() => source.close());
  return source;
}

function every(ms, fn) {
  fn();
  const timer = setInterval(fn, ms);
  cleanups.push(() => clearInterval(timer));
}

// -- routing --------------------------------------------------------------------------------------

const views = {
  login: viewLogin, rooms: viewRooms, room: viewRoom, alerts: viewAlerts, daemon: viewDaemon, api: viewApi,
};

async function route() {
  for (const stop of cleanups) stop();
  cleanups = [];
  const [, name = "rooms", ...rest] = location.hash.replace(/\?.*$/, "").split("/");
  if (name !== "login" && !session.csrf) {
    try {
      const info = await api("GET", "/console/session");
      Object.assign(session, info);
    } catch (e) { return; }  // 401: api() sent us to the login
  }
  document.getElementById("top").hidden = name === "login";
  document.getElementById("who").textContent = session.operator ? `signed in as ${session.operator}` : "";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === name || (name === "room" && a.dataset.nav === "rooms"));
  }
  const main = document.getElementById("main");
  fill(main);
  const view = views[name] || viewRooms;
  try {
    await view(main, ...rest.map(decodeURIComponent));
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) main.append(h("p", { class: "error" }, `Could not load: ${e.message}`));
  }
}

// -- login ----------------------------------------------------------------------------------------

function viewLogin(main) {
  const expired = location.hash.includes("expired=1");
  const input = h("input", { type: "password", id: "token", autocomplete: "current-password", placeholder: "admin or operator token" });
  const error = h("p", { class: "error", id: "login-error" }, expired ? "That login link was used already or has expired." : "");
  const form = h("form", { class: "card login", onsubmit: async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    try {
      const info = await api("POST", "/console/login", { token: input.value });
      Object.assign(session, info);
      input.value = "";
      location.hash = "#/rooms";
    } catch (e) { error.textContent = e.message; }
  } },
  h("h1", {}, "Orchestrator console"),
  h("label", { for: "token" }, "Token"), input,
  h("button", { class: "primary", type: "submit" }, "Log in"), error);
  main.append(form);
  input.focus();
}

async function logout() {
  await api("POST", "/console/logout").catch(() => null);
  session.csrf = null;
  session.operator = null;
  location.hash = "#/login";
}

// -- rooms overview -------------------------------------------------------------------------------

const STATUSES = ["live", "starting", "failing", "paused", "off"];

function tileEl(t) {
  const links = Object.entries(t.links || {});
  return h("a", { class: `tile s-${t.status}`, href: `#/room/${encodeURIComponent(t.room_id)}`, "data-room": t.room_id, "data-status": t.status },
    h("div", {}, h("span", { class: "name" }, t.name || t.room_id), " ", h("span", { class: `badge b-${t.status}` }, t.status)),
    h("div", { class: "row" }, `${t.vendor || "?"} · ${t.room_id}`),
    h("div", { class: "row" }, t.paragraph ? `▶ ${t.paragraph}` : "no paragraph yet", t.product ? ` · product: ${t.product}` : ""),
    h("div", { class: "row" }, links.length ? links.map(([url, st]) => `${url.replace(/^[a-z]+:\/\//, "").slice(0, 28)}: ${st}`).join(" · ") : "no stream link reported"),
    h("div", { class: "row" }, `viewers ${t.viewers ?? "—"} · next ${localTime(t.next_boundary_local)}`),
    t.open_alerts && t.open_alerts.length ? h("div", { class: "row error" }, `alerts: ${t.open_alerts.join(", ")}`) : null);
}

async function viewRooms(main) {
  const tiles = new Map();
  const search = h("input", { type: "search", id: "search", placeholder: "search rooms, vendors, products…" });
  const status = h("select", { id: "status" }, h("option", { value: "" }, "every state"), STATUSES.map((s) => h("option", { value: s }, s)));
  const counts = h("div", { class: "counts", id: "counts" });
  const grid = h("div", { class: "grid", id: "tiles" });
  main.append(h("h1", {}, "Rooms"), h("div", { class: "toolbar" }, search, status, counts), grid);

  function draw() {
    const q = search.value.trim().toLowerCase();
    const wanted = status.value;
    const byStatus = {};
    const shown = [];
    for (const t of [...tiles.values()].sort((a, b) => STATUSES.indexOf(a.status) - STATUSES.indexOf(b.status) || a.room_id.localeCompare(b.room_id))) {
      byStatus[t.status] = (byStatus[t.status] || 0) + 1;
      const text = [t.room_id, t.name, t.vendor, t.paragraph, t.product].join(" ").toLowerCase();
      if ((wanted && t.status !== wanted) || (q && !text.includes(q))) continue;
      shown.push(tileEl(t));
    }
    fill(grid, ...(shown.length ? shown : [h("p", { class: "muted" }, tiles.size ? "No room matches." : "No rooms are managed yet (PUT /api/rooms/{id}).")]));
    fill(counts, h("span", {}, `${tiles.size} rooms`), ...STATUSES.filter((s) => byStatus[s]).map((s) => h("span", {}, `${s} ${byStatus[s]}`)));
  }
  search.addEventListener("input", draw);
  status.addEventListener("change", draw);
  stream("/api/stream/rooms", {
    tiles: (list) => { for (const t of list) tiles.set(t.room_id, t); draw(); },
    rooms: (msg) => { const keep = new Set(msg.room_ids); for (const id of [...tiles.keys()]) if (!keep.has(id)) tiles.delete(id); draw(); },
  });
  draw();
}

// -- one room -------------------------------------------------------------------------------------

function summary(e) {
  const m = e.message && typeof e.message === "object" ? e.message : {};
  switch (e.kind) {
    case "callback":
      if (e.event_type === "SHOOT_SCRIPT_SWITCH") return `paragraph ${m.scene_script_name || ""} #${m.shoot_script_sequence_no ?? ""} “${m.shoot_script_title || ""}”${m.product_title ? " · product " + m.product_title : ""}`;
      if (e.event_type === "RTMP_STREAM_STATE_CHANGE") return `${m.output_url || ""} ${m.state || ""}`;
      if (e.event_type === "REPLY_COMMAND_FINISH") return `reply ${m.reply_id} finished playing`;
      return `${e.event_type} ${e.outcome || ""} ${m.state || ""}`.trim();
    case "action": return `${e.action} → ${e.outcome} (${e.reason})`;
    case "alert": return `${e.alert} [${e.severity}] ${m.text || ""} → ${e.outcome}`;
    case "reported": return `${e.events} audience events reported (${e.types || ""})`;
    case "reply_queued": case "reply_dropped": return `[${e.priority}] ${e.text || ""}${e.source ? " ← " + e.source : ""}`;
    case "reply_inserted": return `[${e.priority}] ${e.text || ""}${e.waited_ms ? ` (${e.waited_ms} ms after the comment)` : ""}`;
    case "reply_finished": case "reply_failed": case "reply_cancelled": return `reply ${e.reply_id}${e.by ? " by " + e.by : ""}`;
    case "comment_skipped": return `${e.reason}: ${e.user || e.user_id || ""} “${e.text || ""}” ${e.why ? "(" + e.why + ")" : ""}`;
    case "unanswered": return `${e.total} not answered`;
    case "job_state": return `${e.job_id} → ${e.job_state}`;
    case "job_started": return `job ${e.job_id}`;
    case "review_decided": return `${e.outcome}: ${e.text || ""}`;
    case "replies_cleared": return `${e.dropped} dropped, ${e.withdrawn} withdrawn`;
    case "microphone": return `${e.outcome}${e.error_msg ? ": " + e.error_msg : ""}`;
    default: return Object.entries(e).filter(([k]) => !["id", "kind", "event_ms", "message"].includes(k)).map(([k, v]) => `${k}=${v}`).join(" ");
  }
}

function chart(title, points, key) {
  const values = points.map((p) => p[key]).filter((v) => v !== null && v !== undefined);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 600 120");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.dataset.series = key;
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", "6"); label.setAttribute("y", "12");
  const max = Math.max(1, ...values);
  label.textContent = values.length ? `${title} — last ${values[values.length - 1]}, max ${max}` : `${title} — no samples yet`;
  svg.append(label);
  if (values.length > 1) {
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    const step = 600 / (points.length - 1);
    line.setAttribute("points", points.map((p, i) => `${(i * step).toFixed(1)},${(115 - ((p[key] || 0) / max) * 95).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return svg;
}

async function viewRoom(main, roomId) {
  const path = `/api/rooms/${encodeURIComponent(roomId)}`;
  const config = await api("GET", `${path}/config`);
  const head = h("div", { class: "card", id: "room-head" });
  const controls = h("div", { class: "controls" });
  const timeline = h("div", { class: "timeline", id: "timeline" });
  const queue = h("div", { id: "queue" });
  const review = h("div", { id: "review" });
  const schedule = h("div", { id: "schedule" });
  const charts = h("div", { id: "charts" });
  const policy = h("div", { id: "policy" });
  const replyText = h("textarea", { id: "reply-text", rows: "2", placeholder: "What the avatar should say next" });
  const replyPriority = h("select", { id: "reply-priority" }, ["operator", "question", "gift", "reaction", "idle"].map((p) => h("option", { value: p }, p)));
  const replyForm = h("form", { id: "reply-form", onsubmit: async (ev) => {
    ev.preventDefault();
    if (!replyText.value.trim()) return;
    const r = await act("Reply queued", () => api("POST", `${path}/replies`, { text: replyText.value, priority: replyPriority.value }));
    if (r) { replyText.value = ""; if (r.warnings) toast(`Queued, but: ${r.warnings.join("; ")}`); loadQueue(); }
  } }, replyText, h("div", { class: "toolbar" }, replyPriority, h("button", { class: "primary", type: "submit" }, "Send reply")));

  main.append(
    h("p", {}, h("a", { href: "#/rooms" }, "← all rooms")),
    head,
    h("div", { class: "cols" },
      h("div", {},
        h("div", { class: "card" }, h("h2", {}, "Controls"), controls),
        h("div", { class: "card" }, h("h2", {}, "Reply queue"), replyForm, queue),
        h("div", { class: "card" }, h("h2", {}, "Review"), review),
        h("div", { class: "card" }, h("h2", {}, "Schedule"), schedule),
        h("div", { class: "card" }, h("h2", {}, "Policy"), policy)),
      h("div", {},
        h("div", { class: "card" }, h("h2", {}, "Timeline"), timeline),
        h("div", { class: "card" }, h("h2", {}, "Activity (last 3 hours)"), charts))));

  async function loadHead() {
    const [state, overview] = await Promise.all([api("GET", path), api("GET", `/api/overview?q=${encodeURIComponent(roomId)}`)]);
    const t = overview.rooms.find((r) => r.room_id === roomId) || {};
    fill(head,
      h("h1", {}, config.name || roomId, " ", h("span", { class: `badge b-${t.status}`, id: "room-status" }, t.status || "?")),
      h("div", { class: "muted" }, `${config.provider} · job ${state.job_id || "—"} (${state.job_state || "none"}) · viewers ${state.viewers ?? "—"}`),
      h("div", {}, `Paragraph: ${state.paragraph_title || "—"} · product: ${state.product_title || "—"}`),
      h("div", {}, `Links: ${Object.entries(state.rtmp || {}).map(([u, l]) => `${u.replace(/^[a-z]+:\/\//, "")} ${l.state}`).join(", ") || "none reported"}`),
      h("div", {}, `Next boundary: ${localTime(t.next_boundary_local)} · automation ${t.paused ? "paused" : "on"}`),
      t.open_alerts && t.open_alerts.length ? h("div", { class: "error" }, `Open alerts: ${t.open_alerts.join(", ")}`) : null);
    drawControls(t);
  }

  function confirmed(text, fn) {
    return async () => { if (window.confirm(text)) { await fn(); loadHead(); } };
  }

  function drawControls(t) {
    const paused = !!t.paused;
    const buttons = [
      paused
        ? h("button", { id: "resume", onclick: confirmed(`Resume automation of ${roomId}? The schedule takes over again.`, () => act("Resumed", () => api("POST", `${path}/resume`))) }, "Resume")
        : h("button", { id: "pause", onclick: confirmed(`Pause automation of ${roomId}? The daemon stops starting, stopping and repairing it.`, () => act("Paused", () => api("POST", `${path}/pause`))) }, "Pause"),
      h("button", { id: "force-start", disabled: !paused, title: paused ? "" : "pause first: the schedule would undo it", onclick: confirmed(`Start ${roomId} now?`, () => act("Started", () => api("POST", `${path}/start`))) }, "Force start"),
      h("button", { id: "force-stop", class: "danger", disabled: !paused, title: paused ? "" : "pause first: the schedule would undo it", onclick: confirmed(`Stop ${roomId} now? The stream ends.`, () => act("Stopped", () => api("POST", `${path}/stop`))) }, "Force stop"),
    ];
    if (config.provider === "softsugar") buttons.push(micButton());
    fill(controls, ...buttons);
  }

  // The mic outlives the controls' redraws (every few seconds): its state is the room page's.
  let mic = null;
  cleanups.push(() => mic && mic.stop());

  function micButton() {
    const button = h("button", { id: "mic" }, mic ? "Release the mic" : "Take the mic");
    button.addEventListener("click", async () => {
      if (mic) { mic.stop(); return; }
      if (!window.confirm(`Speak through ${roomId}'s avatar? Waiting replies are withdrawn while you hold the mic.`)) return;
      mic = await takeMic(path, (text) => toast(text), () => { mic = null; drawMic(); });
      drawMic();
    });
    return button;
  }

  function drawMic() {
    const old = document.getElementById("mic");
    if (old) old.replaceWith(micButton());
  }

  async function loadQueue() {
    const r = await api("GET", `${path}/replies`);
    const rows = [
      ...r.in_flight.map((f) => h("tr", { "data-reply": f.reply_id }, h("td", {}, "playing"), h("td", {}, f.priority), h("td", {}, f.text), h("td", {}))),
      ...r.pending.map((p) => h("tr", { "data-reply": p.reply_id }, h("td", {}, "waiting"), h("td", {}, p.priority), h("td", {}, p.text),
        h("td", {}, h("button", { onclick: async () => { await act("Cancelled", () => api("DELETE", `${path}/replies/${encodeURIComponent(p.reply_id)}`)); loadQueue(); } }, "Cancel")))),
    ];
    fill(queue,
      rows.length ? h("table", {}, h("tbody", {}, rows)) : h("p", { class: "muted" }, "Nothing waiting or playing."),
      h("button", { id: "clear", class: "danger", onclick: confirmed("Clear every waiting reply and withdraw what the vendor has not played?", async () => { await act("Cleared", () => api("DELETE", `${path}/replies`)); loadQueue(); }) }, "Clear all"));
  }

  async function loadReview() {
    const r = await api("GET", `${path}/review`);
    const toggle = h("button", { id: "review-toggle", onclick: async () => { await act(r.enabled ? "Review off" : "Review on", () => api("PUT", `${path}/review`, { enabled: !r.enabled })); loadReview(); } }, r.enabled ? "Turn review off" : "Turn review on");
    const items = r.waiting.map((w) => {
      const text = h("input", { value: w.text, size: "40" });
      return h("tr", {}, h("td", {}, w.priority), h("td", {}, text),
        h("td", {}, h("button", { onclick: async () => { await act("Approved", () => api("POST", `${path}/review/${encodeURIComponent(w.review_id)}/approve`, text.value !== w.text ? { text: text.value } : {})); loadReview(); } }, "Approve"),
          " ", h("button", { class: "danger", onclick: async () => { await act("Rejected", () => api("POST", `${path}/review/${encodeURIComponent(w.review_id)}/reject`, {})); loadReview(); } }, "Reject")));
    });
    fill(review,
      h("p", { class: "muted" }, r.enabled ? `On: automatic replies wait here for ${r.expire_s} s.` : "Off: automatic replies are said as decided."),
      toggle, items.length ? h("table", {}, h("tbody", {}, items)) : r.enabled ? h("p", { class: "muted" }, "Nothing waits for review.") : null);
  }

  async function loadSchedule() {
    const [s, w] = await Promise.all([api("GET", `${path}/schedule`), api("GET", `${path}/windows?count=5`)]);
    fill(schedule,
      h("div", {}, `Time zone ${w.timezone} · wanted now: ${s.desired} · next boundary ${localTime(s.next_boundary_local)}`),
      w.windows.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "from"), h("th", {}, "to"))),
          h("tbody", {}, w.windows.map((x) => h("tr", {}, h("td", {}, x.start_local ? localTime(x.start_local) : "(already live)"), h("td", {}, x.end_local ? localTime(x.end_local) : "open-ended")))))
        : h("p", { class: "muted" }, "No live window in the next days."));
  }

  async function loadCharts() {
    const a = await api("GET", `${path}/activity?minutes=180`);
    fill(charts, chart("viewers", a.points, "viewers"), chart("comments / min", a.points, "comments_per_min"), chart("replies / min", a.points, "replies_per_min"),
      h("div", { class: "muted" }, `one sample every ${a.interval_s} s`));
  }

  async function loadPolicy() {
    if (!config.policy) {
      fill(policy, h("p", { class: "muted" }, "This room follows the default policy (the policy file). Name a policy in the room to edit it here."));
      return;
    }
    const p = await api("GET", `/api/policies/${encodeURIComponent(config.policy)}`);
    const text = h("textarea", { id: "policy-text", rows: "14" }, JSON.stringify(p.policy, null, 2));
    const error = h("div", { class: "error" });
    fill(policy, h("div", {}, `${config.policy}, version ${p.version}`), text, error,
      h("button", { id: "policy-save", onclick: async () => {
        error.textContent = "";
        let doc;
        try { doc = JSON.parse(text.value); } catch (e) { error.textContent = `Not JSON: ${e.message}`; return; }
        try {
          const r = await api("PUT", `/api/policies/${encodeURIComponent(config.policy)}`, doc);
          toast(`Saved as version ${r.version}`);
          loadPolicy();
        } catch (e) { error.textContent = [e.message, ...(e.body.errors || []).map((x) => `${x.field}: ${x.message}`)].join("\n"); }
      } }, "Save policy"));
  }

  stream(`${path}/events/stream?backlog=150`, {
    entry: (e) => {
      const m = e.message && typeof e.message === "object" ? e.message : {};
      const label = e.kind === "callback" ? e.event_type : e.kind;
      timeline.prepend(h("div", { "data-kind": label, "data-reply": e.reply_id || m.reply_id || null }, h("span", { class: "t" }, when(e.event_ms)), h("span", { class: `k k-${e.kind}` }, label), summary(e)));
      while (timeline.childElementCount > 400) timeline.lastChild.remove();
      if (/^(reply_|review_|replies_)/.test(e.kind)) loadQueue();
      if (e.kind === "callback" || e.kind === "job_state" || e.kind === "action" || e.kind === "alert") loadHead();
    },
  });
  every(5000, () => loadHead().catch(() => null));
  every(3000, () => loadQueue().catch(() => null));
  every(5000, () => loadReview().catch(() => null));
  every(60000, () => loadCharts().catch(() => null));
  loadSchedule();
  loadPolicy();
}

// The operator's microphone on a SoftSugar room: 16 kHz mono 16-bit PCM through the daemon's relay.
async function takeMic(path, say, ended) {
  let media;
  try { media = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } }); } catch (e) {
    say(`No microphone: ${e.message}`); return null;
  }
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}/microphone`);
  ws.binaryType = "arraybuffer";
  const audio = new AudioContext({ sampleRate: 16000 });
  const source = audio.createMediaStreamSource(media);
  const node = audio.createScriptProcessor(2048, 1, 1);
  let open = false;
  node.onaudioprocess = (ev) => {
    if (!open) return;
    const input = ev.inputBuffer.getChannelData(0);
    const pcm = new Int16Array(input.length);
    for (let i = 0; i < input.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, input[i] * 32768));
    ws.send(pcm.buffer);
  };
  function stop() {
    if (open && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ code: 99, message: "eof" }));
    open = false;
    node.disconnect(); source.disconnect(); audio.close();
    for (const track of media.getTracks()) track.stop();
    ws.close();
    ended();
  }
  ws.onopen = () => { ws.send(JSON.stringify({ code: 0, message: "begin" })); open = true; source.connect(node); node.connect(audio.destination); say("You have the mic."); };
  ws.onmessage = (ev) => { try { const m = JSON.parse(ev.data); if (m.error_code) say(`${m.error_code}: ${m.error_msg}`); } catch (e) { /* binary */ } };
  ws.onclose = () => { if (open) stop(); };
  ws.onerror = () => say("The microphone relay refused (is the room live?)");
  return { stop };
}

// -- alerts and the daemon ------------------------------------------------------------------------

async function viewAlerts(main) {
  const box = h("div", {});
  main.append(h("h1", {}, "Alerts"), box);
  every(10000, async () => {
    const a = await api("GET", "/api/alerts?limit=20");
    fill(box,
      h("div", { class: "card" }, h("h2", {}, `Open (${a.open.length})`),
        a.open.length ? h("table", { id: "open-alerts" }, h("tbody", {}, a.open.map((o) => h("tr", {}, h("td", {}, h("a", { href: `#/room/${encodeURIComponent(o.room_id)}` }, o.room_id)), h("td", { class: "error" }, o.alert), h("td", {}, o.since_s ? new Date(o.since_s * 1000).toLocaleString() : "")))))
          : h("p", { class: "muted" }, "Nothing is open.")),
      h("div", { class: "card" }, h("h2", {}, "Recent"),
        a.recent.length ? h("table", { id: "recent-alerts" }, h("tbody", {}, a.recent.map((r) => h("tr", {}, h("td", {}, when(r.event_ms)), h("td", {}, r.room_id), h("td", {}, `${r.alert} [${r.severity}]`), h("td", {}, r.text || ""), h("td", {}, r.outcome)))))
          : h("p", { class: "muted" }, "No alert has been raised.")));
  });
}

async function viewDaemon(main) {
  const box = h("div", {});
  main.append(h("h1", {}, "Daemon"), box);
  every(10000, async () => {
    const d = await api("GET", "/api/daemon");
    fill(box,
      h("div", { class: "card" }, h("h2", {}, "Replicas"), h("table", { id: "replicas" },
        h("thead", {}, h("tr", {}, ["replica", "alive", "host", "version", "rooms owned", "last seen"].map((c) => h("th", {}, c)))),
        h("tbody", {}, d.replicas.map((r) => h("tr", {}, h("td", {}, r.replica_id + (r.replica_id === d.replica_id ? " (this one)" : "")), h("td", {}, r.alive ? "yes" : "no"), h("td", {}, `${r.host || ""} pid ${r.pid || ""}`), h("td", {}, r.version || ""), h("td", {}, (r.rooms_owned || []).join(", ") || "—"), h("td", {}, when(r.seen_ms))))))),
      h("div", { class: "card" }, h("h2", {}, "Redis"), h("table", {}, h("tbody", {}, Object.entries(d.redis).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, String(v))))))),
      h("div", { class: "card" }, h("h2", {}, "Checks"), h("table", {}, h("tbody", {}, Object.entries(d.checks).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: v.ok ? "" : "error" }, v.ok ? "ok" : "failing"), h("td", {}, v.detail || "")))))),
      h("div", { class: "card" }, h("h2", {}, "Vendor credentials"), h("table", { id: "vendors" }, h("tbody", {}, Object.entries(d.vendors).map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", { class: v.configured ? "" : "error" }, v.configured ? "configured" : "missing"), h("td", {}, v.detail)))))),
      h("div", { class: "card" }, h("h2", {}, "Versions"), h("div", {}, Object.entries(d.versions).map(([k, v]) => `${k} ${v}`).join(" · "))));
  });
}

// -- the API, described and tried ---------------------------------------------------------------

async function viewApi(main) {
  const spec = await api("GET", "/openapi.json");
  const filter = h("input", { type: "search", id: "api-filter", placeholder: "filter operations…" });
  const list = h("div", { id: "operations" });
  main.append(h("h1", {}, spec.info.title, " ", h("span", { class: "muted" }, spec.info.version)),
    h("p", { class: "muted" }, "Every operation of the admin and ingest API, from /openapi.json. “Send” calls it with your session."),
    h("div", { class: "toolbar" }, filter), list);
  const ops = [];
  for (const [p, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (["get", "post", "put", "delete", "patch"].includes(method)) ops.push({ path: p, method, op });
    }
  }
  function draw() {
    const q = filter.value.toLowerCase();
    fill(list, ...ops.filter((o) => !q || `${o.method} ${o.path} ${o.op.summary || ""}`.toLowerCase().includes(q)).map(operationEl));
  }
  filter.addEventListener("input", draw);
  draw();
}

function operationEl({ path, method, op }) {
  const params = (op.parameters || []).filter((p) => p.in === "path" || p.in === "query");
  const inputs = new Map(params.map((p) => [p, h("input", { placeholder: p.name, title: p.description || "" })]));
  const body = op.requestBody ? h("textarea", { rows: "5", placeholder: "JSON body" }) : null;
  const out = h("pre", { hidden: true });
  const send = h("button", { class: "primary", onclick: async () => {
    let url = path;
    const query = new URLSearchParams();
    for (const [p, input] of inputs) {
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(input.value));
      else if (input.value) query.set(p.name, input.value);
    }
    if ([...query].length) url += `?${query}`;
    out.hidden = false;
    if (path.endsWith("/stream") || path.endsWith("/microphone")) { out.textContent = "A live stream: open it from the rooms pages."; return; }
    try {
      const data = await api(method.toUpperCase(), url, body && body.value.trim() ? JSON.parse(body.value) : undefined);
      out.textContent = JSON.stringify(data, null, 2);
    } catch (e) { out.textContent = e instanceof ApiError ? `${e.status} ${JSON.stringify(e.body, null, 2)}` : String(e); }
  } }, "Send");
  return h("details", { class: "op" },
    h("summary", {}, h("span", { class: "method" }, method.toUpperCase()), " ", path, " ", h("span", { class: "muted" }, op.summary || "")),
    h("div", { class: "body" }, op.description ? h("p", {}, op.description) : null,
      [...inputs].map(([p, input]) => h("div", {}, h("label", {}, `${p.name} (${p.in}${p.required ? ", required" : ""}) `), input)),
      body, h("div", {}, send), out));
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", logout);
  route();
});
