"""The dashboard in headless Chromium against a real server: every page loads without console
errors, draws its charts from the API's data, and talks to nothing but 127.0.0.1.

The audits list test comes first: it watches the fixture's last audit (still queued or
running when the tests start) reach `succeeded` without a reload.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import CONFIG, HOSTILE, Server, Watched, screenshot, sign_in

pytestmark = pytest.mark.slow
FINAL = {"succeeded", "failed", "cancelled"}


def _grid(shifts: list[list[float]], values: list[Any]) -> tuple[list[float], list[float], Any]:
    """The (dy, dx) grid the report page must draw: rows of dy, columns of dx, ascending."""
    ys = sorted({s[0] for s in shifts})
    xs = sorted({s[1] for s in shifts})
    z: list[list[Any]] = [[None] * len(xs) for _ in ys]
    for (dy, dx), value in zip(shifts, values, strict=True):
        z[ys.index(dy)][xs.index(dx)] = value
    return ys, xs, z


def _plotted(tab: Any, chart: str) -> list[dict[str, Any]]:
    """The traces plotly drew into a chart's div (its `data`), once it has drawn them."""
    tab.wait_for_function(
        "id => { const d = document.getElementById(id); return d && d.data && d._fullLayout }",
        arg=chart,
    )
    data: list[dict[str, Any]] = tab.evaluate("id => document.getElementById(id).data", chart)
    return data


def _thumbnails_loaded(tab: Any) -> list[dict[str, Any]]:
    tab.wait_for_function(
        "() => [...document.querySelectorAll('.thumb img')].every(i => i.complete && "
        "(i.naturalWidth > 0 || i.classList.contains('missing')))"
    )
    images: list[dict[str, Any]] = tab.evaluate(
        "() => [...document.querySelectorAll('.thumb img')].map(i => ({width: i.naturalWidth, "
        "probe: i.dataset.probe, dy: Number(i.dataset.dy), dx: Number(i.dataset.dx)}))"
    )
    return images


def _clean(watched: Watched) -> None:
    assert watched.errors == [], "console errors or uncaught exceptions"
    assert watched.foreign == [], "requests that left 127.0.0.1"


def test_audits_list_shows_status_and_follows_an_audit_live(server: Server, page):
    tab, watched = page
    with server.client() as http:
        # No worker is up, so it waits in the queue until this test starts one.
        pending = server.submit(http, "v1", "probes", {**CONFIG, "seed": 1})
    tab.goto(server.base + "/ui/")
    tab.fill("#api-key", "sa_0000000000000000_refused")
    tab.click("#signin-form button[type=submit]")
    tab.wait_for_selector("#signin-error:has-text('refused')")
    # Chromium logs the refused call itself; that one error is the point of this step.
    assert [e for e in watched.errors if "401" not in e] == []
    watched.errors.clear()
    sign_in(tab, server, "/ui/")
    assert "alpha" in tab.inner_text("#who-team")
    assert tab.context.cookies() == []  # the key lives in this tab's sessionStorage only
    row = f"tr[data-audit='{pending}']"
    tab.wait_for_selector(row)
    tab.evaluate("() => { window.notReloaded = true }")
    seen = [tab.get_attribute(row, "data-status")]
    progress = [tab.get_attribute(f"{row} [role=progressbar]", "aria-valuenow")]
    assert seen == ["queued"]
    screenshot(tab, "audits-live")
    server.start_worker()
    deadline = time.monotonic() + 90
    while seen[-1] not in FINAL and time.monotonic() < deadline:
        tab.wait_for_timeout(200)
        status = tab.get_attribute(row, "data-status")
        if status != seen[-1]:
            seen.append(status)
        progress.append(tab.get_attribute(f"{row} [role=progressbar]", "aria-valuenow"))
    assert seen[-1] == "succeeded", seen
    assert progress[-1] == "100"
    assert tab.evaluate("() => window.notReloaded") is True
    assert tab.inner_text(f"{row} .badge") == "succeeded"

    with server.client("alpha-read") as http:
        listed = http.get("/v1/audits").json()["items"]
    shown = tab.eval_on_selector_all("#audit-rows tr", "rows => rows.map(r => r.dataset.audit)")
    assert shown == [a["id"] for a in listed]
    assert tab.inner_text(f"tr[data-audit='{server.ids['audit_v2']}'] td:nth-child(4)").startswith(
        "tiny-net"
    )
    tab.select_option("#filter-status", "running")
    tab.wait_for_selector("#audit-rows td.empty")
    tab.select_option("#filter-status", "")
    tab.fill("#filter-model", "dense-head")
    tab.click("#filters button[type=submit]")
    tab.wait_for_function("() => document.querySelectorAll('#audit-rows tr').length === 1")
    assert tab.get_attribute("#audit-rows tr", "data-audit") == server.ids["audit_canvas"]
    assert "model_name=dense-head" in tab.url
    tab.fill("#filter-model", "")
    tab.click("#filters button[type=submit]")
    tab.wait_for_function(
        f"() => document.querySelectorAll('#audit-rows tr').length === {len(shown)}"
    )
    screenshot(tab, "audits")
    _clean(watched)


