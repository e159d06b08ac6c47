"""Waiting out a transient outage (the database, the artifact storage): one backoff policy."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def retry(
    call: Callable[[], T],
    *,
    transient: type[Exception],
    budget_s: float,
    max_delay_s: float,
    what: str,
) -> T:
    """`call()`, tried again after each `transient` error, 0.5 s later and doubling up to
    `max_delay_s`, while `budget_s` lasts; then the last error is raised."""
    deadline, delay = time.monotonic() + budget_s, 0.5
    while True:
        try:
            return call()
        except transient as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s (%s); retrying in %.1f s", what, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
