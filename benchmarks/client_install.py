"""What a CI job pays for the client: a fresh virtualenv with `pip install <checkout>` (the
light core), its size, and the start-up time of `import shiftaudit_client`,
`shiftaudit --help` and `shiftaudit submit --help` (median of five runs each).

    python benchmarks/client_install.py [--extras server]

Pip's cache is warm when this runs after `make test`, as on a CI runner with a cache: the
time is installing, not downloading.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "tests"
)


def _median_seconds(command: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extras", default="", help="e.g. server: measure a fuller install")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        checkout = root / "checkout"
        shutil.copytree(ROOT, checkout, ignore=_NOT_SOURCE)
        target = f"{checkout}[{args.extras}]" if args.extras else str(checkout)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        bin_dir = root / "venv" / "bin"
        if args.extras:  # the CPU torch first, as the Makefile does
            subprocess.run([bin_dir / "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([bin_dir / "pip", "install", "-q", target], check=True)
        install_s = time.perf_counter() - start
        listed = subprocess.run(
            [bin_dir / "pip", "list", "--format", "json"], check=True, capture_output=True
        )
        packages = sorted(p["name"] for p in json.loads(listed.stdout))
        site = next((root / "venv" / "lib").glob("python*/site-packages"))
        python = str(bin_dir / "python")
        modules = subprocess.run(
            [python, "-c", "import sys, shiftaudit_client; print(len(sys.modules))"],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = {
            "install_s": round(install_s, 1),
            "site_packages_mb": round(_size_mb(site), 1),
            "packages": len(packages),
            "import_client_s": round(
                _median_seconds([python, "-c", "import shiftaudit_client"]), 3
            ),
            "modules_after_import": int(modules.stdout),
            "help_s": round(_median_seconds([str(bin_dir / "shiftaudit"), "--help"]), 3),
            "submit_help_s": round(
                _median_seconds([str(bin_dir / "shiftaudit"), "submit", "--help"]), 3
            ),
        }
    print(json.dumps(figures, indent=1))
    print("installed:", ", ".join(packages))


if __name__ == "__main__":
    main()
