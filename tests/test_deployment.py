"""The deployment files: docker-compose.yml, its images and .env.example.

CI has no Docker engine, so nothing is built or started; `docker-compose config` (Debian's
`docker-compose`, which `make test` installs) validates and interpolates the file without a
daemon. On what it renders, these tests check that every part the deployment needs is there
and wired as docs/scaling.md says, that no secret has a default, and that every command the
containers run is a real command of this project with real options. The worker health check
(workers/health.py) runs for real: against a live `shiftaudit worker` on a private Redis,
and against shard rows in a database.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from service.audits.tables import AuditShard
from service.db import utcnow
from service.migrate import upgrade
from service.settings import Settings
from shiftaudit_api.audits import AuditStatus
from shiftaudit_cli.main import COMMANDS, parser_for

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BIN = Path(sys.executable).parent
SECRETS = ("SHIFTAUDIT_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD")


_NOT_SOURCE = shutil.ignore_patterns(
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def _parsed(command: list[str]) -> argparse.Namespace:
    """A `shiftaudit ...` command line as the CLI parses it."""
    return parser_for(command[1:]).parse_args(command[1:])


APP_SERVICES = ("migrate", "api", "worker-gpu", "worker-cpu", "reconciler")
LONG_RUNNING = ("api", "worker-gpu", "worker-cpu", "reconciler")


def _compose_binary() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose is not installed (`make test` installs it with apt-get)")
    return found


def _clean_environ() -> dict[str, str]:
    """This process's environment without anything the compose file interpolates."""
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    return {k: v for k, v in os.environ.items() if k not in names}


def _compose_config(env_file: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_compose_binary(), "-f", str(COMPOSE), "--env-file", str(env_file), "config"],
        env=_clean_environ() | environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _filled_env(path: Path, **overrides: str) -> Path:
    """.env.example with every empty required secret filled, as an operator would."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        name = line.split("=", 1)[0]
        if name in SECRETS:
            line = f"{name}={os.urandom(32).hex()}"
        if name == "FLOWER_BASIC_AUTH":
            line = "FLOWER_BASIC_AUTH=admin:" + os.urandom(8).hex()
        if name in overrides:
            line = f"{name}={overrides[name]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env_file = _filled_env(tmp_path_factory.mktemp("compose") / "filled.env")
    result = _compose_config(env_file)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


def _services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = config["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    return dict(service.get("environment") or {})


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    """The health check as argv, with compose's `$$` unescaped and CMD-SHELL split."""
    test = [part.replace("$$", "$") for part in service["healthcheck"]["test"]]
    if test[0] == "CMD-SHELL":
        return shlex.split(test[1])
    assert test[0] == "CMD"
    return test[1:]


# ---------------------------------------------------------------------- the whole file


def test_the_file_validates_with_the_example_env_filled(rendered):
    services = _services(rendered)
    assert set(services) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker-gpu",
        "worker-cpu",
        "reconciler",
        "flower",
    }
    assert services["flower"]["profiles"] == ["flower"]  # optional
    assert all("profiles" not in s for name, s in services.items() if name != "flower")
    for name in (*LONG_RUNNING, "postgres", "redis", "flower"):
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"


def test_required_secrets_have_no_default_and_fail_by_name(tmp_path):
    example = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    for secret in SECRETS:
        assert example[secret] == "", f"{secret} must be empty in .env.example"
    # .env.example as shipped, unfilled: refused, naming a secret.
    unfilled = _compose_config(ENV_EXAMPLE)
    assert unfilled.returncode != 0
    assert any(secret in unfilled.stderr for secret in SECRETS), unfilled.stderr
    # Each secret alone missing: refused, naming that one.
    for secret in SECRETS:
        env_file = _filled_env(tmp_path / f"without-{secret}.env", **{secret: ""})
        result = _compose_config(env_file)
        assert result.returncode != 0, secret
        assert f"set {secret} in .env" in result.stderr, result.stderr
    # Nothing at all.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    assert _compose_config(empty).returncode != 0


