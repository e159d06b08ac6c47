"""The typed contract of the shiftaudit HTTP API: every request and response body, once.

Pure pydantic: importing it loads no torch, numpy, database or web framework, so the light
client (`shiftaudit_client`) and the service's endpoints share these exact classes. The
engine's own documents, `AuditConfig` and `Report`, come from the engine's pure modules and
are re-exported here with everything a client needs.
"""

from shiftaudit import __version__
from shiftaudit.comparison import Delta, McNemar, Metric
from shiftaudit.config import AuditConfig
from shiftaudit.report import SCHEMA_VERSION, Report

# The API's version is the distribution's: client and server are released together.
API_VERSION = __version__

__all__ = [
    "API_VERSION",
    "SCHEMA_VERSION",
    "AuditConfig",
    "Delta",
    "McNemar",
    "Metric",
    "Report",
]
