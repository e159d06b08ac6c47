"""The sync and async clients: one retry policy, idempotency keys, upload progress."""

from __future__ import annotations

import asyncio
import email.utils
import io
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, BinaryIO, Generic, Self, TypeVar

import httpx

from shiftaudit import __version__
from shiftaudit_api.audits import AuditOut
from shiftaudit_client.api import Call, get_audit

T = TypeVar("T")
Progress = Callable[[int, int], None]
"""Called with (bytes sent, total bytes) while a file uploads."""

RETRIED_STATUSES = frozenset({429, 502, 503, 504})


class ApiError(Exception):
    """The API answered an error: `status` and the problem details' `title` and `detail`."""

    def __init__(self, status: int, title: str, detail: str, path: str) -> None:
        super().__init__(f"{path}: {status} {title}: {detail}")
        self.status, self.title, self.detail, self.path = status, title, detail, path


class ServiceUnavailable(Exception):
    """The service could not be reached, or kept answering 429/5xx, after every retry."""


class WaitTimeout(Exception):
    """The audit was still unfinished when the wait's time ran out (it keeps running)."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of connection failures and 429/502/503/504, honouring `Retry-After`."""

    attempts: int = 6
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when it is not retried."""
        if attempt + 1 >= self.attempts:
            return None
        if response is not None and response.status_code not in RETRIED_STATUSES:
            return None
        backoff = self.first_delay_s * 2**attempt
        hint = _retry_after(response) if response is not None else None
        return min(self.max_delay_s, hint if hint is not None else backoff)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _ProgressFile(io.RawIOBase):
    """A file that reports how much of it has been read (sent)."""

    def __init__(self, handle: BinaryIO, total: int, progress: Progress) -> None:
        self.handle, self.total, self.progress, self.sent = handle, total, progress, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.sent += len(block)
        self.progress(self.sent, self.total)
        return block

    def fileno(self) -> int:  # httpx sizes the multipart body from it
        return self.handle.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


@contextmanager
def _request(
    http: httpx.Client | httpx.AsyncClient,
    call: Call[Any],
    idempotency_key: str,
    progress: Progress | None,
) -> Iterator[httpx.Request]:
    """The request of one attempt; an upload's file is opened afresh for each."""
    headers = {"Idempotency-Key": idempotency_key} if call.method == "POST" else {}
    if call.upload is None:
        yield http.build_request(
            call.method, call.path, params=call.params, json=call.json, headers=headers
        )
        return
    with call.upload.path.open("rb") as handle:
        total = call.upload.path.stat().st_size
        body: BinaryIO = handle
        if progress is not None:
            body = _ProgressFile(handle, total, progress)  # type: ignore[assignment]
        yield http.build_request(
            call.method,
            call.path,
            params=call.params,
            data=dict(call.upload.fields),
            files={"file": (call.upload.path.name, body)},
            headers=headers,
        )


class _Attempts(Generic[T]):
    """The retry loop of one call without I/O: each attempt's outcome in, the delay out."""

    def __init__(self, call: Call[T], retry: RetryPolicy) -> None:
        self.call, self.retry, self.attempt = call, retry, 0
        self.response: httpx.Response | None = None
        self.error: httpx.TransportError | None = None

    def record(
        self, response: httpx.Response | None = None, error: httpx.TransportError | None = None
    ) -> float | None:
        """Seconds to wait before trying again, or None when this outcome is final."""
        self.response, self.error = response, error
        delay = self.retry.delay(self.attempt, response)
        self.attempt += 1
        return delay

    def result(self) -> T:
        """The parsed answer; ApiError for an error answer, ServiceUnavailable when the
        retries ran out."""
        response, call = self.response, self.call
        if response is None or response.status_code in RETRIED_STATUSES:
            reason = (
                f"HTTP {response.status_code}"
                if response is not None
                else f"{type(self.error).__name__}: {self.error}"
            )
            message = f"{call.method} {call.path}: the service is unavailable ({reason})"
            raise ServiceUnavailable(message) from self.error
        if response.status_code >= 400:
            title, detail = response.reason_phrase, response.text[:2000]
            if response.headers.get("content-type", "").startswith("application/problem+json"):
                problem = response.json()
                title = str(problem.get("title", title))
                detail = str(problem.get("detail", detail))
            raise ApiError(response.status_code, title, detail, call.path)
        return call.parse(response)


