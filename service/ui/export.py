"""GET /v1/audits/{id}/report.html: one self-contained HTML file of a report, to attach to a
pull request or a ticket. It is the report page's own rendering code with everything inlined
(plotly's bundle, the data, the worst cases' thumbnails as data: URIs): about 5 MB, nearly
all of it plotly.js, and it opens from disk with no network at all."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import uuid
from datetime import UTC, datetime
from string import Template
from typing import Any

from fastapi import APIRouter, Request, Response

from service.audits.repository import TeamAudits
from service.audits.tables import Audit
from service.audits.thumbnails import ShiftedProbe, render_png
from service.deps import Reader, SessionDep, SettingsDep
from service.errors import DomainError
from service.guard import GuardedRoute
from service.models.tables import ModelFile
from service.probe_sets.tables import ProbeSetFile
from service.settings import Settings
from service.storage import ArtifactStorage
from service.ui import assets
from shiftaudit.config import AuditConfig
from shiftaudit.report import Report
from shiftaudit_api.audits import AuditOut
from shiftaudit_api.uploads import ModelOut, ProbeSetOut

router = APIRouter(prefix="/v1/audits", tags=["audits"], route_class=GuardedRoute)
# The scripts the export runs, in order: the same files as the report page, then its start.
SCRIPTS = ("static/dom.js", "static/charts.js", "static/export.js")


@router.get(
    "/{audit_id}/report.html",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "the report as one file"}},
)
def export_report(
    audit_id: uuid.UUID,
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
) -> Response:
    """The report as one self-contained HTML file (charts, data and thumbnails inlined; it
    loads nothing from anywhere), as an attachment."""
    audit, report = TeamAudits(session, principal.team_id).report(audit_id)
    model = session.get_one(ModelFile, audit.model_id)
    probe_set = session.get_one(ProbeSetFile, audit.probe_set_id)
    bundle = {
        "audit": AuditOut.model_validate(audit).model_dump(mode="json"),
        "model": ModelOut.model_validate(model).model_dump(mode="json"),
        "probe_set": ProbeSetOut.model_validate(probe_set).model_dump(mode="json"),
        "report": report.model_dump(mode="json"),
        "thumbnails": _thumbnails(
            audit, report, probe_set.sha256, storage=request.app.state.storage, settings=settings
        ),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    page, policy = render_export(bundle, title=f"shiftaudit report: {model.name} {model.version}")
    return Response(
        page,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="shiftaudit-report-{audit.id}.html"',
            # The page's own policy again, for when it is served rather than saved.
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
        },
    )


def render_export(bundle: dict[str, Any], *, title: str) -> tuple[str, str]:
    """The export page and its content security policy, which is also in a <meta> element:
    its scripts are allowed by hash, so the file runs nothing else and connects nowhere,
    wherever it is opened."""
    scripts = [assets.plotly_bundle().decode()] + [assets.own_text(name) for name in SCRIPTS]
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_hash(script) for script in scripts),
            "style-src 'unsafe-inline'",
            "img-src data:",
        ]
    )
    page = Template(assets.own_text("templates/export.html")).substitute(
        title=html.escape(title),
        policy=html.escape(policy),
        css=assets.own_text("static/ui.css"),
        data=_script_json(bundle),
        scripts="\n".join(f"<script>{script}</script>" for script in scripts),
    )
    return page, policy


def _hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def _script_json(value: Any) -> str:
    """JSON safe inside <script type="application/json">: no character of it can end the
    element or start markup, whatever the names in it say."""
    text = json.dumps(value, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _thumbnails(
    audit: Audit,
    report: Report,
    probe_set_sha256: str,
    *,
    storage: ArtifactStorage,
    settings: Settings,
) -> list[dict[str, Any]]:
    """Every thumbnail the report page shows: each worst case unshifted and at each example."""
    config = AuditConfig.model_validate(audit.config)
    found = []
    for case in report.worst_cases:
        for dy, dx in [(0.0, 0.0)] + [example.shift for example in case.examples]:
            shifted = ShiftedProbe(
                probe_set_sha256=probe_set_sha256,
                config=config,
                input_size=report.input_size,
                probe=case.probe,
                dy=float(dy),
                dx=float(dx),
            )
            try:
                png = render_png(shifted, storage=storage, settings=settings)
            except DomainError:  # shown as missing, as on the page
                continue
            source = "data:image/png;base64," + base64.b64encode(png).decode()
            found.append({"probe": case.probe, "dy": dy, "dx": dx, "src": source})
    return found
