"""Streaming accumulation of the summary metrics of science.md.

Chunks of probes arrive with the log-probabilities at every shift they were evaluated at; each
chunk is reduced on the device to one row of scalars per probe plus per-shift counts, and then
dropped. Memory is O(probes) scalars and O(shifts) counts, never probes x shifts. The state is
the sufficient statistics (per-probe values and counts), so accumulators over disjoint probe
shards merge exactly.

Per probe i over its shifts t (K of them, t = 0 first):
- consistency_i = sum_c (n_ic / K)^2; with random pairs, the share of sampled pairs that agree.
- flip_i = share of adjacent pairs (t, t') whose top-1 differ.
- prob_change_i = mean over adjacent pairs of |p(t)[y(t)] - p(t')[y(t)]|, t' = t + one step.
- kl_i = mean_t KL(p(0) || p(t)).
- invariant_i = 1 if y(t) is the same for every t.
- correct_i = 1[y(0) = label]; shift_acc_i = mean_t 1[y(t) = label]; all_correct_i = 1 if every
  y(t) is the label.
A summary metric is the mean of its per-probe values (flip_rate and mean_prob_change too: every
probe has the same adjacent pairs), so the bootstrap resamples probes.
"""

from __future__ import annotations

import base64
import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .report import (
    Estimate,
    FlipExample,
    Period,
    PositionMap,
    ShiftMap,
    Summary,
    SummarySplit,
    WorstCase,
)
from .shifts import ShiftPlan

_PER_PROBE = (
    "consistency",
    "flip",
    "prob_change",
    "kl",
    "invariant",
    "correct",
    "shift_acc",
    "all_correct",
)
_EXAMPLES_PER_CASE = 8


@dataclass
class ChunkStats:
    """One chunk's reduction, on its way from the device to the host."""

    per_probe: dict[str, torch.Tensor]  # numerators; divided by `denominators` (default 1)
    denominators: dict[str, int]
    tallies: dict[str, torch.Tensor]  # per-shift eval / agree / correct counts
    top: torch.Tensor | None  # (b, K) predictions, for the worst cases
    labels: torch.Tensor | None
    probe_ids: list[int]
    names: list[str]
    ready: torch.cuda.Event | None  # set when the copies have landed (None: already there)