def test_secrets_reach_only_the_services_that_use_them(rendered):
    services = _services(rendered)
    assert _environment(services["api"])["SHIFTAUDIT_ENVIRONMENT"] == "production"
    for name, service in services.items():
        env = _environment(service)
        if name != "api":
            assert "SHIFTAUDIT_SECRET_KEY" not in env, name
        for value in env.values():
            assert value != "development-only-secret-change-me"


def test_every_app_service_shares_one_database_broker_and_storage(rendered):
    services = _services(rendered)
    envs = [_environment(services[name]) for name in APP_SERVICES]
    for key in ("DATABASE_URL", "REDIS_URL", "SHIFTAUDIT_STORAGE_URL"):
        assert len({env[key] for env in envs}) == 1, key
    database = urlsplit(str(envs[0]["DATABASE_URL"]))
    assert database.scheme == "postgresql+psycopg"
    assert database.hostname == "postgres"
    assert database.password  # from POSTGRES_PASSWORD
    postgres = _environment(services["postgres"])
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    broker = urlsplit(str(envs[0]["REDIS_URL"]))
    assert (broker.hostname, broker.port) == ("redis", 6379)
    # redis-server requires the password that the URLs carry (REDISCLI_AUTH: for redis-cli).
    assert broker.password == _environment(services["redis"])["REDISCLI_AUTH"]
    assert '--requirepass "$$REDISCLI_AUTH"' in services["redis"]["command"][-1]


def test_every_setting_can_be_set_from_env(rendered):
    """A setting added to service/settings.py must reach every process (pass-through):
    which process reads which setting changes (the reconciler sends webhooks, ...)."""
    services = _services(rendered)
    passed = set.intersection(*(set(_environment(services[name])) for name in APP_SERVICES))
    passed.add("SHIFTAUDIT_SECRET_KEY")  # the API's alone (and checked above)
    passed.add("SHIFTAUDIT_ENVIRONMENT")  # production on the API: it guards the secret
    # Derived from SHIFTAUDIT_DATA_DIR (/data): the worker-cache volume is mounted there.
    derived = {"SHIFTAUDIT_WORKER_CACHE_DIR"}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = set(alias.choices) if isinstance(alias, AliasChoices) else set()
        names = {str(choice) for choice in names} or {f"SHIFTAUDIT_{name.upper()}"}
        assert names & (passed | derived), f"docker-compose.yml passes none of {sorted(names)}"


# ---------------------------------------------------------------------- health checks


def test_health_checks(rendered):
    services = _services(rendered)
    assert _healthcheck_argv(services["postgres"])[0] == "pg_isready"
    assert _healthcheck_argv(services["redis"])[:2] == ["redis-cli", "ping"]
    api = _healthcheck_argv(services["api"])
    assert api[:2] == ["python", "-c"]
    compile(api[2], "healthcheck", "exec")  # valid Python
    port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert f"http://127.0.0.1:{port}/readyz" in api[2]
    for name in ("worker-gpu", "worker-cpu"):
        check = _healthcheck_argv(services[name])
        assert check[:3] == ["python", "-m", "workers.health"], name
        # The node the check pings is the name `shiftaudit worker` gives itself.
        args = _parsed(services[name]["command"])
        device, gpu = args.device, args.gpu or ""
        assert check[3] == f"{device}{gpu}@$HOSTNAME", name
        assert args.name is None
    assert "healthcheck" not in services["reconciler"]  # a loop with nothing to ask
    assert "healthcheck" not in services["migrate"]


def test_dependencies_wait_for_health_and_the_migration(rendered):
    services = _services(rendered)
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in LONG_RUNNING:
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
    assert services["flower"]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_gpu_reservation_only_on_the_gpu_worker(rendered):
    services = _services(rendered)
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    # Inside the container the one reserved GPU is index 0.
    args = parser_for(services["worker-gpu"]["command"][1:]).parse_args(
        services["worker-gpu"]["command"][1:]
    )
    assert (args.device, args.gpu) == ("gpu", "0")
    assert services["worker-gpu"]["build"]["dockerfile"] == "docker/worker-gpu.Dockerfile"
    for name, service in services.items():
        if name != "worker-gpu":
            assert "deploy" not in service, name


