// gridchain dashboard: read-only views of one node, live through /events. No framework, no build step.
//
// Loaded in the page's head, before the stylesheets, with uPlot deferred: its first lines ask for
// the day's readings of the node's first relay, so the data is on its way while the rest of the
// page loads (the panels' requests wait until the plots are made). The plots are made once, all in
// one task and with their data, when the document, uPlot and the readings are all there.
"use strict";

(function () {
  const PLOTS = [  // one chart per quantity; series are /api/readings column names
    { title: "Voltage (kV)", series: [["vab", "Vab", "#d1495b"], ["vbc", "Vbc", "#edae49"], ["vca", "Vca", "#00798c"]], digits: 2 },
    { title: "Current (A)", series: [["ia", "Ia", "#d1495b"], ["ib", "Ib", "#edae49"], ["ic", "Ic", "#00798c"]], digits: 1 },
    { title: "Frequency (Hz)", series: [["frequency", "f", "#30638e"]], digits: 3 },
    { title: "Power factor", series: [["power_factor", "PF", "#6a4c93"]], digits: 3 },
    { title: "Active power P (MW)", series: [["active_power", "P", "#2a9d8f"]], digits: 2 },
    { title: "Reactive power Q (MVAr)", series: [["reactive_power", "Q", "#e76f51"]], digits: 2 },
  ];
  const BLOCK_ROWS = 20;
  const STATUS_POLL_MS = 10000;
  const PLOT_HEIGHT = 150;  // app.css .plot .slot reserves this (and the legend) before a plot exists
  const DEFAULT_SPAN = 86400000;  // "Last day", the button index.html marks active
  const PANELS_WAIT_MS = 150;  // the tables wait this long at most for the plots to be made first

  const state = { relay: null, span: DEFAULT_SPAN, custom: null, data: null, openings: [], alerts: new Map(),
                  finalized: null, height: null, zoomed: false, loading: null };
  // Milliseconds since navigation start: "drawn" is the gridchain.plots-drawn performance mark (every
  // plot has drawn the readings), "made" the plots constructed, "plots" when each first drew them.
  const timings = { script: performance.now(), dom: null, readings: null, made: null, plots: [], drawn: null,
                    painted: null };
  const charts = [];
  window.gridchain = { charts, state, timings };

  // Opened from another host as /?token=<read token>: every request the page makes carries it.
  const TOKEN = new URLSearchParams(location.search).get("token");
  const withToken = (url) => TOKEN ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}` : url;

  // /api/readings?format=f64: one line of JSON, then each column as little-endian float64 (8-byte aligned).
  async function getReadings(url) {
    const answer = await fetch(withToken(`${url}&format=f64`), { cache: "no-store" });
    if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
    const buffer = await answer.arrayBuffer();
    const bytes = new Uint8Array(buffer);
    const end = bytes.indexOf(10);
    const meta = JSON.parse(new TextDecoder().decode(bytes.subarray(0, end)));
    const columns = {};
    let offset = end + 1;
    for (const name of meta.columns) { columns[name] = new Float64Array(buffer, offset, meta.count); offset += meta.count * 8; }
    meta.columns = columns;
    return meta;
  }
  async function getJSON(url) {
    const answer = await fetch(withToken(url), { cache: "no-store" });
    if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
    return answer.json();
  }
  const quiet = (promise) => { promise.catch(() => {}); return promise; };  // awaited (and reported) later

  // --- the first request: sent now, in the head, before the stylesheets and uPlot load -----------
  // Without relay= the node answers for its first relay (the one /api/relays lists first).
  const firstReadings = quiet(getReadings(`/api/readings?span=${DEFAULT_SPAN}`));
  const documentReady = document.readyState === "loading"
    ? new Promise((resolve) => document.addEventListener("DOMContentLoaded", resolve, { once: true }))
    : Promise.resolve();  // deferred scripts (uPlot) have run by DOMContentLoaded

  const $ = (id) => document.getElementById(id);
  const fmtTime = (ms) => ms == null ? "-" : new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  const fmtSpan = (s) => {
    if (s < 120) return `${s.toFixed(0)} s`;
    if (s < 7200) return `${(s / 60).toFixed(0)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} days`;
  };
  const ago = (ms) => ms == null ? "-" : `${fmtSpan(Math.max(0, (Date.now() - ms) / 1000))} ago`;
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c == null ? "" : c);
    return node;
  };
  function concat(a, b) { const out = new Float64Array(a.length + b.length); out.set(a); out.set(b, a.length); return out; }

  // --- plots -------------------------------------------------------------------------------
  function openingsPlugin() {  // a red dashed line where the breaker openings counter rose
    return { hooks: { draw: [(u) => {
      if (!state.openings.length) return;
      const ctx = u.ctx, top = u.bbox.top, bottom = u.bbox.top + u.bbox.height;
      ctx.save();
      ctx.strokeStyle = "#b91c1c"; ctx.lineWidth = 1.5 * devicePixelRatio; ctx.setLineDash([5 * devicePixelRatio, 3 * devicePixelRatio]);
      for (const mark of state.openings) {
        const x = Math.round(u.valToPos(mark.t / 1000, "x", true));
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke();
      }
      ctx.restore();
    }] } };
  }

  let syncing = false;
  function syncZoom(u, key) {  // all plots share the x range the operator dragged out
    if (key !== "x" || syncing) return;
    syncing = true;
    const { min, max } = u.scales.x;
    const full = state.data && state.data.t.length ? [state.data.t[0] / 1000, state.data.t[state.data.t.length - 1] / 1000] : null;
    state.zoomed = !!full && (min > full[0] + 1e-6 || max < full[1] - 1e-6);
    for (const other of charts) {  // a plot already on this range is left alone: no second draw of it
      if (other !== u && (other.scales.x.min !== min || other.scales.x.max !== max)) other.setScale("x", { min, max });
    }
    syncing = false;
  }

  const drew = new Set();
  function onDraw(u) {  // the first time every plot has drawn the readings: the page is up
    if (timings.drawn != null || !state.data || drew.has(u)) return;
    drew.add(u);
    timings.plots.push(performance.now());
    if (drew.size < PLOTS.length) return;
    timings.drawn = performance.mark("gridchain.plots-drawn").startTime;
    document.body.dataset.drawn = "1";
    requestAnimationFrame(() => setTimeout(() => { timings.painted = performance.now(); }, 0));
  }

  // A day is ~9 readings per pixel column: each column is drawn as its first, highest, lowest and
  // last value (as uPlot's own linear paths do past 4 points a pixel), in plain loops over the
  // Float64Arrays; uPlot's general path code takes several times as long on a freshly loaded page.
  // Where each column starts is the same for every series of every plot (one time array, one
  // width), so it is worked out once for all ten.
  let columnsMemo = null;
  function pixelColumns(xs, i0, i1, x0, kx, left) {
    const m = columnsMemo;
    if (m && m.xs === xs && m.i0 === i0 && m.i1 === i1 && m.x0 === x0 && m.kx === kx && m.left === left) return m;
    const starts = [], pxs = [];
    let col = NaN;
    for (let i = i0; i <= i1; i++) {
      const px = Math.round(left + (xs[i] - x0) * kx);
      if (px !== col) { starts.push(i); pxs.push(px); col = px; }
    }
    starts.push(i1 + 1);
    return (columnsMemo = { xs, i0, i1, x0, kx, left, starts, pxs });
  }

  function columnPaths(u, seriesIdx, i0, i1) {
    const xs = u.data[0], ys = u.data[seriesIdx];
    const sx = u.scales.x, sy = u.scales[u.series[seriesIdx].scale];
    const { left, top, width, height } = u.bbox;
    const path = new Path2D();
    const answer = { stroke: path, fill: null, clip: null, band: null, gaps: null, flags: 1 };
    if (!(i1 >= i0) || !(sx.max > sx.min)) return answer;
    const { starts, pxs } = pixelColumns(xs, i0, i1, sx.min, width / (sx.max - sx.min), left);
    const flat = !(sy.max > sy.min);  // one value throughout: a line across the middle
    const ky = flat ? 0 : height / (sy.max - sy.min), y1 = flat ? 0 : sy.max, mid = flat ? top + height / 2 : top;
    let started = false;
    for (let c = 0; c < pxs.length; c++) {
      let first = NaN, last = NaN, lo = Infinity, hi = -Infinity;
      for (let i = starts[c], end = starts[c + 1]; i < end; i++) {
        const v = ys[i];
        if (v == null || v !== v) continue;  // no reading (NaN)
        if (first !== first) first = v;
        last = v;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (first !== first) continue;
      const x = pxs[c];
      const yFirst = Math.round(mid + (y1 - first) * ky);
      if (started) path.lineTo(x, yFirst); else { path.moveTo(x, yFirst); started = true; }
      if (hi > lo) { path.lineTo(x, Math.round(mid + (y1 - hi) * ky)); path.lineTo(x, Math.round(mid + (y1 - lo) * ky)); }
      path.lineTo(x, Math.round(mid + (y1 - last) * ky));
    }
    return answer;
  }

  function chartOptions(spec, width) {
    return {
      width, height: PLOT_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: { drag: { x: true, y: false }, sync: { key: "gridchain" } },
      scales: { x: { time: true } },
      legend: { live: true },
      series: [{ label: "time (UTC)", value: (u, v) => v == null ? "-" : fmtTime(v * 1000) },
               // 1 px: a hairline to the canvas rasteriser, several times cheaper than 1.25 on a day's zig-zag
               ...spec.series.map(([, label, stroke]) => ({ label, stroke, width: 1, paths: columnPaths,
                 value: (u, v) => v == null ? "-" : v.toFixed(spec.digits) }))],
      axes: [{}, { size: 60 }],
      plugins: [openingsPlugin()],
      hooks: { setScale: [syncZoom], draw: [onDraw] },
    };
  }

  const slots = [];
  function makeSlots() {  // titles and fixed-size places for the plots, laid out before any data
    const box = $("plots");
    for (const spec of PLOTS) {
      const slot = el("div", { class: "slot" });
      box.append(el("div", { class: "plot" }, el("h3", {}, spec.title), slot));
      slots.push(slot);
    }
  }

  function makeCharts() {  // every plot at once, with its data: one layout, one draw each
    const width = Math.max(320, $("plots").clientWidth);
    const sets = plotData(state.data);
    PLOTS.forEach((spec, i) => charts.push(new uPlot(chartOptions(spec, width), sets[i], slots[i])));
    timings.made = performance.now();
  }

  function plotData(columns) {
    const xs = columns.t.map((t) => t / 1000);
    return PLOTS.map((spec) => [xs, ...spec.series.map(([name]) => columns[name])]);
  }

  function findOpenings(columns) {
    const marks = [];
    const counts = columns.openings || [];
    for (let i = 1; i < counts.length; i++) {
      if (counts[i] > counts[i - 1]) marks.push({ t: columns.t[i], count: counts[i], added: counts[i] - counts[i - 1] });
    }
    return marks;
  }

  function showReadings(columns) {  // the text about the data shown: range, breaker openings
    const n = columns.t.length;
    $("readings-info").textContent = n
      ? `${n} readings, ${fmtTime(columns.t[0])} to ${fmtTime(columns.t[n - 1])} UTC`
      : "no readings in this range";
    const list = $("openings");
    list.textContent = "";
    if (state.openings.length) {
      list.append(`Breaker openings (${state.openings.length}): `);
      list.append(state.openings.slice(-8).map((m) => `${fmtTime(m.t)} (#${m.count})`).join(", "));
      if (state.openings.length > 8) list.append(" ...");
    }
  }

  function setReadings(columns, keepZoom) {
    state.data = columns;
    state.openings = findOpenings(columns);
    if (!charts.length) {
      makeCharts();
    } else {
      const sets = plotData(columns);
      charts.forEach((chart, i) => chart.setData(sets[i], !keepZoom));
    }
    if (!keepZoom) state.zoomed = false;
    showReadings(columns);
  }

  function emptyColumns() {
    const columns = { t: new Float64Array(0), openings: new Float64Array(0) };
    for (const spec of PLOTS) for (const [name] of spec.series) columns[name] = new Float64Array(0);
    return columns;
  }

  function readingsUrl() {
    const relay = encodeURIComponent(state.relay);
    return state.custom
      ? `/api/readings?relay=${relay}&since=${state.custom[0]}&until=${state.custom[1]}`
      : `/api/readings?relay=${relay}&span=${state.span}`;
  }

  async function loadReadings() {
    if (!state.relay) return;
    const token = (state.loading = {});
    const answer = await getReadings(readingsUrl());
    if (state.loading !== token) return;  // a newer choice was made meanwhile
    setReadings(answer.count ? answer.columns : emptyColumns(), false);
  }

  async function appendReadings() {  // a block of the shown relay arrived: fetch only what is new
    if (state.custom || !state.data) return;
    const t = state.data.t;
    const since = t.length ? t[t.length - 1] + 1 : 0;
    const answer = await getReadings(`/api/readings?relay=${encodeURIComponent(state.relay)}&since=${since}`);
    if (!answer.count) return;
    const columns = { ...state.data };
    for (const name of Object.keys(answer.columns)) columns[name] = concat(columns[name] || new Float64Array(0), answer.columns[name]);
    const start = columns.t.findIndex((x) => x >= columns.t[columns.t.length - 1] - state.span);
    if (start > 0) for (const name of Object.keys(columns)) columns[name] = columns[name].subarray(start);
    setReadings(columns, state.zoomed);
  }

  // --- chain, peers, relays, alerts ---------------------------------------------------------
  function blockRow(b, fresh) {
    const final = state.finalized != null && b.height <= state.finalized;
    const tr = el("tr", { "data-height": String(b.height), class: fresh ? "new" : "" },
      el("td", { class: "num" }, String(b.height), final ? " " : "", final ? el("span", { class: "badge final" }, "final") : ""),
      el("td", {}, fmtTime(b.time_ms)), el("td", {}, b.miner_name), el("td", {}, b.relay_id),
      el("td", { class: "num" }, String(b.readings)), el("td", { class: "hash", title: b.hash }, b.hash.slice(0, 12)));
    return tr;
  }

  function showBlocks(answer) {
    if (answer.finalized_height != null) state.finalized = answer.finalized_height;
    $("blocks").tBodies[0].replaceChildren(...answer.blocks.map((b) => blockRow(b, false)));
  }

  function addBlock(b) {
    const body = $("blocks").tBodies[0];
    if (body.querySelector(`tr[data-height="${b.height}"]`)) body.querySelector(`tr[data-height="${b.height}"]`).remove();
    body.prepend(blockRow(b, true));
    while (body.rows.length > BLOCK_ROWS) body.deleteRow(body.rows.length - 1);
    state.height = Math.max(state.height || 0, b.height);
    $("height").textContent = String(state.height);
  }

  function renderAlerts() {
    const box = $("alerts");
    const alerts = [...state.alerts.values()].sort((a, b) => (a.severity !== "critical") - (b.severity !== "critical") || a.since_ms - b.since_ms);
    box.hidden = alerts.length === 0;
    box.replaceChildren(...alerts.map((a) => el("div", { class: `alert ${a.severity}` },
      el("b", {}, a.name), ` ${a.subject}: ${a.detail} (since ${fmtTime(a.since_ms)} UTC)`)));
  }

  const peerLabel = (p) => p.name ? `${p.name} (${p.address})` : p.address;

  function peerRows(status) {  // the links up, then the configured peers with none (status.configured_peers, if given)
    const rows = (status.peers || []).map((p) => el("tr", {},
      el("td", { title: p.node_key || "" }, peerLabel(p)),
      el("td", { class: `state-${p.state}` }, p.state), el("td", { class: "num" }, String(p.height ?? "-")),
      el("td", {}, p.inbound ? "in" : "out")));
    for (const c of (status.configured_peers || []).filter((c) => c && c.connected === false)) {
      const last = c.last_connected_s_ago == null ? "never connected" : `last connected ${fmtSpan(c.last_connected_s_ago)} ago`;
      rows.push(el("tr", { class: "peer-down", "data-address": c.address },
        el("td", { title: c.node_key || "" }, peerLabel(c)),
        el("td", { class: "state-down", title: last }, `not connected for ${fmtSpan(c.since_s || 0)}`),
        el("td", { class: "num" }, "-"), el("td", {}, "out")));
    }
    return rows.length ? rows : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "no peer connected"))];
  }

  function showStatus(status) {
    $("node-name").textContent = `${status.network || ""} · ${status.name || ""}`;
    state.height = Math.max(state.height || 0, status.height);
    $("height").textContent = String(state.height);
    const finalized = status.finalized_height ?? (status.finality || {}).finalized_height;
    if (finalized != null) state.finalized = finalized;
    $("finalized").textContent = state.finalized == null ? "n/a" : String(state.finalized);
    $("peer-count").textContent = String((status.peers || []).filter((p) => p.state === "ready").length);
    $("peers").tBodies[0].replaceChildren(...peerRows(status));
    state.alerts = new Map((status.alerts || []).map((a) => [`${a.name}|${a.subject}`, a]));
    renderAlerts();
  }

  function showRelays(answer) {  // the relays on the chain, with the state of those this node polls; true if the list changed
    $("relays").tBodies[0].replaceChildren(...answer.relays.map((r) => {
      const st = r.state || "on chain";
      return el("tr", {}, el("td", { title: r.address || "" }, r.relay_id),
        el("td", { class: `state-${st}` }, st), el("td", {}, `${fmtTime(r.newest_ms)} (${ago(r.newest_ms)})`));
    }));
    const select = $("relay");
    const ids = answer.relays.map((r) => r.relay_id);
    if (select.options.length !== ids.length || [...select.options].some((o, i) => o.value !== ids[i])) {
      select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
      if (!state.relay || !ids.includes(state.relay)) state.relay = ids[0] || null;
      select.value = state.relay || "";
      return true;
    }
    return false;
  }

  const loadStatus = async () => showStatus(await getJSON("/api/status"));
  const loadRelays = async () => showRelays(await getJSON("/api/relays"));

  // --- live ---------------------------------------------------------------------------------
  function connectEvents() {
    const live = $("live");
    const source = new EventSource(withToken("/events"));
    source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    source.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
    source.addEventListener("block", (e) => {
      const b = JSON.parse(e.data);
      addBlock(b);
      if (b.relay_id === state.relay) appendReadings().catch(console.error);
    });
    source.addEventListener("alert", (e) => {
      const a = JSON.parse(e.data);
      const key = `${a.name}|${a.subject}`;
      if (a.state === "raised") state.alerts.set(key, a); else state.alerts.delete(key);
      renderAlerts();
    });
  }

  // --- controls -----------------------------------------------------------------------------
  function toLocalInput(ms) { return new Date(ms).toISOString().slice(0, 19); }
  function fromInput(value) { return Date.parse(value.length === 16 ? `${value}:00Z` : `${value}Z`); }

  function wireControls() {
    for (const button of document.querySelectorAll(".range button[data-span]")) {
      button.addEventListener("click", () => {
        document.querySelectorAll(".range button").forEach((b) => b.classList.remove("active"));
        button.classList.add("active");
        $("custom").hidden = true;
        state.span = Number(button.dataset.span);
        state.custom = null;
        loadReadings().catch(console.error);
      });
    }
    $("custom-toggle").addEventListener("click", () => {
      const t = state.data && state.data.t;
      if (t && t.length) { $("custom-from").value = toLocalInput(t[0]); $("custom-to").value = toLocalInput(t[t.length - 1]); }
      $("custom").hidden = !$("custom").hidden;
    });
    $("custom-apply").addEventListener("click", () => {
      const from = fromInput($("custom-from").value), to = fromInput($("custom-to").value);
      if (!(from < to)) return;
      document.querySelectorAll(".range button").forEach((b) => b.classList.remove("active"));
      $("custom-toggle").classList.add("active");
      state.custom = [from, to];
      loadReadings().catch(console.error);
    });
    $("relay").addEventListener("change", (e) => { state.relay = e.target.value; loadReadings().catch(console.error); });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => { const w = Math.max(320, $("plots").clientWidth); charts.forEach((c) => c.setSize({ width: w, height: PLOT_HEIGHT })); }, 100);
    });
  }

  const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function start() {
    await documentReady;
    timings.dom = performance.now();
    makeSlots();
    wireControls();
    // The panels are asked for, and their rows made, in a task after the plots' (or after
    // PANELS_WAIT_MS if the readings are slow in coming): the plots' first draw never shares the
    // page's start with them.
    const plotsFirst = Promise.race([firstReadings, delay(PANELS_WAIT_MS)]).catch(() => {}).then(() => delay(0));
    const panels = [["/api/status", showStatus], [`/api/blocks?limit=${BLOCK_ROWS}`, showBlocks], ["/api/relays", showRelays]]
      .map(([url, show]) => plotsFirst.then(() => getJSON(url)).then(show).catch(console.error));
    let answer = null;
    try {
      answer = await firstReadings;
    } catch (error) {
      console.error(error);
      $("readings-info").textContent = String(error);
    }
    timings.readings = performance.now();
    if (!state.loading) {  // unless the operator picked a relay or range meanwhile (that answer draws)
      if (answer && answer.relay) state.relay = answer.relay;
      setReadings(answer && answer.count ? answer.columns : emptyColumns(), false);
    }
    await Promise.all(panels);
    if (state.relay) $("relay").value = state.relay;
    connectEvents();
    setInterval(() => {
      const shown = state.relay;
      Promise.all([loadStatus(), loadRelays()])
        .then(() => { if (state.relay !== shown) return loadReadings(); }).catch(console.error);
    }, STATUS_POLL_MS);
  }

  start().catch((error) => { console.error(error); $("readings-info").textContent = String(error); });
})();
