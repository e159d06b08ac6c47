"""`shiftaudit serve`: the whole service on one machine with no configuration at all."""

from __future__ import annotations

import argparse
from typing import Any

from service.migrate import prepare_database
from service.settings import get_settings
from shiftaudit.errors import ConfigError


def register(commands: Any) -> None:
    """Add `serve` to the shiftaudit CLI."""
    serve = commands.add_parser("serve", help="run the REST service (embedded default: SQLite)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (more than 1 needs REDIS_URL: the embedded runner "
        "runs audits inside the API process)",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

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
    )
    return 0