def test_named_volumes(rendered):
    services = _services(rendered)
    declared = set(rendered["volumes"])
    assert declared == {"postgres-data", "artifacts", "worker-cache-gpu", "worker-cache-cpu"}
    mounts: dict[str, dict[str, str]] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source in declared, f"{name}: {volume} is not a named volume"
            mounts.setdefault(name, {})[target] = source
    assert mounts["postgres"] == {"/var/lib/postgresql/data": "postgres-data"}
    storage = urlsplit(str(_environment(services["api"])["SHIFTAUDIT_STORAGE_URL"]))
    assert storage.scheme == "file"
    for name in ("api", "worker-gpu", "worker-cpu"):  # everything that reads or writes artifacts
        assert mounts[name][storage.path] == "artifacts", name
    caches = {mounts[name]["/data/worker-cache"] for name in ("worker-gpu", "worker-cpu")}
    assert caches == {"worker-cache-gpu", "worker-cache-cpu"}  # one cache per worker
    for name in APP_SERVICES:
        assert _environment(services[name])["SHIFTAUDIT_DATA_DIR"] == "/data"


def test_storage_can_be_s3_from_env(tmp_path):
    url = "s3://artifacts/shiftaudit/?endpoint_url=https://s3.example.internal&region=eu-1"
    env_file = _filled_env(tmp_path / "s3.env", SHIFTAUDIT_STORAGE_URL=url)
    with env_file.open("a") as handle:
        handle.write("AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY=example\n")
    result = _compose_config(env_file)
    assert result.returncode == 0, result.stderr
    services = _services(yaml.safe_load(result.stdout))
    for name in APP_SERVICES:
        env = _environment(services[name])
        assert env["SHIFTAUDIT_STORAGE_URL"] == url
        assert env["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"


# ---------------------------------------------------------------------- commands


def test_every_command_is_a_real_command(rendered):
    services = _services(rendered)
    handlers = {}
    helps: dict[str, str] = {}
    for name in LONG_RUNNING:
        command = services[name]["command"]
        assert command[0] == "shiftaudit", name
        # The installed CLI's own parser: unknown subcommands or options exit here.
        args = _parsed(command)
        handlers[name] = f"{args.handler.__module__}.{args.handler.__name__}"
        if command[1] not in helps:  # and the installed `shiftaudit` script agrees
            helps[command[1]] = subprocess.run(
                [BIN / "shiftaudit", command[1], "--help"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
        for option in (part for part in command[2:] if part.startswith("--")):
            assert option in helps[command[1]], f"{name}: {option}"
    assert handlers == {
        "api": "service.cli._serve",
        "worker-gpu": "workers.cli._worker",
        "worker-cpu": "workers.cli._worker",
        "reconciler": "workers.cli._reconciler",
    }
    api = _parsed(services["api"]["command"])
    assert api.host == "0.0.0.0"
    assert api.workers > 1  # several uvicorn processes: needs REDIS_URL, which is set
    assert _environment(services["api"])["REDIS_URL"]
    cpu = parser_for(services["worker-cpu"]["command"][1:]).parse_args(
        services["worker-cpu"]["command"][1:]
    )
    assert (cpu.device, cpu.threads) == ("cpu", 2)


def test_the_migration_job_runs_the_installed_migrate_command(rendered, tmp_path):
    assert _services(rendered)["migrate"]["command"] == ["shiftaudit", "migrate"]
    # From a directory with no alembic.ini and no migrations/ in sight: they ship inside
    # the package, as in the image's ordinary (non-editable) install.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"SHIFTAUDIT_DATA_DIR": str(tmp_path / "data")}
    (tmp_path / "data").mkdir()

    def migrate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN / "shiftaudit", "migrate", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    before = migrate("--check")
    assert before.returncode == 1, before.stderr
    assert "no revision" in before.stdout
    done = migrate()
    assert done.returncode == 0, done.stderr
    after = migrate("--check")
    assert after.returncode == 0, after.stderr
    assert after.stdout.split()[2].rstrip(";") == after.stdout.split()[-1]


def test_the_wheel_carries_the_migrations(tmp_path):
    # Built from a copy: a build writes build/ and *.egg-info into the tree it builds.
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=_NOT_SOURCE)
    built = subprocess.run(
        [
            BIN / "python",
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(checkout),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("shiftaudit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("service/migrations/versions/"))
    in_tree = sorted(
        f"service/migrations/versions/{p.name}"
        for p in (ROOT / "service/migrations/versions").glob("*.py")
    )
    assert shipped == in_tree
    assert "service/migrations/env.py" in names
    assert "service/migrations/script.py.mako" in names


def test_serve_refuses_several_workers_without_redis(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "SHIFTAUDIT_REDIS_URL")
    }
    result = subprocess.run(
        [BIN / "shiftaudit", "serve", "--workers", "2"],
        env=env | {"SHIFTAUDIT_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "--workers above 1 needs REDIS_URL" in result.stderr
    assert not (tmp_path / "shiftaudit.db").exists()  # refused before touching anything


# ---------------------------------------------------------------------- images


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker-gpu.Dockerfile"])
def test_dockerfiles(name):
    dockerfile = (ROOT / "docker" / name).read_text()
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"{name}: COPY {source}"
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users, "the image must switch to a user"
    assert users[-1] not in ("root", "0"), "the image must not run as root"
    # An ordinary install: the migrations are package data (`shiftaudit migrate`).
    assert "pip install --no-deps ." in dockerfile
    assert "COPY . ." in dockerfile  # a package added later cannot be left out
    assert not re.search(r"(SECRET|PASSWORD)\w*=", dockerfile), "no secret baked in"
    if name == "worker-gpu.Dockerfile":
        assert re.search(r"nvidia/cuda:[\w.-]+runtime", dockerfile)
        assert "onnxruntime-gpu" in dockerfile
    else:
        assert "FROM python:3.11-slim" in dockerfile
        assert "download.pytorch.org/whl/cpu" in dockerfile


def test_dockerignore_keeps_secrets_out_and_every_runtime_part_in():
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith(("#", "!"))
    ]
    for entry in (".env", ".git", ".venv"):
        assert entry in patterns
    assert "/.env" in (ROOT / ".gitignore").read_text().split()
    # What the containers load: every package of the CLI's commands, and what the
    # install reads (the migrations are inside the service package).
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = [*project["scripts"].values(), *(c.target for c in COMMANDS.values())]
    needed = {target.split(":")[0].split(".")[0] for target in targets}
    needed |= {"service/migrations", "pyproject.toml", "README.md"}
    for name in sorted(needed):
        assert (ROOT / name).exists(), name
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


# ---------------------------------------------------------------------- the worker check


def _health(node: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.health", node, "--timeout", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_health_check_accepts_a_busy_worker_by_its_heartbeat(tmp_path):
    """A solo-pool worker answers no ping while it sweeps; its fresh heartbeat is its life."""
    url = f"sqlite:///{tmp_path / 'health.db'}"
    upgrade(url)
    now = utcnow()
    with Session(create_engine(url)) as session:  # plain engine: no parent audit row needed
        session.add_all(
            [
                AuditShard(
                    audit_id=uuid.uuid4(),
                    shard=0,
                    probe_start=0,
                    probe_stop=10,
                    route="audits.gpu",
                    status=AuditStatus.RUNNING,
                    worker="gpu0@busy:4242",
                    heartbeat_at=now - timedelta(seconds=3),
                ),
                AuditShard(
                    audit_id=uuid.uuid4(),
                    shard=0,
                    probe_start=0,
                    probe_stop=10,
                    route="audits.gpu",
                    status=AuditStatus.RUNNING,
                    worker="gpu0@stale:4242",
                    heartbeat_at=now - timedelta(seconds=600),
                ),
            ]
        )
        session.commit()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTAUDIT_")}
    env |= {
        "DATABASE_URL": url,
        "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0",  # no worker answers
        "SHIFTAUDIT_HEARTBEAT_TIMEOUT_S": "120",
    }
    busy = _health("gpu0@busy", env)
    assert busy.returncode == 0, busy.stderr
    assert "busy with shard" in busy.stdout
    stale = _health("gpu0@stale", env)
    assert stale.returncode == 1
    assert "no answer to a ping and no running shard" in stale.stderr
    # A name is matched whole, not as a prefix of another worker's.
    assert _health("gpu0@bus", env).returncode == 1
    assert _health("gpu0@%", env).returncode == 1


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A private redis-server that keeps nothing on disk; its URL."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = _closed_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 90
    while not condition():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _environment_with(broker: str, root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTAUDIT_")}
    return env | {
        "REDIS_URL": broker,
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite'}",
        "SHIFTAUDIT_DATA_DIR": str(root / "data"),
    }


def test_health_check_pings_a_live_worker(tmp_path, broker):
    env = _environment_with(broker, tmp_path)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [BIN / "shiftaudit", "worker", "--device", "cpu", "--name", "cpu@deploytest"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: "ready." in log.read_text(), worker, log)
        alive = _health("cpu@deploytest", env)
        assert alive.returncode == 0, alive.stderr
        assert "cpu@deploytest: answers" in alive.stdout
        assert _health("cpu@someone-else", env).returncode == 1
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_the_api_command_serves_from_several_processes(tmp_path, broker):
    """The compose file's `shiftaudit serve --workers N`: uvicorn's factory in N processes."""
    port = _closed_port()
    env = _environment_with(broker, tmp_path)
    log = tmp_path / "api.log"
    with log.open("w") as out:
        api = subprocess.Popen(
            [BIN / "shiftaudit", "serve", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    try:
        _wait_for(ready, api, log)
        _wait_for(lambda: log.read_text().count("Application startup complete") == 2, api, log)
    finally:
        api.terminate()
        api.wait(timeout=60)


def test_a_gpu_machine_points_its_worker_at_the_shared_services(tmp_path):
    """docs/scaling.md: one compose project per GPU, --no-deps, the shared hosts from .env."""
    env_file = _filled_env(
        tmp_path / "gpu-machine.env",
        POSTGRES_HOST="db.internal",
        POSTGRES_PORT="6432",
        REDIS_HOST="broker.internal",
        SHIFTAUDIT_STORAGE_URL="s3://artifacts/shiftaudit/",
    )
    result = _compose_config(env_file, GPU_DEVICE="3")  # the shell overrides .env
    assert result.returncode == 0, result.stderr
    worker = _services(yaml.safe_load(result.stdout))["worker-gpu"]
    env = _environment(worker)
    database, broker = urlsplit(str(env["DATABASE_URL"])), urlsplit(str(env["REDIS_URL"]))
    assert (database.hostname, database.port) == ("db.internal", 6432)
    assert (broker.hostname, broker.port) == ("broker.internal", 6379)
    assert env["SHIFTAUDIT_STORAGE_URL"] == "s3://artifacts/shiftaudit/"
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["device_ids"] == ["3"]
    args = _parsed(worker["command"])
    assert args.gpu == "0"  # the one reserved GPU, whichever the host's index


def test_flower_is_loopback_only_and_refuses_to_start_without_auth(rendered):
    services = _services(rendered)
    flower = services["flower"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"])
    env = _environment(flower)
    assert env["CELERY_BROKER_URL"] == _environment(services["api"])["REDIS_URL"]
    assert flower["entrypoint"] == ["/bin/sh", "-c"]
    script = flower["command"][0].replace("$$", "$").replace("exec celery", "exec echo celery")
    base = {"PATH": os.environ["PATH"]}
    refused = subprocess.run(
        ["/bin/sh", "-c", script], env=base, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1
    assert "set FLOWER_BASIC_AUTH" in refused.stderr
    started = subprocess.run(
        ["/bin/sh", "-c", script],
        env=base | {"FLOWER_BASIC_AUTH": "admin:pw"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert started.stdout.split() == ["celery", "flower", "--port=5555", "--basic-auth=admin:pw"]
