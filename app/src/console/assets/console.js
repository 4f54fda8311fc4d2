// The xoflow console: polls /console/api/stages every 2 s and
// /console/api/cx every 30 s, and fills the tables. No framework, no
// build step: this file is embedded in the binary as it is.
"use strict";

const STAGES_EVERY_MS = 2000;
const CX_EVERY_MS = 30000;
// Freshness quantiles over the events stored in about this window.
const FRESHNESS_WINDOW_MS = 60000;

const history = []; // stage answers, oldest first, at most ~2 windows
let polls = 0;

const dash = "\u2013";
const int = (v) => (v === null || v === undefined ? dash : Math.round(v).toLocaleString("en-US"));
const fixed = (v, d) => (v === null || v === undefined ? dash : v.toFixed(d));

function age(seconds) {
  if (seconds === null || !isFinite(seconds)) return dash;
  if (seconds < 1) return Math.round(seconds * 1000) + " ms";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function cell(text, cls, field) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (field) td.dataset.field = field;
  return td;
}

function fill(tableId, rows, columns, emptyText) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(emptyText);
    td.colSpan = columns;
    tr.appendChild(td);
    body.appendChild(tr);
    return;
  }
  for (const r of rows) body.appendChild(r);
}

// The value of `field` of `stage` in an earlier answer.
function earlier(view, stage, field) {
  const s = view.stages.find((x) => x.stage === stage);
  return s ? s[field] : null;
}

function rate(now, before, stage, field) {
  if (!before) return null;
  const a = earlier(now, stage, field);
  const b = earlier(before, stage, field);
  const dt = (now.at_ms - before.at_ms) / 1000;
  if (a === null || b === null || dt <= 0) return null;
  return Math.max(0, a - b) / dt;
}

// histogram_quantile over cumulative buckets [[le, count], ...].
function quantile(q, buckets) {
  if (buckets.length === 0) return null;
  const total = buckets[buckets.length - 1][1];
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === null || !isFinite(le)) return prevLe; // in +Inf: the last bound
      if (count === prevCount) return le;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / (count - prevCount);
    }
    prevLe = le === null ? prevLe : le;
    prevCount = count;
  }
  return prevLe;
}

function delta(now, before) {
  if (!before) return now.buckets;
  return now.buckets.map(([le, c], i) => [le, c - ((before.buckets[i] || [le, 0])[1])]);
}

function renderStages(view) {
  const before = history.length > 1 ? history[history.length - 2] : null;
  const rows = view.stages.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.stage = s.stage;
    tr.appendChild(cell(s.stage));
    const state = cell(s.ready ? "ready" : "not ready", s.ready ? "ok" : "bad", "state");
    if (!s.ready) state.title = s.not_ready.join(", ");
    tr.appendChild(state);
    tr.appendChild(cell(int(rate(view, before, s.stage, "records_in")), "num", "in_rate"));
    tr.appendChild(cell(int(rate(view, before, s.stage, "records_out")), "num", "out_rate"));
    tr.appendChild(cell(int(s.records_in), "num", "records_in"));
    tr.appendChild(cell(int(s.records_out), "num", "records_out"));
    const lagCls = s.consumer_lag > 0 ? "num warn" : "num";
    tr.appendChild(cell(int(s.consumer_lag), lagCls, "consumer_lag"));
    tr.appendChild(cell(int(s.dead_letters), "num", "dead_letters"));
    tr.appendChild(cell(int(s.producer_queue), "num", "producer_queue"));
    return tr;
  });
  fill("stages", rows, 9, "no stage reports yet");
  const down = view.targets.filter((t) => !t.up).map((t) => t.target);
  document.getElementById("targets").textContent =
    "metrics from: " + view.targets.map((t) => t.target).join(", ") +
    (down.length ? " \u2014 not answering: " + down.join(", ") : "");

  const lagRows = view.lag
    .filter((l) => l.lag > 0)
    .sort((a, b) => b.lag - a.lag)
    .slice(0, 12)
    .map((l) => {
      const tr = document.createElement("tr");
      tr.appendChild(cell(l.stage));
      tr.appendChild(cell(l.topic));
      tr.appendChild(cell(l.partition, "num"));
      tr.appendChild(cell(int(l.lag), "num warn"));
      return tr;
    });
  fill("lag", lagRows, 4, view.lag.length ? "every partition is caught up" : "no consuming stage reports");

  // The oldest answer still inside the window.
  const base = history.find((h) => view.at_ms - h.at_ms <= FRESHNESS_WINDOW_MS && h !== view);
  const fresh = ["received", "occurred"].map((which) => {
    const now = view.freshness[which];
    const tr = document.createElement("tr");
    tr.dataset.freshness = which;
    tr.appendChild(cell(which + " \u2192 stored"));
    if (!now) {
      tr.appendChild(cell(dash, "num", "events"));
      for (let i = 0; i < 3; i++) tr.appendChild(cell(dash, "num"));
      return tr;
    }
    let b = delta(now, base ? base.freshness[which] : null);
    let n = b.length ? b[b.length - 1][1] : 0;
    if (n === 0) {
      // Nothing stored in the window: the figures since the start.
      b = now.buckets;
      n = b.length ? b[b.length - 1][1] : 0;
      tr.firstChild.textContent += " (since start)";
    }
    tr.appendChild(cell(int(n), "num", "events"));
    for (const q of [0.5, 0.9, 0.99]) tr.appendChild(cell(n > 0 ? age(quantile(q, b)) : dash, "num"));
    return tr;
  });
  fill("freshness", fresh, 5, "");

  const raised = view.alerts_raised;
  const delivered = view.deliveries.delivered;
  document.getElementById("alert-flow").textContent =
    raised === null && delivered === undefined
      ? ""
      : "raised " + int(raised) + ", webhook deliveries " + int(delivered === undefined ? null : delivered) +
        (view.deliveries.dead ? ", undeliverable " + int(view.deliveries.dead) : "");
}

