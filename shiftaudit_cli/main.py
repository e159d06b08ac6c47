"""The dispatcher: the table of commands, and `main`."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from shiftaudit import __version__
from shiftaudit.errors import ShiftAuditError


@dataclass(frozen=True)
class Command:
    """Where a command's parser is configured, what it does, and which extra provides it."""

    target: str  # "module:function", the function taking the command's parser
    summary: str
    extra: str  # the `pip install 'shiftaudit[extra]'` that provides its dependencies


COMMANDS: dict[str, Command] = {
    "audit": Command(
        "shiftaudit.commands:configure_audit", "run a shift-sweep audit on this machine", "engine"
    ),
    "schema": Command(
        "shiftaudit.commands:configure_schema", "print the JSON Schema of reports or configs", ""
    ),
    "example": Command(
        "shiftaudit.commands:configure_example",
        "write the bundled example model and probes",
        "engine,examples",
    ),
    "submit": Command(
        "shiftaudit_client.cli:configure_submit",
        "upload a model and probes to the service and audit them (CI gate)",
        "",
    ),
    "report": Command(
        "shiftaudit_client.cli:configure_report", "fetch a stored report from the service", ""
    ),
    "compare": Command(
        "shiftaudit_client.cli:configure_compare",
        "compare audits on the service: the first is the baseline",
        "",
    ),
    "serve": Command(
        "service.cli:configure_serve", "run the REST service (embedded default: SQLite)", "server"
    ),
    "migrate": Command(
        "service.cli:configure_migrate",
        "bring the service's database to the latest schema",
        "server",
    ),
    "keys": Command("service.teams.cli:configure_keys", "manage API keys", "server"),
    "demo": Command(
        "service.demo:configure_demo",
        "run the example audit through the REST service",
        "server,examples",
    ),
    "worker": Command(
        "workers.cli:configure_worker", "run audits from Redis (one worker per GPU)", "server"
    ),
    "reconciler": Command(
        "workers.cli:configure_reconciler",
        "re-queue audits whose worker died or whose message was lost",
        "server",
    ),
}


class MissingExtra(ShiftAuditError):
    """The chosen command needs dependencies this installation lacks."""


def parser_for(argv: list[str]) -> argparse.ArgumentParser:
    """The CLI's parser, with only the chosen command's arguments loaded (MissingExtra when
    its dependencies are not installed)."""
    parser = argparse.ArgumentParser(
        prog="shiftaudit",
        description="Audit image classifiers for translation invariance.",
        epilog="`shiftaudit COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"shiftaudit {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    chosen = next((word for word in argv if not word.startswith("-")), None)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=command.summary)
        if name == chosen:
            _load(name, command)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status is the command's (2: bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    if not sys.warnoptions:
        # Deserialisation and tracing notes from torch and onnx are for their developers; on
        # stderr they would bury the one-line error. `python -W default` shows them again.
        for library in ("torch", "onnx", "onnxruntime", "onnxscript"):
            warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")
    try:
        args = parser_for(argv).parse_args(argv)
        return int(args.handler(args))
    except ShiftAuditError as error:
        print(f"shiftaudit: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"shiftaudit: error: no such file: {error.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shiftaudit: interrupted", file=sys.stderr)
        return 130


def _load(name: str, command: Command) -> Callable[[argparse.ArgumentParser], None]:
    """The command's configure function; MissingExtra when its dependencies are missing
    (looked up without importing them, so the check costs nothing)."""
    extras = [extra for extra in command.extra.split(",") if extra]
    for extra in extras:
        for needed in _EXTRA_MODULES[extra]:
            if importlib.util.find_spec(needed) is None:
                raise _missing(name, command, needed)
    module_name, _, function = command.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as missing:
        if missing.name is None or missing.name.split(".")[0] in _OWN_PACKAGES:
            raise
        raise _missing(name, command, missing.name) from missing
    configure: Callable[[argparse.ArgumentParser], None] = getattr(module, function)
    return configure


def _missing(name: str, command: Command, module: str) -> MissingExtra:
    package = f"'shiftaudit[{command.extra}]'" if command.extra else "shiftaudit"
    return MissingExtra(f"`{name}` needs what `pip install {package}` installs (missing: {module})")


# What each extra installs, by the modules it provides.
_EXTRA_MODULES = {
    "engine": ("torch", "onnx", "onnxruntime", "numpy", "PIL"),
    "server": ("fastapi", "sqlalchemy", "alembic", "uvicorn", "celery", "boto3", "plotly"),
    "examples": ("skimage",),
}


_OWN_PACKAGES = {
    "shiftaudit",
    "shiftaudit_api",
    "shiftaudit_client",
    "shiftaudit_cli",
    "service",
    "workers",
}
