// WarrenMQ dashboard: talks to the management API with Basic credentials kept in
// sessionStorage. No external assets.
"use strict";

const $ = (s) => document.querySelector(s);
const enc = encodeURIComponent;
let creds = sessionStorage.getItem("warrenmq-auth");
let timer = null;
const history = []; // [{t, publish, deliver, ack}]
const SERIES = [["publish", "#2f7ed8"], ["deliver_get", "#8bbc21"], ["ack", "#910000"], ["redeliver", "#f28f43"]];

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Basic " + creds } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api" + path, opts);
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((data && data.reason) || r.statusText);
  return data;
}

function flash(msg, error) {
  const f = $("#flash");
  f.textContent = msg;
  f.className = error ? "error" : "";
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function button(td, label, fn) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", () => fn().catch((e) => flash(e.message, true)));
  td.appendChild(b);
}

function rate(stats, key) {
  return stats && stats[key + "_details"] ? stats[key + "_details"].rate : 0;
}

async function refreshOverview() {
  const o = await api("GET", "/overview");
  $("#total-ready").textContent = o.queue_totals.messages_ready;
  $("#total-unacked").textContent = o.queue_totals.messages_unacknowledged;
  $("#total-queues").textContent = o.object_totals.queues;
  $("#total-connections").textContent = o.object_totals.connections;
  $("#total-consumers").textContent = o.object_totals.consumers;
  $("#node").textContent = `${o.product_name} ${o.product_version} on ${o.node}`;
  const point = { t: Date.now() };
  for (const [k] of SERIES) point[k] = rate(o.message_stats, k);
  history.push(point);
  while (history.length > 120) history.shift();
  drawRates();
}

function drawRates() {
  const c = $("#rates");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(1, ...history.flatMap((p) => SERIES.map(([k]) => p[k])));
  g.strokeStyle = "#e2e6ea";
  g.fillStyle = "#6b7785";
  g.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = 10 + ((c.height - 20) * i) / 4;
    g.beginPath(); g.moveTo(40, y); g.lineTo(c.width, y); g.stroke();
    g.fillText((max * (1 - i / 4)).toFixed(1), 2, y + 4);
  }
  const x = (i) => 40 + ((c.width - 45) * i) / Math.max(1, 119);
  const y = (v) => 10 + (c.height - 20) * (1 - v / max);
  for (const [k, color] of SERIES) {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => (i ? g.lineTo(x(i), y(p[k])) : g.moveTo(x(i), y(p[k]))));
    g.stroke();
  }
  $("#legend").innerHTML = "";
  for (const [k, color] of SERIES) {
    const s = document.createElement("span");
    const last = history.length ? history[history.length - 1][k] : 0;
    s.textContent = `${k}: ${last.toFixed(1)}/s`;
    s.style.color = color;
    $("#legend").appendChild(s);
  }
}

async function refreshQueues() {
  const qs = await api("GET", "/queues?page=1&page_size=500");
  const tbody = $("#queues-table tbody");
  tbody.innerHTML = "";
  for (const q of qs.items) {
    const tr = document.createElement("tr");
    tr.dataset.vhost = q.vhost;
    tr.dataset.queue = q.name;
    cell(tr, q.vhost);
    cell(tr, q.name, "name");
    cell(tr, q.messages_ready, "num messages-ready");
    cell(tr, q.messages_unacknowledged, "num messages-unacked");
    cell(tr, q.messages, "num messages");
    cell(tr, q.consumers, "num consumers");
    cell(tr, rate(q.message_stats, "publish").toFixed(1), "num");
    cell(tr, rate(q.message_stats, "deliver_get").toFixed(1), "num");
    const path = `/queues/${enc(q.vhost)}/${enc(q.name)}`;
    const actions = cell(tr, "");
    button(actions, "Get", async () => {
      const msgs = await api("POST", path + "/get", { count: 5, ackmode: "ack_requeue_true", encoding: "auto" });
      $("#got").textContent = msgs.length
        ? msgs.map((m) => `${m.routing_key}: ${m.payload}`).join("\n")
        : `${q.name} is empty`;
    });
    button(actions, "Purge", async () => {
      await api("DELETE", path + "/contents");
      flash(`purged ${q.name}`);
      await refreshQueues();
    });
    button(actions, "Delete", async () => {
      if (!confirm(`Delete queue ${q.name}?`)) return;
      await api("DELETE", path);
      flash(`deleted ${q.name}`);
      await refreshQueues();
    });
    tbody.appendChild(tr);
  }
  if (qs.filtered_count > qs.items.length) {
    const tr = document.createElement("tr");
    cell(tr, `… ${qs.filtered_count - qs.items.length} more (use the API's page parameter)`);
    tbody.appendChild(tr);
  }
}

