"""`shiftaudit serve`: the whole service on one machine with no configuration at all."""

from __future__ import annotations

import argparse
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.db import make_engine
from service.migrate import alembic_config, upgrade
from service.settings import get_settings
from shiftaudit.errors import ConfigError


def register(commands: Any) -> None:
    """Add `serve` to the shiftaudit CLI."""
    serve = commands.add_parser("serve", help="run the REST service (embedded default: SQLite)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        # The embedded default migrates itself; PostgreSQL is migrated by a deployment job.
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(url)
    else:
        _require_current_schema(url)
    uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port)
    return 0


def _require_current_schema(url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    if current != head:
        raise ConfigError(
            f"the database is at migration {current}, not {head}: run `alembic upgrade head`"
        )
