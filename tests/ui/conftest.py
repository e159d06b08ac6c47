"""A real server with real audits, and Debian's Chromium driven by Playwright.

One uvicorn process on loopback (SQLite, local storage, a private redis-server) serves every
test here, and a `shiftaudit worker` process runs its audits to `succeeded` on the tiny
networks of tests/nets.py. With a real queue the tests decide when work runs: an audit
submitted while no worker is up stays `queued` until one starts. The browser is
/usr/bin/chromium (`make test` installs it); Playwright never downloads one.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.db import make_engine, session_factory
from service.demo import wait_ready
from service.migrate import upgrade
from service.teams.repository import create_key, get_or_create_team
from service.teams.tables import Scope
from tests.nets import DenseHeadNet, GlobalPoolNet, export_program, phase_probes, zip_directory
from tests.service.conftest import PEPPER
from tests.service.loopback import free_port
from tests.workers.conftest import SHIFTAUDIT, RedisServer, wait_for_log

CHROMIUM = Path("/usr/bin/chromium")
# A model version that would run script if any page put data into markup.
HOSTILE = '1<img src=x onerror="alert(1)"><script>alert(2)</script>'

ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "ui"
CONFIG = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "circular", "max_shift": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 200,
}
CANVAS = {
    "preprocess": {"input_size": [16, 16], "resize": 16},
    "sweep": {"mode": "canvas", "object_size": 8, "step": 2},
    "runtime": {"batch_size": 25, "device": "cpu"},
    "bootstrap": 200,
}


@dataclass
class Server:
    """The running service, its keys, and the ids of what was uploaded and audited."""

    base: str
    keys: dict[str, str]
    probes: Path
    env: dict[str, str]
    root: Path
    ids: dict[str, str] = field(default_factory=dict)
    worker: subprocess.Popen[bytes] | None = None
    worker_starts: int = 0

    def start_worker(self) -> None:
        """Start a CPU worker as an operator would; return once it takes work."""
        self.worker_starts += 1
        # A log per start: an earlier worker's "ready." must not stand for this one's.
        log_path = self.root / f"worker-{self.worker_starts}.log"
        with log_path.open("wb") as log:
            self.worker = subprocess.Popen(
                [str(SHIFTAUDIT), "worker", "--device=cpu", "--name=ui@test"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_log(self.worker, log_path, "ready.")

    def stop_worker(self) -> None:
        """Stop the worker after its current shard (Celery's warm shutdown)."""
        if self.worker is not None:
            self.worker.terminate()
            self.worker.wait(timeout=60)
            self.worker = None

    def client(self, key: str = "alpha-write") -> httpx.Client:
        return httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=60
        )

    def upload_model(self, http: httpx.Client, path: Path, name: str, version: str) -> str:
        response = http.post(
            "/v1/models",
            data={"name": name, "version": version},
            files={"file": ("m.pt2", path.read_bytes())},
        )
        assert response.status_code in (200, 201), response.text
        return str(response.json()["id"])

    def submit(self, http: httpx.Client, model: str, probes: str, config: dict[str, Any]) -> str:
        response = http.post(
            "/v1/audits",
            params={"reuse": "false"},
            json={"model_id": self.ids[model], "probe_set_id": self.ids[probes], "config": config},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def wait(self, http: httpx.Client, audit_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            audit: dict[str, Any] = http.get(f"/v1/audits/{audit_id}").json()
            if audit["status"] in ("succeeded", "failed", "cancelled"):
                assert audit["status"] == "succeeded", audit
                return audit
            time.sleep(0.2)
        raise AssertionError(f"audit {audit_id} did not finish in {timeout} s")


def _labelled_zip(directory: Path) -> bytes:
    """The probes with labels, so that the report has accuracy maps too."""
    with open(directory / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        for i, path in enumerate(sorted(directory.glob("*.png"))):
            writer.writerow([path.name, i % 5])
    return zip_directory(directory)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service with three succeeded audits: model "tiny-net" version 1 (invariant) and
    version 2 (stride 2: it aliases) on the same labelled probes, and "dense-head" on a
    canvas. No worker is running when the tests start."""
    root = tmp_path_factory.mktemp("ui-server")
    broker = RedisServer(root)
    broker.start()
    url = f"sqlite:///{root / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    keys = {}
    with session_factory(engine).begin() as session:
        for team, scope in [("alpha", Scope.READ), ("alpha", Scope.WRITE), ("beta", Scope.READ)]:
            _, keys[f"{team}-{scope.value}"] = create_key(
                session, team=get_or_create_team(session, name=team), scope=scope, pepper=PEPPER
            )
    engine.dispose()
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("SHIFTAUDIT_")
    }
    env |= {
        "SHIFTAUDIT_DATABASE_URL": url,
        "SHIFTAUDIT_REDIS_URL": broker.url,
        "SHIFTAUDIT_SECRET_KEY": PEPPER,
        "SHIFTAUDIT_DATA_DIR": str(root),
        "SHIFTAUDIT_WORKER_CACHE_DIR": str(root / "worker-cache"),
    }
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        env=env,
    )
    server = Server(
        base=f"http://127.0.0.1:{port}", keys=keys, probes=root / "phase", env=env, root=root
    )
    try:
        with server.client() as http:
            wait_ready(http, process)
            server.start_worker()
            _audit_everything(server, http, root)
            server.stop_worker()
        yield server
    finally:
        server.stop_worker()
        process.terminate()
        process.wait(timeout=30)
        broker.stop()


def _audit_everything(server: Server, http: httpx.Client, root: Path) -> None:
    models = {
        "v1": (GlobalPoolNet(stride=1), "tiny-net", "1"),
        "v2": (GlobalPoolNet(stride=2), "tiny-net", "2"),
        "dense": (DenseHeadNet(), "dense-head", HOSTILE),
    }
    for key, (net, name, version) in models.items():
        path = export_program(net, root / f"{key}.pt2")
        server.ids[key] = server.upload_model(http, path, name, version)
    probes = http.post(
        "/v1/probe-sets",
        data={"name": "phase tiles"},
        files={"file": ("p.zip", _labelled_zip(phase_probes(server.probes, 12)))},
    )
    assert probes.status_code == 201, probes.text
    server.ids["probes"] = probes.json()["id"]
    for key, model in (("audit_v1", "v1"), ("audit_v2", "v2")):
        server.ids[key] = server.submit(http, model, "probes", CONFIG)
    server.ids["audit_canvas"] = server.submit(http, "dense", "probes", CANVAS)
    for key in ("audit_v1", "audit_v2", "audit_canvas"):
        server.wait(http, server.ids[key])


@dataclass
class Watched:
    """What a page did: console errors, uncaught exceptions, requests off loopback."""

    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


# Module scope: Playwright's sync API keeps an event loop running in this thread while it
# is open, and asyncio.run() in a later test module would refuse to start.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            "the UI tests need Debian's Chromium: apt-get install chromium chromium-driver "
            "(`make test` does it)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Watched]]:
    """A fresh tab (fresh sessionStorage) whose errors and off-loopback requests are kept;
    a request for anywhere but 127.0.0.1 is recorded and aborted."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    watched = Watched()

    def guard(route: Any, request: Any) -> None:
        address = urlsplit(request.url)
        if address.scheme in ("blob", "data") or address.hostname == "127.0.0.1":
            route.continue_()
        else:
            watched.foreign.append(request.url)
            route.abort()

    context.route("**/*", guard)
    # Anything the content security policy blocks is an error too (plotly needs no eval).
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI))"
    )
    tab = context.new_page()
    tab.on("console", lambda m: m.type == "error" and watched.errors.append(m.text))
    tab.on("pageerror", lambda e: watched.errors.append(f"page error: {e}"))
    tab.on("dialog", lambda d: (watched.errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield tab, watched
    context.close()


def screenshot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(tab: Any, server: Server, path: str, key: str = "alpha-read") -> None:
    """Open a page, paste the key into the sign-in form, and wait for the page to draw."""
    tab.goto(server.base + path)
    tab.fill("#api-key", server.keys[key])
    tab.click("#signin-form button[type=submit]")
    tab.wait_for_selector("#who:not([hidden])")
