"""Which runtime runs the sweep: the fastest one that computes what the model's own does.

A model file has its own runtime: ONNX Runtime for an ONNX file, eager PyTorch for a
`torch.export` program or a TorchScript archive. A torch model can also run in ONNX Runtime on
a graph exported from it (runtimes.conversion), which on a CPU is often several times faster.
With `runtime.backend = "auto"` the engine times every runtime that can run the model on the
device, over batch size, memory format and thread count (tuning.measure), and takes the
fastest only if it agrees with the model's own runtime on the first probes:

    the same top-1 on every row, and max |logit - own logit| <= 1e-4 * max(1, max |own logit|).

Why 1e-4: runtimes that compute the same function in float32 differ only by summation order
and fused kernels, about 1e-6 to 1e-5 of the logits' scale through 50 layers (EfficientNet-Lite
exported from torch.export: 1e-5); an export that changes what an operator computes (log1p
decomposed into log(1 + x), a different padding or resize rule) moves logits by 1e-3 of their
scale or much more. The floor of 1 keeps near-zero logits from demanding absolute precision
that float32 does not have. A runtime that fails the check is not used, and the report says
why (`provenance.runtime_choice`).

The choice is cached with the batch size (tuning.py), so that a rerun on the same machine runs
the same runtime at the same setting and gives the identical report.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import onnxruntime
import torch

from .config import RuntimeConfig
from .errors import ConfigError, ModelError
from .model_files import ModelFormat
from .report import AgreementCheck, RuntimeCandidate, RuntimeChoice
from .runtimes import Runtime
from .runtimes.conversion import EXPORTED_BACKEND, exportable, exported_runtime, onnx_bytes
from .runtimes.onnx import OnnxRuntime
from .threads import forward_threads, thread_options
from .tuning import (
    MIN_PAIRS_TO_TUNE,
    UNTUNED_BATCH,
    Tuning,
    cache_key,
    cached,
    device_name,
    example_input,
    forward_throughput,
    measure,
    store,
)

TOLERANCE = 1e-4
CHECK_ROWS = 8
# Per runtime: the batch and format scan; every candidate is then re-timed alternately.
# A budget binds only for slow models, whose sweeps are long enough to repay it.
_SCAN_BUDGET_S = {"cpu": 6.0, "cuda": 8.0}
_MAX_BATCH = {"cpu": 256, "cuda": 1024}
_FINAL_ROUNDS, _FINAL_S = 2, 0.25
_FINALISTS = 3


@dataclass(frozen=True)
class Choice:
    """The runtime that runs the sweep, its setting, and what the report records about it."""

    runtime: Runtime
    tuning: Tuning
    threads: int | None
    record: RuntimeChoice


@dataclass
class _Candidate:
    backend: str
    threads: int | None
    runtime: Runtime
    tuning: Tuning | None = None
    note: str | None = None
    finalist: bool = False  # re-timed alternately with the others: ranks above the rest


def own_backend(model: Runtime) -> str:
    """The runtime a model file comes with."""
    return "onnxruntime" if model.format is ModelFormat.ONNX else "torch"


def choose_runtime(
    model: Runtime,
    *,
    model_sha256: str,
    runtime: RuntimeConfig,
    size: tuple[int, int],
    layout: str,
    total_pairs: int,
    available_threads: int,
    check_input: Callable[[], torch.Tensor],
    cache_dir: Path | None,
) -> Choice:
    """The runtime, batch size, memory format and threads of one audit's sweep.

    `check_input` gives the agreement check's images (model layout); it is called only when
    a check runs.
    """
    own = own_backend(model)
    _check_pinned(runtime.backend, model)
    device = model.device
    options = thread_options(device=device, pinned=runtime.threads, available=available_threads)
    if runtime.batch_size is not None or total_pairs < MIN_PAIRS_TO_TUNE:
        return _unmeasured(
            model,
            runtime,
            size=size,
            layout=layout,
            total_pairs=total_pairs,
            threads=options[0],
            check_input=check_input,
        )
    key = cache_key(
        model_sha256,
        device_name(device),
        f"threads {','.join(str(t) for t in options)}",
        f"torch {torch.__version__}",
        f"onnxruntime {onnxruntime.__version__}",
        layout,
        f"{size[0]}x{size[1]}",
        runtime.precision,
        runtime.backend,
    )
    entry = cached(cache_dir, key)
    if entry is not None:
        choice = _from_cache(model, entry, size=size, layout=layout, cache_dir=cache_dir)
        if choice is not None:
            return choice
    candidates, onnx_data = _candidates(model, runtime, options, size=size, layout=layout)
    _time_all(candidates, own=own, size=size, layout=layout)
    chosen, checks, reason = _select(
        candidates, model=model, requested=runtime.backend, check_input=check_input
    )
    assert chosen.tuning is not None
    record = RuntimeChoice(
        requested=runtime.backend,
        chosen=chosen.backend,
        reason=reason,
        candidates=[_reported(c) for c in candidates],
        checks=checks,
    )
    choice = Choice(chosen.runtime, chosen.tuning, chosen.threads, record)
    store(cache_dir, key, _entry(choice, onnx_data, cache_dir, model_sha256))
    return choice


def _check_pinned(backend: str, model: Runtime) -> None:
    """Refuse a pinned runtime that cannot run this kind of file."""
    if backend == "auto":
        return
    allowed = ("onnxruntime",) if model.format is ModelFormat.ONNX else ("torch", EXPORTED_BACKEND)
    if backend not in allowed:
        raise ConfigError(
            f"runtime.backend {backend!r} cannot run a {model.format} model; "
            f"use 'auto' or {' or '.join(repr(a) for a in allowed)}"
        )


def _unmeasured(
    model: Runtime,
    runtime: RuntimeConfig,
    *,
    size: tuple[int, int],
    layout: str,
    total_pairs: int,
    threads: int | None,
    check_input: Callable[[], torch.Tensor],
) -> Choice:
    """Nothing is timed: the pinned runtime, else the model's own."""
    own = own_backend(model)
    backend = own if runtime.backend == "auto" else runtime.backend
    batch = runtime.batch_size or min(UNTUNED_BATCH, total_pairs)
    tuning = Tuning(batch_size=batch, channels_last=False, images_per_s=None)
    why = (
        "runtime.batch_size is set"
        if runtime.batch_size is not None
        else f"the audit has under {MIN_PAIRS_TO_TUNE} forward passes"
    )
    if backend == own:
        chosen = (
            model.with_threads(threads) if isinstance(model, OnnxRuntime) and threads else model
        )
        reason = (
            "pinned by runtime.backend"
            if runtime.backend != "auto"
            else f"the model's own runtime: {why}, so no runtime was timed"
        )
        record = RuntimeChoice(
            requested=runtime.backend, chosen=own, reason=reason, candidates=[], checks=[]
        )
        return Choice(chosen, tuning, threads, record)
    refusal = _not_exported(model, runtime)
    if refusal is not None:
        raise ConfigError(f"runtime.backend {backend!r} is pinned, but {refusal}")
    data = onnx_bytes(model, size=size, layout=layout)
    exported = exported_runtime(data, device=model.device, threads=threads, label="model")
    check = agreement(
        model,
        exported,
        check_input(),
        reference_setting=(tuning, threads),
        setting=(tuning, threads),
    )
    record = RuntimeChoice(
        requested=runtime.backend,
        chosen=backend,
        reason=f"pinned by runtime.backend ({why}, so nothing was timed)" + _verdict(check),
        candidates=[],
        checks=[check],
    )
    return Choice(exported, tuning, threads, record)


