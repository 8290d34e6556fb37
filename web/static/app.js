// The live page: draws /state once, then redraws from the server-sent events of /stream (no reload).
"use strict";
(function () {
  var token = window.KRONOS_TOKEN;
  var params = new URLSearchParams(location.search);
  var symbol = (params.get("symbol") || "").toUpperCase();
  var receivedAt = null;   // browser time when the last bar was received by the service
  var feed = { mode: "live", speed: null, state: null };   // what the state pill says (from /state and /health)
  var streamUp = false;
  // ?static=1: draw once, open no event stream and poll nothing, so a headless browser's --screenshot can finish
  var staticView = params.get("static") === "1";
  var STALE_S = 120;       // live.hub.STALE_S: no bar for this long and the page says "stale"
  var nyFormat = new Intl.DateTimeFormat("en-CA", {
    timeZone: "America/New_York", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"
  });

  function ny(iso) {  // "2025-06-10T14:00:00Z" -> "2025-06-10 10:00:00" (New York wall clock, for Plotly)
    var p = {};
    nyFormat.formatToParts(new Date(iso)).forEach(function (x) { p[x.type] = x.value; });
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute + ":" + p.second;
  }
  // a probability's 95 % Monte Carlo interval [lo, hi] as "± 4.9 pp (52.1–61.9 %)"; "" when there is none
  function ci(pair) {
    if (!pair || pair[0] === null || pair[1] === null) return "";
    return "± " + ((pair[1] - pair[0]) * 50).toFixed(1) + " pp (" + (pair[0] * 100).toFixed(1) + "–" +
      (pair[1] * 100).toFixed(1) + " %)";
  }
  function withCi(x, pair) { var c = ci(pair); return pct(x) + (c ? " " + c.split(" (")[0] : ""); }
  function pct(x, digits) { return x === null || x === undefined ? "—" : (x * 100).toFixed(digits === undefined ? 1 : digits) + "%"; }
  function num(x, digits) { return x === null || x === undefined ? "—" : Number(x).toFixed(digits === undefined ? 2 : digits); }
  function bp(x) { return x === null || x === undefined ? "—" : (x * 1e4).toFixed(1); }
  // the drawdown (side -1) or run-up (+1) quantiles as forecast.summary's console says them: basis points, dollars
  // per share from the close the paths start at, and the price each reaches (a stop below, a target above)
  function excursion(m, key, h, close, side) {
    var v = [50, 90, 95].map(function (q) { return m[key + "_p" + q + "_" + h + "m"]; });
    var join = function (f) { return v.map(function (x) { return x === null || x === undefined ? "—" : f(x); }).join(" / "); };
    return join(bp) + " bp = " + join(function (x) { return "$" + (x * close).toFixed(2); }) + " → " +
      join(function (x) { return (close * (1 + side * x)).toFixed(2); });
  }
  function el(id) { return document.getElementById(id); }
  function url(path) {
    var q = new URLSearchParams();
    if (symbol) q.set("symbol", symbol);
    return path + (q.toString() ? "?" + q : "");
  }
  function rows(table, items) {
    table.innerHTML = "";
    items.forEach(function (it) {
      var tr = document.createElement("tr");
      var a = document.createElement("td"); a.textContent = it[0];
      var b = document.createElement("td"); b.textContent = it[1];
      if (it[2]) b.className = it[2];
      tr.appendChild(a); tr.appendChild(b); table.appendChild(tr);
    });
  }

  function fetchJSON(path) {
    var headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch(url(path), { headers: headers, cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  }

  function traces(s) {
    var data = [];
    var c = s.candles, prev = c.previous;
    if (prev && prev.times.length) {   // at the open: the previous session's last hour, dimmed
      data.push({ type: "candlestick", name: "previous session", x: prev.times.map(ny), open: prev.open,
                  high: prev.high, low: prev.low, close: prev.close, opacity: 0.45, showlegend: false,
                  increasing: { line: { color: "#26a69a" } }, decreasing: { line: { color: "#ef5350" } } });
    }
    data.push({ type: "candlestick", name: "bars", x: c.times.map(ny), open: c.open, high: c.high, low: c.low,
                close: c.close, increasing: { line: { color: "#26a69a" } }, decreasing: { line: { color: "#ef5350" } },
                showlegend: false });
    if (c.volume) {
      data.push({ type: "bar", name: "volume", x: c.times.map(ny), y: c.volume, yaxis: "y2", showlegend: false,
                  marker: { color: c.close.map(function (v, i) { return v >= c.open[i] ? "rgba(38,166,154,0.45)" : "rgba(239,83,80,0.45)"; }) } });
    }
    if (c.vwap) {
      data.push({ type: "scatter", mode: "lines", name: "session VWAP", x: c.times.map(ny), y: c.vwap,
                  line: { color: "#e3b341", width: 1.2 } });
    }
    var sum = s.summary;
    if (!sum) return data;
    var m = sum.summary;
    var start = ny(sum.last_bar);
    var x = [start].concat(sum.future_times.map(ny));
    var keys = Object.keys(m.percentiles).sort(function (a, b) { return parseFloat(a.slice(1)) - parseFloat(b.slice(1)); });
    var lo = keys[0], hi = keys[keys.length - 1];
    var mid = keys.indexOf("p50") >= 0 ? "p50" : keys[Math.floor(keys.length / 2)];
    var now = sum.now_close;
    if (s.paths && s.paths.length) {
      var px = [], py = [];
      s.paths.forEach(function (path) { px = px.concat(x, [null]); py = py.concat([now], path, [null]); });
      data.push({ type: "scatter", mode: "lines", name: "paths (" + s.paths.length + " of " + sum.n_samples + ")",
                  x: px, y: py, line: { color: "rgba(160,170,190,0.35)", width: 1 }, hoverinfo: "skip" });
    }
    data.push({ type: "scatter", mode: "lines", name: lo, x: x, y: [now].concat(m.percentiles[lo]),
                line: { color: "rgba(88,166,255,0.6)", width: 1 }, showlegend: false });
    data.push({ type: "scatter", mode: "lines", name: lo + "–" + hi + " band", x: x, y: [now].concat(m.percentiles[hi]),
                fill: "tonexty", fillcolor: "rgba(88,166,255,0.18)", line: { color: "rgba(88,166,255,0.6)", width: 1 } });
    data.push({ type: "scatter", mode: "lines", name: "median", x: x, y: [now].concat(m.percentiles[mid]),
                line: { color: "#58a6ff", width: 2 } });
    var cal = sum.calibrated && sum.calibrated.percentiles;
    if (cal && cal[lo] && cal[hi]) {
      data.push({ type: "scatter", mode: "lines", name: "calibrated " + lo + "–" + hi, x: x.concat([null], x),
                  y: [now].concat(cal[lo], [null], [now], cal[hi]), line: { color: "#d2a8ff", width: 1, dash: "dot" } });
    }
    var end = x[x.length - 1];
    if (m.vwap !== null && m.vwap !== undefined) {
      data.push({ type: "scatter", mode: "lines", name: "VWAP " + num(m.vwap), x: [start, end], y: [m.vwap, m.vwap],
                  line: { color: "#e3b341", width: 1.5, dash: "dash" } });
    }
    if (m.mid_band !== null && m.mid_band !== undefined) {
      data.push({ type: "scatter", mode: "lines", name: "mid band " + num(m.mid_band), x: [start, end],
                  y: [m.mid_band, m.mid_band], line: { color: "#f778ba", width: 1.5, dash: "dash" } });
    }
    return data;
  }

  function layout() {
    return { paper_bgcolor: "#161b22", plot_bgcolor: "#161b22", font: { color: "#e6e6e6" },
             margin: { l: 55, r: 20, t: 10, b: 40 }, xaxis: { rangeslider: { visible: false }, gridcolor: "#30363d",
             title: { text: "New York time" } }, yaxis: { gridcolor: "#30363d" }, legend: { orientation: "h", y: 1.06 },
             uirevision: "keep-zoom" };
  }

  var FRAME_MIN = 60;   // the default view: the last hour of bars, then the whole fan
  // The price chart's layout: prices above, volume below, framed on the last hour plus the fan (double-click
  // in Plotly shows the whole session).
  function chartLayout(s) {
    var lay = layout();
    lay.yaxis = { gridcolor: "#30363d", domain: [0.24, 1] };
    lay.yaxis2 = { gridcolor: "#30363d", domain: [0, 0.18], title: { text: "volume" }, rangemode: "tozero" };
    lay.xaxis.anchor = "y2";   // the time axis under the volume bars
    lay.yaxis.anchor = "x";
    lay.yaxis2.anchor = "x";
    var c = s.candles, sum = s.summary;
    if (!c.times.length) return lay;
    var lastMs = Date.parse(c.times[c.times.length - 1]);
    var fromMs = lastMs - (FRAME_MIN - 1) * 60000;
    var prev = c.previous;
    if (prev && prev.times.length) {   // frame the last hour of bars across the night, and hide the night
      var all = prev.times.concat(c.times);
      fromMs = Date.parse(all[Math.max(all.length - FRAME_MIN, 0)]);
      c = { times: all, low: prev.low.concat(c.low), high: prev.high.concat(c.high) };
      var gapFrom = new Date(Date.parse(prev.times[prev.times.length - 1]) + 60000).toISOString();
      lay.xaxis.rangebreaks = [{ bounds: [ny(gapFrom), ny(s.candles.times[0])] }];
    }
    var endIso = sum ? sum.future_times[sum.future_times.length - 1] : c.times[c.times.length - 1];
    lay.xaxis.range = [ny(new Date(fromMs - 30000).toISOString()), ny(new Date(Date.parse(endIso) + 30000).toISOString())];
    var lo = Infinity, hi = -Infinity;
    c.times.forEach(function (t, i) {
      if (Date.parse(t) >= fromMs) { lo = Math.min(lo, c.low[i]); hi = Math.max(hi, c.high[i]); }
    });
    if (sum) {
      var p = sum.summary.percentiles;
      Object.keys(p).forEach(function (k) { p[k].forEach(function (v) { lo = Math.min(lo, v); hi = Math.max(hi, v); }); });
    }
    var pad = Math.max((hi - lo) * 0.08, 0.05);
    lay.yaxis.range = [lo - pad, hi + pad];
    lay.yaxis.autorange = false;
    return lay;
  }

  // "1 h 05 min to the close" from the last bar's close (the replay's clock during a replay, not the wall's)
  function renderToClose(s) {
    var node = el("to-close");
    if (!s.session_close || !s.last_bar) { node.textContent = "no session today"; return; }
    var left = Math.round((Date.parse(s.session_close) - Date.parse(s.last_bar) - 60000) / 60000);
    node.dataset.minutes = left;
    node.textContent = left <= 0 ? "regular session closed" :
      (left >= 60 ? Math.floor(left / 60) + " h " + String(left % 60).padStart(2, "0") + " min" : left + " min") +
      " to the close";
  }

  // A switcher when the service forecasts several symbols: picking one reloads the page on ?symbol= (the token
  // and ?static=1 kept), so the stream, the polling and the zoom all start over for it.
  function renderSwitcher(names, current) {
    var box = el("switch");
    if (!names || names.length < 2 || box.options.length) return;
    names.forEach(function (n) {
      var o = document.createElement("option");
      o.value = n; o.textContent = n; o.selected = n === current;
      box.appendChild(o);
    });
    box.hidden = false;
    box.onchange = function () {
      var q = new URLSearchParams(location.search);
      q.set("symbol", box.value);
      location.search = q.toString();
    };
  }

  function render(s) {
    el("symbol").textContent = s.symbol;
    renderSwitcher(s.symbols, s.symbol);
    el("last-close").textContent = num(s.last_close);
    el("last-close").dataset.value = s.last_close === null ? "" : s.last_close;
    feed.mode = s.mode || "live";
    feed.speed = s.speed;
    var sum = s.summary;
    Plotly.react("chart", traces(s), chartLayout(s), { displaylogo: false, responsive: true });
    renderToClose(s);
    renderFreshness(s.freshness);
    renderReliability(s.reliability);
    renderHistory(s.p_up_history || []);
    if (!sum) return;
    renderTrust(sum.trust);
    var m = sum.summary, h = sum.horizon_min;
    var pUp = m["p_up_" + h + "m"];
    // the header is the last bar's close; the forecast's anchor (the close its paths start from) is shown apart
    el("anchor").textContent = "forecast from " + num(sum.now_close) + " (" + ny(sum.last_bar).slice(11, 16) + " bar)";
    el("anchor").dataset.value = sum.now_close;
    el("p-up-label").textContent = "P(up " + h + "m)";
    var node = el("p-up");
    node.textContent = pct(pUp);
    node.dataset.value = pUp;
    node.className = "value " + (pUp > 0.5 ? "up" : pUp < 0.5 ? "down" : "");
    var cal = sum.calibrated || {};
    var pCal = cal["p_up_" + h + "m"];
    var calNode = el("p-up-cal");
    calNode.textContent = pct(pCal === undefined ? null : pCal);
    calNode.dataset.value = pCal === undefined ? "" : pCal;
    el("p-up-ci").textContent = ci(m["p_up_" + h + "m_ci"]) || "—";
    el("p-up-cal-ci").textContent = ci(cal["p_up_" + h + "m_ci"]) || "—";
    var se = m["exp_ret_" + h + "m_se"];
    el("exp-ret-se").textContent = se === null || se === undefined ? "—" : "s.e. " + pct(se, 3);
    el("cal-method").textContent = sum.calibrated ? cal.method + " calibrator" : "no calibrator configured";
    el("exp-ret").textContent = pct(m["exp_ret_" + h + "m"], 3);
    var stop = (sum.sampling || {}).stopped;
    el("asof").textContent = "as of " + ny(sum.asof) + " NY, " + sum.n_samples + " paths" +
      (stop && stop !== "fixed" ? " (auto: " + stop.replace("_", " ") + ")" : "");
    var r = m["ret_percentiles_" + h + "m"] || {};
    var rk = Object.keys(r);
    rows(el("risk"), [
      ["return " + rk.join(" / "), rk.map(function (k) { return pct(r[k], 2); }).join(" / ")],
      ["drawdown p50 / p90 / p95", excursion(m, "drawdown", h, sum.now_close, -1)],
      ["run-up p50 / p90 / p95", excursion(m, "runup", h, sum.now_close, 1)],
      ["P(touch VWAP " + num(m.vwap) + ")", withCi(m["p_hit_vwap_" + h + "m"], m["p_hit_vwap_" + h + "m_ci"])],
      ["P(touch mid band " + num(m.mid_band) + ")", withCi(m["p_hit_mid_" + h + "m"], m["p_hit_mid_" + h + "m_ci"])],
      ["z-score to mid band", num(m.zscore_mid)],
      ["P(path vol > recent " + m.vol_window + "m)",
        withCi(m["p_vol_exceeds_recent_" + h + "m"], m["p_vol_exceeds_recent_" + h + "m_ci"])],
      ["recent 1-min vol", pct(m.recent_vol_1m, 3)],
      ["forecast latency", s.latency_s === null ? "—" : num(s.latency_s, 2) + " s"]
    ]);
    var notes = el("notes");
    notes.innerHTML = "";
    (sum.notes || []).concat((sum.events_in_window || []).map(function (e) { return "event in window: " + e; }))
      .forEach(function (n) { var li = document.createElement("li"); li.textContent = n; notes.appendChild(li); });
  }

  // The session's P(up): raw, calibrated and online, the calibrated 95 % interval as a band, realised ups marked.
  function renderHistory(hist) {
    var x = hist.map(function (r) { return ny(r.asof); });
    var col = function (k) { return hist.map(function (r) { return r[k]; }); };
    var done = hist.filter(function (r) { return r.up !== null; });
    var data = [
      { type: "scatter", mode: "lines", name: "interval lo", x: x, y: col("lo"), line: { width: 0 },
        showlegend: false, hoverinfo: "skip" },
      { type: "scatter", mode: "lines", name: "calibrated 95% interval", x: x, y: col("hi"), fill: "tonexty",
        fillcolor: "rgba(210,168,255,0.18)", line: { width: 0 } },
      { type: "scatter", mode: "lines", name: "P(up) raw", x: x, y: col("p_up"), line: { color: "#58a6ff", width: 1.5 } },
      { type: "scatter", mode: "lines", name: "P(up) calibrated", x: x, y: col("p_up_calibrated"),
        line: { color: "#d2a8ff", width: 2 } },
      { type: "scatter", mode: "lines", name: "P(up) online", x: x, y: col("p_up_online"),
        line: { color: "#e3b341", width: 1.5, dash: "dot" } },
      { type: "scatter", mode: "markers", name: "realised: up", x: done.filter(function (r) { return r.up === 1; })
          .map(function (r) { return ny(r.asof); }), y: done.filter(function (r) { return r.up === 1; }).map(function () { return 1; }),
        marker: { color: "#26a69a", symbol: "triangle-up", size: 7 } },
      { type: "scatter", mode: "markers", name: "realised: down", x: done.filter(function (r) { return r.up === 0; })
          .map(function (r) { return ny(r.asof); }), y: done.filter(function (r) { return r.up === 0; }).map(function () { return 0; }),
        marker: { color: "#ef5350", symbol: "triangle-down", size: 7 } }
    ];
    var lay = layout();
    lay.yaxis = { gridcolor: "#30363d", range: [-0.08, 1.08], title: { text: "P(up)" } };
    lay.margin = { l: 55, r: 20, t: 34, b: 40 };   // the legend above the plot, clear of the realised-up marks
    lay.legend = { orientation: "h", y: 1.2 };
    lay.height = 260;
    Plotly.react("p-history", data, lay, { displaylogo: false, responsive: true });
  }

  function renderTrust(t) {
    var node = el("trust");
    if (!t) { node.textContent = "trust —"; return; }
    var edge = t.edge === true ? "edge" : t.edge === false ? "no edge" : "edge unknown";
    node.textContent = t.status + " · " + edge;
    node.dataset.status = t.status;
    node.dataset.edge = String(t.edge);
    node.title = t.reason + (t.edge_reason ? "; " + t.edge_reason : "");
    node.className = "pill " + (t.status === "calibrated" ? "live" : t.status === "stale" ? "warn" : "down");
  }

  function renderFreshness(f) {
    if (!f || !f.last_bar) { renderPill(); return; }
    feed.state = f.feed;
    receivedAt = Date.now() - 1000 * (f.received_s_ago || 0);
    el("freshness").dataset.lastBar = f.last_bar;
    el("freshness").dataset.lag = f.last_bar_lag_s;
    tick();
  }

  function replayName() { return "replay ×" + (feed.speed === null || feed.speed === undefined ? "?" : +feed.speed); }

  function tick() {
    var f = el("freshness");
    if (!receivedAt || !f.dataset.lastBar) return;
    var ago = Math.round((Date.now() - receivedAt) / 1000);
    var bar = "last bar " + ny(f.dataset.lastBar).slice(11, 16) + " NY";
    if (feed.mode === "replay") {   // a replay's lags are its own clock's: claim no market latency
      f.textContent = bar + " · " + replayName() + " of recorded bars";
      f.className = "muted";
    } else {
      if (ago > STALE_S) feed.state = "stale";
      f.textContent = bar + " · arrived " + num(f.dataset.lag, 1) + " s after its close · " + ago + " s ago";
      f.className = ago > STALE_S ? "bad" : "muted";
    }
    renderPill();
  }

  // The state pill: replay ×N / live / delayed / stale, or "reconnecting" while the event stream is down.
  function renderPill() {
    var conn = el("conn");
    var state = !streamUp && !staticView ? "reconnecting" : feed.mode === "replay" ? "replay" : feed.state || "waiting";
    conn.textContent = state === "replay" ? replayName() : state;
    conn.dataset.state = state;
    var style = { live: "live", replay: "replay", delayed: "warn", waiting: "" }[state];
    conn.className = "pill " + (style === undefined ? "down" : style);   // stale, reconnecting
  }

  function renderReliability(r) {
    if (!r || !r.n) {
      rows(el("reliability"), [["reconciled today", r ? "0 (" + (r.pending || 0) + " pending)" : "0"]]);
      return;
    }
    var ref = r.brier_reference;
    rows(el("reliability"), [
      ["reconciled " + r.date, r.n + " (" + r.pending + " pending)"],
      ["Brier raw (coin flip " + num(ref) + ")", num(r.brier, 3), r.brier < ref ? "good" : "bad"],
      ["Brier calibrated", num(r.brier_calibrated, 3), r.brier_calibrated === null ? "" : r.brier_calibrated < ref ? "good" : "bad"],
      [r.band + " coverage at the end (nominal " + pct(r.nominal, 0) + ")", pct(r.coverage)],
      ["coverage, every minute", pct(r.coverage_all_minutes)],
      ["calibrated band coverage", pct(r.coverage_calibrated)],
      ["share of ups", pct(r.up_rate)]
    ]);
  }

  function renderService(h) {
    var mine = (h.symbols || {})[symbol];
    if (h.mode) { feed.mode = h.mode; feed.speed = h.speed; }
    if (mine && mine.feed !== undefined) feed.state = mine.feed;
    renderPill();
    var sym = h.symbols[symbol] || {};
    var model = h.model ? h.model.model + " (" + h.model.device + ", " + h.model.dtype + ")" : "loading…";
    var skipped = Object.keys(h.skipped).map(function (k) { return k + " " + h.skipped[k]; }).join(", ") || "none";
    rows(el("service"), [
      ["model", model],
      ["forecasts kept", String(sym.forecasts_kept || 0)],
      ["skipped minutes", skipped],
      ["stream", !h.stream ? "—" : h.stream.connected ? "connected" :
       h.stream.problem + " (" + h.stream.failed_attempts + " failed attempts)", h.stream && !h.stream.connected ? "bad" : ""],
      ["stream reconnects", String(h.stream_reconnects)],
      ["output errors", Object.keys(h.output_errors).map(function (k) { return k + " " + h.output_errors[k].count; }).join(", ") || "none",
       Object.keys(h.output_errors).length ? "bad" : ""],
      ["last error", h.last_error ? h.last_error.message : "none", h.last_error ? "bad" : ""]
    ]);
  }

  function refresh() {
    return Promise.all([fetchJSON("state"), fetchJSON("health")]).then(function (both) {
      if (!symbol) symbol = both[0].symbol;
      render(both[0]);
      renderService(both[1]);
    });
  }

  function connect() {
    var q = new URLSearchParams();
    if (symbol) q.set("symbol", symbol);
    if (token) q.set("token", token);   // EventSource cannot send headers
    var es = new EventSource("stream?" + q);
    es.onopen = function () { streamUp = true; renderPill(); };
    es.onerror = function () { streamUp = false; renderPill(); };
    ["forecast", "outcome"].forEach(function (kind) {
      es.addEventListener(kind, function (e) { render(JSON.parse(e.data)); window.KRONOS_EVENTS = (window.KRONOS_EVENTS || 0) + 1; });
    });
    es.addEventListener("health", function (e) { renderService(JSON.parse(e.data)); });  // carries /health
    ["skip", "error"].forEach(function (kind) {   // these carry only the skip or the error: fetch the counts
      es.addEventListener(kind, function () { fetchJSON("health").then(renderService).catch(function () {}); });
    });
    window.KRONOS_STREAM = es;
  }

  if (staticView) {
    refresh().then(function () { window.KRONOS_DRAWN = true; })
      .catch(function (err) { el("freshness").textContent = String(err); });
  } else {
    refresh().then(connect).catch(function (err) { el("freshness").textContent = String(err); connect(); });
    setInterval(tick, 1000);
    setInterval(function () { fetchJSON("health").then(renderService).catch(function () {}); }, 10000);
  }
})();
