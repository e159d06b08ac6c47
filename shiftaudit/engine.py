"""Run one shift-sweep audit: model + probe set + config -> Report."""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import AuditConfig, PreprocessConfig
from .errors import ConfigError, ModelError
from .files import sha256_file
from .input_contract import check_input_shape
from .metrics import ChunkStats, SweepAccumulator
from .model_files import ModelFormat
from .preprocess import (
    Normaliser,
    model_input,
    source_geometry,
    sources,
    standard_geometry,
    to_device,
)
from .probe_sets import ProbeSet, open_probe_set
from .profile.layer_profile import layer_profile
from .report import LayerProfile, Provenance, Report, ShardResult
from .runtime_choice import CHECK_ROWS, choose_runtime
from .runtimes import Runtime, load_runtime
from .shifts import ShiftGenerator, ShiftPlan, plan_shifts
from .threads import decode_workers, forward_threads, resolve_vml_kernels
from .tuning import Tuning, device_name

ProgressCallback = Callable[[float, str], None]

# Forward passes gathered into one chunk of probes before its statistics are reduced: at
# least this many, and at least _BATCHES_PER_CHUNK model batches.
_PAIRS_PER_CHUNK = 4096
_BATCHES_PER_CHUNK = 8
_MAX_PROBES_PER_CHUNK = {"cpu": 256, "cuda": 1024}
_LIBRARIES = ("torch", "onnxruntime", "onnx", "numpy", "pillow", "pydantic")


def run_audit(
    model_path: str | Path,
    probes_path: str | Path,
    config: AuditConfig | None = None,
    *,
    progress: ProgressCallback | None = None,
    tuning_cache: Path | None = None,
) -> Report:
    """Audit one model on one probe set; raises ShiftAuditError subclasses for bad input."""
    config = config or AuditConfig()
    shard = sweep_shard(
        model_path, probes_path, config, progress=progress, tuning_cache=tuning_cache
    )
    report = merge_shards([shard], config)
    if progress is not None:
        progress(1.0, "done")
    return report


def sweep_shard(
    model_path: str | Path,
    probes_path: str | Path,
    config: AuditConfig,
    *,
    probes: tuple[int, int] | None = None,
    progress: ProgressCallback | None = None,
    tuning_cache: Path | None = None,
) -> ShardResult:
    """Sweep probes [start, stop) of the set (all when None) into mergeable statistics.

    The shard that holds probe 0 also measures the layer profile (over the set's first
    probes), so that exactly one shard of an audit does.
    """
    saved_threads = torch.get_num_threads()
    try:
        return _sweep_shard(
            model_path,
            probes_path,
            config,
            probes=probes,
            progress=progress,
            tuning_cache=tuning_cache,
        )
    finally:
        torch.set_num_threads(saved_threads)  # an in-process audit leaves torch as it was