def _candidates(
    model: Runtime,
    runtime: RuntimeConfig,
    options: Sequence[int | None],
    *,
    size: tuple[int, int],
    layout: str,
) -> tuple[list[_Candidate], bytes | None]:
    """Every runtime worth timing, one per thread count; unavailable ones carry a note."""
    own = own_backend(model)
    found: list[_Candidate] = []
    if runtime.backend in ("auto", own):
        for threads in options:
            found.append(_Candidate(own, threads, _with_threads(model, threads)))
    if model.format is ModelFormat.ONNX or runtime.backend not in ("auto", EXPORTED_BACKEND):
        return found, None
    reason = _not_exported(model, runtime)
    data = None
    if reason is None:
        try:
            data = onnx_bytes(model, size=size, layout=layout)
        except ModelError as exc:
            reason = str(exc)
    if data is None:
        if runtime.backend == EXPORTED_BACKEND:
            raise ConfigError(f"runtime.backend {EXPORTED_BACKEND!r} is pinned, but {reason}")
        found.append(_Candidate(EXPORTED_BACKEND, None, model, note=reason))
        return found, None
    try:
        base = exported_runtime(data, device=model.device, threads=options[0], label="model")
    except ModelError as exc:
        found.append(_Candidate(EXPORTED_BACKEND, None, model, note=str(exc)))
        return found, None
    for threads in options:
        found.append(_Candidate(EXPORTED_BACKEND, threads, _with_threads(base, threads)))
    return found, data


