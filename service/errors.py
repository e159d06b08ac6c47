"""The service's own errors: what went wrong in the domain's terms, never in HTTP's.

Service and repository functions raise these; `service.problems` turns each into one
RFC 9457 problem (its status is decided there, in one place), and the worker path turns
them into a failed audit with the message. A message is one sentence a caller can act on,
naming the field or resource it is about.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base class: the request cannot be done as asked. `details` are facts a caller can act
    on (an estimate and the limit it passed), added to the problem as members."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class NotFound(DomainError):
    """The resource does not exist in the caller's team (or at all)."""


class Conflict(DomainError):
    """The request contradicts the resource's current state (still in use, not finished)."""


class Invalid(DomainError):
    """The request's content is unacceptable; the message names the field."""


class TooLarge(DomainError):
    """An upload or a fetched file is over its limit."""


class Unauthenticated(DomainError):
    """No credentials, or credentials that verify nothing."""


class Forbidden(DomainError):
    """The credentials are valid but do not allow this."""


class TooMany(DomainError):
    """The team is at a limit on work in progress; retrying later may succeed."""


class Unavailable(DomainError):
    """Something the service depends on cannot be reached now; retrying may help."""


class UpstreamFailed(DomainError):
    """A system the service fetched from (a registry, an artifact store) answered an error."""
