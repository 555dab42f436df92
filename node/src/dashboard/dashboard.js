// The DynoStore dashboard: polls the node's JSON API and draws it.
// Self-contained (no library): every element a test reads has an id or a
// data- attribute (data-member/data-state on member rows, dur-* counts,
// data-kind on events).
"use strict";

const POLL_MS = 2000;
const OBJECTS_POLL_MS = 10000;
const MAX_EVENTS_SHOWN = 60;

const state = {
  members: new Map(), // id -> member
  node: null,
  events: [],
  lastSeq: 0,
  objects: [],
  selected: null,
  updates: 0,
};

const $ = (id) => document.getElementById(id);

function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// Object IDs: the first 8 hex digits (as the CLI's short form); node IDs:
// the last 8 characters (their base58 starts alike: "12D3KooW").
function short(id) {
  const s = String(id || "");
  return s.length > 12 ? s.slice(0, 8) + "…" : s;
}

function shortNode(id) {
  const s = String(id || "");
  return s.length > 12 ? "…" + s.slice(-8) : s;
}

function bytes(n) {
  if (n == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v < 10 ? 2 : 1)) + " " + u[i];
}

function ago(ms) {
  if (ms == null) return "–";
  if (ms < 1500) return "now";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(0) + " s ago";
  if (s < 7200) return (s / 60).toFixed(0) + " min ago";
  return (s / 3600).toFixed(1) + " h ago";
}