def _not_exported(model: Runtime, runtime: RuntimeConfig) -> str | None:
    """Why ONNX Runtime on an exported graph cannot stand in for this torch model, if so."""
    reason = exportable(model)
    if reason is None and runtime.precision in ("bf16", "fp16"):
        return f"runtime.precision {runtime.precision} runs torch models under autocast"
    cuda_ep = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if reason is None and model.device.type == "cuda" and not cuda_ep:
        return "ONNX Runtime has no CUDA execution provider here (onnxruntime-gpu)"
    return reason


def _with_threads(model: Runtime, threads: int | None) -> Runtime:
    """ONNX Runtime fixes its pool per session; torch's is set around each call instead."""
    if isinstance(model, OnnxRuntime) and threads is not None:
        return model.with_threads(threads)
    return model


def _time_all(
    candidates: list[_Candidate], *, own: str, size: tuple[int, int], layout: str
) -> None:
    """Scan each runtime's batch and format at its largest thread count, time the other
    thread counts at that setting, then re-time the fastest few alternately."""
    device = candidates[0].runtime.device
    best: dict[str, Tuning] = {}
    for candidate in candidates:
        if candidate.note is not None:
            continue
        try:
            with forward_threads(candidate.backend, candidate.threads):
                if candidate.backend not in best:
                    best[candidate.backend] = measure(
                        candidate.runtime,
                        size=size,
                        layout=layout,
                        max_batch=_MAX_BATCH[device.type],
                        budget_s=_SCAN_BUDGET_S[device.type],
                    )
                    candidate.tuning = best[candidate.backend]
                else:
                    candidate.tuning = _retimed(candidate, best[candidate.backend], size, layout)
        except ModelError as exc:
            if candidate.backend == own:
                raise
            candidate.note = f"failed while timed: {str(exc)[:300]}"
    timed = [c for c in candidates if c.tuning is not None and c.tuning.images_per_s is not None]
    finalists = sorted(timed, key=_speed, reverse=True)[:_FINALISTS]
    means: dict[int, list[float]] = {id(c): [] for c in finalists}
    for _ in range(_FINAL_ROUNDS):
        for candidate in finalists:
            assert candidate.tuning is not None
            again = _retimed(candidate, candidate.tuning, size, layout, seconds=_FINAL_S)
            if again.images_per_s is not None:
                means[id(candidate)].append(again.images_per_s)
    for candidate in finalists:
        candidate.finalist = True
        if means[id(candidate)] and candidate.tuning is not None:
            speed = sum(means[id(candidate)]) / len(means[id(candidate)])
            candidate.tuning = replace(candidate.tuning, images_per_s=speed)


def _retimed(
    candidate: _Candidate,
    setting: Tuning,
    size: tuple[int, int],
    layout: str,
    seconds: float = 0.25,
) -> Tuning:
    """The candidate's throughput at `setting` (batch, format), under its own threads."""
    x = _example(setting, size, layout, candidate.runtime.device)
    with forward_threads(candidate.backend, candidate.threads):
        speed = forward_throughput(candidate.runtime, x, min_seconds=seconds)
    return replace(setting, images_per_s=speed)


