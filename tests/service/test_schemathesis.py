"""Property-based conformance of the live OpenAPI schema (schemathesis), bounded for CI.

Every operation gets generated requests, authenticated with a write key against a migrated
SQLite deployment; no response may be a 5xx, and every response must match its documented
status codes, content type and schema.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from service.migrate import upgrade
from service.settings import Settings
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope

from .conftest import PEPPER


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis")
    url = f"sqlite:///{root / 'db.sqlite'}"
    upgrade(url)
    app = create_app(Settings(database_url=url, secret_key=PEPPER, data_dir=root))
    with app.state.sessions.begin() as session:
        team = get_or_create_team(session, name="fuzz")
        _, key = create_key(session, team=team, scope=Scope.WRITE, pepper=PEPPER)
    app.state.fuzz_key = key
    yield app
    app.state.queue.close()
    app.state.engine.dispose()


def test_every_operation_conforms_to_its_schema(live):
    # Driven by hand rather than by schemathesis' pytest plugin, which does not load under
    # pytest 9: one bounded Hypothesis run per operation.
    api = schemathesis.openapi.from_asgi("/openapi.json", live)
    headers = {"Authorization": f"Bearer {live.state.fuzz_key}"}
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15")),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            # Uploads are schema-valid as any bytes but must also *be* a model or an archive:
            # a 422 for random bytes is the right answer, not a rejected valid request.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
