"""Probe images as an audit's model saw them: preprocessed and shifted by the engine's own code.

The API process decodes images (with the engine's limits) but never loads a model. An archive
is extracted once and kept open for the next thumbnails of the same report; extraction is
bounded by the same limits as an upload.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from service.errors import Invalid, NotFound
from service.scratch import process_directory
from service.settings import Settings
from service.storage import ArtifactStorage
from shiftaudit.config import AuditConfig
from shiftaudit.errors import ShiftAuditError
from shiftaudit.preprocess import source_geometry, sources
from shiftaudit.probe_sets import ProbeSet, open_probe_set
from shiftaudit.shifts import ShiftGenerator, plan_shifts

MAX_SIDE = 256  # larger model inputs are scaled down: a thumbnail, not the tensor
_OPEN_SETS = 2  # a report page asks for one probe set; a compare view for a few


@dataclass(frozen=True)
class ShiftedProbe:
    """Which probe, under which shift, of which audit (its config and resolved input size)."""

    probe_set_sha256: str
    config: AuditConfig
    input_size: tuple[int, int]
    probe: str
    dy: float
    dx: float


def render_png(request: ShiftedProbe, *, storage: ArtifactStorage, settings: Settings) -> bytes:
    """The shifted probe as a PNG; Invalid for a shift outside the sweep, NotFound for an
    unknown probe.

    Shifting happens in pixel units before normalisation, exactly as in the sweep (the fill
    colour is defined there), so the picture is what the model saw, minus the normalisation.
    """
    plan = plan_shifts(request.config.sweep, request.input_size)
    matches = np.flatnonzero(np.all(plan.shifts == (request.dy, request.dx), axis=1))
    if len(matches) == 0:
        raise Invalid(
            f"dy, dx: ({request.dy:g}, {request.dx:g}) is not a shift of this audit's sweep"
        )
    with _CACHE.opened(request, storage, settings) as probes:
        index = next((i for i, p in enumerate(probes.probes) if p.name == request.probe), None)
        if index is None:
            raise NotFound("probe: no image of this name in the audit's probe set")
        image = probes.load_image(index)
    cpu = torch.device("cpu")
    source = sources([image], source_geometry(plan, request.config.preprocess), cpu)
    fill = torch.tensor(request.config.sweep.fill, dtype=torch.float32) / 255.0
    generator = ShiftGenerator(plan, fill=fill, channels_first=False, device=cpu)
    shifted = generator(source, torch.zeros(1, dtype=torch.int64), torch.tensor(matches[:1]))
    rgb = (shifted[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    picture = Image.fromarray(rgb)
    if max(picture.size) > MAX_SIDE:
        picture.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BILINEAR)
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    return encoded.getvalue()


class _OpenProbeSets:
    """The last few extracted probe sets, by sha256. One lock: a page's thumbnails of a probe
    set not yet extracted wait for the one extraction instead of each starting their own."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._sets: OrderedDict[str, ProbeSet] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def opened(
        self, request: ShiftedProbe, storage: ArtifactStorage, settings: Settings
    ) -> Iterator[ProbeSet]:
        with self._lock:
            yield self._get(request, storage, settings)

    def _get(self, request: ShiftedProbe, storage: ArtifactStorage, settings: Settings) -> ProbeSet:
        sha = request.probe_set_sha256
        found = self._sets.get(sha)
        if found is not None:
            self._sets.move_to_end(sha)
            return found
        limits = settings.probe_limits()
        # Kept open across requests: this process's own directory, removed after a crash by
        # the next start (service.scratch).
        tmp_dir = process_directory(settings.data_dir / "tmp", "thumbnails").resolve()
        with storage.open_local(sha) as path:
            try:
                opened = open_probe_set(
                    path, class_names=request.config.class_names, limits=limits, tmp_dir=tmp_dir
                )
            except ShiftAuditError as error:  # accepted at upload, so this is a bug or damage
                raise RuntimeError(f"the probe set {sha} cannot be opened: {error}") from error
        self._sets[sha] = opened
        while len(self._sets) > self._size:
            _, oldest = self._sets.popitem(last=False)
            oldest.close()
        return opened


_CACHE = _OpenProbeSets(_OPEN_SETS)
