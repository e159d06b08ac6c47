"""`shiftaudit keys create|list|revoke`: the operator's way to issue, see and revoke API keys
of any team (a team's admin key does the same for its own team through /v1/keys)."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, session_factory, utcnow
from service.errors import DomainError
from service.migrate import prepare_database
from service.settings import Settings, get_settings
from service.teams.repository import all_keys, create_key, get_or_create_team, key_by_id
from service.teams.tables import ApiKey, Scope
from shiftaudit.errors import ConfigError
from shiftaudit_api.keys import MAX_EXPIRES_IN_S

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def configure_keys(keys: argparse.ArgumentParser) -> None:
    """`keys create`, `keys list`, `keys revoke`."""
    actions = keys.add_subparsers(required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a key for a team (created if new)")
    create.add_argument("--team", required=True)
    create.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.READ.value)
    create.add_argument("--name", default="", help="a label, e.g. the pipeline using it")
    create.add_argument(
        "--expires-in",
        type=duration,
        metavar="DURATION",
        help="refuse the key after this long: a number with s, m, h, d or w (90d, 12h); "
        "default: never",
    )
    create.set_defaults(handler=_create)
    listing = actions.add_parser("list", help="every key (or one team's), never the secrets")
    listing.add_argument("--team", help="only this team's keys")
    listing.set_defaults(handler=_list)
    revoke = actions.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id", help="the key's id (the 16 hex digits after sa_), or the key")
    revoke.set_defaults(handler=_revoke)


def duration(text: str) -> timedelta:
    """'90d', '12h', '30m', '45s', '2w' or plain seconds, as a positive timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number with s, m, h, d or w")
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not 60 <= seconds <= MAX_EXPIRES_IN_S:
        raise argparse.ArgumentTypeError(f"{text!r}: between one minute and ten years")
    return timedelta(seconds=seconds)


def _sessions() -> tuple[Settings, sessionmaker[Session]]:
    settings = get_settings()
    return settings, session_factory(make_engine(prepare_database(settings)))


def _create(args: argparse.Namespace) -> int:
    settings, factory = _sessions()
    expires_at = None if args.expires_in is None else utcnow() + args.expires_in
    with factory.begin() as session:
        team = get_or_create_team(session, name=args.team)
        row, plaintext = create_key(
            session,
            team=team,
            scope=Scope(args.scope),
            pepper=settings.secret_key.get_secret_value(),
            name=args.name,
            expires_at=expires_at,
        )
        print(f"team:  {team.name}\nscope: {row.scope.value}\nkey:   {plaintext}")
        if expires_at is not None:
            print(f"expires: {_when(expires_at)}")
    print("Store the key now: it is shown once and kept only as a hash.")
    return 0


def _list(args: argparse.Namespace) -> int:
    _, factory = _sessions()
    now = utcnow()
    with factory() as session:
        rows = all_keys(session, team=args.team)
    header = ("team", "key id", "scope", "name", "created", "expires", "last used", "state")
    table = [header] + [
        (
            team,
            row.key_id,
            row.scope.value,
            row.name or "-",
            _when(row.created_at),
            _when(row.expires_at),
            _when(row.last_used_at),
            _state(row, now),
        )
        for row, team in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    key_id = args.key_id
    if key_id.startswith("sa_"):  # the whole key was pasted: its id is the second part
        key_id = key_id.split("_")[1] if key_id.count("_") >= 2 else key_id
    if not re.fullmatch(r"[0-9a-f]{16}", key_id):
        raise ConfigError(f"{args.key_id!r} is not a key id (16 hex digits)")
    _, factory = _sessions()
    with factory.begin() as session:
        try:
            row = key_by_id(session, key_id)
        except DomainError as error:
            raise ConfigError(str(error)) from None
        already = row.revoked_at is not None
        if not already:
            row.revoked_at = utcnow()
        team = row.team.name
    print(f"key {key_id} of team {team} {'was already' if already else 'is now'} revoked")
    return 0


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _state(row: ApiKey, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "live"
