// The report, drawn from data: used by the report page and by the static export, so that each
// chart is drawn one way. `bundle` = {audit, model, probe_set, report}; `thumbnail(img, probe,
// dy, dx)` fills an <img> (an authenticated fetch on the page, a data: URI in the export).
"use strict";
(function (SA) {
  const el = SA.el;

  SA.renderReport = function (root, bundle, thumbnail) {
    const report = bundle.report;
    const classes = (bundle.model && bundle.model.class_names) ||
      (report.provenance && report.provenance.config && report.provenance.config.class_names) || null;
    const className = (index) => (index === null || index === undefined ? "—"
      : classes && classes[index] !== undefined ? `${classes[index]} (${index})` : String(index));
    const sections = [
      header(bundle),
      summaryCards(report),
      splits(report),
      shiftMaps(report),
      phaseView(report),
      layerChart(report),
      positionMap(report),
      worstCases(report, className, thumbnail),
      provenance(bundle),
    ];
    for (const section of sections) if (section) root.append(section.node || section);
    // Charts are drawn once their containers are in the page, so that they get its width.
    for (const section of sections) if (section && section.draw) section.draw();
  };

  function header(bundle) {
    const r = bundle.report;
    const shifts = r.shift_map ? r.shift_map.shifts.length : 0;
    const title = bundle.model ? `${bundle.model.name} · version ${bundle.model.version}` : "Report";
    const facts = [
      ["mode", r.mode],
      ["shifts", shifts],
      ["probes", r.provenance ? r.provenance.probe_count : "—"],
      ["input", r.input_size ? `${r.input_size[0]}×${r.input_size[1]}` : "—"],
      ["classes", r.num_classes],
      ["estimator", r.estimator],
      ["probe set", bundle.probe_set ? bundle.probe_set.name : "—"],
      ["finished", SA.when(bundle.audit && bundle.audit.finished_at)],
    ];
    const policy = bundle.audit && bundle.audit.policy;
    return el("section", { class: "report-head" },
      el("div", { class: "title-row" },
        el("h1", { text: title }),
        policy ? el("span", { class: `badge ${policy.status === "passed" ? "ok" : "bad"}`, text: `policies ${policy.status}` }) : null),
      el("p", { class: "muted mono", text: bundle.audit ? `audit ${bundle.audit.id}` : "" }),
      el("dl", { class: "facts" }, facts.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { text: v === undefined || v === null ? "—" : v })))),
      policy && policy.status === "failed"
        ? el("ul", { class: "reasons" }, policy.policies.flatMap((v) => v.reasons.map((reason) => el("li", { text: `${v.name}: ${reason}` }))))
        : null);
  }

  function estimateCard(key, label, help, estimate) {
    const interval = estimate.ci_low === null || estimate.ci_low === undefined
      ? "no interval" : `95% CI [${SA.num(estimate.ci_low)}, ${SA.num(estimate.ci_high)}]`;
    return el("div", { class: "card", attrs: { "data-metric": key, title: help } },
      el("div", { class: "card-label", text: label }),
      el("div", { class: "card-value", text: SA.num(estimate.value) }),
      el("div", { class: "card-ci", text: interval }),
      el("div", { class: "card-n", text: `n = ${estimate.n}` }));
  }

  function summaryCards(report) {
    const all = (report.summary && report.summary.all) || {};
    const cards = SA.METRICS.filter(([key]) => all[key]).map(([key, label, help]) => estimateCard(key, label, help, all[key]));
    return SA.panel("Summary", "Means over probes with percentile-bootstrap 95% intervals (science.md).",
      el("div", { class: "cards", attrs: { id: "summary-cards" } }, cards));
  }

  function splits(report) {
    const s = report.summary || {};
    const rows = [["unshifted_correct", "unshifted correct"], ["unshifted_wrong", "unshifted wrong"]]
      .filter(([key]) => s[key]);
    const count = (split) => Math.max(...Object.values(s[split]).filter(Boolean).map((e) => e.n));
    if (!rows.length) return null;
    const metrics = SA.METRICS.filter(([key]) => rows.some(([split]) => s[split][key]));
    return SA.panel("By unshifted correctness", "Consistency correlates with accuracy: the same metrics, split by whether the unshifted prediction was right.",
      el("div", { class: "table-wrap" }, el("table", { class: "data" },
        el("thead", {}, el("tr", {}, el("th", { text: "probes" }), metrics.map(([, label]) => el("th", { text: label })))),
        el("tbody", {}, rows.map(([split, label]) => el("tr", {},
          el("td", { class: "nowrap" }, el("span", { class: "strong", text: label }), el("span", { class: "muted", text: ` n = ${count(split)}` })),
          metrics.map(([key]) => {
            const e = s[split][key];
            return el("td", { class: "num", text: e ? SA.num(e.value) : "—" });
          })))))));
  }

  function shiftMaps(report) {
    const map = report.shift_map;
    if (!map || !map.shifts.length) return null;
    const agreement = el("div", { class: "chart", attrs: { id: "chart-agreement" } });
    const accuracy = map.accuracy ? el("div", { class: "chart", attrs: { id: "chart-accuracy" } }) : null;
    const node = SA.panel("Agreement over shifts",
      "A(t): the share of probes whose class at shift (dy, dx) equals their class at (0, 0)." +
        (accuracy ? " Right: accuracy at each shift (labels are present)." : ""),
      el("div", { class: accuracy ? "two" : "one" },
        el("figure", {}, agreement, el("figcaption", { text: "agreement" })),
        accuracy ? el("figure", {}, accuracy, el("figcaption", { text: "accuracy" })) : null));
    return {
      node,
      draw() {
        SA.heatmap(agreement, SA.shiftGrid(map.shifts, map.agreement), { zmin: 0, zmax: 1, label: "agreement" });
        if (accuracy) SA.heatmap(accuracy, SA.shiftGrid(map.shifts, map.accuracy), { zmin: 0, zmax: 1, label: "accuracy", colorscale: "Cividis" });
      },
    };
  }

  function detectedSteps(report) {
    const period = report.shift_map && report.shift_map.period;
    if (!period || !period.phase_agreement) return null;
    return period.phase_agreement.length;
  }

  function phaseView(report) {
    const map = report.shift_map;
    if (!map || !map.shifts.length) return null;
    const probe = SA.phaseGrid(map.shifts, map.agreement, 2);
    if (!probe) {
      return SA.panel("Stride phase", null, el("p", { class: "muted", text: "Needs an evenly spaced integer grid of shifts; this sweep has none." }));
    }
    const period = map.period || {};
    const detected = detectedSteps(report);
    const longest = Math.max(probe.axis[0], probe.axis[1]);
    const strides = (report.layers && report.layers.entries || []).map((e) => e.stride).filter((s) => s && s > 1);
    const choices = [];
    for (let p = 2; p <= Math.max(2, longest); p += 1) choices.push(p);
    let steps = detected || Math.min(...(strides.length ? strides : [2]), longest) || 2;
    if (!choices.includes(steps)) choices.push(steps);
    const chart = el("div", { class: "chart small", attrs: { id: "chart-phase" } });
    const select = el("select", { attrs: { id: "phase-period", "aria-label": "period p" } },
      choices.map((p) => el("option", { text: p, attrs: { value: p, selected: p === steps } })));
    const found = period.dy || period.dx
      ? `Detected period: dy ${period.dy ?? "none"}, dx ${period.dx ?? "none"} pixels.`
      : "No period detected: the map is not periodic with any period up to half the range.";
    const node = SA.panel("Stride phase",
      "Agreement by (dy mod p, dx mod p). A network with cumulative stride s is invariant to shifts by multiples of s when nothing else breaks it, so the period reveals the stride that aliases (science.md, Periodicity).",
      el("div", { class: "phase-controls" },
        el("span", { class: "badge neutral", attrs: { id: "phase-detected" }, text: found }),
        el("label", { attrs: { for: "phase-period" } }, "p (grid steps) ", select)),
      chart);
    const draw = () => {
      const grid = SA.phaseGrid(map.shifts, map.agreement, steps);
      SA.heatmap(chart, grid, { zmin: 0, zmax: 1, label: "agreement", xname: "dx mod p", yname: "dy mod p", height: 300 });
    };
    select.addEventListener("change", () => { steps = Number(select.value); draw(); });
    return { node, draw };
  }

  // The stride stages along depth: runs of layers with the same cumulative stride, read as
  // the receptive field's jump where the graph gives one (a padded map keeps its stage,
  // though H / h says otherwise), else as H / h. A layer with neither belongs to the stage it
  // sits in; the layers after the last map (a pooled or flattened head) are "flat".
  SA.stageStride = function (e) {
    const f = e.receptive_field;
    if (f && !f.mixes_all_positions && e.kind !== "non_spatial") return f.jump[0];
    return e.stride || null;
  };

  SA.strideStages = function (entries) {
    const strides = entries.map(SA.stageStride);
    const lastMap = strides.map(Boolean).lastIndexOf(true);
    let current = strides.find(Boolean) ? `stride ${strides.find(Boolean)}` : "flat";
    const stages = [];
    strides.forEach((stride, i) => {
      if (stride) current = `stride ${stride}`;
      const label = i > lastMap ? "flat" : current;
      const last = stages[stages.length - 1];
      if (last && last.label === label) last.to = i;
      else stages.push({ label, from: i, to: i });
    });
    return stages;
  };

  // Where the report's findings point, as layer indices along depth.
  SA.findingMarks = function (layers) {
    const f = layers.findings;
    if (!f) return [];
    const index = new Map(layers.entries.map((e, i) => [e.name, i]));
    const marks = [];
    const mark = (node, kind, text) => { if (node && index.has(node)) marks.push({ x: index.get(node), kind, text }); };
    if (f.aliasing_born_at) mark(f.aliasing_born_at.node, "aliasing", `aliasing born (local ${SA.num(f.aliasing_born_at.local_aliasing, 3)})`);
    if (f.field_covers_input_at) mark(f.field_covers_input_at.node, "field", "field covers the input");
    for (const pool of f.global_pools || []) mark(pool.node, "pool", "global pool");
    for (const leak of f.position_leaks || []) mark(leak.node, "leak", `position leak (${leak.detail})`);
    return marks;
  };

  const MARK_COLOURS = { aliasing: "#c92a2a", field: "#1864ab", pool: "#2b8a3e", leak: "#862e9c" };

  function fieldFraction(e) {
    const f = e.receptive_field;
    return f ? Math.min(f.input_fraction[0], f.input_fraction[1]) : null;
  }

  function layerChart(report) {
    const layers = report.layers;
    if (!layers) return null;
    if (!layers.available || !layers.entries.length) {
      return SA.panel("Per-layer equivariance", null, el("p", { class: "muted", text: layers.reason || "No layer profile in this report." }));
    }
    const entries = layers.entries;
    const x = entries.map((_, i) => i);
    const value = (name) => entries.map((e) => (e[name] === undefined ? null : e[name]));
    const on = entries.map((e) => (e.on_grid_error === undefined || e.on_grid_error === null ? e.relative_error : e.on_grid_error));
    const hover = entries.map((e, i) => [
      `#${i} ${SA.plotText(e.name)}`, SA.plotText(e.op_type), `stride ${e.stride ?? "—"} · shape ${e.shape.join("×")}`,
      `on grid ${SA.num(on[i])} · off grid ${SA.num(e.off_grid_error)}`,
      `aliasing ${SA.num(e.aliasing_error)} · local ${SA.num(e.local_aliasing)}`,
      `field ${e.receptive_field ? e.receptive_field.size.map((s) => SA.num(s)).join("×") : "—"} (${SA.num(fieldFraction(e))} of the input)`,
      e.role_detail ? SA.plotText(e.role_detail) : null,
      ...Object.entries(e.reasons || {}).map(([k, v]) => `${k}: ${SA.plotText(v)}`.slice(0, 160)),
    ].filter(Boolean).join("<br>"));
    const stages = SA.strideStages(entries);
    const marks = SA.findingMarks(layers);
    const findings = layers.findings && layers.findings.summary && layers.findings.summary.length
      ? el("ul", { class: "findings", attrs: { id: "layer-findings" } }, layers.findings.summary.map((line) => el("li", { text: line })))
      : null;
    const chart = el("div", { class: "chart wide", attrs: { id: "chart-layers" } });
    const node = SA.panel("Where invariance breaks",
      `Every layer along depth, grouped by stride stage (science.md, report 1.2), over ${layers.probes} probes: the error under shifts by multiples of its stride (on grid: borders), under one-pixel shifts (off grid: aliasing and borders), and on the network with circular padding (aliasing alone); bars: the aliasing each node adds by itself; dotted, right axis: the receptive field as a share of the input.` +
        (layers.reason ? ` Note: ${layers.reason}` : ""),
      findings, chart);
    const line = (name, label, y, colour, dash) => ({
      type: "scatter", mode: "lines+markers", name: label, x, y, connectgaps: false,
      line: { color: colour, width: 2, dash: dash || "solid" }, marker: { size: 4 },
      hovertext: hover, hovertemplate: `%{hovertext}<extra>${label}</extra>`, meta: name,
    });
    return {
      node,
      draw() {
        const top = Math.max(...[on, value("off_grid_error"), value("aliasing_error"), value("local_aliasing")].flat().filter((v) => v !== null), 1e-3);
        SA.plot(chart, [
          line("on_grid_error", "on grid (borders)", on, "#868e96"),
          line("aliasing_error", "aliasing (torus)", value("aliasing_error"), "#e8590c"),
          line("off_grid_error", "off grid (deployed)", value("off_grid_error"), "#1971c2", "dash"),
          { type: "bar", name: "local aliasing", x, y: value("local_aliasing"), marker: { color: "rgba(201, 42, 42, 0.55)" }, hovertext: hover, hovertemplate: "%{hovertext}<extra>local aliasing</extra>", meta: "local_aliasing" },
          { type: "scatter", mode: "lines", name: "field / input", x, y: entries.map(fieldFraction), yaxis: "y2", connectgaps: false, line: { color: "#2f9e44", dash: "dot", width: 2 }, hovertext: hover, hovertemplate: "%{hovertext}<extra>field / input</extra>", meta: "field_fraction" },
        ], {
          height: 440,
          margin: { l: 56, r: 64, t: 40, b: 48 },
          xaxis: { title: { text: "depth (layer index)" }, range: [-0.5, entries.length - 0.5], zeroline: false },
          yaxis: { title: { text: "relative error" }, rangemode: "tozero", range: [0, 1.08 * top] },
          yaxis2: { title: { text: "field / input" }, overlaying: "y", side: "right", showgrid: false, rangemode: "tozero" },
          legend: { orientation: "h", y: -0.16, x: 0 },
          bargap: 0.15,
          hovermode: "closest",
          shapes: [
            ...stages.map((s, k) => ({ type: "rect", xref: "x", yref: "paper", x0: s.from - 0.5, x1: s.to + 0.5, y0: 0, y1: 1, fillcolor: k % 2 ? "rgba(0,0,0,0)" : "rgba(134, 142, 150, 0.08)", line: { width: 0 }, layer: "below" })),
            { type: "line", xref: "paper", yref: "y2", x0: 0, x1: 1, y0: 1, y1: 1, line: { color: "#2f9e44", width: 1, dash: "dot" } },
            ...marks.map((m) => ({ type: "line", xref: "x", yref: "paper", x0: m.x, x1: m.x, y0: 0, y1: 1, line: { color: MARK_COLOURS[m.kind], width: 1.5, dash: "dash" } })),
          ],
          annotations: [
            ...stages.map((s) => ({ xref: "x", yref: "paper", x: (s.from + s.to) / 2, y: 1.0, yanchor: "bottom", text: SA.plotText(s.label), showarrow: false, font: { size: 10, color: "#495057" } })),
            ...marks.map((m, k) => ({ xref: "x", yref: "paper", x: m.x, y: 0.92 - 0.07 * (k % 4), xanchor: "left", text: SA.plotText(m.text), showarrow: false, font: { size: 10, color: MARK_COLOURS[m.kind] }, bgcolor: "rgba(255,255,255,0.8)" })),
          ],
        });
      },
    };
  }

  function positionMap(report) {
    const pm = report.position_map;
    if (!pm) return null;
    const grid = (values) => ({ ys: pm.positions_y, xs: pm.positions_x, z: values });
    const agreement = el("div", { class: "chart", attrs: { id: "chart-position" } });
    const accuracy = pm.accuracy ? el("div", { class: "chart", attrs: { id: "chart-position-accuracy" } }) : null;
    const node = SA.panel("Canvas position map",
      `The probe resized to ${pm.object_size}×${pm.object_size} and pasted with its top-left corner at each position: does the class survive moving the object across the image?`,
      el("div", { class: accuracy ? "two" : "one" },
        el("figure", {}, agreement, el("figcaption", { text: "agreement with the centred object" })),
        accuracy ? el("figure", {}, accuracy, el("figcaption", { text: "accuracy" })) : null));
    return {
      node,
      draw() {
        const axes = { xname: "x (top-left, pixels)", yname: "y (top-left, pixels)" };
        SA.heatmap(agreement, grid(pm.agreement), Object.assign({ zmin: 0, zmax: 1, label: "agreement" }, axes));
        if (accuracy) SA.heatmap(accuracy, grid(pm.accuracy), Object.assign({ zmin: 0, zmax: 1, label: "accuracy", colorscale: "Cividis" }, axes));
      },
    };
  }

  function thumb(probe, dy, dx, caption, thumbnail, changed) {
    const img = el("img", { attrs: { alt: `${probe} shifted by (${dy}, ${dx})`, "data-probe": probe, "data-dy": dy, "data-dx": dx } });
    thumbnail(img, probe, dy, dx);
    return el("figure", { class: `thumb${changed ? " changed" : ""}` }, img,
      el("figcaption", {}, el("span", { class: "shift", text: `(${dy}, ${dx})` }), el("span", { class: "muted", text: `class ${caption}` })));
  }

  function worstCases(report, className, thumbnail) {
    const cases = report.worst_cases || [];
    if (!cases.length) return null;
    const total = report.shift_map ? report.shift_map.shifts.length : null;
    const rows = cases.map((c) => el("article", { class: "case" },
      el("div", { class: "case-head" },
        el("h3", { class: "mono", text: c.probe }),
        el("span", { class: "badge bad", text: `${c.disagreeing_shifts}${total ? ` of ${total}` : ""} shifts change the class (${SA.num(100 * c.disagreement_fraction, 3)}%)` }),
        el("span", { class: "muted", text: (c.label === null ? "" : `label ${className(c.label)} · `) + `unshifted ${className(c.unshifted_prediction)}` })),
      el("div", { class: "thumbs" },
        thumb(c.probe, 0, 0, className(c.unshifted_prediction), thumbnail, false),
        c.examples.map((e) => thumb(c.probe, e.shift[0], e.shift[1], className(e.predicted), thumbnail, true)))));
    return SA.panel("Worst cases",
      "The probes that change class under the most shifts, as the model saw them (preprocessed, shifted, before normalisation), at (0, 0) and at the smallest shifts that change the answer.",
      el("div", { class: "cases", attrs: { id: "worst-cases" } }, rows));
  }

  function provenance(bundle) {
    const p = bundle.report.provenance;
    if (!p) return null;
    const items = [
      ["engine", p.engine_version], ["model format", p.model_format], ["model sha256", p.model_sha256],
      ["probe set sha256", p.probe_set_sha256], ["labelled", p.labelled], ["device", p.device],
      ["batch", p.batch_size], ["precision", p.precision], ["shards", p.shards],
      ["wall time", p.wall_time_s === undefined ? undefined : `${p.wall_time_s} s`], ["seed", p.seed],
    ].filter(([, v]) => v !== undefined && v !== null);
    return SA.panel("Provenance", null,
      el("dl", { class: "facts small" }, items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", { class: "mono", text: v })))));
  }
})(window.SA = window.SA || {});
