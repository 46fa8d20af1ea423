"""Layering: built-in plugins see only the public API, the core knows no northbound protocol.

Runs import-linter with the contracts in pyproject.toml, and shows on a throw-away plugin package
that the same contract catches a plugin importing ``canbridge.core``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_PACKAGES = sorted(p.name for p in (ROOT / "plugins").iterdir() if (p / "__init__.py").exists())


def lint_imports() -> list[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        found = shutil.which("lint-imports")
        if found is None:
            pytest.fail("lint-imports is missing: pip install import-linter (it is in the [test] extra)")
        exe = Path(found)
    return [str(exe), "--no-cache", "--no-logo"]


def contracts() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["tool"]["importlinter"])


def run(args: list[str], cwd: Path, pythonpath: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in pythonpath)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_contracts_cover_every_plugin_package() -> None:
    cfg = contracts()
    assert PLUGIN_PACKAGES == ["canbridge_modbus", "canbridge_mqtt", "canbridge_opcua", "canbridge_rest"]
    assert set(PLUGIN_PACKAGES) <= set(cfg["root_packages"])
    [plugins_contract, core_contract, cycles_contract] = cfg["contracts"]
    assert plugins_contract["type"] == "forbidden"
    assert sorted(plugins_contract["source_modules"]) == PLUGIN_PACKAGES
    assert {"canbridge.core", "canbridge.cli", "canbridge.config"} <= set(plugins_contract["forbidden_modules"])
    assert cycles_contract["type"] == "acyclic_siblings"
    assert sorted(cycles_contract["ancestors"]) == sorted(["canbridge", *PLUGIN_PACKAGES])
    assert core_contract["source_modules"] == ["canbridge.core"]
    assert set(PLUGIN_PACKAGES) <= set(core_contract["forbidden_modules"])
    assert {"asyncua", "pymodbus", "aiohttp"} <= set(core_contract["forbidden_modules"])


def test_the_project_keeps_its_contracts() -> None:
    r = run(lint_imports(), ROOT, [ROOT, ROOT / "plugins"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_a_plugin_importing_the_core_is_caught(tmp_path: Path) -> None:
    pkg = tmp_path / "canbridge_evil"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text("from canbridge.core.store import SignalStore  # the forbidden shortcut\n")
    cfg = contracts()
    first = dict(cfg["contracts"][0])
    first["source_modules"] = [*first["source_modules"], "canbridge_evil"]
    lines = ["[tool.importlinter]",
             "root_packages = " + _toml_list([*cfg["root_packages"], "canbridge_evil"]),
             "include_external_packages = true", "", "[[tool.importlinter.contracts]]"]
    lines += [f"{k} = " + (_toml_list(v) if isinstance(v, list) else f'"{v}"') for k, v in first.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    r = run([*lint_imports(), "--config", str(tmp_path / "pyproject.toml")], tmp_path,
            [tmp_path, ROOT, ROOT / "plugins"])
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "canbridge_evil.plugin -> canbridge.core.store" in r.stdout


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def test_an_import_cycle_is_caught(tmp_path: Path) -> None:
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclic import b  # noqa\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic import a  # noqa\n")
    cycles = dict(contracts()["contracts"][2])
    cycles["ancestors"] = ["cyclic"]
    lines = ["[tool.importlinter]", 'root_packages = ["cyclic"]', "", "[[tool.importlinter.contracts]]"]
    lines += [f"{k} = " + (_toml_list(v) if isinstance(v, list) else f'"{v}"') for k, v in cycles.items()]
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    r = run([*lint_imports(), "--config", str(tmp_path / "pyproject.toml")], tmp_path, [tmp_path])
    assert r.returncode != 0, r.stdout
    assert "BROKEN" in r.stdout and "No cycles are allowed in cyclic" in r.stdout  # a typing-only import counts
