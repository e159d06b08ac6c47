"""A typed client of the shiftaudit API, sync and async, for pipelines and scripts.

from shiftaudit_client import Client, api

with Client("https://shiftaudit.example", api_key) as client:
    audit = client.send(api.create_audit(model_id=m, probe_set_id=p, policies=["gate"]))
    audit = client.wait(audit.id, timeout=3600)
"""

from shiftaudit_client import api
from shiftaudit_client.http import (
    ApiError,
    AsyncClient,
    Client,
    RetryPolicy,
    ServiceUnavailable,
    WaitTimeout,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "RetryPolicy",
    "ServiceUnavailable",
    "WaitTimeout",
    "api",
]