def _sweep_shard(
    model_path: str | Path,
    probes_path: str | Path,
    config: AuditConfig,
    *,
    probes: tuple[int, int] | None,
    progress: ProgressCallback | None,
    tuning_cache: Path | None,
) -> ShardResult:
    started, started_at = time.perf_counter(), datetime.now(UTC).isoformat(timespec="seconds")
    resolve_vml_kernels()
    report_progress = progress or (lambda fraction, stage: None)
    device = resolve_device(config.runtime.device)
    if config.runtime.threads:
        torch.set_num_threads(config.runtime.threads)
    available_threads = torch.get_num_threads()
    machine = device_name(device)  # before the choice lowers torch's threads
    stages = _StageClock()
    model_sha = sha256_file(model_path)
    # The session ONNX Runtime opens has the threads a sweep without measuring uses.
    model = load_runtime(model_path, device=device, threads=available_threads)
    with open_probe_set(probes_path, class_names=config.class_names) as probe_set:
        start, stop = probes if probes is not None else (0, len(probe_set))
        if not 0 <= start < stop <= len(probe_set):
            raise ConfigError(
                f"shard probes [{start}, {stop}) do not lie within the probe set's "
                f"{len(probe_set)} images"
            )
        size, layout = input_geometry(model, config.preprocess)
        plan = plan_shifts(config.sweep, size)
        per_probe = len(_shift_columns(plan, config, 0))
        stages.lap("load")
        with (
            torch.inference_mode(),
            precision_scope(config.runtime.precision, model) as precision,
        ):
            choice = choose_runtime(
                model,
                model_sha256=model_sha,
                runtime=config.runtime,
                size=size,
                layout=layout,
                total_pairs=(stop - start) * per_probe,
                available_threads=available_threads,
                check_input=lambda: _check_images(probe_set, config, size=size, layout=layout),
                cache_dir=tuning_cache,
            )
            tuning, runner = choice.tuning, choice.runtime
            stages.lap("tune")
            with forward_threads(runner.backend, choice.threads):
                accumulator, num_classes, inner = _sweep(
                    runner,
                    probe_set,
                    range(start, stop),
                    plan,
                    config,
                    tuning,
                    layout=layout,
                    progress=report_progress,
                )
            stages.lap("sweep")
            stages.seconds.update(inner)
            layers = None
            if start == 0:
                layers = _layer_profile(model, probe_set, config, size=size, layout=layout)
                stages.lap("layers")
        return ShardResult(
            probes=(start, stop),
            input_size=size,
            num_classes=num_classes,
            layers=layers,
            statistics=accumulator.state(),
            precision=precision,
            model_sha256=model_sha,
            model_format=model.format.value,
            probe_set_sha256=probe_set.sha256,
            probe_count=len(probe_set),
            labelled=probe_set.has_labels,
            device=machine,
            batch_size=tuning.batch_size,
            memory_format="channels_last" if tuning.channels_last else "contiguous",
            execution_provider=runner.execution_provider,
            backend=runner.backend,
            threads=choice.threads,
            runtime_choice=choice.record,
            wall_time_s=round(time.perf_counter() - started, 3),
            stage_seconds=stages.seconds,
            started_at=started_at,
        )


def merge_shards(shards: Sequence[ShardResult], config: AuditConfig) -> Report:
    """One report from the shards of an audit: exact, since shards hold counts and sums.

    The shards must come from the same model, probe set and config and cover the probe set
    exactly once, in any order.
    """
    started = time.perf_counter()
    ordered, accumulator = _merged(shards, config)
    first = ordered[0]
    assert first.layers is not None  # the shard holding probe 0 always measures it
    summary = accumulator.summary(resamples=config.bootstrap, seed=config.seed)
    statistics_s = round(time.perf_counter() - started, 4)
    stage_seconds: dict[str, float] = {}
    for shard in ordered:  # compute seconds summed over shards
        for stage, seconds in shard.stage_seconds.items():
            stage_seconds[stage] = round(stage_seconds.get(stage, 0.0) + seconds, 4)
    stage_seconds["statistics"] = statistics_s
    provenance = Provenance(
        model_sha256=first.model_sha256,
        model_format=first.model_format,
        probe_set_sha256=first.probe_set_sha256,
        probe_count=first.probe_count,
        labelled=first.labelled,
        config=config,
        seed=config.seed,
        engine_version=__version__,
        libraries=library_versions(),
        device=first.device,
        batch_size=first.batch_size,
        memory_format=first.memory_format,
        execution_provider=first.execution_provider,
        precision=first.precision,
        backend=first.backend,
        threads=first.threads,
        runtime_choice=first.runtime_choice,
        shards=len(ordered),
        wall_time_s=round(max(shard.wall_time_s for shard in ordered) + statistics_s, 3),
        stage_seconds=stage_seconds,
        started_at=min(shard.started_at for shard in ordered),
    )
    return Report(
        mode=accumulator.plan.mode,
        estimator="random_pairs" if accumulator.sampled else "exhaustive",
        input_size=first.input_size,
        num_classes=first.num_classes,
        summary=summary,
        shift_map=accumulator.shift_map(),
        layers=first.layers,
        position_map=accumulator.position_map(),
        worst_cases=accumulator.worst_cases(),
        provenance=provenance,
    )


