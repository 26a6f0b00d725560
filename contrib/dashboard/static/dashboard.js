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

function bars(svg, series, start, span, keys) {
  // One group of bars per minute: one bar per key, side by side.
  var max = 1;
  series.forEach(function (s) { keys.forEach(function (k) { max = Math.max(max, s[k.name] || 0); }); });
  var slot = W * 60 / span, width = Math.max(slot / (keys.length + 1), 1);
  var out = series.map(function (s) {
    var left = (s.minute - start) / span * W + width / 2;
    return keys.map(function (k, i) {
      var v = s[k.name] || 0, top = y(v, max);
      return '<rect x="' + (left + i * width).toFixed(1) + '" y="' + top + '" width="' + width.toFixed(1) +
        '" height="' + (H - PAD - top).toFixed(1) + '" fill="' + k.color + '"/>';
    }).join("");
  }).join("");
  svg.innerHTML = axis(start, start + span) + out;
  return max;
}

function lines(svg, points, start, span, keys, dots) {
  // One polyline per key over points {at, values}; gaps where a point has no value; with
  // dots, a mark on each point too (a minute alone still shows).
  var max = 0;
  points.forEach(function (p) { keys.forEach(function (k) { if (p.values[k.name] != null) max = Math.max(max, p.values[k.name]); }); });
  var out = keys.map(function (k) {
    var runs = [], run = [];
    points.forEach(function (p) {
      var v = p.values[k.name];
      if (v == null) { if (run.length) runs.push(run); run = []; return; }
      run.push(((p.at - start) / span * W).toFixed(1) + "," + y(v, max || 1));
    });
    if (run.length) runs.push(run);
    return runs.map(function (r) {
      var marks = dots ? r.map(function (xy) {
        var c = xy.split(",");
        return '<circle cx="' + c[0] + '" cy="' + c[1] + '" r="2.5" fill="' + k.color + '"/>';
      }).join("") : "";
      if (r.length === 1) r.push((Number(r[0].split(",")[0]) + 4).toFixed(1) + "," + r[0].split(",")[1]);
      return '<polyline fill="none" stroke="' + k.color + '" stroke-width="2" points="' + r.join(" ") + '"/>' + marks;
    }).join("");
  }).join("");
  svg.innerHTML = axis(start, start + span) + out;
  return max;
}

function ms(v) { return v === null || v === undefined ? "-" : (v * 1000).toFixed(1) + " ms"; }

var PCT = [{name: "p50", color: COLORS[0]}, {name: "p90", color: COLORS[3]}, {name: "p99", color: COLORS[1]}];

function drawCharts(history) {
  var start = history.start, end = history.end, span = Math.max(end - start, 60);
  var series = history.series || [];
  var done = document.getElementById("chart-done");
  if (done) {
    var max = bars(done, series, start, span, [{name: "succeeded", color: COLORS[2]},
      {name: "failed", color: COLORS[1]}, {name: "retried", color: COLORS[3]}]);
    setText("[data-chart-max=done]", max + "/min");
    var note = document.querySelector("[data-estimated]");
    if (note) note.hidden = !series.some(function (s) { return s.estimated; });
  }
  [["chart-wait", "wait"], ["chart-runtime", "runtime"]].forEach(function (pair) {
    var svg = document.getElementById(pair[0]);
    if (!svg) return;
    var points = series.filter(function (s) { return s[pair[1]]; }).map(function (s) {
      return {at: s.minute + 30, values: s[pair[1]]};
    });
    setText("[data-chart-max=" + pair[1] + "]", ms(lines(svg, points, start, span, PCT, true) || null));
  });
  var depth = document.getElementById("chart-depth");
  var points = history.depth || [];
  if (depth) {
    var names = {};
    points.forEach(function (p) { Object.keys(p.depth).forEach(function (n) { names[n] = 1; }); });
    var keys = Object.keys(names).sort().map(function (n, i) { return {name: n, color: COLORS[i % COLORS.length]}; });
    var m = lines(depth, points.map(function (p) {
      var values = {};
      keys.forEach(function (k) { values[k.name] = p.depth[k.name] || 0; });
      return {at: p.at, values: values};
    }), start, span, keys);
    var legend = document.getElementById("legend-depth");
    if (legend) {
      legend.textContent = "";
      keys.forEach(function (k) {
        var mark = document.createElement("i");
        mark.style.background = k.color;
        legend.appendChild(mark);
        legend.appendChild(document.createTextNode(k.name));
      });
    }
    setText("[data-chart-max=depth]", m);
  }
  setText("[data-chart-span]", Math.ceil(span / 60) + " min");
  ["p50", "p90", "p99"].forEach(function (k) {
    setText("[data-runtime=" + k + "]", ms((history.runtime || {})[k]));
    setText("[data-wait=" + k + "]", ms((history.wait || {})[k]));
  });
}

function refreshHistory() {
  // The charts' queue (the flow page's ?queue=), or every queue.
  var charts = document.querySelector("[data-history-queue]");
  var queue = charts ? charts.getAttribute("data-history-queue") : "";
  var url = "/api/history" + (queue ? "?queue=" + encodeURIComponent(queue) : "");
  fetch(url, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(drawCharts);
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
  var chartQueue = document.getElementById("chart-queue");
  if (chartQueue) {
    // Choosing a queue shows its charts at once (the button is there without JS).
    chartQueue.addEventListener("change", function () { chartQueue.form.submit(); });
  }
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