class _Deadline:
    """When a wait for an audit ends."""

    def __init__(self, audit_id: uuid.UUID, timeout: float | None) -> None:
        self.audit_id, self.timeout = audit_id, timeout
        self.at = None if timeout is None else time.monotonic() + timeout

    def finished(self, audit: AuditOut) -> bool:
        """Whether the audit finished; WaitTimeout once the time is up."""
        if audit.status.finished:
            return True
        if self.at is not None and time.monotonic() >= self.at:
            message = f"audit {self.audit_id} is still {audit.status} after {self.timeout} s"
            raise WaitTimeout(message)
        return False


def _http_options(base_url: str, api_key: str, timeout: float) -> dict[str, Any]:
    return {
        "base_url": base_url,
        "headers": {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": f"shiftaudit-client/{__version__}",
        },
        "timeout": timeout,
        "follow_redirects": False,
    }


class Client:
    """The shiftaudit API over HTTP: `client.send(api.get_audit(audit_id))`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry
        self._http = httpx.Client(transport=transport, **_http_options(base_url, api_key, timeout))

    def send(
        self, call: Call[T], *, idempotency_key: str | None = None, progress: Progress | None = None
    ) -> T:
        """Run one call; POSTs carry an idempotency key (kept across retries)."""
        key = idempotency_key or str(uuid.uuid4())
        attempts = _Attempts(call, self.retry)
        while True:
            try:
                with _request(self._http, call, key, progress) as request:
                    delay = attempts.record(self._http.send(request))
            except httpx.TransportError as error:
                delay = attempts.record(error=error)
            if delay is None:
                return attempts.result()
            time.sleep(delay)

    def wait(
        self,
        audit_id: uuid.UUID,
        *,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_update: Callable[[AuditOut], None] | None = None,
    ) -> AuditOut:
        """Poll an audit until it finishes; WaitTimeout after `timeout` seconds."""
        deadline = _Deadline(audit_id, timeout)
        while True:
            audit = self.send(get_audit(audit_id))
            if on_update is not None:
                on_update(audit)
            if deadline.finished(audit):
                return audit
            time.sleep(poll_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The same API for asyncio: `await client.send(api.get_audit(audit_id))`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry
        options = _http_options(base_url, api_key, timeout)
        self._http = httpx.AsyncClient(transport=transport, **options)

    async def send(
        self, call: Call[T], *, idempotency_key: str | None = None, progress: Progress | None = None
    ) -> T:
        """Run one call; POSTs carry an idempotency key (kept across retries)."""
        key = idempotency_key or str(uuid.uuid4())
        attempts = _Attempts(call, self.retry)
        while True:
            try:
                with _request(self._http, call, key, progress) as request:
                    delay = attempts.record(await self._http.send(request))
            except httpx.TransportError as error:
                delay = attempts.record(error=error)
            if delay is None:
                return attempts.result()
            await asyncio.sleep(delay)

    async def wait(
        self,
        audit_id: uuid.UUID,
        *,
        timeout: float | None = None,
        poll_s: float = 1.0,
        on_update: Callable[[AuditOut], None] | None = None,
    ) -> AuditOut:
        """Poll an audit until it finishes; WaitTimeout after `timeout` seconds."""
        deadline = _Deadline(audit_id, timeout)
        while True:
            audit = await self.send(get_audit(audit_id))
            if on_update is not None:
                on_update(audit)
            if deadline.finished(audit):
                return audit
            await asyncio.sleep(poll_s)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
