"""MLflow: webhook secrets and signatures, and the tracking server's REST API as far as the
MLflow hook needs it (a model version's model file, found and fetched through the server's
artifact proxy)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import posixpath
import secrets
import uuid
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from service.errors import Invalid, UpstreamFailed

SIGNATURE_HEADER = "X-MLflow-Signature"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
MAX_SKEW_S = 300
MODEL_SUFFIXES = (".onnx", ".pt", ".pt2", ".ts", ".torchscript")
MAX_ANSWER_BYTES = 1 << 20  # JSON answers of the tracking server; models stream instead
MAX_LISTED = 1000  # artifact entries looked at before a version counts as too large to search
AnswerT = TypeVar("AnswerT", bound=BaseModel)


def new_salt() -> str:
    return secrets.token_hex(16)


def webhook_secret(*, secret_key: str, team_id: uuid.UUID, salt: str) -> str:
    """HMAC-SHA256(server secret, team and salt): derived again when needed, never stored."""
    message = f"mlflow-webhook:{team_id}:{salt}".encode()
    digest = hmac.new(secret_key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signature_matches(
    *, secret: str, delivery_id: str, timestamp: str, body: bytes, signature: str
) -> bool:
    """MLflow's `v1,<base64 HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")>`,
    compared in constant time (several space-separated signatures may be sent)."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    expected = b"v1," + base64.b64encode(digest)
    return any(hmac.compare_digest(expected, given.encode()) for given in signature.split())


def tracking_uri_problem(uri: str) -> str | None:
    """What is wrong with a tracking server's base URL, or None."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "credentials do not belong in the URL: give tracking_token instead"
    if parts.query or parts.fragment:
        return "expected the server's base URL, without a query or fragment"
    return None


class _Version(BaseModel):
    name: str
    version: str
    status: str = "READY"


class _VersionAnswer(BaseModel):
    model_version: _Version


class _DownloadUri(BaseModel):
    artifact_uri: str


class _RunInfo(BaseModel):
    artifact_uri: str


class _Run(BaseModel):
    info: _RunInfo


class _RunAnswer(BaseModel):
    run: _Run


class _Entry(BaseModel):
    path: str
    is_dir: bool = False


class _Listing(BaseModel):
    files: list[_Entry] = []


class TrackingServer:
    """One team's MLflow tracking server, reached with its bearer token (if any)."""

    def __init__(self, *, client: httpx.Client, tracking_uri: str, token: str | None) -> None:
        self.client = client
        self.base = tracking_uri.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def model_file(self, *, name: str, version: str) -> str:
        """The artifact path (under the artifact proxy's root) of the version's one model
        file; Invalid when it has none or several, UpstreamFailed when MLflow answers an error."""
        query = {"name": name, "version": version}
        found = self._get("model-versions/get", query, _VersionAnswer).model_version
        if found.status != "READY":
            raise UpstreamFailed(
                f"MLflow model version {name}/{version} is {found.status}, not READY"
            )
        uri = self._get("model-versions/get-download-uri", query, _DownloadUri).artifact_uri
        root = self._proxied_path(uri)
        candidates = [f for f in self._files(root) if f.lower().endswith(MODEL_SUFFIXES)]
        if len(candidates) != 1:
            found_names = ", ".join(candidates) or "none"
            raise Invalid(
                f"MLflow model version {name}/{version} ({uri}) must hold exactly one file "
                f"ending in {', '.join(MODEL_SUFFIXES)}; found: {found_names}",
            )
        return f"{root}/{candidates[0]}"

    def download_url(self, path: str) -> str:
        return f"{self.base}/api/2.0/mlflow-artifacts/artifacts/{quote(path)}"

    def _proxied_path(self, uri: str) -> str:
        """The artifact proxy's path for a download URI (`runs:/` resolved through its run)."""
        if uri.startswith("runs:/"):
            run_id, _, sub_path = uri.removeprefix("runs:/").partition("/")
            run = self._get("runs/get", {"run_id": run_id}, _RunAnswer).run
            uri = (
                posixpath.join(run.info.artifact_uri, sub_path)
                if sub_path
                else run.info.artifact_uri
            )
        parts = urlsplit(uri)
        if parts.scheme != "mlflow-artifacts":
            raise Invalid(
                f"the model version's artifacts are at {uri}, outside the tracking server's "
                "artifact proxy: shiftaudit fetches models only through it (mlflow-artifacts:/ "
                "locations; `mlflow server --serve-artifacts`, the default)",
            )
        return parts.path.strip("/")

    def _files(self, root: str) -> list[str]:
        """Every file below `root`, as paths relative to it (breadth first, bounded)."""
        files: list[str] = []
        directories = [""]
        seen = 0
        while directories:
            directory = directories.pop(0)
            path = f"{root}/{directory}".rstrip("/")
            listing = self._get_url(
                f"{self.base}/api/2.0/mlflow-artifacts/artifacts", {"path": path}, _Listing
            )
            seen += len(listing.files)
            if seen > MAX_LISTED:
                raise Invalid(f"{root} holds more than {MAX_LISTED} artifacts: too many to search")
            for entry in listing.files:
                relative = f"{directory}/{entry.path}".lstrip("/")
                (directories if entry.is_dir else files).append(relative)
        return sorted(files)

    def _get(self, endpoint: str, params: dict[str, str], answer: type[AnswerT]) -> AnswerT:
        return self._get_url(f"{self.base}/api/2.0/mlflow/{endpoint}", params, answer)

    def _get_url(self, url: str, params: dict[str, str], answer: type[AnswerT]) -> AnswerT:
        """GET a JSON answer (at most MAX_ANSWER_BYTES); UpstreamFailed naming what failed."""
        what = url.removeprefix(self.base)
        try:
            with self.client.stream("GET", url, params=params, headers=self.headers) as got:
                body = b""
                for chunk in got.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise UpstreamFailed(f"MLflow's answer to {what} is too large")
        except httpx.HTTPError as error:
            raise UpstreamFailed(f"MLflow {what}: {error}") from None
        if got.status_code != 200:
            raise UpstreamFailed(f"MLflow answered {got.status_code} to {what}: {_message(body)}")
        try:
            return answer.model_validate_json(body)
        except ValidationError as error:
            raise UpstreamFailed(f"MLflow's answer to {what} is not understood: {error}") from None


def _message(body: bytes) -> str:
    """MLflow's error message (`{"error_code": ..., "message": ...}`), or the start of the body."""
    try:
        parsed: Any = json.loads(body)
        return f"{parsed['error_code']}: {parsed['message']}"[:500]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")
