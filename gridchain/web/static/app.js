// gridchain dashboard: read-only views of one node, live through /events. No framework, no build step.
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
  const PLOT_HEIGHT = 150;

  const state = { relay: null, span: 86400000, custom: null, data: null, openings: [], alerts: new Map(),
                  finalized: null, height: null, zoomed: false, loading: null };
  const timings = { start: performance.now(), drawn: null, readingsMs: null };
  const charts = [];
  window.gridchain = { charts, state, timings };

  // Opened from another host as /?token=<read token>: every request the page makes carries it.
  const TOKEN = new URLSearchParams(location.search).get("token");
  const withToken = (url) => TOKEN ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(TOKEN)}` : url;

  const $ = (id) => document.getElementById(id);
  const fmtTime = (ms) => ms == null ? "-" : new Date(ms).toISOString().replace("T", " ").slice(0, 19);
  const ago = (ms) => {
    if (ms == null) return "-";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 120) return `${s.toFixed(0)} s ago`;
    if (s < 7200) return `${(s / 60).toFixed(0)} min ago`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h ago`;
    return `${(s / 86400).toFixed(1)} days ago`;
  };
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c == null ? "" : c);
    return node;
  };
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
  function concat(a, b) { const out = new Float64Array(a.length + b.length); out.set(a); out.set(b, a.length); return out; }
  async function getJSON(url) {
    const answer = await fetch(withToken(url), { cache: "no-store" });
    if (!answer.ok) throw new Error(`${url}: HTTP ${answer.status}`);
    return answer.json();
  }

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
    for (const other of charts) if (other !== u) other.setScale("x", { min, max });
    syncing = false;
  }

  let drawnCount = 0;
  function makeCharts() {
    const box = $("plots");
    const width = Math.max(320, box.clientWidth);
    for (const spec of PLOTS) {
      const wrap = el("div", { class: "plot" }, el("h3", {}, spec.title));
      box.append(wrap);
      const opts = {
        width, height: PLOT_HEIGHT,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
        cursor: { drag: { x: true, y: false }, sync: { key: "gridchain" } },
        scales: { x: { time: true } },
        legend: { live: true },
        series: [{ label: "time (UTC)", value: (u, v) => v == null ? "-" : fmtTime(v * 1000) },
                 ...spec.series.map(([, label, stroke]) => ({ label, stroke, width: 1.25,
                   value: (u, v) => v == null ? "-" : v.toFixed(spec.digits) }))],
        axes: [{}, { size: 60 }],
        plugins: [openingsPlugin()],
        hooks: { setScale: [syncZoom], draw: [() => {
          if (timings.drawn == null && state.data && ++drawnCount >= PLOTS.length) {
            timings.drawn = performance.now();
            document.body.dataset.drawn = "1";
          }
        }] },
      };
      charts.push(new uPlot(opts, [[], ...spec.series.map(() => [])], wrap));
    }
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

  function draw(keepZoom) {
    const columns = state.data;
    state.openings = findOpenings(columns);
    const sets = plotData(columns);
    charts.forEach((chart, i) => chart.setData(sets[i], !keepZoom));
    if (!keepZoom) state.zoomed = false;
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

  function emptyColumns() {
    const columns = { t: new Float64Array(0), openings: new Float64Array(0) };
    for (const spec of PLOTS) for (const [name] of spec.series) columns[name] = new Float64Array(0);
    return columns;
  }

  async function loadReadings() {
    if (!state.relay) return;
    const relay = encodeURIComponent(state.relay);
    const url = state.custom
      ? `/api/readings?relay=${relay}&since=${state.custom[0]}&until=${state.custom[1]}`
      : `/api/readings?relay=${relay}&span=${state.span}`;
    const started = performance.now();
    const token = (state.loading = {});
    const answer = await getReadings(url);
    if (state.loading !== token) return;  // a newer choice was made meanwhile
    timings.readingsMs = performance.now() - started;
    timings.readings = performance.now();
    state.data = answer.count ? answer.columns : emptyColumns();
    draw(false);
  }

  async function appendReadings() {  // a block of the shown relay arrived: fetch only what is new
    if (state.custom || !state.data) return;
    const t = state.data.t;
    const since = t.length ? t[t.length - 1] + 1 : 0;
    const answer = await getReadings(`/api/readings?relay=${encodeURIComponent(state.relay)}&since=${since}`);
    if (!answer.count) return;
    const columns = state.data;
    for (const name of Object.keys(answer.columns)) columns[name] = concat(columns[name] || new Float64Array(0), answer.columns[name]);
    const start = columns.t.findIndex((x) => x >= columns.t[columns.t.length - 1] - state.span);
    if (start > 0) for (const name of Object.keys(columns)) columns[name] = columns[name].subarray(start);
    draw(state.zoomed);
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

  async function loadBlocks() {
    const answer = await getJSON(`/api/blocks?limit=${BLOCK_ROWS}`);
    if (answer.finalized_height != null) state.finalized = answer.finalized_height;
    const body = $("blocks").tBodies[0];
    body.replaceChildren(...answer.blocks.map((b) => blockRow(b, false)));
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

  async function loadStatus() {
    const status = await getJSON("/api/status");
    $("node-name").textContent = `${status.network || ""} · ${status.name || ""}`;
    state.height = status.height;
    $("height").textContent = String(status.height);
    const finalized = status.finalized_height ?? (status.finality || {}).finalized_height;
    if (finalized != null) state.finalized = finalized;
    $("finalized").textContent = state.finalized == null ? "n/a" : String(state.finalized);
    const peers = status.peers || [];
    $("peer-count").textContent = String(peers.filter((p) => p.state === "ready").length);
    $("peers").tBodies[0].replaceChildren(...peers.map((p) => el("tr", {},
      el("td", { title: p.node_key || "" }, p.name ? `${p.name} (${p.address})` : p.address),
      el("td", { class: `state-${p.state}` }, p.state), el("td", { class: "num" }, String(p.height ?? "-")),
      el("td", {}, p.inbound ? "in" : "out"))));
    if (!peers.length) $("peers").tBodies[0].append(el("tr", {}, el("td", { colspan: "4", class: "muted" }, "no peer connected")));
    state.alerts = new Map((status.alerts || []).map((a) => [`${a.name}|${a.subject}`, a]));
    renderAlerts();
  }

  async function loadRelays() {  // the relays on the chain, with the state of those this node polls
    const answer = await getJSON("/api/relays");
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

  async function start() {
    timings.script = performance.now();
    makeCharts();
    wireControls();
    const others = Promise.all([loadStatus(), loadBlocks()]);  // in parallel: the plots wait only for the relays
    await loadRelays();
    timings.relays = performance.now();
    await Promise.all([loadReadings(), others]);
    connectEvents();
    setInterval(() => {
      const shown = state.relay;
      Promise.all([loadStatus(), loadRelays()])
        .then(() => { if (state.relay !== shown) return loadReadings(); }).catch(console.error);
    }, STATUS_POLL_MS);
  }

  start().catch((error) => { console.error(error); $("readings-info").textContent = String(error); });
})();
