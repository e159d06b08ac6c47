"""The engine's commands: `shiftaudit audit`, `schema` and `example` (see shiftaudit_cli)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shiftaudit.config import AuditConfig
from shiftaudit.config_args import add_config_arguments, config_from_args
from shiftaudit.report import Report
from shiftaudit.terminal import ProgressBar, format_summary


def configure_audit(parser: argparse.ArgumentParser) -> None:
    """`audit MODEL PROBES`: run a shift-sweep audit on this machine."""
    parser.add_argument("model", type=Path, help="ONNX, TorchScript or torch.export (.pt2) file")
    parser.add_argument("probes", type=Path, help="directory, .zip or .tar(.gz) of images")
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the JSON report here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_audit)


def _audit(args: argparse.Namespace) -> int:
    from shiftaudit.allocator import keep_freed_memory
    from shiftaudit.engine import run_audit  # torch, only once an audit is asked for

    keep_freed_memory()  # this process sweeps, as a sandbox's does
    config = config_from_args(args)
    bar = None if args.quiet else ProgressBar(sys.stderr)
    cache = Path(os.environ.get("SHIFTAUDIT_CACHE_DIR", Path.home() / ".cache" / "shiftaudit"))
    report = run_audit(args.model, args.probes, config, progress=bar, tuning_cache=cache)
    if bar is not None:
        bar.close()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report.model_dump_json(indent=2))
    print(format_summary(report))
    if args.out is not None:
        print(f"report written to {args.out}")
    return 0


def configure_schema(parser: argparse.ArgumentParser) -> None:
    """`schema [report|config]`: print a published JSON Schema."""
    parser.add_argument("which", choices=["report", "config"], nargs="?", default="report")
    parser.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    model = Report if args.which == "report" else AuditConfig
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0


def configure_example(parser: argparse.ArgumentParser) -> None:
    """`example [aliasing|corner]`: the bundled example, or the corner experiment."""
    parser.add_argument(
        "which",
        choices=["aliasing", "corner"],
        nargs="?",
        default="aliasing",
        help="aliasing: write the example model and probes; corner: train, export and audit "
        "the corner experiment's two classifiers (about half a minute on a CPU)",
    )
    parser.add_argument("--out", type=Path, default=Path("build/example"))
    parser.set_defaults(handler=_example)


def _example(args: argparse.Namespace) -> int:
    if args.which == "corner":
        from shiftaudit.corner import corner_lines, run_corner_experiment

        print("\n".join(corner_lines(run_corner_experiment(args.out))))
        return 0
    from shiftaudit.examples import write_example

    model, probes = write_example(args.out)
    print(f"example model:  {model}\nexample probes: {probes}")
    return 0