function duration(s) {
  if (s == null) return "–";
  if (s < 1) return "now";
  if (s < 120) return s.toFixed(0) + " s";
  if (s < 7200) return (s / 60).toFixed(0) + " min";
  return (s / 3600).toFixed(1) + " h";
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// --- federation -----------------------------------------------------------

function renderStatus(st) {
  state.node = st.node;
  state.members = new Map(st.members.map((m) => [m.id, m]));
  $("node-id").textContent = shortNode(st.node);
  $("node-id").title = st.node;
  const alive = st.members.filter((m) => m.state === "alive").length;
  $("members-alive").textContent = alive;
  $("members-total").textContent = st.members.length;

  const sites = new Map();
  for (const m of st.members) {
    if (!sites.has(m.site)) sites.set(m.site, []);
    sites.get(m.site).push(m);
  }
  const names = [...sites.keys()].sort();
  let html = "";
  for (const site of names) {
    const ms = sites.get(site).sort((a, b) => a.id.localeCompare(b.id));
    const cap = ms.reduce((a, m) => a + m.capacity_bytes, 0);
    const free = ms.reduce((a, m) => a + m.free_bytes, 0);
    html += `<div class="site" data-site="${esc(site)}"><h3>${esc(site)} <small>${ms.length} member${ms.length === 1 ? "" : "s"}, ${bytes(cap - free)} of ${bytes(cap)} used</small></h3>`;
    html += `<table><thead><tr><th>state</th><th>member</th><th>fill</th><th class="r">capacity</th><th class="r">load</th><th class="r">last seen</th></tr></thead><tbody>`;
    for (const m of ms) {
      const used = m.capacity_bytes - m.free_bytes;
      const pct = m.capacity_bytes > 0 ? (100 * used) / m.capacity_bytes : 0;
      const me = m.id === st.node ? '<span class="tag">this node</span>' : "";
      const vol = m.volatile ? '<span class="tag">memory</span>' : "";
      html += `<tr data-member="${esc(m.id)}" data-state="${esc(m.state)}">` +
        `<td><span class="state ${esc(m.state)}">${esc(m.state)}</span></td>` +
        `<td><span class="mono" title="${esc(m.id)}">${esc(shortNode(m.id))}</span>${me}${vol}</td>` +
        `<td><span class="fill${pct > 85 ? " high" : ""}" title="${bytes(used)} of ${bytes(m.capacity_bytes)} used"><span style="width:${pct.toFixed(1)}%"></span></span> ${pct.toFixed(0)}%</td>` +
        `<td class="r">${bytes(m.capacity_bytes)}</td>` +
        `<td class="r" title="requests in flight, shard bytes served per second">${m.state === "down" ? "–" : `${m.requests_in_flight} req · ${bytes(m.bytes_per_sec)}/s`}</td>` +
        `<td class="r">${m.id === st.node ? "–" : ago(m.last_seen_ms)}</td></tr>`;
    }
    html += "</tbody></table></div>";
  }
  $("sites").innerHTML = html;
}

// --- durability -----------------------------------------------------------

function renderDurability(d) {
  $("dur-scope").textContent = "(" + d.scope + ")";
  $("dur-healthy").textContent = d.healthy;
  $("dur-degraded").textContent = d.degraded;
  $("dur-at-risk").textContent = d.at_risk;
  $("dur-lost").textContent = d.lost;
  $("dur-objects").textContent = d.objects;
  $("dur-stripes-short").textContent = d.stripes_short;
  $("dur-missing").textContent = d.missing_shards + " (" + bytes(d.missing_bytes) + ")";
  const r = d.repair;
  $("repair-queue").textContent = r.queue_stripes + " stripes";
  $("repair-rate").textContent = r.shards_per_sec.toFixed(2) + " shards/s, " + bytes(r.bytes_per_sec) + "/s";
  $("repair-eta").textContent = d.missing_shards === 0 ? "at full redundancy"
    : r.eta_seconds == null ? "waiting for repair" : "about " + duration(r.eta_seconds);
  $("repair-total").textContent = r.shards_repaired + " (" + bytes(r.bytes_repaired) + ")";
  const total = Math.max(d.objects, 1);
  const part = (n, cls) => n > 0 ? `<span class="${cls}" style="width:${(100 * n / total).toFixed(2)}%"></span>` : "";
  $("dur-bar").innerHTML = part(d.healthy, "ok") + part(d.degraded, "warn") + part(d.at_risk, "risk") + part(d.lost, "bad");
}

// --- traffic --------------------------------------------------------------

function drawChart(svg, series, samples, unitScale) {
  // Drawn in the element's own pixels, so that text is not stretched.
  const W = Math.max(svg.clientWidth || 600, 100), H = Math.max(svg.clientHeight || 130, 60);
  const top = 8, bottom = 16, left = 4;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const n = 300; // five minutes of one-second samples
  let max = 0;
  for (const s of series) for (const p of samples) max = Math.max(max, s.get(p) / unitScale);
  const nice = niceMax(max);
  const x = (i) => left + ((W - left) * i) / (n - 1);
  const y = (v) => H - bottom - ((H - top - bottom) * v) / nice;
  let out = "";
  for (let g = 0; g <= 2; g++) {
    const v = (nice * g) / 2;
    const ty = g === 2 ? y(v) + 10 : y(v) - 2;
    out += `<line class="grid" x1="0" x2="${W}" y1="${y(v)}" y2="${y(v)}"/>` +
      `<text class="axis" x="${W - 4}" y="${ty}" text-anchor="end">${fmt(v)}</text>`;
  }
  out += `<text class="axis" x="4" y="${H - 3}">-5 min</text><text class="axis" x="${W - 4}" y="${H - 3}" text-anchor="end">now</text>`;
  const offset = n - samples.length;
  for (const s of series) {
    const pts = samples.map((p, i) => `${x(offset + i).toFixed(1)},${y(s.get(p) / unitScale).toFixed(1)}`).join(" ");
    if (pts) out += `<polyline class="${s.cls}" points="${pts}"/>`;
  }
  svg.innerHTML = out;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function fmt(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function renderTraffic(t) {
  const per = (f) => (p) => (f(p) * 1000) / Math.max(p.ms, 1);
  const samples = t.samples;
  drawChart($("chart-bytes"), [
    { cls: "put", get: per((p) => p.put_bytes) },
    { cls: "get", get: per((p) => p.get_bytes) },
    { cls: "repair", get: per((p) => p.repair_bytes) },
  ], samples, 1e6);
  drawChart($("chart-ops"), [
    { cls: "put", get: per((p) => p.put_ops) },
    { cls: "get", get: per((p) => p.get_ops) },
  ], samples, 1);
  const last = samples.slice(-10);
  const sum = (f) => last.reduce((a, p) => a + f(p), 0);
  const secs = Math.max(sum((p) => p.ms) / 1000, 1e-3);
  $("rate-now").textContent = "last 10 s: put " + (sum((p) => p.put_bytes) / secs / 1e6).toFixed(2) +
    ", get " + (sum((p) => p.get_bytes) / secs / 1e6).toFixed(2);
  $("ops-now").textContent = "last 10 s: put " + (sum((p) => p.put_ops) / secs).toFixed(1) +
    ", get " + (sum((p) => p.get_ops) / secs).toFixed(1);
}

// --- events ---------------------------------------------------------------

function renderEvents(ev) {
  for (const e of ev.events) {
    if (e.seq > state.lastSeq) {
      state.events.push(e);
      state.lastSeq = e.seq;
    }
  }
  state.events = state.events.slice(-MAX_EVENTS_SHOWN);
  let html = "";
  for (const e of [...state.events].reverse()) {
    const t = new Date(e.t).toLocaleTimeString();
    html += `<li data-kind="${esc(e.kind)}" data-seq="${e.seq}"${e.subject ? ` data-subject="${esc(e.subject)}"` : ""}><time>${esc(t)}</time>${esc(e.text)}</li>`;
  }
  $("events").innerHTML = html || '<li class="muted">nothing yet</li>';
}

// --- objects --------------------------------------------------------------

function renderObjects() {
  const f = $("object-filter").value.trim().toLowerCase();
  const rows = state.objects.filter((o) => !f || (o.name || "").toLowerCase().includes(f) || o.id.includes(f));
  $("objects-count").textContent = `(${state.objects.length} in the federation${f ? ", " + rows.length + " shown" : ""})`;
  let html = "";
  for (const o of rows.slice(0, 500)) {
    html += `<tr data-object="${esc(o.id)}"${o.id === state.selected ? ' class="selected"' : ""}>` +
      `<td>${esc(o.name || "–")}</td><td class="mono" title="${esc(o.id)}">${esc(short(o.id))}</td><td class="r">${bytes(o.size)}</td></tr>`;
  }
  $("object-rows").innerHTML = html;
}

async function loadObjects() {
  try {
    state.objects = await getJson("/v1/objects");
    renderObjects();
  } catch (e) {
    $("objects-count").textContent = "(" + e.message + ")";
  }
}

async function selectObject(id) {
  state.selected = id;
  renderObjects();
  const box = $("object-stat");
  box.innerHTML = '<p class="muted">asking the holders…</p>';
  try {
    const st = await getJson("/v1/objects/" + encodeURIComponent(id));
    renderStat(st);
  } catch (e) {
    box.innerHTML = `<p class="muted">${esc(e.message)}</p>`;
  }
}

function renderStat(st) {
  const shards = st.segments.reduce((a, s) => a + s.shards.length, 0);
  const ok = st.segments.reduce((a, s) => a + s.shards.filter((x) => x.ok).length, 0);
  let html = `<h3 style="margin:0 0 6px">${esc(st.name || short(st.id))} <span id="obj-health" class="health ${esc(st.health)}">${esc(st.health)}</span></h3>` +
    `<table class="kv"><tr><th>ID</th><td class="mono" id="obj-id">${esc(st.id)}</td></tr>` +
    `<tr><th>size</th><td>${bytes(st.size)}</td></tr>` +
    `<tr><th>geometry</th><td>${st.k}+${st.m} ${esc(st.codec)}, ${st.segments.length} segment${st.segments.length === 1 ? "" : "s"} of ${bytes(st.segment_size)}</td></tr>` +
    `<tr><th>shards verified</th><td id="obj-shards-ok">${ok} of ${shards}</td></tr></table>` +
    `<p><a class="button" id="obj-download" href="/v1/objects/${esc(st.id)}/data" download>download</a></p>`;
  html += siteMap(st);
  $("object-stat").innerHTML = html;
}

// The shards of one object on a map of sites: a box per site, a row per
// member, a square per shard copy (green verified, red not).
function siteMap(st) {
  const perHolder = new Map();
  for (const seg of st.segments) {
    for (const s of seg.shards) {
      if (!perHolder.has(s.holder)) perHolder.set(s.holder, []);
      perHolder.get(s.holder).push(s.ok);
    }
  }
  const sites = new Map();
  for (const m of state.members.values()) {
    if (!sites.has(m.site)) sites.set(m.site, []);
    sites.get(m.site).push(m.id);
  }
  for (const h of perHolder.keys()) {
    if (!state.members.has(h)) {
      if (!sites.has("(unknown)")) sites.set("(unknown)", []);
      sites.get("(unknown)").push(h);
    }
  }
  const names = [...sites.keys()].sort();
  const cols = names.length === 4 ? 2 : Math.min(Math.max(names.length, 1), 3);
  const boxW = 210, rowH = 22, pad = 10, head = 22, maxSquares = 14;
  const rowsPerSite = names.map((s) => sites.get(s).length);
  const gridRows = Math.ceil(names.length / cols);
  const boxH = [];
  for (let r = 0; r < gridRows; r++) {
    let h = 0;
    for (let c = 0; c < cols; c++) h = Math.max(h, rowsPerSite[r * cols + c] || 0);
    boxH.push(head + h * rowH + 6);
  }
  const W = cols * (boxW + pad) + pad;
  const H = boxH.reduce((a, h) => a + h + pad, pad);
  let out = `<svg class="map" id="obj-map" viewBox="0 0 ${W} ${H}" style="max-width:${W}px">`;
  let yOff = pad;
  names.forEach((site, i) => {
    const r = Math.floor(i / cols), c = i % cols;
    if (c === 0 && r > 0) yOff += boxH[r - 1] + pad;
    const x = pad + c * (boxW + pad);
    out += `<g data-map-site="${esc(site)}"><rect class="sitebox" x="${x}" y="${yOff}" width="${boxW}" height="${boxH[r]}" rx="6"/>` +
      `<text class="sitename" x="${x + 8}" y="${yOff + 15}">${esc(site)}</text>`;
    sites.get(site).sort().forEach((id, j) => {
      const m = state.members.get(id);
      const down = !m || m.state === "down";
      const cy = yOff + head + j * rowH + 8;
      out += `<circle class="member${down ? " down" : ""}" cx="${x + 12}" cy="${cy}" r="6"><title>${esc(id)} (${esc(m ? m.state : "unknown")})</title></circle>` +
        `<text class="label" x="${x + 22}" y="${cy + 3}">${esc(shortNode(id))}</text>`;
      const copies = perHolder.get(id) || [];
      copies.slice(0, maxSquares).forEach((okCopy, q) => {
        out += `<rect class="shard ${okCopy ? "ok" : "bad"}" x="${x + 96 + q * 7}" y="${cy - 5}" width="5" height="10"/>`;
      });
      if (copies.length > maxSquares) out += `<text class="label" x="${x + 96 + maxSquares * 7}" y="${cy + 3}">+${copies.length - maxSquares}</text>`;
    });
    out += "</g>";
  });
  return out + "</svg>";
}

// --- the loop ---------------------------------------------------------------

async function poll() {
  const [st, dur, tr, ev] = await Promise.allSettled([
    getJson("/v1/status"),
    getJson("/v1/durability"),
    getJson("/v1/traffic"),
    getJson("/v1/events?after=" + state.lastSeq),
  ]);
  const failed = [st, dur, tr, ev].filter((r) => r.status === "rejected");
  if (st.status === "fulfilled") renderStatus(st.value);
  if (dur.status === "fulfilled") renderDurability(dur.value);
  if (tr.status === "fulfilled") renderTraffic(tr.value);
  if (ev.status === "fulfilled") renderEvents(ev.value);
  state.updates++;
  document.body.dataset.updates = String(state.updates);
  $("updated").textContent = failed.length
    ? "update failed: " + failed[0].reason.message
    : "updated " + new Date().toLocaleTimeString();
}

async function loop() {
  try { await poll(); } catch (e) { $("updated").textContent = "update failed: " + e.message; }
  setTimeout(loop, POLL_MS);
}

$("object-filter").addEventListener("input", renderObjects);
$("objects-refresh").addEventListener("click", loadObjects);
$("object-rows").addEventListener("click", (e) => {
  const tr = e.target.closest("tr[data-object]");
  if (tr) selectObject(tr.dataset.object);
});

loop();
loadObjects().then(() => {
  const first = state.objects[0];
  if (first && !state.selected) selectObject(first.id);
});
setInterval(loadObjects, OBJECTS_POLL_MS);
