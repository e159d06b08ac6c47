"""The layers of the code base: engine <- contract <- service <- workers, client <- contract.

Read from the source (every import statement, functions' bodies included), and checked in
fresh interpreters for what the light entry points actually load."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a light install lacks; none of it may load for the client or `--help`.
HEAVY = ("torch", "onnx", "onnxruntime", "numpy", "PIL", "sqlalchemy", "alembic", "fastapi")
HEAVY += ("starlette", "uvicorn", "celery", "boto3", "plotly")
# The engine's modules that import only pydantic and the standard library: the contract and
# the client may use these, and nothing else of the engine.
LIGHT_ENGINE = {
    "shiftaudit",
    "shiftaudit.archives",
    "shiftaudit.comparison",
    "shiftaudit.config",
    "shiftaudit.config_args",
    "shiftaudit.errors",
    "shiftaudit.files",
    "shiftaudit.profile",
    "shiftaudit.profile.findings",
    "shiftaudit.profile.graph",
    "shiftaudit.profile.receptive_fields",
    "shiftaudit.report",
    "shiftaudit.terminal",
}


def _imports(package: str) -> dict[str, set[str]]:
    """Module name -> every module it imports (absolute names), for a package's files."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the module's package
                    base = module.rsplit(".", node.level - (path.name == "__init__.py"))[0]
                    names.add(f"{base}.{node.module}" if node.module else base)
                else:
                    assert node.module is not None
                    names.add(node.module)
        found[module] = names
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "shiftaudit",
            {"shiftaudit_api", "shiftaudit_client", "shiftaudit_cli", "service", "workers"},
        ),
        ("shiftaudit_api", {"shiftaudit_client", "shiftaudit_cli", "service"}),
        ("shiftaudit_client", {"shiftaudit_cli", "service"}),
        ("service", {"shiftaudit_cli"}),
        ("workers", {"shiftaudit_cli", "shiftaudit_client"}),
    ],
)
def test_no_package_imports_a_layer_above_it(package, forbidden):
    forbidden = forbidden | ({"workers"} if package != "workers" else set())
    offending = {
        module: sorted(name for name in names if _top(name) in forbidden)
        for module, names in _imports(package).items()
    }
    assert {module: names for module, names in offending.items() if names} == {}


def test_the_service_uses_the_client_only_for_the_demo():
    users = {
        module
        for module, names in _imports("service").items()
        if any(_top(name) == "shiftaudit_client" for name in names)
    }
    assert users <= {"service.demo"}


@pytest.mark.parametrize("package", ["shiftaudit_api", "shiftaudit_client", "shiftaudit_cli"])
def test_light_packages_import_only_pydantic_httpx_and_the_light_engine(package):
    allowed_third_party = {"pydantic", "httpx"}
    problems = {}
    for module, names in _imports(package).items():
        bad = []
        for name in names:
            top = _top(name)
            light_own = top in ("shiftaudit_api", "shiftaudit_client", "shiftaudit_cli")
            if top in sys.stdlib_module_names or top in allowed_third_party or light_own:
                continue
            if name in LIGHT_ENGINE:
                continue
            bad.append(name)  # (the dispatcher names heavier modules only as strings)
        if bad:
            problems[module] = sorted(bad)
    assert problems == {}


def test_the_light_engine_modules_import_nothing_heavy():
    imports = _imports("shiftaudit")
    for module in sorted(LIGHT_ENGINE):
        for name in imports[module]:
            top = _top(name)
            assert top in sys.stdlib_module_names or top == "pydantic" or name in LIGHT_ENGINE, (
                f"{module} imports {name}"
            )


def _loaded_after(code: str) -> list[str]:
    """The heavy packages, and any service/workers module, loaded by `code` in a fresh
    interpreter."""
    probe = (
        "import sys, json\n"
        f"{code}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "server = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'workers'))\n"
        "print(json.dumps(heavy + server))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_importing_the_client_and_the_contract_loads_nothing_heavy():
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("shiftaudit_api", "shiftaudit_client")
        for p in sorted((ROOT / package).rglob("*.py"))
    ]
    assert _loaded_after("import shiftaudit_client") == []
    assert _loaded_after("\n".join(f"import {m}" for m in modules)) == []


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["submit", "--help"], ["report", "--help"], ["compare", "--help"]],
)
def test_help_loads_neither_torch_nor_the_server(argv):
    code = (
        "from contextlib import redirect_stdout\n"
        "import io\n"
        "from shiftaudit_cli.main import main\n"
        "with redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
    )
    assert _loaded_after(code) == []
