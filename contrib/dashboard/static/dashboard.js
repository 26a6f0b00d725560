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

function line(points, w, h, max, color) {
  if (!points.length) return "";
  var step = points.length > 1 ? w / (points.length - 1) : 0;
  var d = points.map(function (v, i) {
    return (i * step).toFixed(1) + "," + (h - (max ? v / max : 0) * (h - 8) - 4).toFixed(1);
  }).join(" ");
  return '<polyline fill="none" stroke="' + color + '" stroke-width="2" points="' + d + '"/>';
}

var COLORS = ["#2b6cb0", "#c23b3b", "#1f8a4c", "#b7791f", "#6b46c1", "#555"];

function drawCharts(history) {
  var series = history.series || [];
  var w = 600, h = 160;
  var done = document.getElementById("chart-done");
  if (done) {
    var a = series.map(function (s) { return s.processed; });
    var b = series.map(function (s) { return s.failed; });
    var max = Math.max.apply(null, [1].concat(a, b));
    done.innerHTML = line(a, w, h, max, COLORS[2]) + line(b, w, h, max, COLORS[1]);
    setText("[data-chart-max=done]", max + "/min");
  }
  var depth = document.getElementById("chart-depth");
  if (depth) {
    var names = {};
    series.forEach(function (s) { Object.keys(s.depth).forEach(function (n) { names[n] = 1; }); });
    var keys = Object.keys(names).sort();
    var all = [1];
    series.forEach(function (s) { keys.forEach(function (n) { all.push(s.depth[n] || 0); }); });
    var m = Math.max.apply(null, all);
    depth.innerHTML = keys.map(function (n, i) {
      return line(series.map(function (s) { return s.depth[n] || 0; }), w, h, m, COLORS[i % COLORS.length]);
    }).join("");
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
  var rt = history.runtime || {};
  setText("[data-runtime=p50]", rt.p50 === null || rt.p50 === undefined ? "-" : (rt.p50 * 1000).toFixed(1) + " ms");
  setText("[data-runtime=p90]", rt.p90 === null || rt.p90 === undefined ? "-" : (rt.p90 * 1000).toFixed(1) + " ms");
  setText("[data-runtime=p99]", rt.p99 === null || rt.p99 === undefined ? "-" : (rt.p99 * 1000).toFixed(1) + " ms");
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
    setInterval(function () {
      fetch("/api/history", {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(drawCharts);
    }, 10000);
  }
});
