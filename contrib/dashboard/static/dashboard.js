// conveyor dashboard: live flow over server-sent events, charts, confirmations, copy buttons.
// Plain JS, no framework; every value goes into the page as text, never as HTML.
"use strict";

function setText(sel, value) {
  document.querySelectorAll(sel).forEach(function (el) { el.textContent = String(value); });
}

function applyFlow(flow) {
  setText("[data-rate=enqueued]", flow.rates.enqueued + "/s");
  setText("[data-rate=processed]", flow.rates.processed + "/s");
  setText("[data-rate=failed]", flow.rates.failed + "/s");
  setText("[data-workers=alive]", flow.workers.alive);
  setText("[data-workers=busy]", flow.workers.busy);
  setText("[data-workers=idle]", flow.workers.idle);
  Object.keys(flow.queues).forEach(function (name) {
    var q = flow.queues[name];
    document.querySelectorAll("[data-queue]").forEach(function (row) {
      if (row.getAttribute("data-queue") !== name) return;
      ["ready", "delayed", "in_flight", "dead"].forEach(function (k) {
        row.querySelectorAll("[data-k=" + k + "]").forEach(function (el) { el.textContent = String(q[k]); });
      });
    });
  });
  Object.keys(flow.states || {}).forEach(function (state) {
    var n = flow.states[state];
    setText("[data-state-count=" + state + "]", n >= 1000 ? "1000+" : n);
  });
  setText("[data-updated]", new Date(flow.at * 1000).toISOString().replace(".000", ""));
}

var COLORS = ["#2b6cb0", "#c23b3b", "#1f8a4c", "#b7791f", "#6b46c1", "#555"];
var W = 600, H = 160, PAD = 6;

function y(v, max) { return (H - PAD - (max ? v / max : 0) * (H - 2 * PAD)).toFixed(1); }

function axis(start, end) {
  // A baseline and one tick per 10 minutes (or per minute on short spans).
  var span = Math.max(end - start, 60), tick = span > 1200 ? 600 : 60, out = "";
  out += '<line x1="0" y1="' + (H - PAD) + '" x2="' + W + '" y2="' + (H - PAD) + '" stroke="#d9dde6"/>';
  for (var t = Math.ceil(start / tick) * tick; t <= end; t += tick) {
    var x = ((t - start) / span * W).toFixed(1);
    out += '<line x1="' + x + '" y1="' + PAD + '" x2="' + x + '" y2="' + (H - PAD) + '" stroke="#eef0f4"/>';
  }
  return out;
}

function drawCharts(history) {
  var start = history.start, end = history.end, span = Math.max(end - start, 60);
  var series = history.series || [];
  var done = document.getElementById("chart-done");
  if (done) {
    var max = 1;
    series.forEach(function (s) { max = Math.max(max, s.processed, s.failed); });
    var width = Math.max(W * 60 / span / 2 - 2, 2);
    var bars = series.map(function (s) {
      var x = (s.minute + 30 - start) / span * W;
      x = Math.min(Math.max(x, width), W - width);
      return '<rect x="' + (x - width).toFixed(1) + '" y="' + y(s.processed, max) + '" width="' + width.toFixed(1) +
        '" height="' + (H - PAD - y(s.processed, max)).toFixed(1) + '" fill="' + COLORS[2] + '"/>' +
        '<rect x="' + x.toFixed(1) + '" y="' + y(s.failed, max) + '" width="' + width.toFixed(1) +
        '" height="' + (H - PAD - y(s.failed, max)).toFixed(1) + '" fill="' + COLORS[1] + '"/>';
    }).join("");
    done.innerHTML = axis(start, end) + bars;
    setText("[data-chart-max=done]", max + "/min");
  }
  var depth = document.getElementById("chart-depth");
  var points = history.depth || [];
  if (depth) {
    var names = {}, m = 1;
    points.forEach(function (p) { Object.keys(p.depth).forEach(function (n) { names[n] = 1; m = Math.max(m, p.depth[n]); }); });
    var keys = Object.keys(names).sort();
    var lines = keys.map(function (n, i) {
      var d = points.map(function (p) {
        return ((p.at - start) / span * W).toFixed(1) + "," + y(p.depth[n] || 0, m);
      }).join(" ");
      if (points.length === 1) d += " " + W + "," + y(points[0].depth[n] || 0, m);
      return '<polyline fill="none" stroke="' + COLORS[i % COLORS.length] + '" stroke-width="2" points="' + d + '"/>';
    }).join("");
    depth.innerHTML = axis(start, end) + lines;
    var legend = document.getElementById("legend-depth");
    if (legend) {
      legend.textContent = "";
      keys.forEach(function (n, i) {
        var mark = document.createElement("i");
        mark.style.background = COLORS[i % COLORS.length];
        legend.appendChild(mark);
        legend.appendChild(document.createTextNode(n));
      });
    }
    setText("[data-chart-max=depth]", m);
  }
  setText("[data-chart-span]", Math.round(span / 60) + " min");
  var rt = history.runtime || {};
  ["p50", "p90", "p99"].forEach(function (k) {
    setText("[data-runtime=" + k + "]", rt[k] === null || rt[k] === undefined ? "-" : (rt[k] * 1000).toFixed(1) + " ms");
  });
}

function refreshHistory() {
  fetch("/api/history", {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(drawCharts);
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) ev.preventDefault();
    });
  });
  document.querySelectorAll("button.copy").forEach(function (btn) {
    btn.addEventListener("click", function () {
      var text = btn.getAttribute("data-copy");
      if (navigator.clipboard) navigator.clipboard.writeText(text);
      btn.textContent = "copied";
      setTimeout(function () { btn.textContent = "copy"; }, 1200);
    });
  });
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=id]").forEach(function (box) { box.checked = all.checked; });
    });
  }
  if (document.body.getAttribute("data-page") === "flow") {
    var initial = document.getElementById("history-data");
    if (initial) drawCharts(JSON.parse(initial.textContent));
    if (window.EventSource) {
      var source = new EventSource("/api/events");
      source.addEventListener("flow", function (ev) { applyFlow(JSON.parse(ev.data)); });
    }
    setInterval(refreshHistory, 5000);
  }
});
