"""`shiftaudit serve`: the whole service on one machine with no configuration at all."""

from __future__ import annotations

import argparse
from typing import Any

from service.migrate import prepare_database
from service.settings import get_settings


def register(commands: Any) -> None:
    """Add `serve` to the shiftaudit CLI."""
    serve = commands.add_parser("serve", help="run the REST service (embedded default: SQLite)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    prepare_database(get_settings())
    uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port)
    return 0
