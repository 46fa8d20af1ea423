"""The register map through the start-up cache: the map file's bytes, the plugin configuration, the
bus names and every signal's facts are the key, so a plan is only reused when none of them changed.

At 10,000 signals reading the map file back (YAML) is most of the Modbus plugin's start-up; the cached
plan is a JSON file read in a few tens of milliseconds. A miss plans exactly as without the cache.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from canbridge import SignalInfo, StartupCache, cache_key
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.mapfile import load_map_file
from canbridge_modbus.planner import plan_register_map
from canbridge_modbus.registers import BridgeBlock, DiagBlock, DtcBlock, Placement, RegisterMap, Reserved

log = logging.getLogger("canbridge.modbus")

KIND = "modbus-map"


def _key(
    path: Path, signals: Mapping[str, SignalInfo], buses: Iterable[str], config: ModbusConfig
) -> str | None:
    """The key of the plan for what is now on disk, or None when the map file cannot be read."""
    try:
        raw: bytes | None = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except OSError:
        return None  # load_map_file reports it
    facts = "\n".join(repr(s) for s in signals.values())  # every field of every signal, in table order
    return cache_key(KIND, str(path), raw, config.model_dump_json(), "\n".join(buses), facts)


def to_json(rmap: RegisterMap) -> dict[str, Any]:
    asdict = dataclasses.asdict
    return {
        "placements": [asdict(p) for p in rmap.placements.values()],
        "reserved": [asdict(r) for r in rmap.reserved],
        "diagnostics": [asdict(d) for d in rmap.diagnostics.values()],
        "quality_table": rmap.quality_table,
        "warnings": list(rmap.warnings),
        "bridge": [asdict(b) for b in rmap.bridge.values()],
        "dtc": [asdict(d) for d in rmap.dtc.values()],
    }


def from_json(data: Any) -> RegisterMap:
    """The register map stored by :func:`to_json`; TypeError/KeyError/ValueError when it is not one."""
    if not isinstance(data, dict):
        raise TypeError("not an object")
    placements = [Placement(**p) for p in data["placements"]]
    for p in placements:
        if not isinstance(p.address, int) or not isinstance(p.quality_address, int) or not isinstance(p.scale, float):
            raise ValueError(f"{p.signal}: address, quality or scale of the wrong type")
    diagnostics = [DiagBlock(**d) for d in data["diagnostics"]]
    bridge = [BridgeBlock(**b) for b in data["bridge"]]
    dtc = [DtcBlock(**d) for d in data["dtc"]]
    warnings = data["warnings"]
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        raise ValueError("warnings must be a list of text")
    if data["quality_table"] not in ("input_register", "holding_register"):
        raise ValueError("quality_table")
    return RegisterMap(
        {p.signal: p for p in placements},
        [Reserved(**r) for r in data["reserved"]],
        {d.bus: d for d in diagnostics},
        data["quality_table"],
        False,
        warnings,
        {b.unit: b for b in bridge},
        {d.bus: d for d in dtc},
    )


def cached_plan(
    signals: Mapping[str, SignalInfo], buses: Iterable[str], config: ModbusConfig, path: Path, cache: StartupCache
) -> tuple[RegisterMap, bool]:
    """What ``plan_register_map(signals, buses, config, load_map_file(path), path)`` returns, and whether
    it came from the cache (the same inputs were planned before; then ``changed`` is False)."""
    bus_names = list(buses)
    key = _key(path, signals, bus_names, config)
    if key is not None:
        data = cache.load(KIND, key)
        if data is not None:
            try:
                rmap = from_json(data)
                if list(rmap.placements) == [n for n in signals if n in rmap.placements]:
                    return rmap, True
                raise ValueError("the signals are not in table order")
            except (KeyError, TypeError, ValueError) as e:
                log.warning("modbus: the cached register map is not usable (%s); planning it again", e)
    return plan_register_map(signals, bus_names, config, load_map_file(path), path), False


def remember(
    signals: Mapping[str, SignalInfo], buses: Iterable[str], config: ModbusConfig, path: Path, cache: StartupCache,
    rmap: RegisterMap,
) -> None:
    """Store the plan under the key of the map file as it is now on disk (after it was written)."""
    key = _key(path, signals, list(buses), config)
    if key is not None:
        cache.store(KIND, key, to_json(rmap))
