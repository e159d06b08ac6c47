"""Migrations on real SQLite and PostgreSQL: up, down, up, and matching the ORM models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.db import make_engine
from service.migrate import downgrade, upgrade
from service.tables import Base


def test_upgrade_downgrade_upgrade_and_models_match(database_url):
    engine = make_engine(database_url)
    upgrade(database_url)
    tables = {"teams", "api_keys", "models", "probe_sets", "audits", "idempotency_keys"}
    tables |= {"alembic_version"}
    assert tables <= set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == [], "models and migrations disagree: write a migration"
    downgrade(database_url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade(database_url)
    assert "api_keys" in inspect(engine).get_table_names()
    downgrade(database_url)  # leave the shared PostgreSQL database empty
    engine.dispose()
