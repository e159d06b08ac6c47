"""Peak memory of an audit over N and 10 N probes: flat, since per-probe state is a few scalars.

    python benchmarks/memory.py [--probes 300] [--out FILE.json]

Each audit runs in a fresh process (ResNet-18 at 32x32, 9 shifts, batch fixed at 64, so that
only the probe count differs). Throughput is measured by engine_zoo.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnet import resnet18

from shiftaudit.config import AuditConfig


def write_probes(directory: Path, count: int, size: int, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size + 32, size + 32, 3), dtype=np.uint8)
    for i in range(count):
        # Distinct but cheap: crops of one noise field (PNG decode cost stays realistic).
        y, x = rng.integers(0, 32, 2)
        Image.fromarray(base[y : y + size, x : x + size]).save(directory / f"p{i:05d}.png")
    return directory


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report the
# benchmark process's own peak.
_MEMORY_CHILD = """
import sys
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
config = AuditConfig.model_validate_json(sys.argv[3])
run_audit(sys.argv[1], sys.argv[2], config)
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]))
"""


def peak_memory_mib(model_path: Path, probes: Path, config: AuditConfig) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEMORY_CHILD,
            str(model_path),
            str(probes),
            config.model_dump_json(),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def memory_flatness(work: Path, probes: int) -> dict[str, float]:
    """Peak memory of the same audit over N and 10 N probes (ResNet-18 at 32x32, 9 shifts).

    The batch size is fixed so that only the probe count differs between the two runs.
    """
    size = 32
    model_path = work / "resnet18-32.pt2"
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(
        resnet18(), (torch.zeros(2, 3, size, size),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, model_path)
    config = AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [size, size], "resize": size},
            "sweep": {"mode": "circular", "max_shift": 1},
            "runtime": {"device": "cpu", "batch_size": 64},
        }
    )
    few = write_probes(work / "few", probes, size, seed=1)
    many = write_probes(work / "many", 10 * probes, size, seed=2)
    low, high = peak_memory_mib(model_path, few, config), peak_memory_mib(model_path, many, config)
    return {
        f"peak_mib_{probes}_probes": low,
        f"peak_mib_{10 * probes}_probes": high,
        "ratio": high / low,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = memory_flatness(Path(tempfile.mkdtemp(prefix="shiftaudit-memory-")), args.probes)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
