// pgraft dashboard: polls this member's admin API (/admin/v1) and /metrics about once a
// second and redraws. Everything is drawn with textContent and canvas: no data is ever parsed
// as HTML. The token (admin or etcd) stays in this tab's sessionStorage.
"use strict";

const POLL_MS = 1000;
const POINTS = 120; // two minutes of samples per chart
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("pgraft-token") || "";
let overview = null;
let kvNext = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
  if (!resp.ok) {
    const msg = data && data.error ? data.error : resp.status + " " + resp.statusText;
    throw new Error(msg);
  }
  return data;
}

function showError(e) {
  const p = $("error");
  if (e) { p.textContent = String(e.message || e); p.hidden = false; } else { p.hidden = true; }
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function memberName(id) {
  if (!overview || !id) return id || "none";
  const m = overview.members.find((m) => m.id === id);
  return m && m.name ? m.name : id;
}

// ---- members ----

function renderOverview(o) {
  overview = o;
  $("leader").textContent = o.leader ? memberName(o.leader) : "none";
  $("leader").dataset.id = o.leader || "";
  $("term").textContent = o.term;
  $("member-count").textContent = o.members.length;
  $("cluster-id").textContent = o.cluster_id;
  const writable = (o.auth_enabled || o.admin_token_configured) && token !== "";
  document.body.classList.toggle("can-write", writable);
  $("token-state").textContent = o.auth_enabled ? "etcd auth on" :
    (o.admin_token_configured ? "" : "writes off (no --admin-token)");
  const tbody = $("members").querySelector("tbody");
  const rows = [];
  for (const m of o.members) {
    const tr = el("tr");
    tr.dataset.id = m.id;
    tr.dataset.role = m.role;
    tr.dataset.healthy = m.healthy ? "true" : "false";
    tr.appendChild(el("td", m.name || "(not started)", "name"));
    tr.appendChild(el("td", m.id, "id"));
    tr.appendChild(el("td", m.role + (m.is_learner && m.role !== "learner" ? " (learner)" : ""), "role role-" + m.role));
    const h = el("td", m.healthy ? "healthy" : "unhealthy", "health " + (m.healthy ? "healthy" : "unhealthy"));
    if (m.errors && m.errors.length) h.title = m.errors.join("\n");
    tr.appendChild(h);
    tr.appendChild(el("td", m.term ?? "–"));
    tr.appendChild(el("td", m.commit_index ?? "–"));
    tr.appendChild(el("td", m.applied_index ?? "–"));
    const rep = el("td");
    if (m.progress) {
      const leader = o.members.find((x) => x.role === "leader");
      const top = leader && leader.commit_index ? leader.commit_index : m.progress.match_index;
      const bar = el("span", null, "bar");
      const fill = el("span");
      fill.style.width = (top ? Math.min(100, 100 * m.progress.match_index / top) : 100) + "%";
      bar.appendChild(fill);
      rep.appendChild(bar);
      rep.appendChild(document.createTextNode(m.progress.state + ", lag " + m.progress.lag));
    } else {
      rep.textContent = m.role === "leader" ? "leads" : "–";
    }
    tr.appendChild(rep);
    tr.appendChild(el("td", bytes(m.db_size)));
    const host = pgHosts.get(m.id);
    tr.appendChild(el("td", host ? host.name + " (" + host.address + ")" : "–", "pg-host"));
    const act = el("td", null, "admin");
    if (m.role !== "leader" && !m.is_learner) act.appendChild(button("Make leader", () => transfer(m.id)));
    if (m.is_learner) act.appendChild(button("Promote", () => memberCall("POST", "/admin/v1/members/" + m.id + "/promote")));
    act.appendChild(button("Remove", () => {
      if (confirm("Remove member " + (m.name || m.id) + "?")) memberCall("DELETE", "/admin/v1/members/" + m.id);
    }));
    tr.appendChild(act);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

function button(label, onclick) {
  const b = el("button", label);
  b.type = "button";
  b.addEventListener("click", onclick);
  return b;
}

async function transfer(id) {
  try { await api("POST", "/admin/v1/leader", { target: id }); showError(null); poll(); } catch (e) { showError(e); }
}

async function memberCall(method, path, body) {
  try { await api(method, path, body); showError(null); poll(); } catch (e) { showError(e); }
}

// ---- leader changes ----

function colorOf(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) % 360;
  return "hsl(" + h + ",60%,45%)";
}

function renderHistory(hist) {
  const list = $("leader-changes");
  const items = hist.changes.slice().reverse().map((c) => {
    const when = new Date(c.at_ms).toLocaleTimeString();
    return el("li", when + "  term " + c.term + ": " + (c.from ? memberName(c.from) : "none") + " → " + (c.to ? memberName(c.to) : "none (election)"));
  });
  list.replaceChildren(...items);
  // The last 10 minutes as a strip: one colour per leader, gaps where there was none.
  const cv = $("leader-timeline");
  const ctx = cv.getContext("2d");
  const w = cv.width, h = cv.height, now = Date.now(), span = 10 * 60 * 1000;
  ctx.clearRect(0, 0, w, h);
  const x = (t) => Math.max(0, (t - (now - span)) / span * w);
  const cs = hist.changes;
  for (let i = 0; i < cs.length; i++) {
    const end = i + 1 < cs.length ? cs[i + 1].at_ms : now;
    if (end < now - span || !cs[i].to) continue;
    ctx.fillStyle = colorOf(cs[i].to);
    ctx.fillRect(x(cs[i].at_ms), 4, Math.max(1, x(end) - x(cs[i].at_ms)), h - 18);
  }
  ctx.fillStyle = "#6b7385";
  ctx.font = "10px sans-serif";
  ctx.fillText("-10 min", 2, h - 2);
  ctx.fillText("now", w - 22, h - 2);
}

// ---- alarms ----

function renderAlarms(a) {
  const items = a.alarms.map((x) => el("li", x.alarm + " on " + memberName(x.member_id), "alarm"));
  $("alarms").replaceChildren(...(items.length ? items : [el("li", "none")]));
  $("disarm").disabled = items.length === 0;
}

// ---- metrics and charts ----

const series = { requests: [], proposals: [], fsync: [], commit: [] };
let lastMetrics = null;

function parseMetrics(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const sp = line.lastIndexOf(" ");
    if (sp < 0) continue;
    let name = line.slice(0, sp);
    const brace = name.indexOf("{");
    if (brace >= 0) name = name.slice(0, brace);
    const v = parseFloat(line.slice(sp + 1));
    if (!isNaN(v)) sums[name] = (sums[name] || 0) + v;
  }
  sums.t = Date.now();
  return sums;
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > POINTS) arr.shift();
}

