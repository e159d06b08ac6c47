"""The audit config from a command line: a JSON `--config` file with flags on top.

Shared by `shiftaudit audit` (local) and `shiftaudit submit` (through the service), so that
both read the same flags the same way. Light: argparse, json and pydantic only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from shiftaudit.config import AuditConfig, ShiftMode
from shiftaudit.errors import ConfigError


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and the flags that override its sweep, seed, device and input size."""
    parser.add_argument("--config", type=Path, help="JSON audit config (the API's config object)")
    parser.add_argument("--mode", choices=list(get_args(ShiftMode)))
    parser.add_argument("--max-shift", type=int, metavar="R")
    parser.add_argument("--step", type=int, metavar="S")
    parser.add_argument("--seed", type=int, metavar="N")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="the model's input size, for a model that declares none (a traced TorchScript "
        "file); sets preprocess.input_size",
    )


def config_from_args(args: argparse.Namespace) -> AuditConfig:
    """The --config file with the override flags on top."""
    return load_config(
        args.config,
        {
            "sweep.mode": args.mode,
            "sweep.max_shift": args.max_shift,
            "sweep.step": args.step,
            "seed": args.seed,
            "runtime.device": args.device,
            "preprocess.input_size": args.input_size,
        },
    )


def load_config(path: Path | None, overrides: dict[str, Any]) -> AuditConfig:
    """Read a JSON config file and apply overrides given as dotted field names."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON: {error}") from error
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the config: {error.strerror}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a JSON object")
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.rpartition(".")
        target = raw.setdefault(section, {}) if section else raw
        if not isinstance(target, dict):
            raise ConfigError(f"config field {section!r} must be an object")
        target[key] = value
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in error.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from error
