"""The service's base: settings, API keys, problem details, health, on real databases."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from service.app import create_app
from service.db import make_engine, session_factory
from service.settings import Settings
from service.teams.keys import parse
from service.teams.repository import authenticate
from service.teams.tables import ApiKey, Scope

from .conftest import PEPPER


def test_keys_are_stored_only_as_hashes_and_verified(app_and_keys):
    app, keys = app_and_keys
    plaintext = keys["alpha-read"]
    key_id, secret = parse(plaintext)
    with app.state.sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
        assert row is not None
        assert secret not in row.secret_hash
        assert len(row.secret_hash) == 64
        assert authenticate(session, plaintext=plaintext, pepper=PEPPER) == row
        assert authenticate(session, plaintext=plaintext + "x", pepper=PEPPER) is None
        assert authenticate(session, plaintext=plaintext, pepper="other" * 8) is None
        assert authenticate(session, plaintext="sa_nonsense", pepper=PEPPER) is None


@pytest.mark.parametrize(
    ("header", "status", "team"),
    [
        (None, 401, None),
        ("Bearer sa_0123456789abcdef_wrong", 401, None),
        ("Basic dXNlcjpwYXNz", 401, None),
        ("alpha-read", 200, "alpha"),
        ("alpha-write", 200, "alpha"),
        ("beta-admin", 200, "beta"),
    ],
)
def test_me_answers_for_each_kind_of_caller(app_and_keys, header, status, team):
    app, keys = app_and_keys
    headers = {}
    if header in keys:
        headers["Authorization"] = f"Bearer {keys[header]}"
    elif header:
        headers["Authorization"] = header
    response = TestClient(app).get("/v1/me", headers=headers)
    assert response.status_code == status
    if status == 200:
        assert response.json()["team"] == team
    else:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_errors_are_problem_details(app_and_keys):
    app, _ = app_and_keys
    client = TestClient(app)
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["title"] == "Not Found"


def test_health_and_readiness(app_and_keys, tmp_path):
    app, _ = app_and_keys
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["database"] == "ok"
    dead = create_app(
        Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", secret_key=PEPPER)
    )
    response = TestClient(dead).get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "database unreachable" in response.json()["detail"]


def test_production_refuses_default_secrets_and_sqlite():
    with pytest.raises(ValidationError, match="SHIFTAUDIT_SECRET_KEY"):
        Settings(environment="production", database_url="postgresql+psycopg://x/y")
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(environment="production", secret_key="s" * 40)
    ok = Settings(
        environment="production", database_url="postgresql+psycopg://x/y", secret_key="s" * 40
    )
    assert ok.resolved_database_url == "postgresql+psycopg://x/y"


def test_keys_create_cli_prints_the_key_once_and_it_authenticates(tmp_path):
    env = {**os.environ, "SHIFTAUDIT_DATA_DIR": str(tmp_path), "SHIFTAUDIT_SECRET_KEY": PEPPER}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftaudit_cli",
            "keys",
            "create",
            "--team",
            "vision",
            "--scope",
            "write",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    plaintext = next(
        line.split()[-1] for line in result.stdout.splitlines() if line.startswith("key:")
    )
    url = f"sqlite:///{tmp_path / 'shiftaudit.db'}"
    engine = make_engine(url)
    with session_factory(engine)() as session:
        row = authenticate(session, plaintext=plaintext, pepper=PEPPER)
        assert row is not None
        assert row.scope is Scope.WRITE
        assert row.team.name == "vision"
    engine.dispose()
