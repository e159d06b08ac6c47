"""The engine on the zoo: every model x upload format x shift family, against the fastest way to
run the same model and against a research-style loop.

    python benchmarks/engine_zoo.py --out zoo-cpu.json            # the full run (idle machine)
    python benchmarks/engine_zoo.py --quick                        # a few minutes: checks it works
    python benchmarks/engine_zoo.py --models resnet50 --formats onnx --families crop

Per model x format (benchmarks/zoo.py, 224 px, exported to ONNX, torch.export and TorchScript):

- raw grid: the bare forward pass of every runtime the engine could have chosen (the file's own
  and, for torch formats, ONNX Runtime on the graph the engine exports), built the way the
  engine builds them, over thread count (threads.thread_options), memory format and batch;
- per family, in each round: the grid's three fastest settings and the engine's own are timed
  just before and just after the engine's sweep (`run_audit`, layers off, warm tuning cache),
  and the best of their before/after means is the round's raw figure: engine / raw is a ratio
  of measurements taken together. Median over rounds.
- research loop: the eager nn.Module, batch 32, NCHW, one shift at a time (the family's shift
  in plain torch, normalise, forward, softmax, argmax), probes preprocessed beforehand;
- shift share: the sweep's seconds generating shifts (stage_seconds sweep_shift) over its
  sweep seconds; forward in engine / alone: the engine's forward-pass throughput inside the
  sweep (sweep_forward) over the same setting timed alone (ONNX Runtime inside the engine
  against ONNX Runtime alone, for thread fights);
- layer profile: provenance.stage_seconds["layers"] of one default audit (layer profile on,
  default circular sweep), beside that audit's sweep seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zoo import CNNS, FORMATS, SIZE, ZOO, export_formats

from shiftaudit.allocator import keep_freed_memory
from shiftaudit.config import AuditConfig
from shiftaudit.engine import run_audit
from shiftaudit.runtimes import Runtime, load_runtime
from shiftaudit.runtimes.conversion import exportable, exported_runtime, onnx_bytes
from shiftaudit.runtimes.onnx import OnnxRuntime
from shiftaudit.threads import forward_threads, thread_options
from shiftaudit.tuning import example_input, forward_throughput

HALF_PIXELS = [(dy / 2, dx / 2) for dy in range(-2, 3) for dx in range(-2, 3)]
FAMILIES: dict[str, dict[str, Any]] = {
    "circular": {"mode": "circular", "max_shift": 2},
    "zero": {"mode": "zero", "max_shift": 2},
    "crop": {"mode": "crop", "max_shift": 2},
    "canvas": {"mode": "canvas", "object_size": SIZE // 2, "step": SIZE // 8},
    "bilinear": {"mode": "circular", "shifts": HALF_PIXELS},
    "fourier": {"mode": "circular", "shifts": HALF_PIXELS, "subpixel": "fourier"},
}
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def write_photos(directory: Path, count: int) -> Path:
    """Crops of scikit-image's bundled photographs (no download), a few hundred px each."""
    from skimage import data

    directory.mkdir(parents=True, exist_ok=True)
    photos = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.immunohistochemistry(),
    ]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        side = min(photo.shape[:2]) * 3 // 4
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        Image.fromarray(photo[y : y + side, x : x + side]).save(directory / f"photo{i:03d}.png")
    return directory


def candidates(path: Path, device: torch.device) -> list[tuple[str, int | None, Runtime]]:
    """(backend, threads, runtime) for every runtime the engine could choose, as it builds them."""
    model = load_runtime(path, device=device)
    options = thread_options(device=device, pinned=None, available=torch.get_num_threads())
    found: list[tuple[str, int | None, Runtime]] = []
    for threads in options:
        own = model.with_threads(threads) if isinstance(model, OnnxRuntime) and threads else model
        found.append((model.backend, threads, own))
    if exportable(model) is None:
        data = onnx_bytes(model, size=(SIZE, SIZE), layout="NCHW")
        for threads in options:
            found.append(
                (
                    "onnxruntime-exported",
                    threads,
                    exported_runtime(data, device=device, threads=threads, label=path.name),
                )
            )
    return found


