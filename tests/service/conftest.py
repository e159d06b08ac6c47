"""Real databases for service tests: a fresh SQLite file and a fresh PostgreSQL database.

PostgreSQL is the machines' own server (127.0.0.1:5432, trust auth); each test session
creates its own uniquely named database and drops it at the end. Set
SHIFTAUDIT_TEST_POSTGRES_URL to point elsewhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from service.app import create_app
from service.migrate import downgrade, upgrade
from service.settings import Settings
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope
from tests.postgres import fresh_database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


class RecordingQueue:
    """Takes audits and runs none of them: they stay `queued` (for tests about the API)."""

    def __init__(self) -> None:
        self.enqueued: list[uuid.UUID] = []
        self.routes: list[str] = []

    def enqueue(self, audit_id: uuid.UUID, shard: int, *, route: str) -> None:
        self.enqueued.append(audit_id)
        self.routes.append(route)

    def waiting(self) -> set[str]:
        return set()

    def ping(self) -> None:
        pass

    def close(self) -> None:
        pass


def record_audits(app) -> RecordingQueue:
    """Swap the app's embedded runner (never started yet) for a RecordingQueue."""
    app.state.queue.close()
    app.state.queue = RecordingQueue()
    return app.state.queue


PEPPER = "p" * 40  # the test deployments' key pepper


@pytest.fixture
def app_and_keys(database_url, tmp_path):
    """A migrated app with keys: alpha-read, alpha-write, alpha-admin (team alpha), beta-admin
    (team beta).

    Everything is dropped again afterwards, so the shared PostgreSQL database starts empty.
    """
    upgrade(database_url)
    settings = Settings(database_url=database_url, secret_key=PEPPER, data_dir=tmp_path / "data")
    app = create_app(settings)
    keys = {}
    with app.state.sessions.begin() as session:
        for team, scope in [
            ("alpha", Scope.READ),
            ("alpha", Scope.WRITE),
            ("alpha", Scope.ADMIN),
            ("beta", Scope.ADMIN),
        ]:
            _, plaintext = create_key(
                session, team=get_or_create_team(session, name=team), scope=scope, pepper=PEPPER
            )
            keys[f"{team}-{scope.value}"] = plaintext
    yield app, keys
    app.state.queue.close()
    app.state.engine.dispose()
    downgrade(database_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database of each kind (tests that migrate it downgrade it again)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_url")
