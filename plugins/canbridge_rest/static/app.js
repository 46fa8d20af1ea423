// canbridge dashboard: plain JavaScript, no build step, no network access beyond this server.
"use strict";

const API = "/api/v1";
const HISTORY_S = 60;
const state = {
  signals: new Map(),   // name -> {info, value, choice, quality, timestamp_ns}
  rows: new Map(),      // name -> <tr>
  history: new Map(),   // name -> [[t_ms, value], ...]
  selected: null,
  stream: null,
  filter: "",
  loaded: false,        // the signal list arrived and the table exists
  pending: new Map(),   // stream updates that came before the table: applied once it exists
  shown: false,         // a value has been on screen (performance mark "canbridge-first-value")
};

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem("canbridge-token") || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function api(path, opts) {
  opts = opts || {};
  const res = await fetch(API + path, Object.assign({}, opts, { headers: headers(opts.headers) }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (res.status === 401) showTokenBox(true);
  return { status: res.status, ok: res.ok, body: body, headers: res.headers };
}

function showTokenBox(show) { $("token-box").hidden = !show; }

function fmtValue(v, info) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "true" : "false";
  if (info && info.type === "float") {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e12)) return v.toExponential(3);
    return String(parseFloat(v.toFixed(3)));
  }
  return String(v);
}

function fmtAge(ns) {
  if (ns === null || ns === undefined) return "—";
  const s = (Date.now() - ns / 1e6) / 1000;
  if (s < 0) return "0.0 s";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h";
}

function matches(name) {
  const f = state.filter.trim();
  if (!f) return true;
  if (/[*?[]/.test(f)) {
    const re = new RegExp("^" + f.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".") + "$", "i");
    return re.test(name) || re.test(name.split(".").slice(1).join("."));
  }
  return name.toLowerCase().includes(f.toLowerCase());
}

// --- signals table ---------------------------------------------------------------------------

function buildTable() {
  const tbody = document.querySelector("#signals tbody");
  tbody.textContent = "";
  state.rows.clear();
  let lastMsg = null;
  let shown = 0;
  for (const [name, s] of state.signals) {
    if (!matches(name)) continue;
    shown++;
    const msg = s.info.bus + "." + s.info.message;
    if (msg !== lastMsg) {
      const g = document.createElement("tr");
      g.className = "group";
      const td = document.createElement("td");
      td.colSpan = 5;
      td.textContent = msg + (s.info.direction === "tx" ? "  (sent by the bridge)" : "");
      g.appendChild(td);
      tbody.appendChild(g);
      lastMsg = msg;
    }
    const tr = document.createElement("tr");
    tr.className = "sig" + (name === state.selected ? " selected" : "");
    tr.dataset.name = name;
    tr.innerHTML = '<td class="name"></td><td class="value num"></td><td class="unit"></td>' +
      '<td class="quality"><span class="pill"></span></td><td class="age num"></td>';
    tr.cells[0].textContent = s.info.signal;
    if (s.info.writable) {
      const w = document.createElement("span");
      w.className = "w";
      w.textContent = "writable";
      tr.cells[0].appendChild(w);
    }
    tr.cells[0].title = name + (s.info.comment ? " — " + s.info.comment : "");
    tr.cells[2].textContent = s.info.unit || "";
    tr.addEventListener("click", () => select(name));
    tbody.appendChild(tr);
    state.rows.set(name, tr);
    renderRow(name, false);
  }
  $("sig-count").textContent = shown === state.signals.size ? String(shown) : shown + " of " + state.signals.size;
}

function renderRow(name, flash) {
  const tr = state.rows.get(name);
  const s = state.signals.get(name);
  if (!tr || !s) return;
  const vcell = tr.cells[1];
  vcell.textContent = "";
  if (s.choice !== null && s.choice !== undefined) {
    const c = document.createElement("span");
    c.className = "choice";
    c.textContent = s.choice;
    const r = document.createElement("span");
    r.className = "rawv";
    r.textContent = "(" + fmtValue(s.value, s.info) + ")";
    vcell.append(c, r);
  } else {
    vcell.textContent = fmtValue(s.value, s.info);
  }
  if (!state.shown && s.value !== null && s.value !== undefined) {
    state.shown = true;
    performance.mark("canbridge-first-value");  // the browser test reports time to first value
  }
  const pill = tr.cells[3].firstChild;
  pill.className = "pill q-" + s.quality;
  pill.textContent = s.quality;
  tr.cells[4].textContent = fmtAge(s.timestamp_ns);
  if (flash) {
    tr.classList.remove("flash");
    void tr.offsetWidth;  // restart the animation
    tr.classList.add("flash");
  }
}

function applyUpdate(u) {
  if (!state.loaded) { state.pending.set(u.name, u); return; }
  const s = state.signals.get(u.name);
  if (!s) return;
  const changed = s.value !== u.value || s.quality !== u.quality;
  s.value = u.value; s.choice = u.choice; s.quality = u.quality; s.timestamp_ns = u.timestamp_ns;
  record(u.name, u.value);
  renderRow(u.name, changed);
}