RUNS = {"min_runs": 3}


def raw_speed(
    runtime: Runtime,
    backend: str,
    threads: int | None,
    batch: int,
    channels_last: bool,
    seconds: float,
) -> float:
    x = example_input(
        batch=batch,
        size=(SIZE, SIZE),
        layout="NCHW",
        channels_last=channels_last,
        device=runtime.device,
    )
    with forward_threads(backend, threads):
        return forward_throughput(runtime, x, min_seconds=seconds, min_runs=RUNS["min_runs"])


def raw_grid(
    found: list[tuple[str, int | None, Runtime]], batches: list[int], seconds: float
) -> list[dict[str, Any]]:
    rows = []
    for backend, threads, runtime in found:
        for channels_last in (False, True) if runtime.supports_channels_last else (False,):
            for batch in batches:
                speed = raw_speed(runtime, backend, threads, batch, channels_last, seconds)
                rows.append(
                    {
                        "backend": backend,
                        "threads": threads,
                        "batch": batch,
                        "channels_last": channels_last,
                        "images_per_s": speed,
                    }
                )
    return rows


def _setting(row: dict[str, Any]) -> tuple[str, int | None, int, bool]:
    return (row["backend"], row["threads"], row["batch"], row["channels_last"])


def bracket(
    found: list[tuple[str, int | None, Runtime]],
    settings: list[tuple[str, int | None, int, bool]],
    seconds: float,
) -> list[float]:
    runtimes = {(b, t): r for b, t, r in found}
    return [raw_speed(runtimes[b, t], b, t, batch, cl, seconds) for b, t, batch, cl in settings]


def config_for(family: str, *, layers: bool = False) -> AuditConfig:
    sweep = FAMILIES[family] if not layers else {}
    return AuditConfig.model_validate(
        {
            "preprocess": {"input_size": [SIZE, SIZE]},
            "sweep": sweep,
            "runtime": {"device": "cpu" if not torch.cuda.is_available() else "auto"},
            "layers": {"enabled": layers},
            "bootstrap": 0,
            "worst_cases": 0,
        }
    )


def research_images(probes: Path, family: str) -> torch.Tensor:
    """The probes resized and centre-cropped once, to the family's source size, NCHW 0..1."""
    from shiftaudit.preprocess import source_geometry, sources
    from shiftaudit.shifts import plan_shifts

    config = config_for(family)
    plan = plan_shifts(config.sweep, (SIZE, SIZE))
    geometry = source_geometry(plan, config.preprocess)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(probes.glob("*.png"))]
    return sources(images, geometry, torch.device("cpu")).permute(0, 3, 1, 2).contiguous()


