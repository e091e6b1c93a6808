// tickmesh dashboard: history from /api/bars, live bars from /ws/bars, drawn with lightweight-charts v5.
// Bar times on the wire are epoch nanoseconds; the chart wants epoch seconds.
"use strict";

const CHART_URL = "/static/lightweight-charts.standalone.production.js";
const HISTORY_LIMIT = 2000;
const RECONNECT_MS = 2000;

const $ = (id) => document.getElementById(id);
const ui = {
  series: $("series"), timeframe: $("timeframe"), status: $("status"), live: $("live"),
  legend: $("legend"), chart: $("chart"),
};
const view = { venue: null, symbol: null, tf: null, lastTime: null, drawn: 0, ws: null, generation: 0 };
let chart = null, candles = null, volume = null;

function setStatus(text, state, bars) {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
  if (bars !== undefined) ui.status.dataset.bars = String(bars);
}

function toSeconds(ns) { return Math.floor(ns / 1e9); }

function candleOf(bar) {
  return { time: toSeconds(bar.start_ns), open: bar.open, high: bar.high, low: bar.low, close: bar.close };
}

function volumeOf(bar) {
  return { time: toSeconds(bar.start_ns), value: bar.volume,
           color: bar.close >= bar.open ? "rgba(38,166,154,.45)" : "rgba(239,83,80,.45)" };
}

// Enough decimals to show the price's movement: 2 for BTC at 60000, 6 for a coin at 0.0123.
function precisionFor(px) {
  if (!(px > 0)) return 2;
  return Math.min(10, Math.max(2, 4 - Math.floor(Math.log10(px))));
}

function fmt(x, digits) { return Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }); }

function showLegend(bar) {
  if (!bar) { ui.legend.innerHTML = ""; return; }
  const p = precisionFor(bar.close);
  const dir = bar.close >= bar.open ? "up" : "down";
  ui.legend.innerHTML =
    `<b>${view.symbol} · ${view.venue} · ${view.tf}</b>` +
    `O <span class="${dir}">${fmt(bar.open, p)}</span> H <span class="${dir}">${fmt(bar.high, p)}</span> ` +
    `L <span class="${dir}">${fmt(bar.low, p)}</span> C <span class="${dir}">${fmt(bar.close, p)}</span> ` +
    `V ${fmt(bar.volume, 4)}`;
}

async function chartLibraryError() {
  try {
    const resp = await fetch(CHART_URL);
    return resp.ok ? "chart library did not load" : await resp.text();
  } catch (err) {
    return `chart library did not load: ${err}`;
  }
}

function createChart() {
  const LC = window.LightweightCharts;
  chart = LC.createChart(ui.chart, {
    autoSize: true,
    layout: { background: { type: LC.ColorType.Solid, color: "#0f1419" }, textColor: "#9aa7b4",
              panes: { separatorColor: "#253040" } },
    grid: { vertLines: { color: "#1b232d" }, horzLines: { color: "#1b232d" } },
    rightPriceScale: { borderColor: "#253040" },
    timeScale: { borderColor: "#253040", timeVisible: true, secondsVisible: true },
    crosshair: { mode: LC.CrosshairMode.Normal },
  });
  candles = chart.addSeries(LC.CandlestickSeries, {
    upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
    wickUpColor: "#26a69a", wickDownColor: "#ef5350",
  });
  volume = chart.addSeries(LC.HistogramSeries, { priceFormat: { type: "volume" } }, 1);
  const panes = chart.panes();
  if (panes.length > 1) panes[1].setHeight(110);
  chart.subscribeCrosshairMove((param) => {
    const point = param.time !== undefined ? param.seriesData.get(candles) : null;
    if (point) showLegend({ ...point, volume: (param.seriesData.get(volume) || {}).value || 0 });
    else showLegend(view.lastBar);
  });
}

// A short timeframe by default, so a fresh mesh shows candles within seconds.
const DEFAULT_TIMEFRAME = "5s";
const SYMBOLS_RETRY_MS = 2000;

async function getJSON(url) {
  const resp = await fetch(url);
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.detail || `${url}: HTTP ${resp.status}`);
  return body;
}