function record(name, value) {
  if (typeof value !== "number" && typeof value !== "boolean") return;
  let h = state.history.get(name);
  if (!h) { h = []; state.history.set(name, h); }
  const now = Date.now();
  h.push([now, Number(value)]);
  while (h.length > 2 && h[1][0] < now - HISTORY_S * 1000) h.shift();  // keep one point before the window
  if (h.length > 2000) h.shift();
}

// --- plot --------------------------------------------------------------------------------------

function select(name) {
  state.selected = name;
  for (const [n, tr] of state.rows) tr.classList.toggle("selected", n === name);
  const s = state.signals.get(name);
  $("plot-name").textContent = name + (s && s.info.unit ? " [" + s.info.unit + "]" : "");
  draw();
  if (s && s.info.writable) {
    $("write-name").value = name;
    writeTargetChanged();
  }
}

function draw() {
  const cv = $("plot");
  const ratio = window.devicePixelRatio || 1;
  const cssW = cv.clientWidth || cv.width, cssH = Math.round(cssW / 2);
  if (cv.width !== Math.round(cssW * ratio)) { cv.width = Math.round(cssW * ratio); cv.height = Math.round(cssH * ratio); }
  const ctx = cv.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const W = cssW, H = cssH, L = 52, R = 10, T = 10, B = 22;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7585";
  const h = state.history.get(state.selected) || [];
  if (!state.selected || h.length === 0) {
    ctx.fillText(state.selected ? "waiting for values…" : "select a signal", L, H / 2);
    return;
  }
  const now = Date.now(), t0 = now - HISTORY_S * 1000;
  const pts = h.filter((p) => p[0] >= t0);
  const before = h.filter((p) => p[0] < t0);
  if (before.length) pts.unshift([t0, before[before.length - 1][1]]);
  let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
  if (lo === hi) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (t) => L + ((t - t0) / (HISTORY_S * 1000)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  ctx.strokeStyle = "#e3e7ee"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, yy = Math.round(y(v)) + 0.5;
    ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(W - R, yy); ctx.stroke();
    ctx.fillText(fmtValue(v, { type: "float" }), 4, yy + 4);
  }
  for (let s = 0; s <= HISTORY_S; s += 15) ctx.fillText("-" + (HISTORY_S - s) + " s", x(t0 + s * 1000) - 12, H - 6);
  // a step line: a value holds until the next change, and until now for the last one
  ctx.strokeStyle = "#2463eb"; ctx.lineWidth = 2; ctx.beginPath();
  ctx.moveTo(x(Math.max(pts[0][0], t0)), y(pts[0][1]));
  for (let i = 1; i < pts.length; i++) { ctx.lineTo(x(pts[i][0]), y(pts[i - 1][1])); ctx.lineTo(x(pts[i][0]), y(pts[i][1])); }
  ctx.lineTo(x(now), y(pts[pts.length - 1][1]));
  ctx.stroke();
  ctx.fillStyle = "#2463eb";
  ctx.beginPath(); ctx.arc(x(now), y(pts[pts.length - 1][1]), 3, 0, 2 * Math.PI); ctx.fill();
}

// --- buses -------------------------------------------------------------------------------------

async function loadBuses() {
  const r = await api("/buses");
  if (!r.ok || !r.body) return;
  const box = $("buses");
  box.textContent = "";
  for (const b of r.body.buses) {
    const d = document.createElement("div");
    d.className = "bus";
    d.dataset.bus = b.name;
    d.innerHTML = '<div class="top"><span class="name"></span><span class="pill"></span></div>' +
      '<div class="meta"></div><div class="load"><div></div></div><dl></dl>';
    d.querySelector(".name").textContent = b.name;
    const pill = d.querySelector(".pill");
    pill.className = "pill s-" + b.state;
    pill.textContent = b.state.replace("_", "-");
    d.querySelector(".meta").textContent = b.interface + " " + b.channel +
      (b.bitrate ? " · " + b.bitrate / 1000 + " kbit/s" : "") + (b.fd ? " · FD" : "") +
      " · load " + b.bus_load.toFixed(1) + " %";
    d.querySelector(".load > div").style.width = Math.min(100, b.bus_load) + "%";
    const dl = d.querySelector("dl");
    const rows = [["rx", b.rx_frames], ["tx", b.tx_frames], ["errors", b.error_frames],
      ["decode err", b.decode_errors], ["REC", b.rx_error_counter ?? "—"], ["TEC", b.tx_error_counter ?? "—"]];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      dl.append(dt, dd);
    }
    box.appendChild(d);
  }
}

// --- stream ------------------------------------------------------------------------------------

function connect() {
  if (state.stream) state.stream.close();
  let url = API + "/stream?interval=0.1";
  if (token()) url += "&access_token=" + encodeURIComponent(token());
  const es = new EventSource(url);
  state.stream = es;
  es.addEventListener("open", () => setConn(true));
  es.addEventListener("error", () => setConn(false));
  es.addEventListener("signals", (ev) => {
    const data = JSON.parse(ev.data);
    for (const u of data.signals) applyUpdate(u);
    setConn(true);
  });
}

