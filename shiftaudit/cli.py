"""The `shiftaudit` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from . import __version__
from .config import AuditConfig
from .errors import ConfigError, ShiftAuditError
from .profile.findings import findings_lines
from .report import Estimate, Report


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not sys.warnoptions:
        # Deserialisation and tracing notes from torch and onnx are for their developers; on
        # stderr they would bury the one-line error. `python -W default` shows them again.
        for library in ("torch", "onnx", "onnxruntime", "onnxscript"):
            warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    try:
        return int(args.handler(args))
    except ShiftAuditError as error:
        print(f"shiftaudit: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"shiftaudit: error: no such file: {error.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shiftaudit: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shiftaudit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shiftaudit {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    audit = commands.add_parser("audit", help="run a shift-sweep audit locally")
    audit.add_argument("model", type=Path, help="ONNX, TorchScript or torch.export (.pt2) file")
    audit.add_argument("probes", type=Path, help="directory, .zip or .tar(.gz) of images")
    audit.add_argument("--config", type=Path, help="JSON audit config (the API's config object)")
    audit.add_argument("--mode", choices=["circular", "zero", "reflect", "edge", "crop", "canvas"])
    audit.add_argument("--max-shift", type=int, metavar="R")
    audit.add_argument("--step", type=int, metavar="S")
    audit.add_argument("--seed", type=int, metavar="N")
    audit.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N")
    audit.add_argument("--out", type=Path, metavar="FILE", help="write the JSON report here")
    audit.add_argument("--quiet", action="store_true", help="no progress bar")
    audit.set_defaults(handler=_audit)

    schema = commands.add_parser("schema", help="print the JSON Schema of reports or configs")
    schema.add_argument("which", choices=["report", "config"], nargs="?", default="report")
    schema.set_defaults(handler=_schema)

    example = commands.add_parser("example", help="write the bundled example model and probes")
    example.add_argument("which", choices=["aliasing", "corner"], nargs="?", default="aliasing")
    example.add_argument("--out", type=Path, default=Path("build/example"))
    example.set_defaults(handler=_example)
    # Installed packages (the service) add their commands here; the engine imports none of them.
    for plugin in metadata.entry_points(group="shiftaudit.commands"):
        plugin.load()(commands)
    return parser


def load_config(path: Path | None, overrides: dict[str, Any]) -> AuditConfig:
    """Read a JSON config file and apply CLI overrides of sweep, seed and runtime fields."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a JSON object")
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        target = raw.setdefault(section, {}) if section else raw
        if not isinstance(target, dict):
            raise ConfigError(f"config field {section!r} must be an object")
        target[key] = value
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from error


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    """The --config file with --mode, --max-shift, --step, --seed and --device on top."""
    return load_config(
        args.config,
        {
            "sweep.mode": args.mode,
            "sweep.max_shift": args.max_shift,
            "sweep.step": args.step,
            "seed": args.seed,
            "runtime.device": args.device,
        },
    )


def _audit(args: argparse.Namespace) -> int:
    from .engine import run_audit  # torch import deferred so that --help stays fast

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


def _schema(args: argparse.Namespace) -> int:
    model = Report if args.which == "report" else AuditConfig
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0


def _example(args: argparse.Namespace) -> int:
    if args.which == "corner":
        from .corner import corner_lines, run_corner_experiment

        print("\n".join(corner_lines(run_corner_experiment(args.out))))
        return 0
    from .examples import write_example

    model, probes = write_example(args.out)
    print(f"example model:  {model}\nexample probes: {probes}")
    return 0


class ProgressBar:
    """A throttled single-line progress bar; plain percentage lines when not a terminal."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream, self.width = stream, width
        self.interactive = stream.isatty()
        self.last_time, self.last_tenth = 0.0, -1
        self.started = time.perf_counter()

    def __call__(self, fraction: float, stage: str) -> None:
        now = time.perf_counter()
        if self.interactive:
            if now - self.last_time < 0.1 and fraction < 1.0:
                return
            filled = int(self.width * fraction)
            bar = "#" * filled + "." * (self.width - filled)
            elapsed = now - self.started
            self.stream.write(f"\r[{bar}] {100 * fraction:5.1f}% {stage:<6} {elapsed:6.1f}s")
            self.stream.flush()
        elif int(10 * fraction) > self.last_tenth:
            self.last_tenth = int(10 * fraction)
            self.stream.write(f"{100 * fraction:3.0f}% {stage}\n")
        self.last_time = now

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")


def _cell(estimate: Estimate | None) -> str:
    if estimate is None:
        return "-"
    if estimate.ci_low is None or estimate.ci_high is None:
        return f"{estimate.value:.4g}"
    return f"{estimate.value:.4g}  [{estimate.ci_low:.4g}, {estimate.ci_high:.4g}]"


def format_summary(report: Report) -> str:
    """A readable table of the summary metrics, periods and layer profile headline."""
    summary = report.summary.all
    rows = [
        ("consistency", summary.consistency),
        ("flip_rate", summary.flip_rate),
        ("mean_prob_change", summary.mean_prob_change),
        ("mean_kl", summary.mean_kl),
        ("invariant_fraction", summary.invariant_fraction),
        ("accuracy", summary.accuracy),
        ("shift_accuracy_mean", summary.shift_accuracy_mean),
        ("worst_case_accuracy", summary.worst_case_accuracy),
    ]
    prov = report.provenance
    lines = [
        f"shift audit: mode {report.mode}, {len(report.shift_map.shifts)} shifts, "
        f"{prov.probe_count} probes, input {report.input_size[0]}x{report.input_size[1]}, "
        f"{report.num_classes} classes ({report.estimator})",
        f"{'metric':<22}value   [95% CI]",
    ]
    lines += [f"{name:<22}{_cell(value)}" for name, value in rows if value is not None]
    period = report.shift_map.period
    if period is not None:
        lines.append(f"{'period (dy, dx)':<22}{period.dy}, {period.dx}")
    lines += [
        f"{'layers' if i == 0 else '':<22}{line}" for i, line in enumerate(findings_lines(report))
    ]
    lines.append(
        f"{'device':<22}{prov.device}, batch {prov.batch_size} {prov.memory_format}, "
        f"{prov.wall_time_s:.1f}s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
