// Helpers shared by every page and by the static export: building DOM from data (text only,
// never markup), number formatting, shift grids and plotly defaults. No network here.
"use strict";
(function (SA) {
  // Creates an element. Data only ever reaches the page as text nodes or attribute values,
  // so names from users (models, layers, probes) cannot inject markup.
  SA.el = function (tag, props, ...children) {
    const node = document.createElement(tag);
    const p = props || {};
    if (p.class) node.className = p.class;
    if (p.text !== undefined && p.text !== null) node.textContent = String(p.text);
    for (const [name, value] of Object.entries(p.attrs || {})) {
      if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
    }
    for (const [event, handler] of Object.entries(p.on || {})) node.addEventListener(event, handler);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  };

  SA.clear = function (node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  };

  // Four significant digits, like the CLI's summary; a dash for "not defined".
  SA.num = function (value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "—";
    if (value === 0) return "0";
    return String(Number(Number(value).toPrecision(digits || 4)));
  };

  SA.signed = function (value) {
    if (value === null || value === undefined) return "—";
    return (value > 0 ? "+" : "") + SA.num(value);
  };

  SA.when = function (iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
  };

  SA.METRICS = [
    ["consistency", "Consistency", "Chance that two shifts give the same class"],
    ["flip_rate", "Flip rate", "Adjacent shifts whose top-1 differs"],
    ["mean_prob_change", "Mean prob. change", "Change of the predicted class's probability between adjacent shifts"],
    ["mean_kl", "Mean KL", "KL(p(0) ‖ p(t)), mean over shifts"],
    ["invariant_fraction", "Invariant fraction", "Probes whose class never changes"],
    ["accuracy", "Accuracy", "Correct at t = 0"],
    ["shift_accuracy_mean", "Shift accuracy", "Accuracy, mean over shifts"],
    ["worst_case_accuracy", "Worst-case accuracy", "Correct under every shift"],
    ["worst_case_accuracy_drop", "Worst-case accuracy drop", "Accuracy minus worst-case accuracy"],
    ["shift_accuracy_drop", "Shift accuracy drop", "Accuracy minus shift accuracy"],
  ];
  SA.HIGHER_IS_BETTER = new Set([
    "consistency", "invariant_fraction", "accuracy", "shift_accuracy_mean", "worst_case_accuracy",
  ]);
  SA.metricLabel = function (name) {
    const found = SA.METRICS.find((m) => m[0] === name);
    return found ? found[1] : name;
  };

  function sortedUnique(values) {
    return Array.from(new Set(values)).sort((a, b) => a - b);
  }

  // (dy, dx) shifts and one value each -> rows of dy, columns of dx (null where not swept).
  SA.shiftGrid = function (shifts, values) {
    const ys = sortedUnique(shifts.map((s) => s[0]));
    const xs = sortedUnique(shifts.map((s) => s[1]));
    const z = ys.map(() => xs.map(() => null));
    shifts.forEach((s, k) => {
      z[ys.indexOf(s[0])][xs.indexOf(s[1])] = values[k] === undefined ? null : values[k];
    });
    return { ys, xs, z };
  };

  // The spacing of a sorted, evenly spaced integer axis (1 for a single value), else null.
  function spacing(values) {
    if (!values.every(Number.isInteger)) return null;
    if (values.length < 2) return 1;
    const step = values[1] - values[0];
    return values.every((v, i) => i === 0 || v - values[i - 1] === step) ? step : null;
  }

  // Mean agreement by phase (dy mod p, dx mod p), p counted in grid steps as the engine does
  // (science.md, "Periodicity"); null when the shifts are not an evenly spaced integer grid.
  SA.phaseGrid = function (shifts, values, steps) {
    const ys = sortedUnique(shifts.map((s) => s[0]));
    const xs = sortedUnique(shifts.map((s) => s[1]));
    const sy = spacing(ys);
    const sx = spacing(xs);
    if (sy === null || sx === null || ys.length * xs.length !== shifts.length) return null;
    const sum = Array.from({ length: steps }, () => new Array(steps).fill(0));
    const hits = Array.from({ length: steps }, () => new Array(steps).fill(0));
    const mod = (v, m) => ((v % m) + m) % m;
    shifts.forEach((s, k) => {
      if (values[k] === null) return;
      const r = mod(Math.round(s[0] / sy), steps);
      const c = mod(Math.round(s[1] / sx), steps);
      sum[r][c] += values[k];
      hits[r][c] += 1;
    });
    const z = sum.map((row, r) => row.map((v, c) => (hits[r][c] ? v / hits[r][c] : null)));
    const labels = (step) => Array.from({ length: steps }, (_, i) => i * step);
    return { ys: labels(sy), xs: labels(sx), z, spacing: [sy, sx], axis: [ys.length, xs.length] };
  };

  // Plotly reads a few tags and entities in labels: names are shown literally.
  SA.plotText = function (text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  };

  SA.PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };
  SA.FONT = { family: "Inter, system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12, color: "#1f2933" };

  SA.plot = function (div, traces, layout) {
    const base = {
      font: SA.FONT,
      margin: { l: 56, r: 16, t: 16, b: 48 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#ffffff",
    };
    return window.Plotly.newPlot(div, traces, Object.assign(base, layout || {}), SA.PLOT_CONFIG);
  };

  // A heatmap over (dy, dx) with square cells, dy growing downwards as in an image.
  SA.heatmap = function (div, grid, options) {
    const o = options || {};
    const cells = grid.ys.length * grid.xs.length;
    const trace = {
      type: "heatmap",
      x: grid.xs,
      y: grid.ys,
      z: grid.z,
      zmin: o.zmin,
      zmax: o.zmax,
      zmid: o.zmid,
      colorscale: o.colorscale || "Viridis",
      reversescale: Boolean(o.reversescale),
      hoverongaps: false,
      hovertemplate: (o.xname || "dx") + " %{x}, " + (o.yname || "dy") + " %{y}<br>" +
        (o.label || "value") + " %{z:.4f}<extra></extra>",
      colorbar: { thickness: 12, outlinewidth: 0, title: { text: o.label || "", side: "right" } },
    };
    if (cells <= 169) {
      trace.texttemplate = "%{z:.2f}";
      trace.textfont = { size: cells <= 81 ? 11 : 9 };
    }
    return SA.plot(div, [trace], {
      height: o.height || 360,
      xaxis: { title: { text: o.xname || "dx (pixels)" }, tickmode: grid.xs.length <= 17 ? "array" : "auto", tickvals: grid.xs, constrain: "domain" },
      yaxis: { title: { text: o.yname || "dy (pixels)" }, autorange: "reversed", scaleanchor: "x", tickmode: grid.ys.length <= 17 ? "array" : "auto", tickvals: grid.ys, constrain: "domain" },
      margin: { l: 56, r: 8, t: 8, b: 48 },
    });
  };

  SA.panel = function (title, help, ...body) {
    return SA.el("section", { class: "panel" },
      SA.el("h2", { text: title }),
      help ? SA.el("p", { class: "help", text: help }) : null,
      ...body);
  };
})(window.SA = window.SA || {});