def probe_values(shards: Sequence[ShardResult], config: AuditConfig) -> dict[str, np.ndarray]:
    """The per-probe statistics of an audit (metrics.py), ordered by probe: what comparing
    two audits of the same probes pairs."""
    return _merged(shards, config)[1].per_probe()


def _merged(
    shards: Sequence[ShardResult], config: AuditConfig
) -> tuple[list[ShardResult], SweepAccumulator]:
    """The shards in probe order and their statistics merged; refuses a set that is not
    one audit's exact cover of its probe set."""
    ordered = sorted(shards, key=lambda shard: shard.probes)
    first = ordered[0]
    covered = 0
    for shard in ordered:
        if shard.probes[0] != covered:
            raise ConfigError(f"shards leave probes [{covered}, {shard.probes[0]}) uncovered")
        covered = shard.probes[1]
        for field in ("model_sha256", "probe_set_sha256", "input_size", "num_classes"):
            if getattr(shard, field) != getattr(first, field):
                raise ConfigError(f"shards disagree on {field}; they are not of one audit")
    if covered != first.probe_count:
        raise ConfigError(f"shards cover {covered} of {first.probe_count} probes")
    plan = plan_shifts(config.sweep, first.input_size)
    accumulators = [
        SweepAccumulator.from_state(
            plan,
            shard.statistics,
            sampled=config.sweep.sampling is not None,
            labelled=first.labelled,
            worst_case_limit=config.worst_cases,
        )
        for shard in ordered
    ]
    for other in accumulators[1:]:
        accumulators[0].merge(other)
    return ordered, accumulators[0]


@contextmanager
def precision_scope(precision: str, model: Runtime) -> Iterator[str]:
    """Run the model at `precision`; yields the precision that actually applies.

    tf32 allows TensorFloat-32 in CUDA matmuls and convolutions (restored on exit); bf16 and
    fp16 run torch models under autocast on their device. ONNX models run as exported.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    cuda = model.device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = (
        precision == "tf32" and cuda
    )
    try:
        if precision in _AUTOCAST and model.format is not ModelFormat.ONNX:
            with torch.autocast(model.device.type, dtype=_AUTOCAST[precision]):
                yield precision
        else:
            yield "tf32" if precision == "tf32" and cuda else "fp32"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _StageClock:
    """Seconds spent in each stage, for the report and for benchmarks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 4)
        self._last = now


