"""Apply or revert the Alembic migrations shipped inside this package (service/migrations),
programmatically, so that they work from any directory of an installed server."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.db import make_engine
from service.settings import Settings
from shiftaudit.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # configparser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The latest revision the shipped migrations define."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def prepare_database(settings: Settings) -> str:
    """The database URL, ready for use: the embedded SQLite default migrates itself;
    PostgreSQL is migrated by a deployment job and refused unless at the latest revision."""
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
        return url
    current, head = current_revision(url), head_revision()
    if current != head:
        raise ConfigError(
            f"the database is at migration {current}, not {head}: run `shiftaudit migrate` "
            "(with the same DATABASE_URL)"
        )
    return url
