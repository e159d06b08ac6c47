"""The dashboard's files: ours (package data of `service.ui`) and plotly's bundle, read from
the installed `plotly` package so that no third-party code lives in this repository."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata, resources

_OWN = resources.files("service.ui")
MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


@cache
def own_names() -> frozenset[str]:
    """The files under static/: the only names the static route serves, so no path is ever
    built from the request."""
    return frozenset(item.name for item in (_OWN / "static").iterdir() if item.is_file())


@cache
def own_text(name: str) -> str:
    """A file of ours from static/ or templates/ ("static/ui.css")."""
    return (_OWN / name).read_text(encoding="utf-8")


@cache
def own_etag(name: str) -> str:
    """A validator for the unversioned URLs of our files (they change with a release)."""
    return '"' + hashlib.sha256(own_text(name).encode()).hexdigest()[:32] + '"'


@cache
def plotly_version() -> str:
    """The installed plotly's version: part of the bundle's URL, so it can be cached for good."""
    return metadata.version("plotly")


@cache
def plotly_bundle() -> bytes:
    """plotly.js as the plotly wheel ships it (plotly/package_data/plotly.min.js)."""
    return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