async function loadSymbols() {
  const data = await getJSON("/api/symbols");
  const params = new URLSearchParams(location.search);
  const pairs = data.symbols.map((s) => [s.venue, s.symbol]);
  const wanted = [params.get("venue"), params.get("symbol")];
  if (wanted[0] && wanted[1] && !pairs.some(([v, s]) => v === wanted[0] && s === wanted[1])) pairs.unshift(wanted);
  ui.series.replaceChildren(...pairs.map(([v, s]) => new Option(`${s} · ${v}`, `${v}\u0000${s}`)));
  ui.timeframe.replaceChildren(...data.timeframes.map((tf) => new Option(tf, tf)));
  if (wanted[0] && wanted[1]) ui.series.value = `${wanted[0]}\u0000${wanted[1]}`;
  ui.timeframe.value = data.timeframes.includes(params.get("timeframe")) ? params.get("timeframe")
    : (data.timeframes.includes(DEFAULT_TIMEFRAME) ? DEFAULT_TIMEFRAME : data.timeframes[0]);
  return pairs.length;
}

function applyBar(bar) {
  const t = toSeconds(bar.start_ns);
  // The chart only accepts the newest bar or a replacement of it; older ones are in history already.
  if (view.lastTime !== null && t < view.lastTime) return;
  if (view.lastTime === null || t > view.lastTime) view.drawn += 1;
  candles.update(candleOf(bar));
  volume.update(volumeOf(bar));
  view.lastTime = t;
  view.lastBar = bar;
  showLegend(bar);
  setStatus(`${view.drawn} bars · last ${new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19)} UTC`,
            "ok", view.drawn);
}

async function show() {
  const [venue, symbol] = ui.series.value.split("\u0000");
  Object.assign(view, { venue, symbol, tf: ui.timeframe.value, lastTime: null, lastBar: null, drawn: 0 });
  const generation = ++view.generation;
  const pending = [];
  connect(generation, pending);  // before history, so no bar falls between the two
  setStatus(`loading ${symbol} ${view.tf}…`, "loading", 0);
  const q = new URLSearchParams({ venue, symbol, timeframe: view.tf, limit: HISTORY_LIMIT });
  let bars;
  try {
    bars = await getJSON(`/api/bars?${q}`);
  } catch (err) {
    setStatus(`could not load bars: ${err.message}`, "error", 0);
    return;
  }
  if (generation !== view.generation) return;
  const p = precisionFor(bars.length ? bars[bars.length - 1].close : 0);
  candles.applyOptions({ priceFormat: { type: "price", precision: p, minMove: 10 ** -p } });
  candles.setData(bars.map(candleOf));
  volume.setData(bars.map(volumeOf));
  view.drawn = bars.length;
  view.lastTime = bars.length ? toSeconds(bars[bars.length - 1].start_ns) : null;
  view.lastBar = bars[bars.length - 1] || null;
  showLegend(view.lastBar);
  chart.timeScale().fitContent();
  if (bars.length) setStatus(`${bars.length} bars drawn`, "ok", bars.length);
  else setStatus(`no ${view.tf} bars yet for ${symbol} on ${venue}; waiting for live ones`, "empty", 0);
  view.pending = null;
  pending.splice(0).forEach(applyBar);
}

function connect(generation, pending) {
  if (view.ws) { view.ws.onclose = null; view.ws.close(); }
  view.pending = pending;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ venue: view.venue, symbol: view.symbol, timeframe: view.tf });
  const ws = new WebSocket(`${proto}//${location.host}/ws/bars?${q}`);
  view.ws = ws;
  ui.live.dataset.state = "connecting";
  ui.live.textContent = "connecting";
  ws.onopen = () => { ui.live.dataset.state = "open"; ui.live.textContent = "live"; };
  ws.onmessage = (event) => {
    const bar = JSON.parse(event.data);
    if (view.pending) view.pending.push(bar); else applyBar(bar);
  };
  ws.onclose = (event) => {
    if (generation !== view.generation) return;
    ui.live.dataset.state = "closed";
    ui.live.textContent = event.reason ? `offline: ${event.reason}` : "offline";
    // Reload history on reconnect: bars published while away are in the store, not on the socket.
    setTimeout(() => { if (generation === view.generation) show(); }, RECONNECT_MS);
  };
}

async function main() {
  if (!window.LightweightCharts) {
    setStatus(await chartLibraryError(), "error", 0);
    return;
  }
  createChart();
  let count;
  try {
    count = await loadSymbols();
  } catch (err) {
    setStatus(`could not load symbols: ${err.message}`, "error", 0);
    return;
  }
  // Right after `tickmesh up` the sink may not have stored a trade yet: keep asking.
  while (!count) {
    setStatus("no symbols stored yet: waiting for the first trades (is a collector running?)", "empty", 0);
    await new Promise((resolve) => setTimeout(resolve, SYMBOLS_RETRY_MS));
    count = await loadSymbols().catch(() => 0);
  }
  ui.series.onchange = ui.timeframe.onchange = () => show();
  await show();
}

main();
