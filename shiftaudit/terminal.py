"""What the command line shows: a progress bar on stderr and a report's summary table."""

from __future__ import annotations

import time
from typing import TextIO

from shiftaudit.profile.findings import findings_lines
from shiftaudit.report import Estimate, Report


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
    runtime = f"{prov.backend}, " if prov.backend else ""
    lines.append(
        f"{'device':<22}{prov.device}, {runtime}batch {prov.batch_size} {prov.memory_format}, "
        f"{prov.wall_time_s:.1f}s"
    )
    return "\n".join(lines)
