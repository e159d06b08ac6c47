"""The diagnosis of a layer profile in numbers and in two or three lines.

- aliasing is born at the node with the largest `local_aliasing`, if that exceeds
  ALIASING_FLOOR (below it, float rounding is all that is left);
- the field covers the input from the first layer, in graph order, whose field size is at
  least the input side on both axes;
- every `global_pool` and every `position_leak`, with the map it reduces or reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..report import (
    AliasingBirth,
    FieldCoverage,
    LayerEntry,
    LayerFindings,
    Report,
    RoleFinding,
)
from .receptive_fields import RoleMark

ALIASING_FLOOR = 1e-4


def layer_findings(
    entries: Sequence[LayerEntry],
    *,
    roles: Mapping[str, RoleMark],
    size: tuple[int, int],
) -> LayerFindings:
    """Find where aliasing is born, where the field covers the input, and the roles."""
    birth, aliasing_reason, aliasing_missing = _aliasing_birth(entries)
    coverage, field_reason, fields_missing = _coverage(entries, size=size)
    found = [
        RoleFinding(
            node=e.name,
            op_type=e.op_type,
            role=roles[e.name].role,
            map_size=roles[e.name].grid,
            detail=e.role_detail or roles[e.name].detail,
        )
        for e in entries
        if e.name in roles
    ]
    findings = LayerFindings(
        aliasing_born_at=birth,
        aliasing_reason=aliasing_reason,
        aliasing_missing=aliasing_missing,
        field_covers_input_at=coverage,
        field_reason=field_reason,
        fields_missing=fields_missing,
        global_pools=[r for r in found if r.role == "global_pool"],
        position_leaks=[r for r in found if r.role == "position_leak"],
        summary=[],
    )
    return findings.model_copy(update={"summary": summary_lines(findings, size=size)})


def _aliasing_birth(
    entries: Sequence[LayerEntry],
) -> tuple[AliasingBirth | None, str | None, str | None]:
    """The node with the largest local aliasing; or why there is none, and why it was not
    measured at all (when it was not)."""
    measured = [e for e in entries if e.local_aliasing is not None]
    if not measured:
        # The reason of a spatial layer says more than "non-spatial output" does.
        ordered = sorted(entries, key=lambda e: e.kind == "non_spatial")
        why = next(
            (e.reasons["local_aliasing"] for e in ordered if "local_aliasing" in e.reasons),
            "no layer was profiled",
        )
        return None, f"local aliasing not measured: {why}", why
    top = max(measured, key=lambda e: e.local_aliasing or 0.0)
    value = float(top.local_aliasing or 0.0)
    if value <= ALIASING_FLOOR:
        return (
            None,
            f"no layer aliases: the largest local aliasing is {value:.2g} (at {top.name}), "
            f"below {ALIASING_FLOOR:g}",
            None,
        )
    birth = AliasingBirth(
        node=top.name, op_type=top.op_type, local_aliasing=value, stride=top.stride
    )
    return birth, None, None


def _coverage(
    entries: Sequence[LayerEntry], *, size: tuple[int, int]
) -> tuple[FieldCoverage | None, str | None, str | None]:
    """The first layer whose field covers the input; or why none does, and why fields were
    not read at all (when they were not)."""
    fields = [(e, e.receptive_field) for e in entries if e.receptive_field is not None]
    for entry, field in fields:
        if field.size[0] >= size[0] and field.size[1] >= size[1]:
            coverage = FieldCoverage(
                node=entry.name,
                op_type=entry.op_type,
                size=field.size,
                input_fraction=field.input_fraction,
                stride=entry.stride,
            )
            return coverage, None, None
    if not fields:
        why = next(
            (e.reasons["receptive_field"] for e in entries if "receptive_field" in e.reasons),
            "no layers",
        )
        return None, f"receptive fields not available: {why}", why
    widest, field = max(fields, key=lambda pair: pair[1].size[0] * pair[1].size[1])
    return (
        None,
        f"no layer's field covers the {size[0]}x{size[1]} input; the largest is "
        f"{field.size[0]:g}x{field.size[1]:g} at {widest.name}",
        None,
    )


def summary_lines(findings: LayerFindings, *, size: tuple[int, int]) -> list[str]:
    """The diagnosis in three lines: aliasing; field and pooling; position. Parts that could
    not be measured for one and the same reason share one line."""
    missing: dict[str, list[str]] = {}
    lines: list[str] = []
    birth = findings.aliasing_born_at
    if birth is not None:
        stride = f", stride {birth.stride}" if birth.stride is not None else ""
        lines.append(f"aliasing born at {birth.node} (local {birth.local_aliasing:.2g}{stride})")
    elif findings.aliasing_missing is not None:
        missing.setdefault(findings.aliasing_missing, []).append("local aliasing")
    else:
        lines.append(findings.aliasing_reason or "no aliasing measured")
    coverage = findings.field_covers_input_at
    if findings.fields_missing is not None:
        missing.setdefault(findings.fields_missing, []).extend(["receptive fields", "roles"])
    else:
        if coverage is not None:
            line = (
                f"field covers the input from {coverage.node} "
                f"({coverage.size[0]:g}x{coverage.size[1]:g} on {size[0]}x{size[1]})"
            )
        else:
            line = findings.field_reason or "no receptive field covers the input"
        if findings.global_pools:
            pool = findings.global_pools[0]
            count = len(findings.global_pools)
            more = f" and {count - 1} more" if count > 1 else ""
            line += (
                f"; global pool at {pool.node} ({pool.map_size[0]}x{pool.map_size[1]} map){more}"
            )
        lines.append(line)
        if findings.position_leaks:
            lines.append(
                "position leaks at "
                + ", ".join(f"{leak.node} ({leak.detail})" for leak in findings.position_leaks)
            )
        else:
            lines.append("no position leak: no dense layer reads a map of more than one position")
    for reason, parts in missing.items():
        lines.append(f"{', '.join(parts)}: {reason}")
    return lines


def findings_lines(report: Report) -> list[str]:
    """Two or three lines that say where invariance breaks, for the CLI summary."""
    layers = report.layers
    if not layers.available:
        return [f"not available: {layers.reason}"]
    if layers.findings is not None:
        return list(layers.findings.summary)
    # A 1.0 / 1.1 report: only the on-grid error was measured.
    spatial = [e for e in layers.entries if e.relative_error is not None]
    if not spatial:
        return ["no spatial layer profiled"]
    worst = max(spatial, key=lambda e: e.relative_error or 0.0)
    return [
        f"{len(spatial)} layers profiled; largest on-grid error {worst.relative_error:.3g} at "
        f"{worst.name} ({worst.op_type}, stride {worst.stride})"
    ]
