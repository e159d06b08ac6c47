// The report page: follows an audit until it finishes, then draws its report (charts.js) with
// thumbnails fetched with the key, and offers the self-contained export.
"use strict";
(function (SA) {
  const el = SA.el;
  const POLL_MS = 2000;
  const THUMBNAIL_FETCHES = 4; // at once: the page has dozens, the server renders them in turn

  const auditId = decodeURIComponent(window.location.pathname.split("/").pop());

  // Thumbnails need the key, which an <img src> cannot send: fetch, then show a blob: URL.
  function thumbnails() {
    const queue = [];
    let running = 0;
    const next = () => {
      while (running < THUMBNAIL_FETCHES && queue.length) {
        const [img, probe, dy, dx] = queue.shift();
        running += 1;
        const query = new URLSearchParams({ probe, dy: String(dy), dx: String(dx) });
        SA.api(`/v1/audits/${encodeURIComponent(auditId)}/thumbnail?${query}`, { raw: true })
          .then((response) => response.blob())
          .then((blob) => { img.src = URL.createObjectURL(blob); })
          .catch(() => { img.classList.add("missing"); img.alt = "thumbnail unavailable"; })
          .finally(() => { running -= 1; next(); });
      }
    };
    return (img, probe, dy, dx) => { queue.push([img, probe, dy, dx]); next(); };
  }

  async function download(button) {
    button.disabled = true;
    const label = button.textContent;
    button.textContent = "Preparing…";
    try {
      const response = await SA.api(`/v1/audits/${encodeURIComponent(auditId)}/report.html`, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const link = el("a", { attrs: { href: url, download: `shiftaudit-report-${auditId}.html` } });
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10000);
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  SA.start(async (content) => {
    const status = el("div", { attrs: { id: "audit-status" } });
    content.append(status);
    let audit = await SA.api(`/v1/audits/${encodeURIComponent(auditId)}`);
    while (audit.status === "queued" || audit.status === "running") {
      SA.clear(status).append(SA.panel("Audit in progress", `audit ${audit.id}`,
        el("div", { class: "progress-line" }, SA.badge(audit.status), SA.progress(audit))));
      await new Promise((resolve) => window.setTimeout(resolve, POLL_MS));
      audit = await SA.api(`/v1/audits/${encodeURIComponent(auditId)}`);
    }
    SA.clear(status);
    if (audit.status !== "succeeded") {
      status.append(SA.panel(`Audit ${audit.status}`, `audit ${audit.id}`,
        el("div", { class: "progress-line" }, SA.badge(audit.status)),
        audit.error ? el("pre", { class: "error", text: audit.error }) : null));
      return;
    }
    const [model, probeSet, report] = await Promise.all([
      SA.model(audit.model_id), SA.probeSet(audit.probe_set_id),
      SA.api(`/v1/audits/${encodeURIComponent(auditId)}/report`),
    ]);
    const exportButton = el("button", { class: "primary", text: "Download HTML report", attrs: { id: "download-export", type: "button", title: "One self-contained file (about 5 MB, mostly the chart library) to attach to a pull request or a ticket" } });
    exportButton.addEventListener("click", () => download(exportButton).catch((error) => SA.error(content, error)));
    const trend = model ? el("a", { class: "button", text: "Trend of this model", attrs: { href: `/ui/compare?model_name=${encodeURIComponent(model.name)}` } }) : null;
    content.append(el("div", { class: "actions" }, trend, exportButton));
    const body = el("div", { attrs: { id: "report" } });
    content.append(body);
    SA.renderReport(body, { audit, model, probe_set: probeSet, report }, thumbnails());
    document.title = `${model ? model.name + " " + model.version : "Report"} · shiftaudit`;
    document.body.dataset.rendered = "true";
  });
})(window.SA = window.SA || {});
