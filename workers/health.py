"""Health check of one `shiftaudit worker`, for container orchestrators.

`python -m workers.health NODE` (NODE: the worker's name, `gpu0@<hostname>` by default; see
`shiftaudit worker --name`) exits 0 when the worker answers a Celery ping. A solo-pool worker
answers no control command while it runs a shard, which for a large audit takes hours, so a
worker that does not answer is still healthy when a shard it claimed has a heartbeat fresher
than `HEARTBEAT_TIMEOUT_S` in the database: the liveness the reconciler goes by. Otherwise 1,
with the reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from service.audits.tables import AuditShard
from service.db import make_engine, utcnow
from service.settings import Settings, get_settings
from shiftaudit_api.audits import AuditStatus


def answers_ping(settings: Settings, node: str, timeout: float) -> bool:
    """Whether the worker named `node` answers a Celery ping within `timeout` seconds."""
    if not settings.redis_url:
        return False
    from celery import Celery

    app = Celery("shiftaudit-health", broker=settings.redis_url)
    app.conf.broker_connection_timeout = timeout
    app.conf.broker_connection_max_retries = 1
    try:
        replies = app.control.ping(destination=[node], timeout=timeout)
    except Exception:  # the broker is unreachable: the worker cannot take work either
        return False
    finally:
        app.close()
    return any(node in reply for reply in replies)


def running_shard(settings: Settings, node: str, now: datetime) -> str | None:
    """`audit/shard` of a shard that the worker `node` runs with a fresh heartbeat, or None."""
    engine = make_engine(settings.resolved_database_url)
    fresh = now - timedelta(seconds=settings.heartbeat_timeout_s)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                select(AuditShard.audit_id, AuditShard.shard)
                .where(
                    AuditShard.status == AuditStatus.RUNNING,
                    # JobOptions.worker is "<worker name>:<pid>".
                    AuditShard.worker.startswith(f"{node}:", autoescape=True),
                    AuditShard.heartbeat_at >= fresh,
                )
                .limit(1)
            ).first()
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()
    return None if row is None else f"{row.audit_id}/{row.shard}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.health",
        description="Exit 0 when the named worker answers a ping or runs a shard whose "
        "heartbeat is fresh; else 1.",
    )
    parser.add_argument("node", help="the worker's name, e.g. gpu0@$HOSTNAME")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a pong")
    args = parser.parse_args(argv)
    settings = get_settings()
    if answers_ping(settings, args.node, args.timeout):
        print(f"{args.node}: answers")
        return 0
    shard = running_shard(settings, args.node, utcnow())
    if shard is not None:
        print(f"{args.node}: busy with shard {shard}, heartbeat fresh")
        return 0
    print(
        f"{args.node}: no answer to a ping and no running shard with a fresh heartbeat",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