function sample(m) {
  if (lastMetrics) {
    const dt = (m.t - lastMetrics.t) / 1000;
    const d = (k) => Math.max(0, (m[k] || 0) - (lastMetrics[k] || 0));
    const mean = (name) => d(name + "_count") ? 1000 * d(name + "_sum") / d(name + "_count") : 0;
    if (dt > 0) {
      push(series.requests, d("grpc_server_handled_total") / dt);
      push(series.proposals, d("etcd_server_proposals_committed_total") / dt);
      push(series.fsync, mean("etcd_disk_wal_fsync_duration_seconds"));
      push(series.commit, mean("etcd_disk_backend_commit_duration_seconds"));
    }
  }
  lastMetrics = m;
  draw("chart-requests", series.requests, "");
  draw("chart-proposals", series.proposals, "");
  draw("chart-fsync", series.fsync, " ms");
  draw("chart-commit", series.commit, " ms");
}

function draw(id, data, unit) {
  const cv = $(id), ctx = cv.getContext("2d"), w = cv.width, h = cv.height;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1e-9, ...data);
  ctx.strokeStyle = "#dde1e8";
  ctx.beginPath(); ctx.moveTo(0, h - 0.5); ctx.lineTo(w, h - 0.5); ctx.stroke();
  ctx.strokeStyle = "#0b5cad";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  data.forEach((v, i) => {
    const x = w - (data.length - 1 - i) * (w / (POINTS - 1));
    const y = h - 14 - (v / max) * (h - 20);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  ctx.fillStyle = "#1d2330";
  ctx.font = "11px sans-serif";
  const last = data.length ? data[data.length - 1] : 0;
  ctx.fillText("now " + fmt(last) + unit + "   max " + fmt(data.length ? max : 0) + unit, 4, h - 2);
}

function fmt(v) {
  return v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(2);
}

// ---- keys ----

async function browse(start) {
  const q = new URLSearchParams({ limit: "50", keys_only: "true" });
  const prefix = $("kv-prefix").value;
  if (prefix) q.set("prefix", prefix);
  if (start) q.set("start_b64", start);
  try {
    const page = await api("GET", "/admin/v1/kv?" + q);
    kvNext = page.more ? page.next_b64 : null;
    $("kv-next").disabled = !kvNext;
    const items = page.kvs.map((kv) => {
      const li = el("li", kv.key_encoding === "utf8" ? kv.key : "base64:" + kv.key);
      li.addEventListener("click", () => openKey(kv, li));
      return li;
    });
    $("kv-keys").replaceChildren(...(items.length ? items : [el("li", "no keys")]));
    showError(null);
  } catch (e) { showError(e); }
}

async function openKey(kv, li) {
  for (const x of $("kv-keys").children) x.classList.remove("sel");
  li.classList.add("sel");
  const q = new URLSearchParams({ limit: "1" });
  if (kv.key_encoding === "utf8") q.set("start", kv.key); else q.set("start_b64", kv.key);
  if (kv.key_encoding === "utf8") q.set("prefix", kv.key); else q.set("prefix_b64", kv.key);
  try {
    const page = await api("GET", "/admin/v1/kv?" + q);
    const v = page.kvs[0];
    if (!v) { showError("the key is gone"); return; }
    $("kv-key").value = v.key_encoding === "utf8" ? v.key : "";
    $("kv-value").value = v.value_encoding === "utf8" ? v.value : "";
    $("kv-meta").textContent = "rev " + v.mod_revision + ", version " + v.version +
      (v.value_encoding === "base64" ? ", binary value (" + v.value.length + " base64 chars, not editable here)" : "") +
      (v.lease ? ", lease " + v.lease : "");
    showError(null);
  } catch (e) { showError(e); }
}

// ---- PostgreSQL servers registered (pgraft/postgres/<name>): in client mode, servers using
// the cluster; in member mode, the servers hosting members (shown beside those members) ----

const PG_PREFIX = "pgraft/postgres/";
let pgPolls = 0;
// member id -> the PostgreSQL server hosting it (registrations in member mode).
let pgHosts = new Map();

async function pollPostgres() {
  const tbody = $("postgres").querySelector("tbody");
  let page;
  try {
    page = await api("GET", "/admin/v1/kv?" + new URLSearchParams({ prefix: PG_PREFIX, limit: "200" }));
  } catch (e) {
    const td = el("td", "cannot list " + PG_PREFIX + ": " + e.message);
    td.colSpan = 6;
    const tr = el("tr"); tr.appendChild(td);
    tbody.replaceChildren(tr);
    return;
  }
  const hosts = new Map();
  const rows = page.kvs.map((kv) => {
    let v = {};
    try { v = kv.value_encoding === "utf8" ? JSON.parse(kv.value) : {}; } catch (e) { v = {}; }
    const tr = el("tr");
    tr.dataset.name = v.name || kv.key.slice(PG_PREFIX.length);
    const address = v.host !== undefined ? v.host + ":" + v.port : "–";
    tr.appendChild(el("td", tr.dataset.name));
    tr.appendChild(el("td", address));
    tr.appendChild(el("td", v.mode === "member" ? "hosts member " + (v.member_id || "?") : "client"));
    tr.appendChild(el("td", v.in_recovery === undefined ? "–" : (v.in_recovery ? "replica" : "primary")));
    tr.appendChild(el("td", v.server_version || "–"));
    tr.appendChild(el("td", kv.lease || "none"));
    if (v.mode === "member" && v.member_id) hosts.set(String(v.member_id), { name: tr.dataset.name, address });
    return tr;
  });
  const changed = hosts.size !== pgHosts.size ||
    [...hosts].some(([id, h]) => { const o = pgHosts.get(id); return !o || o.name !== h.name || o.address !== h.address; });
  pgHosts = hosts;
  if (changed && overview) renderOverview(overview);
  if (!rows.length) {
    const td = el("td", "none registered");
    td.colSpan = 6;
    const tr = el("tr"); tr.appendChild(td);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

// ---- polling ----

let polling = false;
async function poll() {
  if (polling) return;
  polling = true;
  try {
    const [o, hist, alarms] = await Promise.all([
      api("GET", "/admin/v1/cluster"),
      api("GET", "/admin/v1/leader/history"),
      api("GET", "/admin/v1/alarms"),
    ]);
    renderOverview(o);
    renderHistory(hist);
    renderAlarms(alarms);
    $("conn").className = "dot ok";
    if (pgPolls++ % 3 === 0) pollPostgres();
    try {
      const m = await fetch("/metrics");
      if (m.ok) sample(parseMetrics(await m.text()));
    } catch (e) { /* charts pause */ }
    if ($("error").dataset.poll) { showError(null); delete $("error").dataset.poll; }
  } catch (e) {
    $("conn").className = "dot bad";
    showError(e);
    $("error").dataset.poll = "1";
  } finally {
    polling = false;
  }
}

$("token").value = token;
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  if (token) sessionStorage.setItem("pgraft-token", token); else sessionStorage.removeItem("pgraft-token");
  poll();
});
$("add-member").addEventListener("submit", (ev) => {
  ev.preventDefault();
  memberCall("POST", "/admin/v1/members", { peer_urls: [$("add-peer").value.trim()], learner: $("add-learner").checked });
});
$("disarm").addEventListener("click", () => memberCall("DELETE", "/admin/v1/alarms"));
$("kv-browse").addEventListener("submit", (ev) => { ev.preventDefault(); browse(null); });
$("kv-next").addEventListener("click", () => browse(kvNext));
$("kv-edit").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    await api("PUT", "/admin/v1/kv", { key: $("kv-key").value, value: $("kv-value").value });
    showError(null);
    browse(null);
  } catch (e) { showError(e); }
});
$("kv-delete").addEventListener("click", async () => {
  const key = $("kv-key").value;
  if (!key || !confirm("Delete " + key + "?")) return;
  try {
    await api("DELETE", "/admin/v1/kv?" + new URLSearchParams({ key }));
    $("kv-value").value = "";
    showError(null);
    browse(null);
  } catch (e) { showError(e); }
});

poll();
setInterval(poll, POLL_MS);
browse(null);
