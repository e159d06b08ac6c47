"""Error types. Every message names the offending input and, where one exists, the fix."""


class ShiftAuditError(Exception):
    """Base class for errors caused by the caller's input, not by a bug in the engine."""


class ConfigError(ShiftAuditError):
    """The audit configuration is invalid or contradicts the model."""


class ModelError(ShiftAuditError):
    """The model file is refused: unknown or unsafe format, unreadable, or wrong shapes."""


class ProbeSetError(ShiftAuditError):
    """The probe set is refused: bad archive, bad image, bad labels or over a limit."""