def _example(
    setting: Tuning, size: tuple[int, int], layout: str, device: torch.device
) -> torch.Tensor:
    """A random batch at `setting`'s size and memory format."""
    return example_input(
        batch=setting.batch_size,
        size=size,
        layout=layout,
        channels_last=setting.channels_last,
        device=device,
    )


def _rank(candidate: _Candidate) -> tuple[bool, float]:
    """Finalists first (their speeds come from the alternating re-timing), then by speed."""
    return candidate.finalist, _speed(candidate)


def _speed(candidate: _Candidate) -> float:
    """Measured images/s, 0 when not timed."""
    if candidate.tuning is None or candidate.tuning.images_per_s is None:
        return 0.0
    return candidate.tuning.images_per_s


def _select(
    candidates: list[_Candidate],
    *,
    model: Runtime,
    requested: str,
    check_input: Callable[[], torch.Tensor],
) -> tuple[_Candidate, list[AgreementCheck], str]:
    """The fastest candidate that agrees with the model's own runtime (or the pinned one),
    and the checks that ran."""
    own = own_backend(model)
    ranked = sorted((c for c in candidates if c.note is None and c.tuning), key=_rank, reverse=True)
    if requested not in ("auto", own):
        # Pinned to another runtime: used whatever the check says; the report says it.
        pinned = ranked[0]
        assert pinned.tuning is not None
        check = agreement(
            model,
            pinned.runtime,
            check_input(),
            reference_setting=(replace(pinned.tuning, channels_last=False), pinned.threads),
            setting=(pinned.tuning, pinned.threads),
        )
        return pinned, [check], "pinned by runtime.backend" + _verdict(check)
    reference = next(c for c in ranked if c.backend == own)
    assert reference.tuning is not None
    refused: list[str] = []
    checks: list[AgreementCheck] = []
    failed: dict[str, str] = {}  # one check per runtime: its thread counts run the same graph
    for candidate in ranked:
        if candidate.backend in failed:
            candidate.note = failed[candidate.backend]
            continue
        if candidate.backend == own:
            if requested == own:
                return candidate, checks, "pinned by runtime.backend"
            if refused:
                return candidate, checks, "the model's own runtime: " + "; ".join(refused)
            return candidate, checks, "the model's own runtime is the fastest"
        assert candidate.tuning is not None
        check = agreement(
            reference.runtime,
            candidate.runtime,
            check_input(),
            reference_setting=(reference.tuning, reference.threads),
            setting=(candidate.tuning, candidate.threads),
        )
        checks.append(check)
        if check.passed:
            gain = _speed(candidate) / max(_speed(reference), 1e-9)
            return candidate, checks, f"{gain:.2f}x the model's own runtime, and agrees with it"
        verdict = _verdict(check).removeprefix("; ")
        candidate.note = failed[candidate.backend] = f"refused: {verdict}"
        refused.append(f"{candidate.backend} is faster but {verdict}")
    raise AssertionError("the model's own runtime is always a candidate")


def _verdict(check: AgreementCheck) -> str:
    """A clause for the reason: how the check went."""
    if check.passed:
        return "; agrees with the model's own runtime"
    diff = "non-finite" if check.max_abs_diff is None else f"{check.max_abs_diff:.3g}"
    top1 = "" if check.same_top1 else "a different top-1 on some rows, and "
    return (
        f"; disagrees with the model's own runtime: {top1}logits differ by up to {diff} "
        f"(tolerance {check.tolerance:.3g})"
    )


def agreement(
    reference: Runtime,
    candidate: Runtime,
    images: torch.Tensor,
    *,
    reference_setting: tuple[Tuning, int | None],
    setting: tuple[Tuning, int | None],
) -> AgreementCheck:
    """Compare two runtimes' logits on the same images, each at its own sweep setting."""
    expected = _logits(reference, images, *reference_setting)
    got = _logits(candidate, images, *setting)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    tolerance = TOLERANCE * max(1.0, scale)
    difference = float((expected - got).abs().max())
    finite = bool(torch.isfinite(expected).all() and torch.isfinite(got).all())
    same_top1 = bool((expected.argmax(1) == got.argmax(1)).all())
    return AgreementCheck(
        reference=reference.backend,
        candidate=candidate.backend,
        rows=int(images.shape[0]),
        same_top1=same_top1,
        max_abs_diff=difference if finite else None,
        tolerance=tolerance,
        passed=finite and same_top1 and difference <= tolerance,
    )


