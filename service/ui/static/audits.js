// The audits list: filters, status badges, live progress, and picking audits to compare.
"use strict";
(function (SA) {
  const el = SA.el;
  const ACTIVE = new Set(["queued", "running"]);
  const FAST_MS = 2000; // while an audit is queued or running
  const SLOW_MS = 10000; // otherwise, so audits submitted elsewhere still show up
  const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled"];

  SA.start(async (content) => {
    const params = new URLSearchParams(window.location.search);
    const state = { status: params.get("status") || "", model: params.get("model_name") || "", limit: 50, selected: [] };
    let timer = null;

    const status = el("select", { attrs: { id: "filter-status", "aria-label": "status" } },
      STATUSES.map((s) => el("option", { text: s || "any status", attrs: { value: s, selected: s === state.status } })));
    const model = el("input", { attrs: { id: "filter-model", type: "search", placeholder: "model name", value: state.model, "aria-label": "model name" } });
    const compare = el("button", { class: "primary", text: "Compare selected", attrs: { id: "compare-selected", type: "button", disabled: true } });
    const hint = el("span", { class: "muted", attrs: { id: "selection-hint" }, text: "Select two or more succeeded audits; the first selected is the baseline." });
    const body = el("tbody", { attrs: { id: "audit-rows" } });
    const more = el("button", { class: "link", text: "Show more", attrs: { type: "button", hidden: true } });
    const updated = el("span", { class: "muted small", attrs: { id: "updated" } });

    content.append(
      el("div", { class: "page-head" }, el("h1", { text: "Audits" }), updated),
      el("form", { class: "toolbar", attrs: { id: "filters" }, on: { submit: (e) => { e.preventDefault(); apply(); } } },
        el("label", {}, "Status ", status),
        el("label", {}, "Model ", model),
        el("button", { text: "Filter", attrs: { type: "submit" } }),
        el("span", { class: "spacer" }),
        hint, compare),
      el("div", { class: "table-wrap panel flush" }, el("table", { class: "data audits" },
        el("thead", {}, el("tr", {},
          ["", "Status", "Progress", "Model", "Created", "Consistency", "Flip rate", "Accuracy", "Worst-case acc.", ""].map((h) => el("th", { text: h })))),
        body)),
      more);

    status.addEventListener("change", apply);
    more.addEventListener("click", () => { state.limit = Math.min(200, state.limit + 50); refresh(); });
    compare.addEventListener("click", () => {
      window.location.href = `/ui/compare?audits=${state.selected.map(encodeURIComponent).join(",")}`;
    });

    function apply() {
      state.status = status.value;
      state.model = model.value.trim();
      const query = new URLSearchParams();
      if (state.status) query.set("status", state.status);
      if (state.model) query.set("model_name", state.model);
      window.history.replaceState(null, "", `/ui/${query.toString() ? "?" + query : ""}`);
      refresh();
    }

    function toggle(id, on) {
      state.selected = state.selected.filter((s) => s !== id);
      if (on) state.selected.push(id);
      compare.disabled = state.selected.length < 2;
      hint.textContent = state.selected.length
        ? `${state.selected.length} selected; the first selected is the baseline.`
        : "Select two or more succeeded audits; the first selected is the baseline.";
    }

    async function row(audit) {
      const m = await SA.model(audit.model_id);
      const done = audit.status === "succeeded";
      const box = el("input", { attrs: { type: "checkbox", "aria-label": "select for comparing", "data-audit": audit.id, checked: state.selected.includes(audit.id), disabled: !done } });
      box.addEventListener("change", () => toggle(audit.id, box.checked));
      const modelCell = m
        ? el("td", {}, el("div", { class: "strong", text: m.name }), el("div", { class: "muted small", text: `version ${m.version}` }))
        : el("td", { class: "muted", text: audit.model_id });
      return el("tr", { attrs: { "data-audit": audit.id, "data-status": audit.status } },
        el("td", {}, box),
        el("td", {}, SA.badge(audit.status), audit.error ? el("div", { class: "error small", text: audit.error }) : null),
        el("td", {}, SA.progress(audit)),
        modelCell,
        el("td", { class: "small", text: SA.when(audit.created_at) }),
        el("td", { class: "num", text: SA.num(audit.consistency) }),
        el("td", { class: "num", text: SA.num(audit.flip_rate) }),
        el("td", { class: "num", text: SA.num(audit.accuracy) }),
        el("td", { class: "num", text: SA.num(audit.worst_case_accuracy) }),
        el("td", {}, el("a", { text: done ? "Report" : "Details", attrs: { href: SA.reportLink(audit.id) } })));
    }

    async function refresh() {
      window.clearTimeout(timer);
      const query = new URLSearchParams({ limit: String(state.limit) });
      if (state.status) query.set("status", state.status);
      if (state.model) query.set("model_name", state.model);
      let page;
      try {
        page = await SA.api(`/v1/audits?${query}`);
      } catch (error) {
        if (error.status === 401) return;
        updated.textContent = `update failed: ${error.message}`;
        timer = window.setTimeout(refresh, SLOW_MS);
        return;
      }
      const rows = await Promise.all(page.items.map(row));
      SA.clear(body).append(...rows);
      if (!rows.length) body.append(el("tr", {}, el("td", { class: "empty", text: "No audits match.", attrs: { colspan: 10 } })));
      more.hidden = !page.next_cursor || state.limit >= 200;
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
      const active = page.items.some((a) => ACTIVE.has(a.status));
      document.body.dataset.polling = active ? "fast" : "slow";
      timer = window.setTimeout(refresh, active ? FAST_MS : SLOW_MS);
    }

    // A hidden tab stops polling; it catches up at once when shown again.
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") refresh();
      else window.clearTimeout(timer);
    });
    await refresh();
  });
})(window.SA = window.SA || {});
