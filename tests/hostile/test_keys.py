"""Key management (issue 13, item 16): list, revoke and expire keys, last-used times, an admin
scope that means something, and key ids that cannot be probed by timing.

Before the fix only `keys create` existed, revocation needed SQL, admin granted nothing
beyond write, and an unknown key id was refused before any HMAC was computed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import event, inspect, select, update

from service.db import UTCDateTime, make_engine, session_factory, utcnow
from service.migrate import downgrade, upgrade
from service.teams import keys as key_format
from service.teams import repository
from service.teams.repository import authenticate, create_key, get_or_create_team
from service.teams.tables import ApiKey, Scope
from tests.service.conftest import PEPPER

from .live import LiveServer

REFUSED = "the API key is unknown, revoked or expired"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_teams_admin_manages_its_own_keys_and_no_other_teams(app_and_keys):
    app, keys = app_and_keys
    admin, beta = _bearer(keys["alpha-admin"]), _bearer(keys["beta-admin"])
    with TestClient(app) as client:
        created = client.post(
            "/v1/keys", headers=admin, json={"scope": "read", "name": "ci", "expires_in_s": 3600}
        )
        assert created.status_code == 201, created.text
        new = created.json()
        assert new["key"].startswith(f"sa_{new['key_id']}_")
        assert new["scope"] == "read"
        assert new["expires_at"] is not None
        assert client.get("/v1/me", headers=_bearer(new["key"])).json()["scope"] == "read"

        listed = client.get("/v1/keys", headers=admin)
        assert listed.status_code == 200
        assert new["key_id"] in {k["key_id"] for k in listed.json()}
        assert len(listed.json()) == 4  # read, write, admin and the new one: alpha's only
        assert new["key"] not in listed.text  # the secret is never shown again
        assert "secret" not in listed.text
        beta_keys = {k["key_id"] for k in client.get("/v1/keys", headers=beta).json()}
        assert new["key_id"] not in beta_keys
        assert len(beta_keys) == 1

        # Another team's key does not exist for beta, and write is not admin.
        assert client.delete(f"/v1/keys/{new['key_id']}", headers=beta).status_code == 404
        write = _bearer(keys["alpha-write"])
        for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys")):
            refused = client.request(method, path, headers=write, json={"scope": "read"})
            assert refused.status_code == 403, refused.text
            assert "scope 'admin'" in refused.json()["detail"]
        assert client.get("/v1/me", headers=_bearer(new["key"])).status_code == 200

        assert client.delete(f"/v1/keys/{new['key_id']}", headers=admin).status_code == 204
        gone = client.get("/v1/me", headers=_bearer(new["key"]))
        assert gone.status_code == 401
        assert gone.json()["detail"] == REFUSED
        shown = next(
            k for k in client.get("/v1/keys", headers=admin).json() if k["key_id"] == new["key_id"]
        )
        assert shown["revoked_at"] is not None
        bad = client.post("/v1/keys", headers=admin, json={"scope": "root"})
        assert bad.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/policies", {"name": "p", "thresholds": []}),
        ("DELETE", "/v1/policies/p", None),
        ("POST", "/v1/webhooks", {"url": "http://8.8.8.8/h", "events": ["audit.failed"]}),
        ("DELETE", f"/v1/webhooks/{uuid.UUID(int=1)}", None),
        ("PUT", "/v1/hooks/defaults", {"probe_set_id": str(uuid.UUID(int=1))}),
        ("PUT", "/v1/hooks/mlflow/connection", {"tracking_uri": "http://8.8.8.8/"}),
        ("DELETE", "/v1/hooks/mlflow/connection", None),
    ],
)
def test_settings_that_change_what_a_team_trusts_take_an_admin_key(
    app_and_keys, method, path, body
):
    app, keys = app_and_keys
    with TestClient(app) as client:
        refused = client.request(method, path, headers=_bearer(keys["alpha-write"]), json=body)
        assert refused.status_code == 403, refused.text
        assert refused.json()["detail"] == "this endpoint needs a key with scope 'admin'"
        allowed = client.request(method, path, headers=_bearer(keys["alpha-admin"]), json=body)
        assert allowed.status_code not in (401, 403), allowed.text


def test_an_expired_key_is_refused_like_a_revoked_one(app_and_keys):
    app, _ = app_and_keys
    with app.state.sessions.begin() as session:
        team = get_or_create_team(session, name="alpha")
        _, soon = create_key(
            session,
            team=team,
            scope=Scope.READ,
            pepper=PEPPER,
            expires_at=utcnow() + timedelta(seconds=1.5),
        )
        _, revoked_key = create_key(session, team=team, scope=Scope.READ, pepper=PEPPER)
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == revoked_key.split("_")[1])
            .values(revoked_at=utcnow())
        )
    with TestClient(app) as client:
        assert client.get("/v1/me", headers=_bearer(soon)).status_code == 200
        time.sleep(2)
        expired = client.get("/v1/me", headers=_bearer(soon))
        revoked = client.get("/v1/me", headers=_bearer(revoked_key))
    assert (expired.status_code, expired.json()) == (revoked.status_code, revoked.json())
    assert expired.status_code == 401
    assert expired.json()["detail"] == REFUSED


def test_last_use_is_written_at_most_once_a_minute_per_key(app_and_keys):
    app, keys = app_and_keys
    key_id = keys["alpha-read"].split("_")[1]
    writes: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            writes.append(statement)

    event.listen(app.state.engine, "before_cursor_execute", count)
    try:
        with TestClient(app) as client:
            for _ in range(20):
                assert client.get("/v1/me", headers=_bearer(keys["alpha-read"])).status_code == 200
            assert len(writes) == 1  # twenty requests, one write
            with app.state.sessions() as session:
                first = session.scalars(select(ApiKey).where(ApiKey.key_id == key_id)).one()
            assert first.last_used_at is not None
            assert utcnow() - first.last_used_at < timedelta(seconds=30)
            # A minute later the next request records the use again.
            with app.state.sessions.begin() as session:
                session.execute(
                    update(ApiKey)
                    .where(ApiKey.key_id == key_id)
                    .values(last_used_at=utcnow() - timedelta(minutes=2))
                )
            writes.clear()
            for _ in range(5):
                assert client.get("/v1/me", headers=_bearer(keys["alpha-read"])).status_code == 200
            assert len(writes) == 1
    finally:
        event.remove(app.state.engine, "before_cursor_execute", count)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shiftaudit_cli", "keys", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_operator_lists_and_revokes_keys_of_a_running_server(tmp_path):
    server = LiveServer(tmp_path / "data")
    created = _cli("create", "--team", "vision", "--scope", "write", "--expires-in", "2h",
                   env=server.env)  # fmt: skip
    assert created.returncode == 0, created.stderr
    key = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key:"))
    assert "expires:" in created.stdout
    key_id = key.split("_")[1]
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers=_bearer(key)) as http:
            assert http.get("/v1/me").status_code == 200
            listed = _cli("list", "--team", "vision", env=server.env)
            assert listed.returncode == 0, listed.stderr
            (row,) = [line for line in listed.stdout.splitlines() if key_id in line]
            assert row.split()[:3] == ["vision", key_id, "write"]
            assert row.endswith("live")
            assert row.count("-") >= 6  # created, expires and last-used dates are all there
            assert key not in listed.stdout.replace(key_id, "")  # no secret is listed
            revoked = _cli("revoke", key_id, env=server.env)
            assert revoked.returncode == 0, revoked.stderr
            assert f"key {key_id} of team vision is now revoked" in revoked.stdout
            refused = http.get("/v1/me")  # the running server refuses it at once
            assert refused.status_code == 401
            assert refused.json()["detail"] == REFUSED
        again = _cli("list", env=server.env)
        assert next(line for line in again.stdout.splitlines() if key_id in line).endswith(
            "revoked"
        )
        unknown = _cli("revoke", "0123456789abcdef", env=server.env)
        assert unknown.returncode == 2
        assert "no API key with id 0123456789abcdef" in unknown.stderr
        bad = _cli("create", "--team", "vision", "--expires-in", "soon", env=server.env)
        assert bad.returncode == 2
        assert "expected a number with s, m, h, d or w" in bad.stderr
    finally:
        server.stop()


def _lines_run(call) -> list[tuple[str, int]]:
    """The (function, line) of every line the key code runs during `call()`."""
    teams = str(Path(repository.__file__).parent)
    ran: list[tuple[str, int]] = []

    def tracer(frame, what, _arg):
        if frame.f_code.co_filename.startswith(teams):
            if what == "line":
                ran.append((frame.f_code.co_name, frame.f_lineno))
            return tracer
        return None

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return ran


def test_a_key_id_cannot_be_probed_by_timing(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'timing.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        team = get_or_create_team(session, name="t")
        row, _ = create_key(session, team=team, scope=Scope.READ, pepper=PEPPER)
        revoked, _ = create_key(session, team=team, scope=Scope.READ, pepper=PEPPER)
        revoked.revoked_at = utcnow()
        expired, _ = create_key(
            session, team=team, scope=Scope.READ, pepper=PEPPER, expires_at=utcnow()
        )
    wrong = "x" * 43
    probes = {
        "known id, wrong secret": f"sa_{row.key_id}_{wrong}",
        "unknown id": f"sa_{'0' * 16}_{wrong}",
        "revoked id": f"sa_{revoked.key_id}_{wrong}",
        "expired id": f"sa_{expired.key_id}_{wrong}",
    }
    with sessions() as session:

        def check(plaintext: str):
            return authenticate(session, plaintext=plaintext, pepper=PEPPER, now=utcnow())

        # The same code, line for line, whether the id exists or not: one HMAC each.
        digests: list[str] = []
        real_digest = key_format.digest
        monkeypatch.setattr(
            key_format, "digest", lambda s, p: digests.append(s) or real_digest(s, p)
        )
        paths = {name: _lines_run(lambda pt=pt: check(pt)) for name, pt in probes.items()}
        assert digests == [wrong] * len(probes)
        monkeypatch.setattr(key_format, "digest", real_digest)
        first = paths["known id, wrong secret"]
        for name, path in paths.items():
            assert path == first, f"{name} runs other code than a known id"
        assert all(check(pt) is None for pt in probes.values())

        # And the same time: medians of many interleaved trials, within a generous factor.
        timings: dict[str, list[int]] = {"known id, wrong secret": [], "unknown id": []}
        for _ in range(20):  # warm caches and the statement cache
            for name in timings:
                check(probes[name])
        for _ in range(400):
            for name in timings:
                started = time.perf_counter_ns()
                check(probes[name])
                timings[name].append(time.perf_counter_ns() - started)
    engine.dispose()
    known, unknown = (statistics.median(timings[name]) for name in timings)
    assert 1 / 1.5 < known / unknown < 1.5, (known, unknown)


def test_migration_0015_adds_expiry_and_last_use_and_takes_them_away(both_databases):
    url = both_databases
    engine = make_engine(url)
    upgrade(url, "0014")
    team_id, key_uuid = uuid.uuid4(), uuid.uuid4()
    teams = sa.table(
        "teams",
        sa.column("id", sa.Uuid()),
        sa.column("created_at", UTCDateTime()),
        sa.column("name", sa.String()),
    )
    api_keys = sa.table(
        "api_keys",
        sa.column("id", sa.Uuid()),
        sa.column("created_at", UTCDateTime()),
        sa.column("team_id", sa.Uuid()),
        sa.column("key_id", sa.String()),
        sa.column("secret_hash", sa.String()),
        sa.column("scope", sa.Enum("read", "write", "admin", name="api_key_scope")),
        sa.column("name", sa.String()),
    )
    secret = "s" * 43
    with engine.begin() as connection:  # a key issued before 0015
        connection.execute(teams.insert().values(id=team_id, created_at=utcnow(), name="old"))
        connection.execute(
            api_keys.insert().values(
                id=key_uuid,
                created_at=utcnow(),
                team_id=team_id,
                key_id="a" * 16,
                secret_hash=key_format.digest(secret, PEPPER),
                scope="write",
                name="",
            )
        )
    columns = {c["name"] for c in inspect(engine).get_columns("api_keys")}
    assert not {"expires_at", "last_used_at"} & columns
    upgrade(url, "0015")
    columns = {c["name"] for c in inspect(engine).get_columns("api_keys")}
    assert {"expires_at", "last_used_at"} <= columns
    with session_factory(engine)() as session:  # the old key never expires and still works
        found = authenticate(
            session, plaintext=f"sa_{'a' * 16}_{secret}", pepper=PEPPER, now=utcnow()
        )
        assert found is not None
        assert (found.expires_at, found.last_used_at) == (None, None)
    downgrade(url, "0014")
    inspector = inspect(engine)
    assert not {"expires_at", "last_used_at"} & {
        c["name"] for c in inspector.get_columns("api_keys")
    }
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(api_keys)).scalar() == 1
    upgrade(url)
    downgrade(url)  # leave the shared PostgreSQL database empty
    engine.dispose()
