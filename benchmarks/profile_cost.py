"""The layer profile's cost on the zoo, against the default sweep of the same audit.

    python benchmarks/profile_cost.py                                   # every model and format
    python benchmarks/profile_cost.py --models efficientnet-lite1 --formats onnx --repeats 3

Per model x format (benchmarks/zoo.py, 224 px): one default audit (default circular sweep,
max_shift 4, i.e. 81 shifts; layer profile on with its defaults, 4 probes) on `--probes`
photos, repeated `--repeats` times in one process with a warm tuning cache. Each row gives
provenance.stage_seconds["layers"] and that same audit's stage_seconds["sweep"], and their
ratio: the two are measured moments apart, so the ratio is robust to the load of a shared
machine where the seconds are not. The median over repeats is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_zoo import write_photos
from zoo import FORMATS, SIZE, ZOO, export_formats

from shiftaudit.allocator import keep_freed_memory
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit


def default_config() -> AuditConfig:
    """The default audit at the zoo's size, layer profile on, no bootstrap."""
    return AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [SIZE, SIZE]},
            "runtime": {"device": "cpu" if not torch.cuda.is_available() else "auto"},
            "layers": {"enabled": True},
            "bootstrap": 0,
            "worst_cases": 0,
        }
    )


def measure(path: Path, probes: Path, repeats: int, cache: Path) -> dict[str, Any]:
    """Layers and sweep seconds of `repeats` default audits of one model file."""
    config = default_config()
    runs = []
    for _ in range(repeats):
        report = run_audit(path, probes, config, tuning_cache=cache)
        seconds = report.provenance.stage_seconds
        runs.append(
            {
                "layers_s": seconds.get("layers"),
                "sweep_s": seconds.get("sweep"),
                "backend": report.provenance.backend,
                "entries": len(report.layers.entries) if report.layers else 0,
            }
        )
    ratios = [r["layers_s"] / r["sweep_s"] for r in runs if r["layers_s"] and r["sweep_s"]]
    return {
        "layers_s": statistics.median(r["layers_s"] for r in runs),
        "sweep_s": statistics.median(r["sweep_s"] for r in runs),
        "ratio": statistics.median(ratios) if ratios else None,
        "backend": runs[-1]["backend"],
        "entries": runs[-1]["entries"],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--probes", type=int, default=16, help="photos (the zoo's full run: 16)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    keep_freed_memory()  # the audits below run in this process, as in a sandbox's
    work = Path(tempfile.mkdtemp(prefix="shiftaudit-profile-cost-"))
    probes = write_photos(work / "probes", args.probes)
    rows = []
    print("| model | format | runtime | layers | layers s | sweep s | layers / sweep |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        paths = export_formats(ZOO[name](), work / name, name)
        for fmt in args.formats.split(","):
            row = {"model": name, "format": fmt}
            row |= measure(paths[fmt], probes, args.repeats, work / "cache")
            rows.append(row)
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
            print(
                f"| {name} | {fmt} | {row['backend']} | {row['entries']} | "
                f"{row['layers_s']:.1f} | {row['sweep_s']:.1f} | {ratio} |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps({"probes": args.probes, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
