"""The plugin host (canbridge/core/host.py) and the hook specifications (canbridge/hookspecs.py).

The documentation test fails when a hook lacks a one-line docstring, is missing from
docs/plugins.md, or has no hook implementation anywhere in the tests.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest
from pydantic import BaseModel

from canbridge import BusKind, Command, MappingFormat, NorthboundPlugin, PluginError, hookimpl, hookspecs
from canbridge.cli import build_parser
from canbridge.config import parse_config
from canbridge.core.app import DEMO_DBC
from canbridge.core.host import collect, installed_plugins, load_registry, make_plugin_manager
from canbridge.core.mapping.table import build_table

ROOT = Path(__file__).resolve().parents[2]


def hook_names() -> list[str]:
    marker = "canbridge_spec"
    return sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, marker))


def test_every_hook_is_documented_and_exercised() -> None:
    names = hook_names()
    assert names == ["register_bus_kinds", "register_commands", "register_mapping_formats", "register_northbound"]
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("*.py"))
    for name in names:
        fn = getattr(hookspecs, name)
        docstring = inspect.getdoc(fn) or ""
        first = docstring.splitlines()[0] if docstring else ""
        assert first.strip() and first.endswith("."), f"{name}: needs a one-line docstring ending in '.'"
        assert f"`{name}`" in doc or name in doc, f"{name} is not described in docs/plugins.md"
        assert f"def {name}(" in tests, f"no test implements the hook {name}"
        assert list(inspect.signature(fn).parameters) == ["register"], f"{name}: takes one 'register' callable"


def test_the_hooks_known_to_pluggy_are_the_documented_ones() -> None:
    pm = make_plugin_manager(load_entry_points=True)
    pm.check_pending()  # every hookimpl of every installed plugin matches a spec
    assert sorted(n for n in dir(pm.hook) if not n.startswith("_")) == hook_names()


# --- a test plugin implementing every hook ----------------------------------------------------------

def _load_upper_dbc(path: Path, strict: bool) -> Sequence[Any]:
    """A 'format' that reads a DBC whose text is stored upside-down-cased, to prove the loader is used."""
    import cantools

    text = path.read_text(encoding="utf-8").swapcase()
    db: Any = cantools.database.load_string(text, database_format="dbc", strict=strict)
    return list(db.messages)


class HelloConfig(BaseModel):
    who: str = "world"


RAN: list[str] = []


class EveryHookPlugin:
    @hookimpl
    def register_mapping_formats(self, register: Callable[[MappingFormat], None]) -> None:
        register(MappingFormat("swapcase-dbc", (".cbd",), _load_upper_dbc, "DBC with swapped case"))

    @hookimpl
    def register_commands(self, register: Callable[[Command], None]) -> None:
        def configure(p: argparse.ArgumentParser) -> None:
            p.add_argument("--who", default="world")

        def run(args: argparse.Namespace) -> int:
            RAN.append(args.who)
            return 7

        register(Command("hello", "say hello", configure, run, aliases=("hi",)))

    @hookimpl
    def register_northbound(self, register: Callable[[NorthboundPlugin], None]) -> None:
        register(NorthboundPlugin("hello", HelloConfig, lambda bridge, cfg: None))  # type: ignore[arg-type,return-value]

    @hookimpl
    def register_bus_kinds(self, register: Callable[[BusKind], None]) -> None:
        register(BusKind("null", lambda cfg: None))  # type: ignore[arg-type,return-value]


def test_a_plugin_registers_a_mapping_format_used_by_the_table(tmp_path: Path) -> None:
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(EveryHookPlugin(), name="every-hook")
    reg = collect(pm)
    assert {"swapcase-dbc", "dbc", "yaml"} <= set(reg.formats)
    assert "null" in reg.bus_kinds and "hello" in reg.northbound
    f = tmp_path / "demo.cbd"
    f.write_text(DEMO_DBC.read_text(encoding="utf-8").swapcase())
    config = parse_config({"buses": [{"name": "b", "interface": "virtual"}],
                           "mappings": [{"bus": "b", "dbc": str(f)}]})
    table = build_table(config, tmp_path, reg.formats)
    assert "b.MotorStatus.MotorSpeed" in table.signals
    config = parse_config({"buses": [{"name": "b", "interface": "virtual"}],
                           "mappings": [{"bus": "b", "dbc": str(DEMO_DBC), "format": "swapcase-dbc"}]})
    with pytest.raises(Exception):  # noqa: B017 - the named format is really used: swapped text is not a DBC
        build_table(config, tmp_path, reg.formats)


def test_a_plugin_command_becomes_a_subcommand() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(EveryHookPlugin(), name="every-hook")
    reg = collect(pm)
    parser = build_parser(reg.commands)
    for argv in (["hello", "--who", "bob"], ["hi"]):
        args = parser.parse_args(argv)
        RAN.clear()
        assert args.func(args) == 7
        assert [argv[2] if len(argv) > 2 else "world"] == RAN


def test_duplicate_and_wrong_registrations_are_plugin_errors() -> None:
    class Dup:
        @hookimpl
        def register_bus_kinds(self, register: Callable[[BusKind], None]) -> None:
            register(BusKind("virtual", lambda cfg: None))  # type: ignore[arg-type,return-value]

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Dup(), name="dup")
    with pytest.raises(PluginError, match="two plugins register the bus_kinds 'virtual'"):
        collect(pm)

    class Wrong:
        @hookimpl
        def register_northbound(self, register: Callable[[Any], None]) -> None:
            register({"name": "x"})

    pm = make_plugin_manager(load_entry_points=False)
    pm.register(Wrong(), name="wrong")
    with pytest.raises(PluginError, match="register_northbound expects a NorthboundPlugin, got dict"):
        collect(pm)


def test_a_broken_entry_point_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    real = importlib.metadata.entry_points

    class BrokenEP:
        name = "broken"
        value = "canbridge_broken_plugin.plugin"
        dist = None

        def load(self) -> Any:
            raise ImportError("No module named 'canbridge_broken_plugin'")

    def entry_points(**kw: Any) -> Any:
        return [*real(**kw), BrokenEP()] if kw.get("group") == "canbridge" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    _, reg = load_registry()
    assert reg.load_errors == ["plugin 'broken' (canbridge_broken_plugin.plugin) failed to load: "
                               "ImportError: No module named 'canbridge_broken_plugin'"]
    assert {"opcua", "modbus", "rest"} <= set(reg.northbound)


def test_installed_plugins_have_distribution_and_version() -> None:
    import canbridge

    pm, _ = load_registry()
    rows = {p["name"]: p for p in installed_plugins(pm)}
    for name in ("canbridge.builtin", "opcua", "modbus", "rest"):
        assert rows[name]["version"] == canbridge.__version__
        assert rows[name]["distribution"] == "canbridge"
    assert "register_northbound" in rows["rest"]["hooks"]


def test_entry_point_plugins_are_the_built_in_ones() -> None:
    pm = make_plugin_manager(load_entry_points=True)
    names = {n for n, _ in pm.list_name_plugin()}
    assert {"canbridge.builtin", "opcua", "modbus", "rest"} <= names
    assert isinstance(pm, pluggy.PluginManager)
