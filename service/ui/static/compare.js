// The compare page: audits side by side against the first (GET /v1/compare), and the trend of
// one model over its versions (GET /v1/trend).
"use strict";
(function (SA) {
  const el = SA.el;
  const TREND = [
    ["consistency", "#1c7ed6"], ["flip_rate", "#d9480f"], ["accuracy", "#2b8a3e"], ["worst_case_accuracy", "#862e9c"],
  ];

  function modelName(model, fallback) {
    return model ? `${model.name} · ${model.version}` : fallback;
  }

  // A delta is good or bad by the metric's direction; only a significant one gets a mark.
  function mark(delta) {
    if (!delta.significant) return el("span", { class: "sig ns", text: "n.s.", attrs: { title: "the 95% interval includes 0" } });
    const better = SA.HIGHER_IS_BETTER.has(delta.metric) ? delta.delta > 0 : delta.delta < 0;
    return el("span", { class: `sig ${better ? "better" : "worse"}`, attrs: { title: "the 95% interval excludes 0" }, text: better ? "▲ significantly better" : "▼ significantly worse" });
  }

  function deltasTable(k, comparison) {
    return el("table", { class: "data deltas", attrs: { id: `deltas-${k}` } },
      el("thead", {}, el("tr", {}, ["Metric", "Baseline", "Candidate", "Δ (candidate − baseline)", "95% CI of Δ", "Significance"].map((h) => el("th", { text: h })))),
      el("tbody", {}, comparison.deltas.map((d) => el("tr", { attrs: { "data-metric": d.metric, "data-significant": String(d.significant) } },
        el("td", { text: SA.metricLabel(d.metric) }),
        el("td", { class: "num", text: SA.num(d.baseline) }),
        el("td", { class: "num", text: SA.num(d.candidate) }),
        el("td", { class: "num strong", text: SA.signed(d.delta) }),
        el("td", { class: "num", text: d.ci_low === null ? "—" : `[${SA.signed(d.ci_low)}, ${SA.signed(d.ci_high)}]` }),
        el("td", {}, mark(d))))));
  }

  function mcnemar(k, test) {
    if (!test) return el("p", { class: "muted", attrs: { id: `mcnemar-${k}` }, text: "McNemar test: only for paired audits." });
    return el("p", { attrs: { id: `mcnemar-${k}`, "data-significant": String(test.significant) } },
      el("span", { class: "strong", text: "Exact McNemar test on per-probe invariance: " }),
      `${test.baseline_only} probes invariant in the baseline only, ${test.candidate_only} in the candidate only; p = ${SA.num(test.p_value, 3)} `,
      test.significant ? el("span", { class: "sig worse-or-better", text: "(significant)" }) : el("span", { class: "sig ns", text: "(not significant)" }));
  }

  async function comparison(section, ids) {
    const data = await SA.api(`/v1/compare?audits=${ids.map(encodeURIComponent).join(",")}`);
    const models = await Promise.all(data.audits.map((a) => SA.model(a.model_id)));
    const byId = new Map(data.audits.map((a, i) => [a.id, [a, models[i]]]));
    section.append(SA.panel("Audits", "Each candidate is compared with the baseline: paired over the same probes when both used the same probe set, sweep and input size.",
      el("div", { class: "table-wrap" }, el("table", { class: "data", attrs: { id: "compared-audits" } },
        el("thead", {}, el("tr", {}, ["", "Model", "Created", "Consistency", "Flip rate", "Accuracy", ""].map((h) => el("th", { text: h })))),
        el("tbody", {}, data.audits.map((a, i) => el("tr", {},
          el("td", {}, el("span", { class: `badge ${i ? "neutral" : "base"}`, text: i ? `candidate ${i}` : "baseline" })),
          el("td", { class: "strong", text: modelName(models[i], a.model_id) }),
          el("td", { class: "small", text: SA.when(a.created_at) }),
          el("td", { class: "num", text: SA.num(a.consistency) }),
          el("td", { class: "num", text: SA.num(a.flip_rate) }),
          el("td", { class: "num", text: SA.num(a.accuracy) }),
          el("td", {}, el("a", { text: "Report", attrs: { href: SA.reportLink(a.id) } })))))))));
    const draws = [];
    data.comparisons.forEach((c, index) => {
      const k = index + 1;
      const [, model] = byId.get(c.candidate);
      const diff = c.shift_map ? el("div", { class: "chart", attrs: { id: `chart-diff-${k}` } }) : null;
      const layers = c.layers.length ? el("div", { class: "chart", attrs: { id: `chart-layers-${k}` } }) : null;
      section.append(SA.panel(`Candidate ${k}: ${modelName(model, c.candidate)}`, null,
        el("div", { class: "pairing" },
          el("span", { class: `badge ${c.pairing === "paired" ? "ok" : "warn"}`, text: c.pairing }),
          c.reason ? el("span", { class: "muted", text: c.reason }) : null),
        el("div", { class: "table-wrap" }, deltasTable(k, c)),
        mcnemar(k, c.mcnemar),
        el("div", { class: "two" },
          el("figure", {}, diff || el("p", { class: "muted", text: "The audits swept different shifts: no map of differences." }),
            el("figcaption", { text: "agreement difference per shift (candidate − baseline)" })),
          el("figure", {}, layers || el("p", { class: "muted", text: "No layer of the same name in both profiles." }),
            el("figcaption", { text: "per layer along depth: on-grid (border) and aliasing errors, local aliasing" }))),
        findingsPair(k, c.findings)));
      draws.push(() => {
        if (diff) {
          const values = c.shift_map.difference.map((v) => (v === null ? null : v));
          const bound = Math.max(0.05, ...values.filter((v) => v !== null).map(Math.abs));
          SA.heatmap(diff, SA.shiftGrid(c.shift_map.shifts, values), { zmin: -bound, zmax: bound, zmid: 0, colorscale: "RdBu", reversescale: true, label: "Δ agreement" });
        }
        if (layers) {
          const x = c.layers.map((_, i) => i);
          const hover = c.layers.map((l, i) => `#${i} ${SA.plotText(l.name)}`);
          const of = (side, name) => c.layers.map((l) => (l[side] ? l[side][name] : null));
          const trace = (name, y, style) => Object.assign({ name, x, y, hovertext: hover, hovertemplate: `%{hovertext}<br>${name} %{y:.4f}<extra></extra>` }, style);
          SA.plot(layers, [
            trace("baseline on grid", c.layers.map((l) => l.baseline_relative_error), { type: "scatter", mode: "lines", line: { color: "#adb5bd" } }),
            trace("candidate on grid", c.layers.map((l) => l.candidate_relative_error), { type: "scatter", mode: "lines", line: { color: "#495057" } }),
            trace("baseline aliasing", of("baseline", "aliasing_error"), { type: "scatter", mode: "lines", line: { color: "#ffa94d", dash: "dash" } }),
            trace("candidate aliasing", of("candidate", "aliasing_error"), { type: "scatter", mode: "lines", line: { color: "#e8590c" } }),
            trace("baseline local", of("baseline", "local_aliasing"), { type: "bar", marker: { color: "rgba(173, 181, 189, 0.6)" } }),
            trace("candidate local", of("candidate", "local_aliasing"), { type: "bar", marker: { color: "rgba(201, 42, 42, 0.55)" } }),
          ], {
            height: 380, barmode: "group", legend: { orientation: "h", y: -0.2 },
            margin: { l: 56, r: 8, t: 16, b: 48 },
            xaxis: { title: { text: "depth (layers of both, by name)" }, zeroline: false },
            yaxis: { title: { text: "relative error" }, rangemode: "tozero" },
            hovermode: "closest",
          });
        }
      });
    });
    draws.forEach((draw) => draw());
    return models[0] ? models[0].name : null;
  }

  // The two diagnoses (report 1.2's findings) side by side, one line each.
  function findingsPair(k, pair) {
    if (!pair || (!pair.baseline && !pair.candidate)) return null;
    const side = (title, f) => el("div", {},
      el("h3", { text: title }),
      f ? el("ul", { class: "findings" }, f.summary.map((line) => el("li", { text: line })))
        : el("p", { class: "muted", text: "No findings: a report before 1.2." }));
    return el("div", { class: "findings-pair", attrs: { id: `findings-${k}` } },
      side("baseline", pair.baseline), side("candidate", pair.candidate));
  }

  async function trend(section, name) {
    const points = await SA.api(`/v1/trend?model_name=${encodeURIComponent(name)}`);
    if (!points.length) {
      section.append(SA.panel(`Trend: ${name}`, null, el("p", { class: "muted", text: "No model of this name in your team." })));
      return;
    }
    const chart = el("div", { class: "chart wide", attrs: { id: "chart-trend" } });
    section.append(SA.panel(`Trend: ${name}`, "Every version of the model, oldest first, with its latest succeeded audit (versions without one are gaps).",
      chart,
      el("div", { class: "table-wrap" }, el("table", { class: "data", attrs: { id: "trend-table" } },
        el("thead", {}, el("tr", {}, ["Version", "Uploaded", ...TREND.map(([m]) => SA.metricLabel(m)), ""].map((h) => el("th", { text: h })))),
        el("tbody", {}, points.map((p) => el("tr", {},
          el("td", { class: "strong", text: p.version }),
          el("td", { class: "small", text: SA.when(p.model_created_at) }),
          TREND.map(([m]) => el("td", { class: "num", text: p.audit ? SA.num(p.audit[m]) : "—" })),
          el("td", {}, p.audit ? el("a", { text: "Report", attrs: { href: SA.reportLink(p.audit.id) } }) : el("span", { class: "muted", text: "not audited" })))))))));
    const x = points.map((_, i) => i);
    const traces = TREND
      .filter(([m]) => points.some((p) => p.audit && p.audit[m] !== null))
      .map(([m, color]) => ({
        type: "scatter", mode: "lines+markers", name: SA.metricLabel(m), x, connectgaps: false,
        y: points.map((p) => (p.audit ? p.audit[m] : null)), line: { color, width: 2 }, marker: { size: 8 },
      }));
    SA.plot(chart, traces, {
      height: 340, legend: { orientation: "h", y: 1.12 }, margin: { l: 56, r: 16, t: 24, b: 48 },
      xaxis: { title: { text: "version" }, tickmode: "array", tickvals: x, ticktext: points.map((p) => SA.plotText(p.version)), range: [-0.3, points.length - 0.7], zeroline: false, showgrid: false },
      yaxis: { rangemode: "tozero" },
    });
  }

  SA.start(async (content) => {
    const params = new URLSearchParams(window.location.search);
    const ids = (params.get("audits") || "").split(",").map((s) => s.trim()).filter(Boolean);
    let name = params.get("model_name") || "";
    const idsInput = el("input", { attrs: { id: "compare-ids", type: "text", value: ids.join(","), placeholder: "audit ids, comma-separated; the first is the baseline", "aria-label": "audit ids" } });
    const nameInput = el("input", { attrs: { id: "trend-model", type: "search", value: name, placeholder: "model name", "aria-label": "model name" } });
    const go = (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      if (idsInput.value.trim()) query.set("audits", idsInput.value.replace(/\s+/g, ""));
      if (nameInput.value.trim()) query.set("model_name", nameInput.value.trim());
      window.location.search = query.toString();
    };
    content.append(
      el("div", { class: "page-head" }, el("h1", { text: "Compare & trend" })),
      el("form", { class: "toolbar", on: { submit: go } },
        el("label", { class: "grow" }, "Audits ", idsInput),
        el("label", {}, "Trend of model ", nameInput),
        el("button", { class: "primary", text: "Show", attrs: { type: "submit" } })));
    const compared = el("div", { attrs: { id: "comparison" } });
    const trended = el("div", { attrs: { id: "trend" } });
    content.append(compared, trended);
    if (!ids.length && !name) {
      compared.append(SA.panel("Nothing selected yet", null,
        el("p", {}, "Select audits in the ", el("a", { text: "audits list", attrs: { href: "/ui/" } }), " and press “Compare selected”, or enter audit ids or a model name above.")));
    }
    if (ids.length) {
      try {
        const baselineModel = await comparison(compared, ids);
        if (!name && baselineModel) {
          name = baselineModel;
          nameInput.value = name;
        }
      } catch (error) {
        if (error.status === 401) return;
        SA.error(compared, error);
      }
    }
    if (name) await trend(trended, name);
    document.body.dataset.rendered = "true";
  });
})(window.SA = window.SA || {});
