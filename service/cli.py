"""`shiftaudit serve` (the whole service on one machine, no configuration at all) and
`shiftaudit migrate` (a deployment's database to the latest schema)."""

from __future__ import annotations

import argparse

from service.settings import get_settings
from shiftaudit.errors import ConfigError


def configure_serve(serve: argparse.ArgumentParser) -> None:
    """`serve`: the REST API (and, without REDIS_URL, the embedded runner)."""
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (more than 1 needs REDIS_URL: the embedded runner "
        "runs audits inside the API process)",
    )
    serve.add_argument(
        "--no-access-log", action="store_true", help="do not log every request to stdout"
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.migrate import prepare_database

    settings = get_settings()
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.workers > 1 and not settings.redis_url:
        raise ConfigError(
            "--workers above 1 needs REDIS_URL (Celery workers): the embedded runner and its "
            "reconciler run inside the one API process"
        )
    prepare_database(settings)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=not args.no_access_log,
    )
    return 0


def configure_migrate(migrate: argparse.ArgumentParser) -> None:
    """`migrate`: apply the migrations shipped with the server, from any directory."""
    migrate.add_argument(
        "--revision", default="head", help="the revision to upgrade to (default: head)"
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="only say whether the database is at the latest revision (exit 1 if not)",
    )
    migrate.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from service.migrate import current_revision, head_revision, upgrade

    url = get_settings().resolved_database_url
    if args.check:
        current, head = current_revision(url), head_revision()
        print(f"database at {current or 'no revision'}; latest is {head}")
        return 0 if current == head else 1
    upgrade(url, args.revision)
    print(f"database at {current_revision(url)}")
    return 0