def _to_host(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Start device-to-host copies; only a pinned destination lets them not block the host."""
    if not tensors or next(iter(tensors.values())).device.type != "cuda":
        return {k: v.cpu() for k, v in tensors.items()}
    host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in tensors.items()}
    for key, value in tensors.items():
        host[key].copy_(value, non_blocking=True)
    return host


def _event_after(device: torch.device) -> torch.cuda.Event | None:
    if device.type != "cuda":
        return None
    event = torch.cuda.Event()  # type: ignore[no-untyped-call]
    event.record(torch.cuda.current_stream(device))
    return event


@dataclass
class SweepAccumulator:
    """Sufficient statistics of one sweep: `reduce` + `absorb` per chunk, `merge` across shards."""

    plan: ShiftPlan
    sampled: bool
    labelled: bool
    worst_case_limit: int
    probe_ids: list[np.ndarray] = field(default_factory=list)
    values: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _PER_PROBE})
    agree_counts: np.ndarray = field(init=False)
    correct_counts: np.ndarray = field(init=False)
    eval_counts: np.ndarray = field(init=False)
    # Min-heap of (disagreeing shifts, -probe id, case) keeps the worst few in bounded memory.
    _worst: list[tuple[int, int, WorstCase]] = field(default_factory=list)
    _adjacent: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        k = self.plan.count
        self.agree_counts = np.zeros(k, dtype=np.int64)
        self.correct_counts = np.zeros(k, dtype=np.int64)
        self.eval_counts = np.zeros(k, dtype=np.int64)

    @property
    def probe_count(self) -> int:
        return int(sum(len(ids) for ids in self.probe_ids))

    def reduce(
        self,
        *,
        logp: torch.Tensor,
        shift_index: torch.Tensor,
        labels: torch.Tensor | None,
        probe_ids: list[int],
        names: list[str],
    ) -> ChunkStats:
        """Reduce one chunk on its device: logp (b, L, C) at shift_index (b, L).

        Exhaustive sweeps give every shift in plan order (L = K); random pairs give t = 0 in
        column 0, then the sampled pairs. Rows past len(probe_ids) are padding: reduced with
        the rest, so that every chunk is reduced at one shape, then dropped. Nothing here waits
        for the device: the result is copied to the host asynchronously and folded in later
        by `absorb`.
        """
        b, n_shifts, _ = logp.shape
        n = len(probe_ids)
        device = logp.device
        ref = 0 if self.sampled else self.plan.zero_index
        top = logp.argmax(dim=2)  # (b, L)
        agree = top == top[:, ref : ref + 1]
        # Per-probe numerators: counts stay integers on the device and every division happens
        # on the host (some GPU kernels divide by multiplying with a reciprocal, and then
        # 49 / 49 is not exactly 1).
        stats: dict[str, torch.Tensor] = {}
        denominators: dict[str, int] = {}
        if self.sampled:
            # Columns 1..2P hold P independent uniform pairs (t1, t2).
            stats["consistency"] = (top[:, 1::2] == top[:, 2::2]).sum(1)
            denominators["consistency"] = (n_shifts - 1) // 2
            kl_cols = slice(1, None)
        else:
            counts = torch.zeros(b, logp.shape[2], device=device, dtype=torch.int64)
            counts.scatter_add_(1, top, torch.ones_like(top))
            stats["consistency"] = (counts * counts).sum(1)
            denominators["consistency"] = n_shifts * n_shifts
            stats["invariant"] = agree.all(1).long()
            kl_cols = slice(None)
            if len(self.plan.adjacent):
                first, second = self._adjacent_on(device)
                top_first = top[:, first]  # (b, P)
                stats["flip"] = (top_first != top[:, second]).sum(1)
                # Three index tensors pick (b, P) values without a (b, P, C) intermediate.
                rows = torch.arange(b, device=device)[:, None]
                p_first = logp[rows, first[None, :], top_first].exp()
                p_second = logp[rows, second[None, :], top_first].exp()
                stats["prob_change"] = (p_first - p_second).abs().double().sum(1)
                denominators["flip"] = denominators["prob_change"] = len(self.plan.adjacent)
        # KL(p0 || pt) = sum p0 log p0 - sum p0 log pt; the einsum avoids (b, L, C) temporaries.
        logp0 = logp[:, ref]
        p0 = logp0.exp()
        cross = torch.einsum("bc,blc->bl", p0, logp[:, kl_cols])
        stats["kl"] = ((p0 * logp0).sum(1, keepdim=True) - cross).clamp_min(0).double().sum(1)
        evaluated = n_shifts - 1 if self.sampled else n_shifts
        denominators["kl"] = denominators["shift_acc"] = evaluated
        flat = shift_index[:n].reshape(-1)
        tallies = {"eval": self._tally(flat, None), "agree": self._tally(flat, agree[:n])}
        if labels is not None:
            correct = top == labels[:, None]
            stats["correct"] = correct[:, ref].long()
            stats["shift_acc"] = correct[:, kl_cols].sum(1)
            tallies["correct"] = self._tally(flat, correct[:n])
            if not self.sampled:
                stats["all_correct"] = correct.all(1).long()
        keep_worst = bool(self.worst_case_limit) and not self.sampled
        return ChunkStats(
            per_probe=_to_host({key: value[:n] for key, value in stats.items()}),
            denominators=denominators,
            tallies=_to_host(tallies),
            top=_to_host({"top": top[:n]})["top"] if keep_worst else None,
            labels=None if labels is None else _to_host({"labels": labels[:n]})["labels"],
            probe_ids=probe_ids,
            names=names,
            ready=_event_after(device),
        )

    def absorb(self, chunk: ChunkStats) -> None:
        """Fold a reduced chunk into the statistics (waits for its copies to land)."""
        if chunk.ready is not None:
            chunk.ready.synchronize()
        for key, value in chunk.per_probe.items():
            self.values[key].append(value.numpy() / chunk.denominators.get(key, 1))
        self.probe_ids.append(np.asarray(chunk.probe_ids, dtype=np.int64))
        self.eval_counts += chunk.tallies["eval"].numpy()
        self.agree_counts += chunk.tallies["agree"].numpy()
        if "correct" in chunk.tallies:
            self.correct_counts += chunk.tallies["correct"].numpy()
        if chunk.top is not None:
            labels = None if chunk.labels is None else chunk.labels.tolist()
            self._keep_worst(chunk.top.numpy(), labels, chunk.probe_ids, chunk.names)

    def _tally(self, shift_index: torch.Tensor, hits: torch.Tensor | None) -> torch.Tensor:
        """Per-shift counts. scatter_add, not bincount: on a GPU bincount reads the maximum
        back to the host, which would stall the queue once per chunk."""
        counts = torch.zeros(self.plan.count, dtype=torch.int64, device=shift_index.device)
        ones = torch.ones_like(shift_index) if hits is None else hits.reshape(-1).long()
        return counts.scatter_add_(0, shift_index, ones)

    def _adjacent_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._adjacent is None or self._adjacent[0].device != device:
            pairs = torch.as_tensor(self.plan.adjacent, device=device)
            self._adjacent = (pairs[:, 0], pairs[:, 1])
        return self._adjacent

    def _keep_worst(
        self, top: np.ndarray, labels: list[int] | None, probe_ids: list[int], names: list[str]
    ) -> None:
        distance = np.abs(self.plan.shifts).sum(1)
        agree = top == top[:, self.plan.zero_index : self.plan.zero_index + 1]
        for row, probe_id in enumerate(probe_ids):
            flips = np.flatnonzero(~agree[row])
            if len(flips) == 0:
                continue
            if len(self._worst) >= self.worst_case_limit and len(flips) <= self._worst[0][0]:
                continue
            nearest = flips[np.argsort(distance[flips], kind="stable")][:_EXAMPLES_PER_CASE]
            case = WorstCase(
                probe=names[row],
                label=None if labels is None else int(labels[row]),
                unshifted_prediction=int(top[row, self.plan.zero_index]),
                disagreeing_shifts=len(flips),
                disagreement_fraction=len(flips) / top.shape[1],
                examples=[
                    FlipExample(shift=_pair(self.plan.shifts[t]), predicted=int(top[row, t]))
                    for t in nearest
                ],
            )
            entry = (len(flips), -probe_id, case)
            if len(self._worst) < self.worst_case_limit:
                heapq.heappush(self._worst, entry)
            else:
                heapq.heapreplace(self._worst, entry)

    def merge(self, other: SweepAccumulator) -> None:
        """Add another shard's statistics (disjoint probes, same plan)."""
        self.probe_ids.extend(other.probe_ids)
        for key in _PER_PROBE:
            self.values[key].extend(other.values[key])
        self.agree_counts += other.agree_counts
        self.correct_counts += other.correct_counts
        self.eval_counts += other.eval_counts
        for entry in other._worst:
            if len(self._worst) < self.worst_case_limit:
                heapq.heappush(self._worst, entry)
            elif entry[:2] > self._worst[0][:2]:
                heapq.heapreplace(self._worst, entry)

    def state(self) -> dict[str, Any]:
        """The statistics as JSON-ready data: arrays as base64 bytes, exact to the last bit."""
        ids = np.concatenate(self.probe_ids) if self.probe_ids else np.zeros(0, np.int64)
        return {
            "probe_ids": _encode(ids.astype(np.int64)),
            "values": {
                k: _encode(np.concatenate(v).astype(np.float64))
                for k, v in self.values.items()
                if v
            },
            "agree_counts": _encode(self.agree_counts),
            "correct_counts": _encode(self.correct_counts),
            "eval_counts": _encode(self.eval_counts),
            "worst": [
                [flips, negative_id, case.model_dump(mode="json")]
                for flips, negative_id, case in self._worst
            ],
        }

    @classmethod
    def from_state(
        cls,
        plan: ShiftPlan,
        state: dict[str, Any],
        *,
        sampled: bool,
        labelled: bool,
        worst_case_limit: int,
    ) -> SweepAccumulator:
        """Rebuild an accumulator from `state()`; sizes are checked against the plan."""
        accumulator = cls(
            plan, sampled=sampled, labelled=labelled, worst_case_limit=worst_case_limit
        )
        ids = _decode(state["probe_ids"], np.int64)
        accumulator.probe_ids = [ids]
        for key, encoded in state["values"].items():
            if key not in accumulator.values:
                raise ValueError(f"unknown per-probe statistic {key!r}")
            values = _decode(encoded, np.float64)
            if len(values) != len(ids):
                raise ValueError(
                    f"statistic {key!r} has {len(values)} values for {len(ids)} probes"
                )
            accumulator.values[key] = [values]
        for name in ("agree_counts", "correct_counts", "eval_counts"):
            counts = _decode(state[name], np.int64)
            if counts.shape != (plan.count,):
                raise ValueError(f"{name} has {len(counts)} entries for {plan.count} shifts")
            setattr(accumulator, name, counts)
        accumulator._worst = [
            (int(flips), int(negative_id), WorstCase.model_validate(case))
            for flips, negative_id, case in state["worst"]
        ]
        heapq.heapify(accumulator._worst)
        return accumulator

    # ----------------------------------------------------------------------------- results

    def per_probe(self) -> dict[str, np.ndarray]:
        """Per-probe values ordered by probe id (so shard order never changes a result)."""
        ids = np.concatenate(self.probe_ids) if self.probe_ids else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        return {k: np.concatenate(v)[order] for k, v in self.values.items() if v}

    def summary(self, *, resamples: int, seed: int) -> SummarySplit:
        values = self.per_probe()
        everyone = np.ones(self.probe_count, dtype=bool)
        split_correct: Summary | None = None
        split_wrong: Summary | None = None
        if "correct" in values:
            right = values["correct"] > 0.5
            split_correct = _summarise(values, right, resamples, seed + 1) if right.any() else None
            split_wrong = (
                _summarise(values, ~right, resamples, seed + 2) if (~right).any() else None
            )
        return SummarySplit(
            all=_summarise(values, everyone, resamples, seed),
            unshifted_correct=split_correct,
            unshifted_wrong=split_wrong,
        )

    def agreement(self) -> np.ndarray:
        """A(t); NaN where a shift was never evaluated (possible only under sampling)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            share: np.ndarray = self.agree_counts / self.eval_counts
        return share

    def shift_map(self) -> ShiftMap:
        agreement = self.agreement()
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = self.correct_counts / self.eval_counts if self.labelled else None
        return ShiftMap(
            shifts=[_pair(s) for s in self.plan.shifts],
            agreement=_nullable(agreement),
            accuracy=None if accuracy is None else _nullable(accuracy),
            evaluations=self.eval_counts.tolist(),
            period=None if self.sampled else detect_period(self.plan, agreement),
        )

    def position_map(self) -> PositionMap | None:
        if self.plan.mode != "canvas":
            return None
        ys, xs = self.plan.axis_values()
        shape = (len(ys), len(xs))
        accuracy = None
        if self.labelled:
            accuracy = (self.correct_counts / self.eval_counts).reshape(shape).tolist()
        return PositionMap(
            object_size=self.plan.source_size[0],
            positions_y=[int(y) + self.plan.margin for y in ys],
            positions_x=[int(x) + self.plan.margin for x in xs],
            agreement=self.agreement().reshape(shape).tolist(),
            accuracy=accuracy,
        )

    def worst_cases(self) -> list[WorstCase]:
        return [case for _, _, case in sorted(self._worst, key=lambda e: e[:2], reverse=True)]


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(
        np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    ).decode()


def _decode(encoded: str, dtype: type[np.generic]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(encoded), dtype=np.dtype(dtype).newbyteorder("<")).astype(
        dtype
    )


def _pair(shift: np.ndarray) -> tuple[float, float]:
    return float(shift[0]), float(shift[1])


def _nullable(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else float(v) for v in values]


def _summarise(
    values: dict[str, np.ndarray], mask: np.ndarray, resamples: int, seed: int
) -> Summary:
    chosen = {k: v[mask] for k, v in values.items()}
    estimates = bootstrap_means(chosen, resamples=resamples, seed=seed)
    get = estimates.get
    return Summary(
        consistency=estimates["consistency"],
        flip_rate=get("flip"),
        mean_prob_change=get("prob_change"),
        mean_kl=estimates["kl"],
        invariant_fraction=get("invariant"),
        accuracy=get("correct"),
        shift_accuracy_mean=get("shift_acc"),
        worst_case_accuracy=get("all_correct"),
    )


def bootstrap_means(
    values: dict[str, np.ndarray], *, resamples: int, seed: int
) -> dict[str, Estimate]:
    """Means with percentile-bootstrap 95% intervals; all metrics share the resampled probes."""
    keys = list(values)
    n = len(next(iter(values.values()))) if values else 0
    matrix = np.stack([values[k] for k in keys], axis=1) if keys else np.zeros((0, 0))
    means = matrix.mean(0) if n else np.full(len(keys), np.nan)
    low = high = [None] * len(keys)
    if resamples > 0 and n >= 2:
        boot = resampled_means(matrix, resamples, np.random.default_rng(seed))
        low, high = (np.percentile(boot, q, axis=0).tolist() for q in (2.5, 97.5))
    return {
        k: Estimate(value=float(means[i]), ci_low=low[i], ci_high=high[i], n=n)
        for i, k in enumerate(keys)
    }


def resampled_means(matrix: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column means of `resamples` bootstrap resamples of the rows: (resamples, columns).

    A resample is a multinomial count per row; blocks of resamples keep the count matrix
    near 16 MB whatever the row count, and one matrix product gives every column's mean.
    """
    n = len(matrix)
    block = max(1, 2_000_000 // n)
    uniform = np.full(n, 1.0 / n)
    boot = np.empty((resamples, matrix.shape[1]))
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        counts = rng.multinomial(n, uniform, size=stop - start)
        boot[start:stop] = counts @ matrix / n
    return boot


def detect_period(plan: ShiftPlan, agreement: np.ndarray) -> Period | None:
    """Per axis, the smallest period p (a multiple of the step) under which A is constant.

    "Constant" is exact: A(t) counts probes, so any real dependence on the phase shows up as a
    difference of at least 1/N. None when no p up to half the axis length qualifies.
    """
    ys, xs = plan.axis_values()
    if len(ys) * len(xs) != plan.count or not plan.is_integer:
        return None
    grid = np.full((len(ys), len(xs)), np.nan)
    row = np.searchsorted(ys, plan.shifts[:, 0])
    col = np.searchsorted(xs, plan.shifts[:, 1])
    grid[row, col] = agreement
    if np.isnan(grid).any() or not (_even_spacing(ys) and _even_spacing(xs)):
        return None
    spacing_y = int(ys[1] - ys[0]) if len(ys) > 1 else 1
    spacing_x = int(xs[1] - xs[0]) if len(xs) > 1 else 1
    steps_y = _axis_period(grid)
    steps_x = _axis_period(grid.T)
    period_y = None if steps_y is None else steps_y * spacing_y
    period_x = None if steps_x is None else steps_x * spacing_x
    phase = None
    if steps_y is not None and steps_x is not None:
        m = max(steps_y, steps_x)
        phase_rows = np.mod(np.round(ys / spacing_y).astype(int), m)
        phase_cols = np.mod(np.round(xs / spacing_x).astype(int), m)
        table = np.zeros((m, m))
        hits = np.zeros((m, m))
        np.add.at(table, (phase_rows[:, None], phase_cols[None, :]), grid)
        np.add.at(hits, (phase_rows[:, None], phase_cols[None, :]), 1)
        with np.errstate(invalid="ignore"):
            phase = (table / hits).tolist()
    return Period(dy=period_y, dx=period_x, phase_agreement=phase)


def _even_spacing(values: np.ndarray) -> bool:
    return len(values) < 2 or bool(np.all(np.diff(values) == values[1] - values[0]))


def _axis_period(grid: np.ndarray) -> int | None:
    n = grid.shape[0]
    index = np.arange(n)
    for m in range(1, n // 2 + 1):
        phase = np.mod(index, m)
        if all(np.ptp(grid[phase == c], axis=0).max() <= 1e-12 for c in range(m)):
            return m
    return None
