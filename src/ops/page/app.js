// The live mesh page. Reads /v1/live (Server-Sent Events through fetch, so the admin token can
// travel as a bearer header), /v1/ring and /v1/placement/{user}. Every value from the node is
// put into the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("sipmesh-token") || "";
let last = null;          // previous overview (for rates)
let ringVersion = -1;
let ringStates = "";
let shares = {};          // peer id -> share of the keyspace
let ringMembers = [];
let highlight = null;     // placement result shown on the ring
let updates = 0;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function short(peer) { return peer.length > 16 ? peer.slice(0, 8) + "…" + peer.slice(-6) : peer; }

function setMode() {
  document.body.classList.toggle("admin", !!token);
  $("mode").textContent = token ? "admin" : "read-only";
  $("mode").dataset.admin = token ? "yes" : "no";
}

function ago(ms) {
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

function rate(now, prev, key, dt) {
  if (!prev || dt <= 0) return "–";
  const d = now.counters[key] - prev.counters[key];
  return (Math.max(0, d) / dt).toFixed(1);
}

async function act(method, path, body) {
  const opts = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) opts.body = JSON.stringify(body);
  const r = await fetch(path, opts);
  const v = await r.json().catch(() => ({}));
  if (!r.ok) alert(path + ": " + (v.error || r.status));
  return r.ok;
}

function renderMembers(status) {
  const tbody = $("members").querySelector("tbody");
  tbody.replaceChildren();
  let regs = 0, dialogs = 0;
  for (const m of status.members) {
    const tr = el("tr");
    tr.dataset.peer = m.peer_id;
    tr.dataset.state = m.state;
    if (m.local) tr.className = "local";
    const t = m.tags || {};
    const load = Number(t.load || 0), cap = Number(t.capacity || 0);
    const r = m.local ? status.registrations : Number(t.registrations || 0);
    const d = m.local ? status.dialogs : Number(t.dialogs || 0);
    if (m.state !== "Left") { regs += r; dialogs += d; }
    const peer = el("td", short(m.peer_id)); peer.title = m.peer_id;
    tr.append(peer);
    // Up but reached only through other members: a cut between this node and it.
    const around = m.state === "Up" && m.direct === false;
    const st = el("td", m.state.toLowerCase() + (around ? " · via others" : ""), "state-" + m.state.toLowerCase());
    if (around) st.title = "this node reaches it only through other members (a cut between the two); SIP and replica traffic goes around";
    st.dataset.field = "state";
    tr.append(st);
    tr.append(el("td", t.sip || ""));
    const lc = el("td");
    const bar = el("span", null, "bar"); const fill = el("i");
    fill.style.width = (cap ? Math.min(100, 100 * load / cap) : 0) + "%";
    bar.append(fill); lc.append(bar, document.createTextNode(load + " / " + cap));
    tr.append(lc);
    const rc = el("td", r); rc.dataset.field = "registrations"; tr.append(rc);
    const dc = el("td", d); dc.dataset.field = "dialogs"; tr.append(dc);
    tr.append(el("td", shares[m.peer_id] !== undefined ? (100 * shares[m.peer_id]).toFixed(0) + "%" : ""));
    tr.append(el("td", m.generation));
    tr.append(el("td", m.local ? "—" : ago(m.last_heard_ms)));
    const action = el("td", null, "admin-only");
    if (!m.local && m.state === "Down") {
      const b = el("button", "remove", "admin-action");
      b.onclick = () => {
        if (confirm("Remove " + m.peer_id + " from the ring? Its data is re-replicated from the other copies.")) {
          act("POST", "/v1/mesh/remove", { peer_id: m.peer_id });
        }
      };
      action.append(b);
    }
    tr.append(action);
    tbody.append(tr);
  }
  $("registrations-mesh").textContent = regs + " in the mesh";
  $("dialogs-mesh").textContent = dialogs + " in the mesh";
}

function renderBans(bans) {
  const tbody = $("bans").querySelector("tbody");
  tbody.replaceChildren();
  $("no-bans").style.display = bans.length ? "none" : "";
  for (const b of bans) {
    const tr = el("tr");
    tr.dataset.source = b.source;
    tr.append(el("td", b.source), el("td", b.reason), el("td", b.expires_in + " s"));
    const td = el("td", null, "admin-only");
    const btn = el("button", "lift", "admin-action");
    btn.dataset.lift = b.source;
    btn.onclick = async () => { if (await act("DELETE", "/v1/bans/" + encodeURIComponent(b.source))) tr.remove(); };
    td.append(btn);
    tr.append(td);
    tbody.append(tr);
  }
}

function renderEvents(events) {
  const list = $("events");
  for (const e of events) {
    const li = el("li");
    li.dataset.kind = e.kind;
    const when = new Date(e.at_ms).toLocaleTimeString();
    li.append(el("span", when + " ", "dim"), el("span", e.kind, "kind kind-" + e.kind), el("span", " " + e.text));
    list.prepend(li);
  }
  while (list.children.length > 200) list.lastChild.remove();
}

