"""Profile one engine sweep on a GPU: where the time goes besides the model's forward pass.

python benchmarks/profile_sweep.py [--probes 512] [--size 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_throughput import write_probes
from resnet import resnet18

from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=512)
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
    print(averages.table(sort_by="self_cuda_time_total", row_limit=25))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
