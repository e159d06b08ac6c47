"""Small real inputs for the hostile suite: a model file and a probe set, uploaded."""

from __future__ import annotations

from pathlib import Path

from tests.nets import GlobalPoolNet, export_program, phase_probes, zip_directory


def uploaded_ids(client, headers, root: Path, *, probes: int = 4) -> dict[str, str]:
    """A GlobalPoolNet (16 px) and a phase-probe set uploaded for the caller's team."""
    root.mkdir(parents=True, exist_ok=True)
    model = export_program(GlobalPoolNet(), root / "model.pt2").read_bytes()
    archive = zip_directory(phase_probes(root / "probes", probes))
    answers = [
        client.post(
            "/v1/models", headers=headers, data={"name": "m"}, files={"file": ("m", model)}
        ),
        client.post(
            "/v1/probe-sets", headers=headers, data={"name": "p"}, files={"file": ("p", archive)}
        ),
    ]
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    return {"model_id": answers[0].json()["id"], "probe_set_id": answers[1].json()["id"]}