def resolve_device(name: str) -> torch.device:
    """'auto' picks the first GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device is {name!r} but no CUDA device is available")
    return device


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def input_geometry(model: Runtime, preprocess: PreprocessConfig) -> tuple[tuple[int, int], str]:
    """(H, W) and layout from the config, else from what the model declares."""
    declared = model.declared
    layout = preprocess.layout or declared.layout or "NCHW"
    if preprocess.input_size is not None:
        size = preprocess.input_size
    elif declared.height is not None and declared.width is not None:
        size = (declared.height, declared.width)
    else:
        raise ConfigError(
            "the model does not declare its input size; set preprocess.input_size to (H, W) "
            "(on the command line: --input-size H W)"
        )
    check_input_shape(declared, layout=layout, channels=3, height=size[0], width=size[1])
    return size, layout


def _shift_columns(plan: ShiftPlan, config: AuditConfig, probe_id: int) -> np.ndarray:
    """The shift indices evaluated for one probe, t = 0 first when sampling."""
    if config.sweep.sampling is None:
        return np.arange(plan.count)
    # Seeded per probe, so a shard of the probe set draws exactly what the whole run draws.
    rng = np.random.default_rng([config.seed, probe_id])
    draws = rng.integers(0, plan.count, size=2 * config.sweep.sampling.pairs_per_probe)
    return np.concatenate([[plan.zero_index], draws])


def _fitting_chunk(limit: int, *, per_probe: int, batch: int) -> int:
    """Probes per chunk, at most `limit`: the count whose pairs best fill whole batches."""
    candidates = range(max(1, (3 * limit) // 4), limit + 1)
    return min(candidates, key=lambda c: ((-c * per_probe) % batch / (c * per_probe), -c))


def _first_chunk(chunk_size: int, *, per_probe: int, batch: int) -> int:
    """Probes in the first chunk: about one batch, so the device starts while the rest decodes.

    Where a chunk can hold them, the fewest probes whose pairs fill whole batches instead:
    every chunk's last batch is padded to full size, and a ramp of chunks that split batches
    computes that padding once a chunk (4 % of a 1200-pair sweep at batch 16 on a CPU).
    Doubling keeps every chunk of the ramp whole; the first chunk is at most a full one, as
    it was before chunks ramped.
    """
    about_one_batch = max(1, min(chunk_size, batch // per_probe))
    whole = batch // math.gcd(batch, per_probe)  # fewest probes whose pairs fill batches
    if whole > chunk_size:
        return about_one_batch
    return whole * math.ceil(about_one_batch / whole)


def _chunks(indices: range, first: int, size: int) -> Iterator[range]:
    """`first` probes, then twice as many each time up to `size`: the next chunk decodes (in
    threads) while the device works through the current one, so it must not be much larger."""
    start, length = 0, first
    while start < len(indices):
        yield indices[start : start + length]
        start, length = start + length, min(size, 2 * length)


def _sweep(
    model: Runtime,
    probes: ProbeSet,
    indices: range,
    plan: ShiftPlan,
    config: AuditConfig,
    tuning: Tuning,
    *,
    layout: str,
    progress: ProgressCallback,
) -> tuple[SweepAccumulator, int, dict[str, float]]:
    """The sweep's statistics, the model's class count and, on a CPU, the seconds spent
    generating shifts and in forward passes (a GPU runs them asynchronously: not timed)."""
    device = model.device
    normalise = Normaliser(config.preprocess, device=device)
    channels_first = layout == "NCHW" and not tuning.channels_last
    generator = ShiftGenerator(
        plan,
        fill=normalise.fill(config.sweep.fill),
        channels_first=channels_first,
        device=device,
    )
    geometry = source_geometry(plan, config.preprocess)
    accumulator = SweepAccumulator(
        plan,
        sampled=config.sweep.sampling is not None,
        labelled=probes.has_labels,
        worst_case_limit=config.worst_cases,
    )
    per_probe = len(_shift_columns(plan, config, 0))
    batch = tuning.batch_size
    pairs_per_chunk = max(_PAIRS_PER_CHUNK, _BATCHES_PER_CHUNK * batch)
    # Never more probes than the set holds (the same for every shard of an audit): a chunk is
    # reduced at its full size, and a 16-probe sweep reduced 163 probes' worth of rows a chunk.
    limit = max(
        1,
        min(_MAX_PROBES_PER_CHUNK[device.type], pairs_per_chunk // per_probe, len(probes)),
    )
    chunk_size = _fitting_chunk(limit, per_probe=per_probe, batch=batch)
    # Every batch runs at full size (the tail padded, its outputs dropped). Kernels are chosen
    # by shape, so a probe's outputs then never depend on which probes share its batch, and
    # shards of an audit merge bit-exactly into the unsharded report; on a GPU it also spares
    # cuDNN a fresh plan per tail shape.
    total = len(indices) * per_probe
    done, num_classes = 0, -1
    timed = device.type == "cpu"
    clock = {"sweep_shift": 0.0, "sweep_forward": 0.0}
    # One buffer for every chunk: reallocating tens of MB per chunk fragments the heap, and
    # peak memory then creeps up with the number of probes. Logits are kept as the model
    # gives them and normalised in float64 once per chunk: one operation instead of one per
    # batch (the same values: every row is normalised on its own).
    logits: torch.Tensor | None = None
    logp: torch.Tensor | None = None
    # Decoding runs in threads (Pillow releases the GIL) one chunk ahead of the model, and a
    # chunk's statistics are absorbed only after the next chunk is queued on the device: the
    # host never waits for the device while the device has nothing queued.
    reduced: ChunkStats | None = None
    # Rows whose outputs are not finite, per chunk, checked when the chunk is absorbed (the
    # host waits for the device there anyway): NaN or Inf would read as invariance.
    unfinite: tuple[torch.Tensor, range, torch.Tensor] | None = None
    first = _first_chunk(chunk_size, per_probe=per_probe, batch=batch)
    with ThreadPoolExecutor(max_workers=decode_workers(device)) as pool:
        chunks = list(_chunks(indices, first, chunk_size))
        pending = _decode(pool, probes, chunks[0])
        for number, chunk in enumerate(chunks):
            images = [f.result() for f in pending]
            if number + 1 < len(chunks):
                pending = _decode(pool, probes, chunks[number + 1])
            source = normalise(sources(images, geometry, device))
            # Every chunk is reduced at one shape, chunk_size probes (a short one padded): on
            # a GPU reduction kernels sum in an order that depends on the shape, and a probe's
            # statistics must not depend on which chunk, and so which shard, it fell in.
            columns = to_device(
                _padded(np.stack([_shift_columns(plan, config, i) for i in chunk]), chunk_size),
                device,
            )
            # Integer division, not repeat_interleave: that one reads a size back from the GPU.
            flat_probe = torch.arange(len(chunk) * per_probe, device=device) // per_probe
            flat_shift = columns[: len(chunk)].reshape(-1)
            for start in range(0, len(flat_shift), batch):
                stop = min(len(flat_shift), start + batch)
                probe_index, shift_index = flat_probe[start:stop], flat_shift[start:stop]
                if stop - start < batch:
                    padding = batch - (stop - start)
                    probe_index = torch.cat([probe_index, probe_index[:1].expand(padding)])
                    shift_index = torch.cat([shift_index, shift_index[:1].expand(padding)])
                began = time.perf_counter()
                shifted = generator(source, probe_index, shift_index)
                if not channels_first:
                    shifted = model_input(shifted, layout=layout, channels_last=True)
                generated = time.perf_counter()
                out = model(shifted)[: stop - start]
                if timed:
                    finished = time.perf_counter()
                    clock["sweep_shift"] += generated - began
                    clock["sweep_forward"] += finished - generated
                if logits is None:
                    num_classes = _check_outputs(
                        _log_probabilities(out, config), model, probes, config, num_classes
                    )
                    rows = chunk_size * per_probe
                    # Zeros: the padding rows of the first short chunk are reduced too.
                    logits = torch.zeros(rows, out.shape[1], device=device, dtype=out.dtype)
                    logp = torch.zeros(rows, out.shape[1], device=device, dtype=torch.float64)
                logits[start:stop] = out
                done += stop - start
                progress(0.95 * done / total, "sweep")
            assert logits is not None
            assert logp is not None
            # Only the chunk's own rows: a short chunk's padding would cost as much as a full one.
            filled = len(chunk) * per_probe
            _log_probabilities(logits[:filled], config, into=logp[:filled])
            labels = None
            if probes.has_labels:
                labels = to_device(
                    _padded(np.array([probes.probes[i].label for i in chunk]), chunk_size), device
                )
            if reduced is not None:
                _refuse_unfinite(unfinite, plan, probes, per_probe)
                accumulator.absorb(reduced)
            unfinite = (~torch.isfinite(logits[:filled]).all(dim=1), chunk, columns)
            reduced = accumulator.reduce(
                logp=logp.view(chunk_size, per_probe, -1),
                shift_index=columns,
                labels=labels,
                probe_ids=list(chunk),
                names=[probes.probes[i].name for i in chunk],
            )
    if reduced is not None:
        _refuse_unfinite(unfinite, plan, probes, per_probe)
        accumulator.absorb(reduced)
    inner = {stage: round(seconds, 4) for stage, seconds in clock.items()} if timed else {}
    return accumulator, num_classes, inner


def _refuse_unfinite(
    found: tuple[torch.Tensor, range, torch.Tensor] | None,
    plan: ShiftPlan,
    probes: ProbeSet,
    per_probe: int,
) -> None:
    """ModelError naming the first probe and shift whose outputs hold NaN or Inf."""
    if found is None:
        return
    bad_rows, chunk, columns = found
    if not bool(bad_rows.any()):
        return
    row = int(torch.nonzero(bad_rows)[0])
    probe, column = divmod(row, per_probe)
    dy, dx = plan.shifts[int(columns[probe, column])]
    raise ModelError(
        f"the model's outputs contain NaN or Inf (probe {probes.probes[chunk[probe]].name} "
        f"at shift ({dy:g}, {dx:g})): refusing to report on them; check the model and "
        "preprocess (mean, std, value_scale)"
    )


def _padded(rows: np.ndarray, count: int) -> np.ndarray:
    """`rows` with its first row repeated up to `count` rows."""
    return np.concatenate([rows, np.repeat(rows[:1], count - len(rows), axis=0)])


def _decode(pool: ThreadPoolExecutor, probes: ProbeSet, chunk: range) -> list[Future[np.ndarray]]:
    return [pool.submit(probes.load_image, i) for i in chunk]


def _log_probabilities(
    out: torch.Tensor, config: AuditConfig, *, into: torch.Tensor | None = None
) -> torch.Tensor:
    """log p per row in float64, written `into` a buffer of out's shape when given."""
    # float64: KL between nearly equal distributions is second order in the logit
    # differences; float32 normalisation error would otherwise dominate it. (Autocast leaves
    # float64 alone, so this holds under bf16 and fp16 too.)
    out = out.double()
    if config.preprocess.output == "logits":
        if into is None:
            return torch.log_softmax(out, dim=1)
        return torch.log_softmax(out, dim=1, out=into)
    result = out.clamp_min(1e-30).log()
    return result if into is None else into.copy_(result)


