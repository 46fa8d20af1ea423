"""The example plugin in docs/ works as the plugin guide says."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from canbridge import ConfigError
from canbridge.testing import BridgeHarness

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("canbridge_csvlog", ROOT / "docs/example-plugin/canbridge_csvlog.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["canbridge_csvlog"] = mod
    spec.loader.exec_module(mod)
    return mod


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