async function pollStages() {
  try {
    const r = await fetch("/console/api/stages", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const view = await r.json();
    history.push(view);
    while (history.length > 2 && view.at_ms - history[0].at_ms > 2 * FRESHNESS_WINDOW_MS) history.shift();
    renderStages(view);
    polls += 1;
    const updated = document.getElementById("updated");
    updated.dataset.polls = String(polls);
    updated.textContent = "updated " + new Date(view.at_ms).toLocaleTimeString("en-GB");
    document.getElementById("status").textContent = "live";
  } catch (e) {
    document.getElementById("status").textContent = "metrics unavailable (" + e.message + "), retrying";
  }
}

function renderCx(cx) {
  document.getElementById("cx-window").textContent = "last " + cx.days + " days, per touchpoint";
  document.getElementById("stores-window").textContent =
    "last " + cx.days + " days, stores with " + cx.min_store_responses + "+ NPS answers";
  document.getElementById("dl-window").textContent = "last " + cx.days + " days, by reason";

  fill("cx-touchpoints", cx.touchpoints.map((t) => {
    const tr = document.createElement("tr");
    tr.dataset.tenant = t.tenant;
    tr.dataset.touchpoint = t.touchpoint;
    tr.appendChild(cell(t.tenant));
    tr.appendChild(cell(t.journey));
    tr.appendChild(cell(t.touchpoint, null, "touchpoint"));
    const nps = cell(fixed(t.nps, 1), "num", "nps");
    if (t.nps !== null) nps.className = "num " + (t.nps < 0 ? "bad" : t.nps >= 30 ? "ok" : "");
    tr.appendChild(nps);
    tr.appendChild(cell(int(t.nps_responses), "num", "nps_responses"));
    tr.appendChild(cell(fixed(t.csat_pct, 1), "num", "csat_pct"));
    tr.appendChild(cell(int(t.csat_n), "num", "csat_n"));
    tr.appendChild(cell(fixed(t.ces_mean, 2), "num", "ces_mean"));
    tr.appendChild(cell(int(t.ces_n), "num", "ces_n"));
    return tr;
  }), 9, "no answers stored in the window");

  fill("cx-stores", cx.worst_stores.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.tenant = s.tenant;
    tr.dataset.touchpoint = s.touchpoint;
    tr.appendChild(cell(s.tenant));
    tr.appendChild(cell(s.touchpoint));
    tr.appendChild(cell(s.worst[1], null, "worst_store"));
    tr.appendChild(cell(fixed(s.worst[0], 1), "num " + (s.worst[0] < 0 ? "bad" : ""), "worst_nps"));
    tr.appendChild(cell(int(s.worst[2]), "num", "worst_responses"));
    tr.appendChild(cell(s.best[1], null, "best_store"));
    tr.appendChild(cell(fixed(s.best[0], 1), "num", "best_nps"));
    tr.appendChild(cell(int(s.stores), "num", "stores"));
    return tr;
  }), 8, "no store has enough answers in the window");

  const now = Date.now() / 1000;
  fill("open-alerts", cx.open_alerts.map((a) => {
    const tr = document.createElement("tr");
    tr.dataset.tenant = a.tenant;
    tr.dataset.department = a.department;
    tr.appendChild(cell(a.tenant));
    tr.appendChild(cell(a.department));
    tr.appendChild(cell(int(a.open), "num", "open"));
    tr.appendChild(cell(int(a.acknowledged), "num", "acknowledged"));
    tr.appendChild(cell(age(Math.max(0, now - a.oldest)), "num"));
    return tr;
  }), 5, "no open alert");

  fill("dead-letters", cx.dead_letters.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.stage = d.stage;
    tr.dataset.reason = d.reason;
    tr.appendChild(cell(d.stage));
    tr.appendChild(cell(d.reason));
    tr.appendChild(cell(int(d.records), "num", "records"));
    const [field, description] = d.example;
    // Descriptions usually name their field already.
    const example = !field || description.includes(field) ? description : field + ": " + description;
    tr.appendChild(cell(example, "example", "example"));
    return tr;
  }), 4, "no dead letter in the window");
  document.getElementById("cx-status").textContent = "read from ClickHouse at " + new Date().toLocaleTimeString("en-GB");
  document.body.dataset.cxLoaded = "true";
}

async function pollCx() {
  try {
    const r = await fetch("/console/api/cx", { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || "HTTP " + r.status);
    renderCx(body);
  } catch (e) {
    document.getElementById("cx-status").textContent = "ClickHouse unavailable (" + e.message + "), retrying";
  }
}

pollStages();
pollCx();
setInterval(pollStages, STAGES_EVERY_MS);
setInterval(pollCx, CX_EVERY_MS);
