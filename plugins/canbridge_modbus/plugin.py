"""Plugin registration: the ``modbus`` northbound service and the ``canbridge modbus-map`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pydantic import ValidationError

import canbridge
from canbridge import Command, ConfigError, NorthboundPlugin, SignalInfo, load_config, problems_from_validation
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.regmap import (
    RegisterMap,
    default_map_path,
    load_map_file,
    plan_register_map,
    render_csv,
    render_markdown,
    save_map,
)
from canbridge_modbus.service import ModbusService


def _factory(bridge: canbridge.Bridge, config: ModbusConfig) -> ModbusService:
    return ModbusService(bridge, config)


@canbridge.hookimpl
def register_northbound(register: Callable[[NorthboundPlugin], None]) -> None:
    """The Modbus TCP/RTU server."""
    register(
        NorthboundPlugin(
            name="modbus",
            config_model=ModbusConfig,
            factory=_factory,
            description="Modbus TCP (and RTU) server: registers from the mapping table, pinned in a map file",
            order=100,
            demo_config={"host": "127.0.0.1", "port": 5020},
        )
    )


@canbridge.hookimpl
def register_commands(register: Callable[[Command], None]) -> None:
    """``canbridge modbus-map CONFIG``: print the register map."""
    register(
        Command(
            name="modbus-map",
            help="print the Modbus register map of a configuration (CSV or Markdown)",
            configure=_configure,
            run=_run,
        )
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="configuration file")
    parser.add_argument("--format", choices=("csv", "markdown"), default="csv", help="output format")
    parser.add_argument(
        "--write",
        action="store_true",
        help="pin the printed addresses now by writing the map file (the first run does it otherwise)",
    )


def build_map(
    signals: Mapping[str, SignalInfo],
    buses: list[str],
    config: ModbusConfig,
    config_path: Path,
    state_dir: Path,
) -> tuple[RegisterMap, Path, bool]:
    """The register map a bridge with this configuration serves; whether the map file exists."""
    path = default_map_path(config, config_path, state_dir)
    existing = load_map_file(path)
    return plan_register_map(signals, buses, config, existing, path), path, existing is not None


def _run(args: argparse.Namespace) -> int:
    path: Path = args.config
    try:
        cfg, lines = load_config(path)
        raw = cfg.plugins.get("modbus", {})
        try:
            mcfg = ModbusConfig.model_validate(raw or {})
        except ValidationError as e:
            raise ConfigError(problems_from_validation(e, str(path), lines, ("plugins", "modbus"))) from None
        state = cfg.state_dir or Path(".canbridge-state")
        state_dir = state if state.is_absolute() else path.parent / state
        signals = canbridge.load_table(path)
        rmap, map_path, exists = build_map(signals, [b.name for b in cfg.buses], mcfg, path, state_dir)
    except ConfigError as e:
        for p in e.problems:
            print(f"error: {p}", file=sys.stderr)
        return 2
    for w in rmap.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.write and rmap.changed:
        save_map(map_path, rmap)
        print(f"register map written to {map_path}", file=sys.stderr)
    elif not exists:
        print(
            f"note: {map_path} does not exist yet; these are the addresses the first run assigns "
            "(--write pins them now)",
            file=sys.stderr,
        )
    elif rmap.changed:
        print(f"note: the next run adds new signals to {map_path} (--write does it now)", file=sys.stderr)
    sys.stdout.write(render_markdown(rmap) if args.format == "markdown" else render_csv(rmap))
    return 0
