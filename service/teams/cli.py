"""`shiftaudit keys create --team T --scope S`: the admin's way to issue API keys."""

from __future__ import annotations

import argparse

from service.db import make_engine, session_factory
from service.migrate import prepare_database
from service.settings import get_settings
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope


def configure_keys(keys: argparse.ArgumentParser) -> None:
    """`keys create`: issue a key for a team."""
    actions = keys.add_subparsers(required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a key for a team (created if new)")
    create.add_argument("--team", required=True)
    create.add_argument("--scope", choices=[s.value for s in Scope], default=Scope.READ.value)
    create.add_argument("--name", default="", help="a label, e.g. the pipeline using it")
    create.set_defaults(handler=_create)


def _create(args: argparse.Namespace) -> int:
    settings = get_settings()
    factory = session_factory(make_engine(prepare_database(settings)))
    with factory.begin() as session:
        team = get_or_create_team(session, name=args.team)
        row, plaintext = create_key(
            session,
            team=team,
            scope=Scope(args.scope),
            pepper=settings.secret_key.get_secret_value(),
            name=args.name,
        )
        print(f"team:  {team.name}\nscope: {row.scope.value}\nkey:   {plaintext}")
    print("Store the key now: it is shown once and kept only as a hash.")
    return 0
