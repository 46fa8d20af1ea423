"""The example plugin in docs/ works as the plugin guide says."""

from __future__ import annotations

import csv
import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from canbridge import ConfigError
from canbridge.testing import BridgeHarness

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    """The example's hook module, imported from docs/ as if installed (its entry point names it)."""
    where = str(ROOT / "docs" / "example-plugin")
    if where not in sys.path:
        sys.path.insert(0, where)
    return importlib.import_module("canbridge_csvlog.plugin")


def test_example_plugin_has_the_layout_of_the_built_in_ones() -> None:
    pkg = ROOT / "docs" / "example-plugin" / "canbridge_csvlog"
    assert sorted(p.name for p in pkg.glob("*.py")) == ["__init__.py", "config.py", "plugin.py", "service.py"]
    for builtin in ("canbridge_opcua", "canbridge_modbus", "canbridge_rest"):
        files = {p.name for p in (ROOT / "plugins" / builtin).glob("*.py")}
        assert {"__init__.py", "config.py", "plugin.py", "service.py"} <= files, builtin


async def test_example_plugin_logs_changes(tmp_path: Path) -> None:
    mod = _load()
    plugins = {"csvlog": {"file": str(tmp_path / "log.csv"), "interval_s": 0.05,
                          "signals": ["demo.MotorStatus.*"]}}
    async with BridgeHarness(plugins=plugins, extra_plugins=[mod]) as h:
        h.inject("100#E803000000000000")  # MotorSpeed 1000 rpm
        svc = h.service("csvlog")
        await h.until(lambda: svc.rows > 6)  # type: ignore[attr-defined]
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    speeds = [r for r in rows if r["signal"] == "demo.MotorStatus.MotorSpeed"]
    assert speeds[0]["quality"] == "waiting"
    assert speeds[-1]["value"] == "1000" and speeds[-1]["quality"] == "good"
    assert {r["signal"] for r in rows} <= {n for n in h.bridge.signals if n.startswith("demo.MotorStatus.")}


async def test_example_plugin_config_is_validated(tmp_path: Path) -> None:
    mod = _load()
    with pytest.raises(ConfigError) as err:
        async with BridgeHarness(plugins={"csvlog": {"file": "x.csv", "colour": "red"}}, extra_plugins=[mod]):
            pass
    assert "plugins.csvlog.colour" in str(err.value)
    assert "unknown key" in str(err.value)