def test_report_page_draws_every_chart_from_the_report(server: Server, page):
    tab, watched = page
    audit = server.ids["audit_v2"]
    sign_in(tab, server, f"/ui/audits/{audit}")
    tab.wait_for_selector("body[data-rendered=true]")
    with server.client("alpha-read") as http:
        report = http.get(f"/v1/audits/{audit}/report").json()
    summary = report["summary"]["all"]
    for metric in ("consistency", "flip_rate", "accuracy", "worst_case_accuracy"):
        card = tab.inner_text(f"[data-metric={metric}]")
        assert f"{summary[metric]['value']:.4g}" in card
        assert f"[{summary[metric]['ci_low']:.4g}, {summary[metric]['ci_high']:.4g}]" in card

    shift_map = report["shift_map"]
    ys, xs, agreement = _grid(shift_map["shifts"], shift_map["agreement"])
    trace = _plotted(tab, "chart-agreement")[0]
    assert (trace["y"], trace["x"], trace["z"]) == (ys, xs, agreement)
    assert trace["type"] == "heatmap"
    accuracy = _plotted(tab, "chart-accuracy")[0]
    assert accuracy["z"] == _grid(shift_map["shifts"], shift_map["accuracy"])[2]

    # Stride 2 aliases with period 2: the phase view opens on it, equal to the engine's table.
    period = shift_map["period"]
    assert (period["dy"], period["dx"]) == (2, 2)
    assert "dy 2, dx 2" in tab.inner_text("#phase-detected")
    assert _plotted(tab, "chart-phase")[0]["z"] == period["phase_agreement"]
    tab.select_option("#phase-period", "3")
    tab.wait_for_function("() => document.getElementById('chart-phase').data[0].z.length === 3")

    # The layer view: depth on x, the errors as lines, local aliasing as bars, the field on a
    # second axis, each trace the report's own numbers; the findings marked and listed.
    layers = _plotted(tab, "chart-layers")
    profile = report["layers"]
    entries = profile["entries"]
    assert layers[0]["y"] == [e["relative_error"] for e in entries]  # = on_grid_error
    assert [e["on_grid_error"] for e in entries] == [e["relative_error"] for e in entries]
    assert layers[1]["y"] == [e["aliasing_error"] for e in entries]
    assert layers[2]["y"] == [e["off_grid_error"] for e in entries]
    assert layers[3]["y"] == [e["local_aliasing"] for e in entries]
    assert layers[3]["type"] == "bar"
    fields = [e["receptive_field"] for e in entries]
    assert layers[4]["y"] == [min(f["input_fraction"]) if f else None for f in fields]
    assert layers[0]["x"] == list(range(len(entries)))
    findings = profile["findings"]
    assert tab.inner_text("#layer-findings").splitlines() == findings["summary"]
    born = next(
        i for i, e in enumerate(entries) if e["name"] == findings["aliasing_born_at"]["node"]
    )
    shapes = tab.evaluate("() => document.getElementById('chart-layers').layout.shapes")
    marked = [s["x0"] for s in shapes if s["type"] == "line" and s.get("xref") == "x"]
    assert born in marked

    # One shaded band per stride stage: each run of layers at one stride along depth (the
    # layers between maps in their stage, those after the last map apart).
    def stage_stride(entry):
        field = entry["receptive_field"]
        if field and not field["mixes_all_positions"] and entry["kind"] != "non_spatial":
            return field["jump"][0]
        return entry["stride"]

    strides = [stage_stride(e) for e in entries]
    last_map = max(i for i, s in enumerate(strides) if s)
    stage, labels = next(s for s in strides if s), []
    for i, stride in enumerate(strides):
        stage = stride or stage
        labels.append("flat" if i > last_map else stage)
    runs = sum(1 for i, label in enumerate(labels) if i == 0 or label != labels[i - 1])
    bands = [s for s in shapes if s["type"] == "rect"]
    assert (bands[0]["x0"], bands[-1]["x1"]) == (-0.5, len(entries) - 0.5)
    assert len(bands) == runs > 1

    cases = report["worst_cases"]
    assert cases, "the aliasing net must have worst cases"
    images = _thumbnails_loaded(tab)
    assert len(images) == sum(1 + len(c["examples"]) for c in cases)
    assert all(image["width"] == 16 for image in images)  # the model's 16x16 input
    assert images[0]["probe"] == cases[0]["probe"]
    assert tab.locator("#chart-position").count() == 0  # not a canvas sweep
    screenshot(tab, "report")
    _clean(watched)


def test_canvas_report_shows_the_position_map(server: Server, page):
    tab, watched = page
    audit = server.ids["audit_canvas"]
    sign_in(tab, server, f"/ui/audits/{audit}")
    tab.wait_for_selector("body[data-rendered=true]")
    with server.client("alpha-read") as http:
        positions = http.get(f"/v1/audits/{audit}/report").json()["position_map"]
    trace = _plotted(tab, "chart-position")[0]
    assert (trace["y"], trace["x"], trace["z"]) == (
        positions["positions_y"],
        positions["positions_x"],
        positions["agreement"],
    )
    assert _plotted(tab, "chart-position-accuracy")[0]["z"] == positions["accuracy"]
    assert tab.inner_text(".report-head h1") == f"dense-head · version {HOSTILE}"  # as text
    assert tab.locator("main img:not(.thumb img)").count() == 0
    _thumbnails_loaded(tab)
    screenshot(tab, "report-canvas")
    _clean(watched)