async function refreshExchanges() {
  const xs = await api("GET", "/exchanges?page=1&page_size=500");
  const tbody = $("#exchanges-table tbody");
  tbody.innerHTML = "";
  for (const x of xs.items) {
    const tr = document.createElement("tr");
    cell(tr, x.vhost);
    cell(tr, x.name || "(AMQP default)");
    cell(tr, x.type);
    cell(tr, x.durable ? "yes" : "no");
    cell(tr, x.internal ? "yes" : "no");
    tbody.appendChild(tr);
  }
}

async function refreshConnections() {
  const cs = await api("GET", "/connections");
  const tbody = $("#connections-table tbody");
  tbody.innerHTML = "";
  for (const c of cs) {
    const tr = document.createElement("tr");
    cell(tr, c.name);
    cell(tr, c.user);
    cell(tr, c.vhost);
    cell(tr, c.channels, "num");
    const props = c.client_properties || {};
    cell(tr, [props.product, props.version].filter(Boolean).join(" "));
    button(cell(tr, ""), "Close", async () => {
      await api("DELETE", `/connections/${enc(c.name)}`);
      flash(`closed ${c.name}`);
      await refreshConnections();
    });
    tbody.appendChild(tr);
  }
}

const REFRESH = { overview: refreshOverview, queues: refreshQueues, exchanges: refreshExchanges, connections: refreshConnections };

function currentTab() {
  const t = location.hash.slice(1);
  return REFRESH[t] ? t : "overview";
}

async function show() {
  const tab = currentTab();
  document.querySelectorAll(".tab").forEach((s) => (s.hidden = s.id !== tab));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  try {
    await REFRESH[tab]();
  } catch (e) {
    flash(e.message, true);
  }
}

function start(user) {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#tabs").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = user;
  show();
  clearInterval(timer);
  // The overview keeps sampling for its chart; the open tab is refreshed with it.
  timer = setInterval(async () => {
    if (currentTab() !== "overview") {
      try { await refreshOverview(); } catch (e) { /* shown on the next tab refresh */ }
    }
    show();
  }, 5000);
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  creds = btoa(`${$("#login-user").value}:${$("#login-pass").value}`);
  try {
    const me = await api("GET", "/whoami");
    sessionStorage.setItem("warrenmq-auth", creds);
    $("#login-error").textContent = "";
    start(me.name);
  } catch (e) {
    $("#login-error").textContent = e.message;
  }
});

$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem("warrenmq-auth");
  location.reload();
});

window.addEventListener("hashchange", show);

$("#declare-queue").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const vhost = $("#dq-vhost").value;
    const name = $("#dq-name").value;
    await api("PUT", `/queues/${enc(vhost)}/${enc(name)}`, { durable: $("#dq-durable").checked, auto_delete: false, arguments: {} });
    flash(`declared ${name}`);
    await refreshQueues();
  } catch (e) {
    flash(e.message, true);
  }
});

$("#publish").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const x = $("#pub-exchange").value || "amq.default";
    const r = await api("POST", `/exchanges/${enc($("#pub-vhost").value)}/${enc(x)}/publish`, {
      properties: {}, routing_key: $("#pub-key").value, payload: $("#pub-payload").value, payload_encoding: "string",
    });
    flash(r.routed ? "published (routed)" : "published, but no queue got it");
  } catch (e) {
    flash(e.message, true);
  }
});

if (creds) {
  api("GET", "/whoami").then((me) => start(me.name)).catch(() => sessionStorage.removeItem("warrenmq-auth"));
}