function render(v) {
  const s = v.status;
  $("node-name").textContent = short(s.peer_id) + " · " + s.sip + " · v" + s.version;
  $("members-up").textContent = s.members_up;
  $("ring-size").textContent = "of " + s.ring_members + " in the ring";
  $("majority").textContent = s.majority ? "yes" : "NO";
  $("majority").style.color = s.majority ? "var(--up)" : "var(--down)";
  $("registrations").textContent = s.registrations;
  $("dialogs").textContent = s.dialogs;
  $("hints").textContent = s.hints;
  $("ae-repaired").textContent = v.anti_entropy.repaired;
  $("ae-detail").textContent = v.anti_entropy.rounds + " rounds, " + v.anti_entropy.differing + " leaves differed";
  $("sync").textContent = s.clock_skewed ? "CLOCK OFF" : (s.catching_up ? "catching up" : "in sync");
  $("sync").style.color = s.clock_skewed ? "var(--down)" : (s.catching_up ? "var(--warn)" : "var(--up)");
  $("clock").textContent = "peers' clocks " + (s.clock_offset_ms >= 0 ? "+" : "") + (s.clock_offset_ms / 1000).toFixed(1) + " s" +
    (s.clock_skewed ? ": this node coordinates nothing" : "");
  const dt = last ? (v.now_ms - last.now_ms) / 1000 : 0;
  $("rate-register").textContent = rate(v, last, "registers_ok", dt);
  $("rate-calls").textContent = rate(v, last, "calls_answered", dt);
  if (last && dt > 0) {
    const f = (v.counters.failures - last.counters.failures) + (v.counters.auth_failures - last.counters.auth_failures);
    $("rate-failures").textContent = (Math.max(0, f) / dt).toFixed(1);
  }
  renderMembers(s);
  renderBans(v.bans);
  renderEvents(v.events);
  const states = s.members.map((m) => m.peer_id + m.state).join();
  if (v.ring_version !== ringVersion || states !== ringStates) {
    ringVersion = v.ring_version; ringStates = states;
    loadRing();
  }
  last = v;
  updates += 1;
  document.body.dataset.updates = String(updates);
}

async function loadRing() {
  const r = await fetch("/v1/ring", { headers: headers() });
  if (!r.ok) return;
  const v = await r.json();
  ringMembers = v.members;
  shares = {};
  for (const m of v.members) shares[m.peer_id] = m.share;
  drawRing();
  if (last) renderMembers(last.status);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}

function drawRing() {
  const g = $("ring");
  g.replaceChildren();
  g.append(svg("circle", { cx: 0, cy: 0, r: 100, class: "track" }));
  const at = (p, r) => [r * Math.sin(2 * Math.PI * p), -r * Math.cos(2 * Math.PI * p)];
  if (highlight) {
    const [x, y] = at(highlight.position, 100);
    g.append(svg("circle", { cx: x, cy: y, r: 4, class: "key" }));
  }
  for (const m of ringMembers) {
    const [x, y] = at(m.position, 100);
    const colour = m.up ? "var(--up)" : "var(--down)";
    const radius = 5 + 10 * m.share;
    const dot = svg("circle", { cx: x, cy: y, r: radius, fill: colour, "fill-opacity": 0.8 });
    dot.dataset.peer = m.peer_id;
    const title = svg("title", {});
    title.textContent = m.peer_id + " — replicates " + (100 * m.share).toFixed(0) + "% of the keyspace";
    dot.append(title);
    g.append(dot);
    if (highlight && highlight.replicas.includes(m.peer_id)) {
      g.append(svg("circle", { cx: x, cy: y, r: radius + 4, class: "hl" }));
    }
    const [tx, ty] = at(m.position, 120);
    const label = svg("text", { x: tx, y: ty, "text-anchor": "middle", "dominant-baseline": "middle" });
    label.textContent = m.peer_id.slice(-6) + (m.local ? "*" : "");
    g.append(label);
  }
}

async function lookup(user) {
  const out = $("lookup-result");
  const r = await fetch("/v1/placement/" + encodeURIComponent(user), { headers: headers() });
  const v = await r.json().catch(() => ({}));
  if (!r.ok) { out.textContent = v.error || ("HTTP " + r.status); highlight = null; drawRing(); return; }
  highlight = { position: v.position, replicas: v.registration_replicas.map((x) => x.peer_id) };
  out.replaceChildren();
  out.append(el("div", v.user + ": replicas " + v.registration_replicas.map((x) => short(x.peer_id)).join(", ")));
  const owners = v.binding_owners.length
    ? v.binding_owners.map((b) => b.contact + " via " + short(b.peer_id)).join("; ")
    : "not registered";
  const o = el("div", "bindings: " + owners);
  o.id = "lookup-owners";
  out.append(o);
  drawRing();
}

async function stream() {
  const conn = $("conn");
  try {
    const r = await fetch("/v1/live?since=0", { headers: headers({ Accept: "text/event-stream" }) });
    if (r.status === 401) { conn.dataset.state = "lost"; conn.textContent = "token needed"; return; }
    if (!r.ok || !r.body) throw new Error("HTTP " + r.status);
    conn.dataset.state = "live"; conn.textContent = "live";
    $("events").replaceChildren();
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, cut); buf = buf.slice(cut + 2);
        const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
  } catch (e) {
    console.log("live stream:", e);
  }
  conn.dataset.state = "lost"; conn.textContent = "reconnecting";
  setTimeout(stream, 2000);
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  if (token) sessionStorage.setItem("sipmesh-token", token); else sessionStorage.removeItem("sipmesh-token");
  setMode();
  if ($("conn").textContent === "token needed") stream();
});
$("lookup-form").addEventListener("submit", (e) => { e.preventDefault(); const u = $("lookup").value.trim(); if (u) lookup(u); });
setMode();
stream();
