"""Error types. Every message names the offending input and, where one exists, the fix."""

import re


class ShiftAuditError(Exception):
    """Base class for errors caused by the caller's input, not by a bug in the engine."""


class ConfigError(ShiftAuditError):
    """The audit configuration is invalid or contradicts the model."""


class ModelError(ShiftAuditError):
    """The model file is refused: unknown or unsafe format, unreadable, or wrong shapes."""


class ProbeSetError(ShiftAuditError):
    """The probe set is refused: bad archive, bad image, bad labels or over a limit."""


_HOST_PATH = re.compile(r"(?<![\w.:/])(?:/[\w.@+~-]+)+/([\w.@+~-]+)")
_MESSAGE_LIMIT = 500


def plain_message(text: str) -> str:
    """The message as a tenant may read it: one line, host paths cut to their file names.

    A runtime's exception text can carry the worker's paths (its cache, site-packages, the
    sandbox's work directory) and several lines of trace; none of that is the tenant's to
    see, and the worker's log keeps it whole.
    """
    one_line = " ".join(_HOST_PATH.sub(r"\1", text).split())
    if len(one_line) <= _MESSAGE_LIMIT:
        return one_line
    return one_line[: _MESSAGE_LIMIT - 3].rstrip() + "..."
