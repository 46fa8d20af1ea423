"""``canbridge modbus-map``: print (and with --write pin) the register map of a configuration."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

import canbridge
from canbridge import ConfigError, SignalInfo, load_config, problems_from_validation
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.listing import render_csv, render_markdown
from canbridge_modbus.mapfile import default_map_path, load_map_file, save_map
from canbridge_modbus.planner import plan_register_map
from canbridge_modbus.registers import RegisterMap


def configure(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