function setConn(on) {
  const c = $("conn");
  c.className = "pill " + (on ? "conn-on" : "conn-off");
  c.textContent = on ? "live" : "disconnected";
}

// --- writes ------------------------------------------------------------------------------------

function fillWriteForm() {
  const sel = $("write-name");
  sel.textContent = "";
  for (const [name, s] of state.signals) {
    if (!s.info.writable) continue;
    const o = document.createElement("option");
    o.value = name; o.textContent = name;
    sel.appendChild(o);
  }
  $("write-btn").disabled = sel.options.length === 0;
  if (sel.options.length === 0) $("write-info").textContent = "No writable signals.";
  writeTargetChanged();
}

function writeTargetChanged() {
  const s = state.signals.get($("write-name").value);
  const dl = $("write-choices");
  dl.textContent = "";
  if (!s) return;
  const i = s.info;
  if (i.choices) for (const text of Object.values(i.choices)) {
    const o = document.createElement("option"); o.value = text; dl.appendChild(o);
  }
  $("write-info").textContent = (i.type === "bool" ? "true or false" :
    i.minimum + " … " + i.maximum + (i.unit ? " " + i.unit : "")) +
    (i.choices ? " · choices: " + Object.entries(i.choices).map((e) => e[0] + "=" + e[1]).join(", ") : "") +
    " · now: " + (s.choice || fmtValue(s.value, i));
}

function parseValue(text, info) {
  const t = text.trim();
  if (t === "true" || t === "false") return t === "true";
  if (t !== "" && !isNaN(Number(t))) return Number(t);
  return t;  // a choice text; the server says when it is not one
}

async function submitWrite(ev) {
  ev.preventDefault();
  const name = $("write-name").value;
  const s = state.signals.get(name);
  const value = parseValue($("write-value").value, s ? s.info : null);
  const out = $("write-result");
  out.className = "result"; out.textContent = "writing…";
  const r = await api("/signals/" + encodeURIComponent(name), {
    method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ value: value }),
  });
  if (r.ok) {
    out.className = "result ok";
    out.textContent = "Written: " + name.split(".").pop() + " = " + r.body.value + " → frame " + r.body.frame.cansend +
      (r.body.cyclic ? " (cyclic)" : "");
  } else {
    out.className = "result err";
    const b = r.body || {};
    const retry = r.headers.get("Retry-After");
    out.textContent = "Refused (" + r.status + " " + (b.error || "error") + "): " + (b.detail || "") +
      (retry ? " — retry after " + retry + " s" : "");
  }
}

// --- start -------------------------------------------------------------------------------------

// The stream carries changes of value or quality; a signal whose value holds still keeps arriving in
// frames, so its timestamp (the age column) is refreshed from the REST values now and then.
async function resync() {
  if (state.signals.size === 0) return;
  const r = await api("/signals");
  if (!r.ok || !r.body) return;
  for (const s of r.body.signals) {
    const cur = state.signals.get(s.name);
    if (cur && (s.timestamp_ns || 0) >= (cur.timestamp_ns || 0)) {
      cur.value = s.value; cur.choice = s.choice; cur.quality = s.quality; cur.timestamp_ns = s.timestamp_ns;
    }
  }
}

// The signal list, the stream and the buses start together: values are on screen as soon as the list
// arrives, whatever the stream or the bus panel take. The list is asked for first: with several tabs
// open the browser's six connections per server may be taken by streams.
async function load() {
  state.loaded = false;
  const list = api("/signals");
  connect();
  loadBuses();
  const r = await list;
  if (!r.ok) {
    $("sig-count").textContent = r.body && r.body.detail ? "— " + r.body.detail : "— not loaded";
    return;
  }
  state.signals.clear();
  for (const s of r.body.signals) {
    state.signals.set(s.name, { info: s, value: s.value, choice: s.choice, quality: s.quality, timestamp_ns: s.timestamp_ns });
    record(s.name, s.value);
  }
  buildTable();
  state.loaded = true;
  for (const u of state.pending.values()) {  // stream updates newer than the list (by source time)
    const cur = state.signals.get(u.name);
    if (cur && (u.timestamp_ns || 0) >= (cur.timestamp_ns || 0)) applyUpdate(u);
  }
  state.pending.clear();
  fillWriteForm();
  if (!state.selected) {
    const first = [...state.signals.values()].find((s) => s.info.type !== "bool" && s.info.direction === "rx");
    if (first) select(first.info.name);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter").addEventListener("input", (e) => { state.filter = e.target.value; buildTable(); });
  $("write-name").addEventListener("change", writeTargetChanged);
  $("write-form").addEventListener("submit", submitWrite);
  $("token-btn").addEventListener("click", () => showTokenBox($("token-box").hidden));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("canbridge-token", $("token-input").value.trim());
    showTokenBox(false);
    load();
  });
  load();
  setInterval(() => { for (const n of state.rows.keys()) renderRow(n, false); draw(); }, 500);
  setInterval(loadBuses, 2000);
  setInterval(resync, 2000);
  setInterval(writeTargetChanged, 1000);
});
