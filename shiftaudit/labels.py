"""Class labels of a probe set: from labels.csv (`filename,label`), or one folder per class.

A label is an integer class index, or a name looked up in the config's `class_names`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

from shiftaudit.errors import ProbeSetError

__all__ = ["LABELS_FILE", "labels_of"]

LABELS_FILE = "labels.csv"
_MAX_LISTED = 5


def labels_of(
    root: Path, files: list[str], labels_csv: bool, class_names: Sequence[str] | None
) -> list[int | None]:
    """Each file's label, in order: all None for an unlabelled set."""
    if labels_csv:
        labels = _read_labels_csv(root / LABELS_FILE, files, class_names)
        return [labels[name] for name in files]
    at_root = [n for n in files if "/" not in n]
    if len(at_root) == len(files):
        return [None for _ in files]
    if at_root:
        raise ProbeSetError(
            f"images at the root mixed with class folders: {_some(at_root)}; "
            "put every image in a class folder or add labels.csv"
        )
    folders = sorted({n.split("/", 1)[0] for n in files})  # sorted: deterministic errors
    folder_label = {f: _resolve_label(f, class_names, f"class folder {f!r}") for f in folders}
    return [folder_label[name.split("/", 1)[0]] for name in files]


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _resolve_label(value: str, class_names: Sequence[str] | None, what: str) -> int:
    """An integer is always a class index; anything else is looked up in ``class_names``."""
    value = value.strip()
    if re.fullmatch(r"[0-9]+", value):
        index = int(value)
        if class_names is not None and index >= len(class_names):
            raise ProbeSetError(
                f"{what}: class index {index} out of range for {len(class_names)} class_names"
            )
        return index
    if class_names is None:
        raise ProbeSetError(
            f"{what}: {value!r} is not an integer class index; class_names is needed"
        )
    try:
        return list(class_names).index(value)
    except ValueError:
        raise ProbeSetError(f"{what}: class_names does not contain {value!r}") from None


def _read_labels_csv(
    path: Path, files: list[str], class_names: Sequence[str] | None
) -> dict[str, int]:
    labels: dict[str, int] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ProbeSetError(f"{LABELS_FILE}: cannot read: {e}") from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ProbeSetError(f"{LABELS_FILE}: header must be 'filename,label'")
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != 2:
            raise ProbeSetError(f"{LABELS_FILE} line {line}: expected 2 columns, got {len(row)}")
        name = row[0].strip().removeprefix("./")
        if name in labels:
            raise ProbeSetError(f"{LABELS_FILE} line {line}: duplicate row for {name!r}")
        labels[name] = _resolve_label(row[1], class_names, f"{LABELS_FILE} line {line}")
    missing = sorted(set(labels) - set(files))
    if missing:
        raise ProbeSetError(f"{LABELS_FILE} lists images that do not exist: {_some(missing)}")
    unlisted = [n for n in files if n not in labels]
    if unlisted:
        raise ProbeSetError(f"images not listed in {LABELS_FILE}: {_some(unlisted)}")
    return labels
