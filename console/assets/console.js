// The Mycelium console's one script: keeps a page's figures live over
// server-sent events (/events) and draws its charts with uPlot. Pages are
// complete without it. No build step; nothing is fetched from elsewhere.
(function () {
  "use strict";
  var body = document.body;
  var root = body.getAttribute("data-root") || "";
  var refresh = parseInt(body.getAttribute("data-refresh"), 10) || 2000;
  var liveTopicEl = document.querySelector("[data-live-topic]");
  var liveTopic = liveTopicEl ? liveTopicEl.getAttribute("data-live-topic") : null;
  var page = body.getAttribute("data-page");
  var charts = [];

  function fmtRate(v) {
    if (v === null || v === undefined) return "\u2013";
    return v >= 100 ? v.toFixed(0) : v.toFixed(1);
  }
  function fmtAge(s) {
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(Math.floor(s % 60)).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  function text(t, field) {
    switch (field) {
      case "in": return fmtRate(t.in_per_second);
      case "out": return fmtRate(t.out_per_second);
      case "backlog": return t.backlog < 0 ? "?" : String(t.backlog);
      case "oldest_pending": return t.pending ? fmtAge(t.oldest_pending_seconds) : "\u2013";
      default: return t[field] === undefined ? null : String(t[field]);
    }
  }
  // update writes the figures of t into the elements of the container
  // that names it (data-topic), leaving links in place.
  function update(container, t) {
    container.querySelectorAll("[data-field]").forEach(function (el) {
      var v = text(t, el.getAttribute("data-field"));
      if (v === null) return;
      var target = el.querySelector("a") || el;
      if (target.textContent !== v) target.textContent = v;
    });
  }

  // fromZero: rates and backlogs are drawn from 0 up.
  function fromZero(u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }

  function chart(el) {
    var topic = el.getAttribute("data-topic") || "";
    var width = Math.max(el.clientWidth || 600, 300);
    var opts = {
      width: width, height: 220,
      scales: { x: { time: true }, y: { range: fromZero }, b: { range: fromZero } },
      axes: [{}, { label: "per second", size: 60 }, { scale: "b", side: 1, label: "backlog", size: 80, grid: { show: false } }],
      series: [{}, { label: "in/s", stroke: "#0b57d0", width: 2 }, { label: "out/s", stroke: "#146c2e", width: 2 },
        { label: "backlog", stroke: "#8a4b00", width: 1, dash: [6, 4], scale: "b" }],
    };
    var c = { topic: topic, data: [[], [], [], []], plot: null };
    fetch(root + "/api/history" + (topic ? "?topic=" + encodeURIComponent(topic) : ""), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (h) {
        c.data = [h.t || [], h.in || [], h.out || [], h.backlog || []];
        c.plot = new uPlot(opts, c.data, el);
        charts.push(c);
      })
      .catch(function () { el.textContent = "The chart's history could not be loaded."; });
  }

  function push(c, tms, t) {
    if (!c.plot || !t || t.in_per_second === null || t.in_per_second === undefined) return;
    var ts = tms / 1000, d = c.data;
    if (d[0].length && d[0][d[0].length - 1] >= ts) return;
    d[0].push(ts); d[1].push(t.in_per_second); d[2].push(t.out_per_second); d[3].push(Math.max(t.backlog, 0));
    var keep = 600 * 1000 / refresh;
    if (d[0].length > keep) d.forEach(function (s) { s.splice(0, s.length - keep); });
    c.plot.setData(d);
  }

  document.querySelectorAll(".chart[data-chart]").forEach(chart);

  var rows = null;
  function rowsByTopic() {
    if (rows) return rows;
    rows = {};
    document.querySelectorAll("[data-topic]").forEach(function (el) {
      if (el.classList.contains("chart")) return;
      var n = el.getAttribute("data-topic");
      (rows[n] = rows[n] || []).push(el);
    });
    return rows;
  }

  var live = page === "overview" || page === "topic";
  if (live && window.EventSource) {
    var es = new EventSource(root + "/events" + (liveTopic ? "?topic=" + encodeURIComponent(liveTopic) : ""));
    es.addEventListener("overview", function (ev) {
      var d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      var byName = rowsByTopic();
      if (!liveTopic) (byName[""] || []).forEach(function (el) { update(el, d.totals); });
      d.topics.forEach(function (t) { (byName[t.name] || []).forEach(function (el) { update(el, t); }); });
      var when = document.querySelector("[data-updated]");
      if (when) when.textContent = new Date(d.time_ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
      charts.forEach(function (c) {
        if (c.topic === "") push(c, d.time_ms, d.totals);
        else push(c, d.time_ms, d.topics.find(function (t) { return t.name === c.topic; }));
      });
    });
  }

  // Dead letters: the "select all" box (in the page, hidden: it needs this
  // script) is shown and wired.
  var table = document.getElementById("dead-letters");
  var all = document.getElementById("select-all");
  if (table && all) {
    all.hidden = false;
    all.addEventListener("change", function () {
      table.querySelectorAll("tbody input[type=checkbox]").forEach(function (b) { b.checked = all.checked; });
    });
  }
})();
