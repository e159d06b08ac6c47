// The static export's start: the report's data and thumbnails are in the file itself.
"use strict";
(function (SA) {
  const bundle = JSON.parse(document.getElementById("bundle").textContent);
  const sources = new Map(bundle.thumbnails.map((t) => [JSON.stringify([t.probe, Number(t.dy), Number(t.dx)]), t.src]));
  const thumbnail = (img, probe, dy, dx) => {
    const source = sources.get(JSON.stringify([probe, Number(dy), Number(dx)]));
    if (source) img.src = source;
    else { img.classList.add("missing"); img.alt = "thumbnail not included"; }
  };
  document.getElementById("exported").textContent = `exported ${SA.when(bundle.exported_at)}`;
  SA.renderReport(document.getElementById("content"), bundle, thumbnail);
  document.body.dataset.rendered = "true";
})(window.SA = window.SA || {});
