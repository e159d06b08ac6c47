"""The hostile suite: each test reproduces a break found by a hostile user (issue 13) against
real parts: a live `shiftaudit serve`, real receivers on loopback, SIGKILL of real processes.

Most tests need one database, not both: `database_url` here is SQLite unless a test asks for
PostgreSQL too (`@pytest.mark.parametrize("database_url", [...], indirect=True)`; the
service suite's `app_and_keys` builds on it); tests about the schema ask for
`both_databases`.
"""

from __future__ import annotations

import pytest

from tests.service.conftest import app_and_keys, postgres_url  # noqa: F401 (fixtures)

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if getattr(request, "param", "sqlite") == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def both_databases(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'both.db'}"
    return str(request.getfixturevalue("postgres_url"))
