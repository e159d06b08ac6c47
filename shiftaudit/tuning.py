"""Measure the model's batch size and memory format, and the tuning cache.

On a CPU the fastest batch is often small (cache-resident activations); on a GPU it is large.
Guessing loses either way, so the engine times the raw forward pass over batch sizes and
memory formats and keeps the best; runtime_choice.py does so for every runtime that can run the
model. The choice is cached by model hash, device and library versions: besides saving the
time, it keeps a rerun on the same machine bit-identical (kernels, and so the last bits of the
logits, can depend on the batch size).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .runtimes import Runtime

# Below this many forward passes in an audit, measuring would cost more than it saves.
MIN_PAIRS_TO_TUNE = 256
UNTUNED_BATCH = 32


@dataclass(frozen=True)
class Tuning:
    batch_size: int
    channels_last: bool
    images_per_s: float | None  # measured raw forward throughput of the choice


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.get_num_threads()} threads"


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def example_input(
    *, batch: int, size: tuple[int, int], layout: str, channels_last: bool, device: torch.device
) -> torch.Tensor:
    """A random input batch of the model's shape, layout and memory format."""
    generator = torch.Generator().manual_seed(0)
    height, width = size
    x = torch.randn(batch, height, width, 3, generator=generator).to(device)
    if layout == "NHWC":
        return x
    nchw = x.permute(0, 3, 1, 2)
    return nchw if channels_last else nchw.contiguous()


def forward_throughput(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    min_seconds: float = 0.25,
    min_runs: int = 3,
) -> float:
    """Images per second of `model(x)`, after one warm-up pass."""
    device = x.device
    with torch.inference_mode():
        model(x)
        synchronise(device)
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < min_seconds:
            model(x)
            runs += 1
        synchronise(device)
        elapsed = time.perf_counter() - start
    return runs * x.shape[0] / elapsed


def measure(
    model: Runtime,
    *,
    size: tuple[int, int],
    layout: str,
    max_batch: int,
    budget_s: float,
    scan_s: float = 0.1,
    final_s: float = 0.2,
) -> Tuning:
    """Time growing batch sizes in every memory format, then re-time the finalists.

    The scan interleaves formats so that a budget cut-off treats them alike and stops after
    two sizes in a row bring nothing. Short timings on a busy machine are noisy, so the three
    fastest settings are then timed again, alternately, and the best mean wins (within 1%,
    the smaller batch: less memory, less waste on a partial batch).
    """
    formats = [False, True] if model.supports_channels_last and layout == "NCHW" else [False]
    deadline = time.perf_counter() + budget_s
    scanned: dict[tuple[int, bool], list[float]] = {}
    batch = 1 if model.device.type == "cpu" else 8
    stale, best_speed = 0, 0.0
    while batch <= max_batch and stale < 2 and time.perf_counter() < deadline:
        improved = False
        for channels_last in formats:
            # Two runs are enough to rank: a slow model then reaches its larger batches.
            speed = timed(
                model, batch, channels_last, size=size, layout=layout, seconds=scan_s, runs=2
            )
            if speed is None:
                max_batch = batch - 1  # it does not fit, and no larger batch will
                break
            scanned[batch, channels_last] = [speed]
            if speed > best_speed * 1.01:
                best_speed, improved = speed, True
        stale = 0 if improved else stale + 1
        batch *= 2
    if not scanned:
        return Tuning(batch_size=1, channels_last=False, images_per_s=None)
    finalists = sorted(scanned, key=lambda k: scanned[k][0], reverse=True)[:3]
    for _ in range(2):
        for batch, channels_last in finalists:
            again = timed(model, batch, channels_last, size=size, layout=layout, seconds=final_s)
            if again is not None:
                scanned[batch, channels_last].append(again)
    # The scan's short first timing only ranks; the mean of the longer ones decides.
    means = {key: float(np.mean(scanned[key][1:] or scanned[key])) for key in finalists}
    top = max(means.values())
    chosen = min((key for key in finalists if means[key] * 1.01 >= top), key=lambda k: k[0])
    return Tuning(batch_size=chosen[0], channels_last=chosen[1], images_per_s=means[chosen])


def timed(
    model: Runtime,
    batch: int,
    channels_last: bool,
    *,
    size: tuple[int, int],
    layout: str,
    seconds: float,
    runs: int = 3,
) -> float | None:
    """Raw forward images/s at one setting; None when it does not fit in device memory."""
    x = example_input(
        batch=batch, size=size, layout=layout, channels_last=channels_last, device=model.device
    )
    try:
        return forward_throughput(model, x, min_seconds=seconds, min_runs=runs)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


def cache_key(*parts: str) -> str:
    """One tuning-cache key: the model hash, device, versions and whatever else decides."""
    return "|".join(parts)


def cached(cache_dir: Path | None, key: str) -> dict[str, object] | None:
    """The cache's entry for `key`, if there is one."""
    entry = _load_cache(cache_dir).get(key)
    return entry if isinstance(entry, dict) else None


def store(cache_dir: Path | None, key: str, entry: dict[str, object]) -> None:
    """Add or replace one entry (nothing without a cache directory)."""
    if cache_dir is None:
        return
    cache = _load_cache(cache_dir)
    cache[key] = entry
    _save_cache(cache_dir, cache)


def _load_cache(cache_dir: Path | None) -> dict[str, dict[str, object]]:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / "tuning.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(cache_dir: Path, cache: dict[str, dict[str, object]]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Atomic replace: concurrent audits may race, but never leave a torn file.
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(cache, handle, indent=1, sort_keys=True)
    os.replace(tmp, cache_dir / "tuning.json")
