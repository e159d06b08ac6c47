"""GET /ui...: the dashboard's pages and files. The pages are a static shell: the browser signs
in with an API key (kept in sessionStorage) and calls the JSON API with it, so these routes
need no key, set no cookie and show no data."""

from __future__ import annotations

from string import Template

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from service.errors import NotFound
from service.ui import assets

router = APIRouter(prefix="/ui", include_in_schema=False)

# Plotly injects <style> elements (hence 'unsafe-inline' for styles only); thumbnails are
# blob: URLs of authenticated fetches. Nothing may load from, or be sent to, another origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_PAGES = {"audits": "Audits", "report": "Report", "compare": "Compare"}


def _page(page: str) -> HTMLResponse:
    html = Template(assets.own_text("templates/page.html")).substitute(
        title=_PAGES[page], page=page, plotly=plotly_url()
    )
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})


def plotly_url() -> str:
    return f"/ui/static/vendor/plotly-{assets.plotly_version()}.min.js"


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
def audits_page() -> HTMLResponse:
    """The audits list: filters, status, live progress, selection for comparing."""
    return _page("audits")


@router.get("/audits/{audit_id}", response_class=HTMLResponse)
def report_page(audit_id: str) -> HTMLResponse:
    """One audit's report; the script reads the id from the address."""
    return _page("report")


@router.get("/compare", response_class=HTMLResponse)
def compare_page() -> HTMLResponse:
    """Audits side by side (?audits=A,B,...) and a model's trend (?model_name=N)."""
    return _page("compare")


@router.get("/static/vendor/plotly-{version}.min.js")
def plotly_bundle(version: str) -> Response:
    if version != assets.plotly_version():
        raise NotFound("not the installed plotly version")
    return Response(
        assets.plotly_bundle(),
        media_type=assets.MEDIA_TYPES[".js"],
        # Versioned URL: a new plotly gets a new address, so this one never changes.
        headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get("/static/{name}")
def own_file(name: str, request: Request) -> Response:
    if name not in assets.own_names():
        raise NotFound("no such file")
    path = f"static/{name}"
    etag = assets.own_etag(path)
    # Unversioned URLs: revalidate every time (a 304 costs one round trip on loopback).
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    suffix = name[name.rfind(".") :]
    return Response(
        assets.own_text(path), media_type=assets.MEDIA_TYPES.get(suffix), headers=headers
    )