def _check_outputs(
    logp: torch.Tensor, model: Runtime, probes: ProbeSet, config: AuditConfig, seen: int
) -> int:
    """Validate the first batch's outputs against the config and the labels."""
    classes = int(logp.shape[1])
    if seen not in (-1, classes):
        raise ConfigError(f"the model's output width changed from {seen} to {classes}")
    if config.preprocess.output == "probabilities":
        sums = logp.exp().sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise ConfigError(
                "preprocess.output is 'probabilities' but the model's outputs do not sum to 1 "
                f"(first row sums to {float(sums[0]):.4g}); set it to 'logits'"
            )
    if config.class_names is not None and len(config.class_names) != classes:
        raise ConfigError(
            f"class_names has {len(config.class_names)} names "
            f"but the model outputs {classes} classes"
        )
    summary = probes.label_summary()
    if summary and max(summary) >= classes:
        raise ConfigError(
            f"the probe set has label {max(summary)} but the model outputs only {classes} classes"
        )
    return classes


def _check_images(
    probes: ProbeSet, config: AuditConfig, *, size: tuple[int, int], layout: str
) -> torch.Tensor:
    """The runtime agreement check's batch: the set's first probes, preprocessed as for the
    layer profile (no shift), repeated up to CHECK_ROWS rows; the same for every shard."""
    count = min(CHECK_ROWS, len(probes))
    normalise = Normaliser(config.preprocess, device=torch.device("cpu"))
    images = [probes.load_image(i) for i in range(count)]
    geometry = standard_geometry(size, config.preprocess)
    pixels = normalise(sources(images, geometry, torch.device("cpu")))
    rows = pixels[torch.arange(CHECK_ROWS) % count]
    return model_input(rows, layout=layout, channels_last=False)


def _layer_profile(
    model: Runtime,
    probes: ProbeSet,
    config: AuditConfig,
    *,
    size: tuple[int, int],
    layout: str,
) -> LayerProfile:
    count = min(config.layers.probes, len(probes))
    if not config.layers.enabled:
        return LayerProfile(available=False, reason="disabled in the config", probes=0, entries=[])
    geometry = standard_geometry(size, config.preprocess)
    normalise = Normaliser(config.preprocess, device=model.device)
    images = [probes.load_image(i) for i in range(count)]
    pixels = normalise(sources(images, geometry, model.device))
    inputs = model_input(pixels, layout=layout, channels_last=False)
    return layer_profile(model, inputs, layout=layout, size=size)