def test_compare_flow_by_clicking(server: Server, page):
    tab, watched = page
    baseline, candidate = server.ids["audit_v1"], server.ids["audit_v2"]
    sign_in(tab, server, "/ui/")
    tab.check(f"input[data-audit='{baseline}']")
    assert tab.is_disabled("#compare-selected")
    tab.check(f"input[data-audit='{candidate}']")
    tab.click("#compare-selected")
    tab.wait_for_url(f"**/ui/compare?audits={baseline},{candidate}")
    tab.wait_for_selector("body[data-rendered=true]")
    with server.client("alpha-read") as http:
        compared = http.get("/v1/compare", params={"audits": f"{baseline},{candidate}"}).json()
        trend = http.get("/v1/trend", params={"model_name": "tiny-net"}).json()
    comparison = compared["comparisons"][0]
    shift_map = comparison["shift_map"]
    ys, xs, difference = _grid(shift_map["shifts"], shift_map["difference"])
    trace = _plotted(tab, "chart-diff-1")[0]
    assert (trace["y"], trace["x"], trace["z"]) == (ys, xs, difference)
    assert min(v for row in difference for v in row) < 0  # the aliasing net agrees less

    for delta in comparison["deltas"]:
        row = f"#deltas-1 tr[data-metric={delta['metric']}]"
        assert tab.get_attribute(row, "data-significant") == str(delta["significant"]).lower()
        mark = tab.inner_text(f"{row} .sig")
        assert mark != "n.s." if delta["significant"] else mark == "n.s."
    consistency = next(d for d in comparison["deltas"] if d["metric"] == "consistency")
    assert consistency["significant"]
    assert "significantly worse" in tab.inner_text("#deltas-1 tr[data-metric=consistency] .sig")
    assert tab.get_attribute("#mcnemar-1", "data-significant") == "true"
    layers = _plotted(tab, "chart-layers-1")
    assert layers[1]["y"] == [layer["candidate_relative_error"] for layer in comparison["layers"]]
    assert layers[3]["y"] == [
        layer["candidate"]["aliasing_error"] for layer in comparison["layers"]
    ]
    assert layers[5]["y"] == [
        layer["candidate"]["local_aliasing"] for layer in comparison["layers"]
    ]
    pair = comparison["findings"]
    baseline, candidate = tab.inner_text("#findings-1").split("candidate")
    assert all(line in baseline for line in pair["baseline"]["summary"])
    assert all(line in candidate for line in pair["candidate"]["summary"])

    # The trend of the baseline's model, oldest version first.
    assert tab.input_value("#trend-model") == "tiny-net"
    lines = _plotted(tab, "chart-trend")
    assert tab.evaluate("() => document.getElementById('chart-trend').layout.xaxis.ticktext") == [
        "1",
        "2",
    ]
    consistency_line = next(line for line in lines if line["name"] == "Consistency")
    assert consistency_line["y"] == [point["audit"]["consistency"] for point in trend]
    screenshot(tab, "compare")
    _clean(watched)


def test_export_downloads_and_renders_offline_from_a_file(server: Server, page, browser, tmp_path):
    tab, watched = page
    audit = server.ids["audit_v2"]
    sign_in(tab, server, f"/ui/audits/{audit}")
    tab.wait_for_selector("body[data-rendered=true]")
    with tab.expect_download() as download:
        tab.click("#download-export")
    saved = tmp_path / "report.html"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"shiftaudit-report-{audit}.html"
    _clean(watched)

    # Opened from disk with every request refused and the network off: it needs none.
    context = browser.new_context(viewport={"width": 1360, "height": 900}, offline=True)
    refused: list[str] = []
    errors: list[str] = []

    def block(route: Any, request: Any) -> None:
        if request.url != saved.as_uri():
            refused.append(request.url)
            route.abort()
        else:
            route.continue_()

    context.route("**/*", block)
    offline = context.new_page()
    offline.on("console", lambda m: m.type == "error" and errors.append(m.text))
    offline.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    try:
        offline.goto(saved.as_uri())
        offline.wait_for_selector("body[data-rendered=true]")
        with server.client("alpha-read") as http:
            report = http.get(f"/v1/audits/{audit}/report").json()
        shift_map = report["shift_map"]
        drawn = _plotted(offline, "chart-agreement")[0]["z"]
        assert drawn == _grid(shift_map["shifts"], shift_map["agreement"])[2]
        assert _plotted(offline, "chart-phase")[0]["z"] == shift_map["period"]["phase_agreement"]
        assert len(_plotted(offline, "chart-layers")[0]["y"]) == len(report["layers"]["entries"])
        images = _thumbnails_loaded(offline)
        assert images
        assert all(image["width"] == 16 for image in images)
        screenshot(offline, "export")
    finally:
        context.close()
    assert refused == []
    assert errors == []