def research_shift(x: torch.Tensor, family: str, shift: tuple[float, float]) -> torch.Tensor:
    """The family's shift as evaluation scripts write it, one shift for a whole batch."""
    dy, dx = shift
    if family == "circular":
        return torch.roll(x, (int(dy), int(dx)), dims=(2, 3))
    if family == "zero":
        reach = 2
        padded = F.pad(x, (reach, reach, reach, reach))
        return padded[
            ..., reach - int(dy) : reach - int(dy) + SIZE, reach - int(dx) : reach - int(dx) + SIZE
        ]
    if family == "crop":
        reach = 2
        return x[
            ..., reach + int(dy) : reach + int(dy) + SIZE, reach + int(dx) : reach + int(dx) + SIZE
        ]
    if family == "canvas":
        side = x.shape[-1]
        canvas = torch.zeros(x.shape[0], 3, SIZE, SIZE)
        top, left = (SIZE - side) // 2 + int(dy), (SIZE - side) // 2 + int(dx)
        canvas[..., top : top + side, left : left + side] = x
        return canvas
    if family == "bilinear":
        theta = torch.tensor([[1.0, 0.0, -2 * dx / SIZE], [0.0, 1.0, -2 * dy / SIZE]]).expand(
            x.shape[0], 2, 3
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    fy, fx = torch.fft.fftfreq(SIZE), torch.fft.fftfreq(SIZE)
    ramp = torch.exp(-2j * math.pi * (fy[:, None] * dy + fx[None, :] * dx))
    return torch.fft.ifft2(torch.fft.fft2(x) * ramp).real


def research_loop(
    module: torch.nn.Module, images: torch.Tensor, family: str, seconds: float
) -> float:
    """Images per second of the research loop, over as many shifts as fill `seconds`."""
    shifts = (
        HALF_PIXELS
        if family in ("bilinear", "fourier")
        else [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
    )
    if family == "canvas":
        step = SIZE // 8
        shifts = [(dy * step, dx * step) for dy in range(-2, 3) for dx in range(-2, 3)]
    done, start = 0, time.perf_counter()
    with torch.no_grad():
        for shift in shifts * 100:
            for i in range(0, len(images), 32):
                x = research_shift(images[i : i + 32], family, shift)
                torch.softmax(module((x - MEAN) / STD), dim=1).argmax(1)
                done += len(x)
            if time.perf_counter() - start > seconds:
                break
    return done / (time.perf_counter() - start)


def engine_run(model: Path, probes: Path, config: AuditConfig, cache: Path) -> dict[str, Any]:
    report = run_audit(model, probes, config, tuning_cache=cache)
    p = report.provenance
    images = p.probe_count * len(report.shift_map.shifts)
    stages = p.stage_seconds
    return {
        "images": images,
        "sweep_images_per_s": images / stages["sweep"],
        "forward_images_per_s": images / stages["sweep_forward"]
        if stages.get("sweep_forward")
        else None,
        "shift_share": stages.get("sweep_shift", 0.0) / stages["sweep"],
        "setting": (p.backend, p.threads, p.batch_size, p.memory_format == "channels_last"),
        "stage_seconds": stages,
        "reason": p.runtime_choice.reason if p.runtime_choice else None,
    }


def bench_format(
    name: str,
    fmt: str,
    path: Path,
    probes: Path,
    research: dict[str, float],
    args: argparse.Namespace,
    work: Path,
) -> list[dict[str, Any]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    found = candidates(path, device)
    grid = raw_grid(found, args.batches, args.grid_seconds)
    best = max(grid, key=lambda r: r["images_per_s"])
    ranked = sorted(grid, key=lambda r: r["images_per_s"], reverse=True)
    finalists = [_setting(r) for r in ranked[: args.finalists]]
    cache = work / f"cache-{name}-{fmt}"
    first = engine_run(path, probes, config_for(args.families[0]), cache)  # tunes, caches, warms
    rows = []
    for family in args.families:
        rounds = []
        for _ in range(args.rounds):
            settings = list(dict.fromkeys([*finalists, first["setting"]]))
            before = bracket(found, settings, args.raw_seconds)
            engine = engine_run(path, probes, config_for(family), cache)
            after = bracket(found, settings, args.raw_seconds)
            means = [(b + a) / 2 for b, a in zip(before, after, strict=True)]
            raw = max(means)
            own = (
                means[settings.index(engine["setting"])] if engine["setting"] in settings else None
            )
            rounds.append(
                {
                    "engine": engine["sweep_images_per_s"],
                    "raw": raw,
                    "raw_setting": settings[means.index(raw)],
                    "ratio": engine["sweep_images_per_s"] / raw,
                    "shift_share": engine["shift_share"],
                    "forward_in_engine_over_alone": None
                    if own is None or engine["forward_images_per_s"] is None
                    else engine["forward_images_per_s"] / own,
                    "engine_setting": engine["setting"],
                    "reason": engine["reason"],
                }
            )
        median = {
            key: statistics.median(r[key] for r in rounds)
            for key in ("engine", "raw", "ratio", "shift_share")
        }
        inner = [
            r["forward_in_engine_over_alone"]
            for r in rounds
            if r["forward_in_engine_over_alone"] is not None
        ]
        rows.append(
            {
                "model": name,
                "format": fmt,
                "family": family,
                **median,
                "forward_in_engine_over_alone": statistics.median(inner) if inner else None,
                "raw_setting": rounds[len(rounds) // 2]["raw_setting"],
                "engine_setting": rounds[-1]["engine_setting"],
                "reason": rounds[-1]["reason"],
                "research": research[family],
                "engine_over_research": median["engine"] / research[family],
                "rounds": rounds,
            }
        )
    default = config_for("circular", layers=True)
    if args.quick:  # the layer profile's cost does not depend on the sweep: keep that short
        sweep = default.sweep.model_copy(update={"max_shift": 1})
        default = default.model_copy(update={"sweep": sweep})
    layers = run_audit(path, probes, default, tuning_cache=cache).provenance.stage_seconds
    for row in rows:
        row["layers_s"], row["default_sweep_s"] = layers.get("layers"), layers.get("sweep")
        row["grid_best"] = best
    return rows


def _setting_text(setting: Any) -> str:
    backend, threads, batch, channels_last = setting
    return f"{backend} t{threads} b{batch}{' cl' if channels_last else ''}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| model | format | family | engine img/s (setting) | best raw img/s (setting) "
        "| engine / raw | research img/s | engine / research | shift share "
        "| fwd in engine / alone | layers s (its audit's sweep s) |"
    )
    lines = [head, "|" + " --- |" * 11]
    for r in rows:
        short = "" if r["ratio"] >= 0.9 else f" (short by {0.9 - r['ratio']:.2f})"
        inner = r["forward_in_engine_over_alone"]
        layers = (
            "-" if r["layers_s"] is None else f"{r['layers_s']:.1f} ({r['default_sweep_s']:.1f})"
        )
        cells = [
            r["model"],
            r["format"],
            r["family"],
            f"{r['engine']:.1f} ({_setting_text(r['engine_setting'])})",
            f"{r['raw']:.1f} ({_setting_text(r['raw_setting'])})",
            f"{r['ratio']:.2f}{short}",
            f"{r['research']:.1f}",
            f"{r['engine_over_research']:.1f}",
            f"{100 * r['shift_share']:.1f} %",
            "-" if inner is None else f"{inner:.2f}",
            layers,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 11 probes, short timings, batches 8 and 32"
    )
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--probes", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.families = args.families.split(",")
    keep_freed_memory()  # the audits below run in this process, as in a sandbox's
    # 11 probes x 25 shifts: past the 256 forward passes below which the engine measures nothing.
    args.probes = args.probes or (11 if args.quick else 16)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.batches = [8, 32] if args.quick else [1, 2, 4, 8, 16, 32, 64]
    args.grid_seconds = 0.1 if args.quick else 0.5
    args.raw_seconds = 0.2 if args.quick else 1.0
    args.finalists = 1 if args.quick else 3
    RUNS["min_runs"] = 2 if args.quick else 3
    research_seconds = 1.0 if args.quick else 5.0
    # Strict fp32 everywhere, as the engine audits by default.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    work = Path(tempfile.mkdtemp(prefix="shiftaudit-zoo-"))
    probes = write_photos(work / "probes", args.probes)
    research_probes = write_photos(work / "research", 32)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in args.models.split(","):
        module = ZOO[name]()
        paths = export_formats(module, work / name, name)
        research = {}
        for family in args.families:
            research[family] = research_loop(
                module, research_images(research_probes, family), family, research_seconds
            )
        for fmt in args.formats.split(","):
            rows += bench_format(name, fmt, paths[fmt], probes, research, args, work)
            print(table(rows[-len(args.families) :]), flush=True)
    summary = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "quick": args.quick,
        "probes": args.probes,
        "rounds": args.rounds,
        "seconds": round(time.perf_counter() - started),
        "cnn_engine_over_research_min": min(
            (r["engine_over_research"] for r in rows if r["model"] in CNNS), default=None
        ),
        "rows": rows,
    }
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
