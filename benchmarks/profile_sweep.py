"""Profile one engine sweep on a GPU: where the device sits idle, and what the host was doing.

python benchmarks/profile_sweep.py [--probes 1024] [--size 224] [--batch 1024] [--trace F.json]

Prints the device's busy share of the sweep, the kernels that take the time, and the idle gaps
on the device, each attributed to the host op that launched the work after it and to the
blocking runtime calls (synchronisations, pinned allocations, copies) the host was in.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import write_probes
from resnet import resnet18

from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit

_DEVICE_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
_GAP_US = 20.0  # shorter device gaps are launch latency, not the host's doing


def idle_gaps(trace: dict[str, object], top: int = 12) -> dict[str, object]:
    """Device idle time within the traced window, attributed to the host op that ended each gap
    (the outermost aten op around the launch that followed it) and to the blocking runtime
    calls the host was in during the gap."""
    events: list[dict[str, Any]] = trace["traceEvents"]  # type: ignore[assignment]

    def span(e: dict[str, Any]) -> tuple[float, float]:
        return float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))

    device = sorted((*span(e), e) for e in events if e.get("cat") in _DEVICE_CATEGORIES)
    runtime = [e for e in events if e.get("cat") == "cuda_runtime"]
    launches = {e["args"]["correlation"]: span(e)[0] for e in runtime if "correlation" in e["args"]}
    blocking = sorted(
        (*span(e), str(e["name"]))
        for e in runtime
        if any(word in str(e["name"]) for word in ("Synchronize", "HostAlloc", "Memcpy", "Free"))
    )
    # Outermost ops only: nested ones lie inside an earlier op's span.
    ops: list[tuple[float, float, str]] = []
    host_ops = sorted((*span(e), str(e["name"])) for e in events if e.get("cat") == "cpu_op")
    for start, end, name in host_ops:
        if not ops or start >= ops[-1][1]:
            ops.append((start, end, name))
    op_starts = [op[0] for op in ops]

    def op_at(at: float) -> str:
        i = bisect.bisect_right(op_starts, at) - 1
        return ops[i][2] if i >= 0 and ops[i][1] >= at else "(no op: Python between ops)"

    busy_until, idle = device[0][1], 0.0
    by_op: dict[str, float] = defaultdict(float)
    by_wait: dict[str, float] = defaultdict(float)
    gaps: list[tuple[float, str]] = []
    for start, end, event in device[1:]:
        gap = start - busy_until
        if gap > _GAP_US:
            idle += gap
            launch = launches.get(event.get("args", {}).get("correlation"))
            op = op_at(launch) if launch is not None else "(unknown launch)"
            by_op[op] += gap
            for b_start, b_end, name in blocking:
                overlap = min(b_end, start) - max(b_start, busy_until)
                if overlap > 0:
                    by_wait[name] += overlap
            gaps.append((gap, f"{op} -> {event['name']}"[:160]))
        busy_until = max(busy_until, end)
    window = busy_until - device[0][0]

    def ms(table: dict[str, float]) -> dict[str, float]:
        return {k: round(v / 1e3, 2) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:top]}

    return {
        "window_ms": window / 1e3,
        "idle_ms": idle / 1e3,
        "idle_share": idle / window,
        "idle_ms_by_op_after_gap": ms(by_op),
        "host_blocked_in_during_gaps_ms": ms(by_wait),
        "largest_gaps_ms": [(round(g / 1e3, 2), what) for g, what in sorted(gaps)[::-1][:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--trace", type=Path, help="also keep the Chrome trace here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    work = Path(tempfile.mkdtemp())
    size = args.size
    batch_dim = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        resnet18(), (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch_dim},)
    )
    torch.export.save(program, work / "m.pt2")
    probes = write_probes(work / "p", args.probes, size)
    config = AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [size, size], "resize": size},
            "sweep": {"max_shift": 2},
            "runtime": {"device": "cuda", "batch_size": args.batch},
            "layers": {"enabled": False},
            "bootstrap": 0,
        }
    )
    run_audit(work / "m.pt2", probes, config)  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        report = run_audit(work / "m.pt2", probes, config)
    print("wall", time.perf_counter() - start, report.provenance.stage_seconds)
    averages = prof.key_averages()
    busy = sum(e.self_device_time_total for e in averages) / 1e6
    sweep = report.provenance.stage_seconds["sweep"]
    print(f"device busy {busy:.3f} s of a {sweep:.3f} s sweep ({100 * busy / sweep:.1f}%)")
    print(averages.table(sort_by="self_cuda_time_total", row_limit=20))
    trace_path = args.trace or work / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    print(json.dumps(idle_gaps(json.loads(trace_path.read_text())), indent=1))


if __name__ == "__main__":
    main()