def _logits(
    model: Runtime, images: torch.Tensor, tuning: Tuning, threads: int | None
) -> torch.Tensor:
    """Logits as the sweep computes them: full batches (the tail padded), its memory format."""
    batch = tuning.batch_size
    rows = []
    with forward_threads(model.backend, threads):
        for start in range(0, len(images), batch):
            part = images[start : start + batch]
            if len(part) < batch:
                part = torch.cat([part, part[:1].expand(batch - len(part), *part.shape[1:])])
            if tuning.channels_last and part.dim() == 4:
                part = part.contiguous(memory_format=torch.channels_last)
            rows.append(model(part)[: min(batch, len(images) - start)].cpu())
    return torch.cat(rows).double()


def _reported(candidate: _Candidate) -> RuntimeCandidate:
    """A candidate as the report lists it."""
    tuning = candidate.tuning
    speed = None if tuning is None or tuning.images_per_s is None else tuning.images_per_s
    return RuntimeCandidate(
        backend=candidate.backend,
        threads=candidate.threads,
        batch_size=None if tuning is None else tuning.batch_size,
        memory_format=None if tuning is None else _memory_format(tuning.channels_last),
        images_per_s=None if speed is None else round(speed, 1),
        note=candidate.note,
    )


def _memory_format(channels_last: bool) -> Literal["contiguous", "channels_last"]:
    """The report's name of a memory format."""
    return "channels_last" if channels_last else "contiguous"


def _entry(
    choice: Choice, onnx_data: bytes | None, cache_dir: Path | None, model_sha256: str
) -> dict[str, object]:
    """The cache entry of a choice; an exported graph is kept beside it, named by its hash,
    so that a rerun neither exports again nor runs a different graph."""
    exported = None
    if choice.runtime.backend == EXPORTED_BACKEND and onnx_data is not None and cache_dir:
        exported = _keep_graph(cache_dir, onnx_data)
    return {
        "backend": choice.runtime.backend,
        "threads": choice.threads,
        "batch_size": choice.tuning.batch_size,
        "channels_last": choice.tuning.channels_last,
        "images_per_s": choice.tuning.images_per_s,
        "record": choice.record.model_dump(mode="json"),
        "onnx_sha256": exported,
        "model_sha256": model_sha256,
    }


def _keep_graph(cache_dir: Path, data: bytes) -> str:
    """Write an exported graph into the cache, named by its SHA-256 (atomically)."""
    digest = hashlib.sha256(data).hexdigest()
    folder = cache_dir / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{digest}.onnx"
    if not target.exists():
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    return digest


def _from_cache(
    model: Runtime,
    entry: dict[str, object],
    *,
    size: tuple[int, int],
    layout: str,
    cache_dir: Path | None,
) -> Choice | None:
    """The cached choice, its runtime rebuilt; None for a damaged or stale entry."""
    try:
        backend = str(entry["backend"])
        threads = None if entry["threads"] is None else int(str(entry["threads"]))
        speed = entry.get("images_per_s")
        tuning = Tuning(
            batch_size=int(str(entry["batch_size"])),
            channels_last=bool(entry["channels_last"]),
            images_per_s=None if speed is None else float(str(speed)),
        )
        record = RuntimeChoice.model_validate(entry["record"])
    except (KeyError, ValueError, TypeError):
        return None
    if backend == own_backend(model):
        return Choice(_with_threads(model, threads), tuning, threads, record)
    if backend != EXPORTED_BACKEND or cache_dir is None:
        return None
    digest = str(entry.get("onnx_sha256"))
    try:
        data = (cache_dir / "onnx" / f"{digest}.onnx").read_bytes()
    except OSError:
        data = b""
    if hashlib.sha256(data).hexdigest() != digest:
        try:
            data = onnx_bytes(model, size=size, layout=layout)
        except ModelError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            return None  # not the graph that was checked: measure again
    runtime = exported_runtime(data, device=model.device, threads=threads, label="model")
    return Choice(runtime, tuning, threads, record)
