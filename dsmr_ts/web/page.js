// dsmr-ts energy page: reads /web/data/* (same origin only), draws its own SVG charts.
"use strict";

const state = { meter: "", zone: "UTC", liveTimer: null, summaryTimer: null };
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

class NeedsKey extends Error {}

async function data(path, params = {}) {
  const query = new URLSearchParams({ ...params, meter: state.meter });
  const response = await fetch(`/web/data/${path}?${query}`, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 403) throw new NeedsKey();
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// --- formatting -----------------------------------------------------------------------------------

const watts = (w) => `${Number(w).toLocaleString("en-US")} W`;
const kwh = (v) => (v == null ? "–" : `${v} kWh`);
const m3 = (v) => (v == null ? "–" : `${v} m³`);
const euro = (v) => (v == null ? "–" : `€ ${v}`);
function local(iso, options) {
  return new Intl.DateTimeFormat("en-GB", { timeZone: state.zone, ...options }).format(new Date(iso));
}
const clock = (iso) => local(iso, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const when = (iso) => local(iso, { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" });
function todayLocal() {
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone: state.zone, year: "numeric", month: "2-digit", day: "2-digit" })
    .format(new Date());
  return parts; // YYYY-MM-DD
}
function minuteOfDay(unix) {
  const [h, m] = local(unix * 1000, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).split(":").map(Number);
  return h * 60 + m;
}

// --- live -------------------------------------------------------------------------------------------

async function refreshLive() {
  const live = await data("live");
  const fresh = $("freshness");
  if (!live.timestamp) {
    fresh.textContent = "no readings yet";
    fresh.classList.add("stale");
    return;
  }
  fresh.textContent = live.stale ? `stale: last reading ${when(live.timestamp)}` : `as of ${clock(live.timestamp)}`;
  fresh.classList.toggle("stale", live.stale);
  $("delivered").textContent = watts(live.delivered);
  $("returned").textContent = watts(live.returned);
  $("cost-hour").textContent = euro(live.cost_per_hour);
  $("price-figure").hidden = live.price == null; // a dynamic contract's all-in price
  $("price").textContent = live.price == null ? "–" : `€ ${Number(live.price).toFixed(3)}`;
  $("tariff").textContent = live.tariff || "–";
  $("quarter").textContent = live.quarter_average == null ? "–" : `${live.quarter_average} kW`;
  $("peak").textContent = live.month_peak ? `${live.month_peak.average} kW` : "–";
  if (live.capacity_cost != null) $("peak").textContent += ` (${euro(live.capacity_cost)} this month)`;
  $("peak").title = live.month_peak ? `from ${when(live.month_peak.start)}` : "";
  const phases = $("phases");
  const rows = [1, 2, 3].filter((n) => `delivered_l${n}` in live.phases || `returned_l${n}` in live.phases);
  phases.hidden = rows.length === 0;
  phases.tBodies[0].replaceChildren(...rows.map((n) => row([`L${n}`,
    live.phases[`delivered_l${n}`] == null ? "–" : watts(live.phases[`delivered_l${n}`]),
    live.phases[`returned_l${n}`] == null ? "–" : watts(live.phases[`returned_l${n}`])])));
}

function row(cells, header = true) {
  const tr = document.createElement("tr");
  cells.forEach((text, index) => {
    const cell = document.createElement(index === 0 && header ? "th" : "td");
    if (index === 0 && header) cell.scope = "row";
    cell.textContent = text;
    tr.append(cell);
  });
  return tr;
}

// --- today, yesterday, month, year ------------------------------------------------------------------

const TOTALS = [
  ["Electricity low", "electricity1", kwh], ["Electricity normal", "electricity2", kwh],
  ["Returned low", "electricity1_returned", kwh], ["Returned normal", "electricity2_returned", kwh],
  ["Gas", "gas", m3], ["Cost", "total_cost", euro],
];

async function refreshSummary() {
  const summary = await data("summary");
  const columns = [summary.today, summary.yesterday, summary.month, summary.year];
  const rows = TOTALS.map(([label, name, show]) => row([label, ...columns.map((c) => (c ? show(c[name]) : "–"))]));
  if (summary.water_today != null) rows.splice(5, 0, row(["Water", m3(summary.water_today), "–", "–", "–"]));
  $("totals").tBodies[0].replaceChildren(...rows);
  $("problems").replaceChildren(...summary.problems.map((p) => {
    const li = document.createElement("li");
    li.textContent = `${p.description}${p.since ? ` (since ${when(p.since)})` : ""}`;
    return li;
  }));
}

// --- charts -------------------------------------------------------------------------------------------

function node(name, attributes = {}, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text != null) element.textContent = text;
  return element;
}

const H = 260, LEFT = 48, BOTTOM = 22, TOP = 8;
let W = 800;

// A chart is drawn in its own pixels (its viewBox is its width), so that its text keeps its size and
// shape at any width instead of being squeezed on a phone; a changed window width redraws them.
function fit(svg) {
  W = Math.max(280, Math.round(svg.getBoundingClientRect().width) || 800);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
}

function frame(svg, max, unit, labels) {
  svg.replaceChildren();
  const top = niceMax(max);
  for (let i = 0; i <= 4; i++) {
    const y = TOP + (H - TOP - BOTTOM) * (1 - i / 4);
    svg.append(node("line", { x1: LEFT, x2: W, y1: y, y2: y, class: "grid" }));
    svg.append(node("text", { x: LEFT - 6, y: y + 4, "text-anchor": "end" }, `${+(top * i / 4).toFixed(2)}`));
  }
  svg.append(node("text", { x: 2, y: TOP + 10 }, unit));
  labels.forEach(([x, text]) => svg.append(node("text", { x, y: H - 6, "text-anchor": x >= W - 20 ? "end" : "middle" }, text)));
  return (value) => TOP + (H - TOP - BOTTOM) * (1 - value / top);
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  return Math.ceil(value / step) * step;
}

function drawPower(result) {
  const svg = $("power-chart");
  fit(svg);
  const minutes = result.minutes;
  const max = Math.max(0.1, ...minutes.map(([, d, r]) => Math.max(d, r)));
  const x = (minute) => LEFT + (W - LEFT) * minute / 1440;
  const y = frame(svg, max, "kW", [0, 6, 12, 18, 24].map((h) => [x(h * 60), `${String(h).padStart(2, "0")}:00`]));
  for (const [name, index] of [["use", 1], ["ret", 2]]) {
    const points = minutes.map((m) => `${x(minuteOfDay(m[0])).toFixed(1)},${y(m[index]).toFixed(1)}`);
    if (points.length) svg.append(node("polyline", { points: points.join(" "), class: `line ${name}` }));
  }
  const peak = minutes.reduce((best, m) => (m[1] > best[1] ? m : best), [0, 0, 0]);
  $("power-summary").textContent = minutes.length
    ? `${minutes.length} minutes with readings on ${result.day}; highest use ${peak[1]} kW at ${local(peak[0] * 1000, { hour: "2-digit", minute: "2-digit" })}.`
    : `No readings on ${result.day}.`;
}

// Bars of used (and returned) kWh, one slot per possible item (the days of a month, 12 months), so
// a month's first days do not fill the width.
function drawBars(svg, items, slots, position, label, title) {
  fit(svg);
  const max = Math.max(0.001, ...items.map((i) => Math.max(i.used, i.returned)));
  const slot = (W - LEFT) / slots;
  const labels = [...Array(slots).keys()]
    .filter((index) => (slots <= 12 ? slot >= 24 || index % 2 === 0 : index % 5 === 0 || index === slots - 1))
    .map((index) => [LEFT + slot * (index + 0.5), label(index)]);
  const y = frame(svg, max, "kWh", labels);
  items.forEach((item) => {
    const x = LEFT + slot * position(item);
    const width = Math.max(1, slot / 2 - 2);
    const group = node("g", { "data-key": item.key, "data-used": item.used.toFixed(3), "data-cost": item.cost ?? "" });
    group.append(node("title", {}, title(item)));
    group.append(node("rect", { x: x + 1, y: y(item.used), width, height: y(0) - y(item.used), class: "use" }));
    group.append(node("rect", { x: x + 1 + width, y: y(item.returned), width, height: y(0) - y(item.returned), class: "ret" }));
    svg.append(group);
  });
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function usage(entry) {
  return {
    used: Number(entry.electricity1) + Number(entry.electricity2),
    returned: Number(entry.electricity1_returned) + Number(entry.electricity2_returned),
    cost: entry.total_cost,
  };
}

function describe(item, key) {
  return `${key}: ${item.used.toFixed(3)} kWh used, ${item.returned.toFixed(3)} kWh returned, ${euro(item.cost)}`;
}

async function loadPower() {
  drawPower(await data("power", { day: $("power-day").value || todayLocal() }));
}

async function loadDays() {
  const month = $("days-month").value || todayLocal().slice(0, 7);
  const result = await data("days", { month });
  const items = result.days.map((d) => ({ key: d.day, ...usage(d) }));
  const [y, m] = month.split("-").map(Number);
  const length = new Date(Date.UTC(y, m, 0)).getUTCDate();
  drawBars($("days-chart"), items, length, (item) => Number(item.key.slice(8)) - 1, (index) => String(index + 1),
    (item) => describe(item, item.key));
  const used = items.reduce((sum, i) => sum + i.used, 0);
  $("days-summary").textContent = `${plural(items.length, "day")} in ${month}: ${used.toFixed(3)} kWh used.`;
}

async function loadMonths() {
  const year = $("months-year").value || todayLocal().slice(0, 4);
  const result = await data("months", { year });
  const items = result.months.map((m) => ({ key: m.month, ...usage(m) }));
  const names = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  drawBars($("months-chart"), items, 12, (item) => Number(item.key.slice(5)) - 1, (index) => names[index],
    (item) => describe(item, item.key));
  const used = items.reduce((sum, i) => sum + i.used, 0);
  $("months-summary").textContent = `${plural(items.length, "month")} in ${year}: ${used.toFixed(3)} kWh used.`;
}

async function loadPeaks() {
  const month = $("days-month").value || todayLocal().slice(0, 7);
  const result = await data("peaks", { month });
  const svg = $("peaks-chart");
  fit(svg);
  const quarters = result.quarters;
  const max = Math.max(0.1, ...quarters.map((q) => q[1]));
  const first = quarters.length ? quarters[0][0] : 0;
  const span = quarters.length ? Math.max(900, quarters[quarters.length - 1][0] - first) : 1;
  const x = (t) => LEFT + (W - LEFT) * (t - first) / span;
  const y = frame(svg, max, "kW", []);
  const highest = quarters.reduce((best, q) => (q[1] > best[1] ? q : best), [0, -1]);
  quarters.forEach((q) => svg.append(node("line", {
    x1: x(q[0]), x2: x(q[0]), y1: y(0), y2: y(q[1]), class: q === highest ? "use line" : "gas line",
  })));
  $("peaks-summary").textContent = quarters.length
    ? `Highest quarter hour in ${month}: ${highest[1].toFixed(3)} kW, from ${when(highest[0] * 1000)}.`
    : `No quarter hours in ${month} yet.`;
}

// --- start ----------------------------------------------------------------------------------------------

async function guarded(task) {
  try {
    await task();
  } catch (error) {
    if (error instanceof NeedsKey) return askForKey();
    console.warn(error.message);
  }
}

function askForKey() {
  clearInterval(state.liveTimer);
  clearInterval(state.summaryTimer);
  $("content").hidden = true;
  $("login").hidden = false;
  $("key").focus();
}

async function login(event) {
  event.preventDefault();
  const body = new URLSearchParams({ key: $("key").value });
  const response = await fetch("/web/login", { method: "POST", body, credentials: "same-origin" });
  $("key").value = "";
  if (response.status !== 204) {
    $("login-error").textContent = response.status === 429 ? "Too many wrong keys; wait a minute." : "That is not the key.";
    return;
  }
  $("login").hidden = true;
  $("content").hidden = false;
  start();
}

async function start() {
  const meters = await data("meters");
  state.zone = meters.timezone;
  state.meter = state.meter || meters.default;
  $("zone").textContent = meters.timezone;
  $("meter").replaceChildren(...meters.meters.map((m) => new Option(m, m, false, m === state.meter)));
  $("power-day").value = $("power-day").value || todayLocal();
  $("days-month").value = $("days-month").value || todayLocal().slice(0, 7);
  $("months-year").value = $("months-year").value || todayLocal().slice(0, 4);
  await Promise.all([refreshLive(), refreshSummary(), loadPower(), loadDays(), loadMonths(), loadPeaks()]);
  clearInterval(state.liveTimer);
  clearInterval(state.summaryTimer);
  state.liveTimer = setInterval(() => guarded(refreshLive), 5000);
  state.summaryTimer = setInterval(() => guarded(refreshSummary), 60000);
  document.body.dataset.ready = "true";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("meter").addEventListener("change", () => { state.meter = $("meter").value; guarded(start); });
  $("power-day").addEventListener("change", () => guarded(loadPower));
  $("days-month").addEventListener("change", () => guarded(() => Promise.all([loadDays(), loadPeaks()])));
  $("months-year").addEventListener("change", () => guarded(loadMonths));
  let width = window.innerWidth, redraw = null;
  window.addEventListener("resize", () => {
    clearTimeout(redraw);
    redraw = setTimeout(() => {
      if (window.innerWidth === width || document.body.dataset.ready !== "true") return;
      width = window.innerWidth;
      guarded(() => Promise.all([loadPower(), loadDays(), loadMonths(), loadPeaks()]));
    }, 250);
  });
  guarded(start);
});
