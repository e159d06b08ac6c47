"""`shiftaudit serve` (the whole service on one machine, no configuration at all) and
`shiftaudit migrate` (a deployment's database to the latest schema)."""

from __future__ import annotations

import argparse
import sys

from service.settings import Settings, get_settings
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
    remove_leftovers(settings)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        access_log=not args.no_access_log,
    )
    return 0


def remove_leftovers(settings: Settings) -> None:
    """Remove what processes killed before (SIGKILL, a crash, a power cut) left in this
    service's scratch space: request scratch and S3 upload spools (both in the data
    directory's tmp/), upload spools of local storage and, for the embedded runner, its jobs'
    scratch. Live processes' scratch is left alone."""
    from service.audits.runner import job_scratch
    from service.scratch import remove_stale
    from service.storage import LocalStorage, storage_from_url

    roots = [settings.data_dir / "tmp"]
    storage = storage_from_url(settings.resolved_storage_url)
    if isinstance(storage, LocalStorage):
        roots.append(storage.spool_dir)
    if not settings.redis_url:  # the embedded runner is this process's child
        roots.append(job_scratch(settings.resolved_worker_cache_dir))
    for root in roots:
        removed = remove_stale(root)
        if removed:
            print(
                f"removed what stopped processes left in {root}: {len(removed)} entries",
                file=sys.stderr,
            )


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
