"""The map file: addresses pinned next to the configuration, read back, written atomically.

The first run assigns addresses and writes them to the map file; later runs keep every address in it
(planner.py puts new signals after the highest one and leaves removed signals' addresses reserved)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from canbridge import ConfigError, Problem
from canbridge_modbus.config import ENCODINGS, WORD_ORDERS, ModbusConfig
from canbridge_modbus.registers import (
    BRIDGE_DIAG_SIZE,
    DIAG_SIZE,
    DTC_SOURCES,
    MAP_VERSION,
    MAX_ADDRESS,
    TABLES,
    BridgeBlock,
    DiagBlock,
    DtcBlock,
    RegisterMap,
    Reserved,
    Table,
)

# libyaml's parser and emitter when PyYAML has them: three times faster on a 10,000-signal map,
# and the same text and data (tests/plugins/modbus/test_modbus_startup.py compares them)
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def default_map_path(config: ModbusConfig, config_path: Path | None, state_dir: Path) -> Path:
    """``map_file`` if set (relative to the configuration), else ``<config-stem>.modbus-map.yaml``
    next to the configuration, or ``<state_dir>/modbus-map.yaml`` for a built-in configuration."""
    base = config_path.parent if config_path is not None else state_dir
    if config.map_file is not None:
        return config.map_file if config.map_file.is_absolute() else base / config.map_file
    if config_path is None:
        return state_dir / "modbus-map.yaml"
    return base / f"{config_path.stem}.modbus-map.yaml"


_S = TypeVar("_S", dict[Any, Any], list[Any])


def _problem(path: Path, msg: str, where: str | None = None) -> ConfigError:
    return ConfigError([Problem(msg, str(path), None, where)])


def _section(data: dict[str, Any], key: str, kind: type[_S], path: Path, must: str) -> _S:
    """The map file's ``key`` section (empty when absent); a ConfigError saying what it ``must`` do or be."""
    raw = data.get(key) or kind()
    if not isinstance(raw, kind):
        raise _problem(path, f"'{key}' must {must}", key)
    return raw


def _int(v: Any, path: Path, where: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _problem(path, f"must be an integer {lo} to {hi}, got {v!r}", where)
    return v


def _table(v: Any, path: Path, where: str) -> Table:
    if v not in TABLES:
        raise _problem(path, f"table must be one of {', '.join(TABLES)}, got {v!r}", where)
    return v  # type: ignore[no-any-return]


@dataclass
class MapFile:
    """What a map file holds, before it is reconciled with the mapping table."""

    signals: dict[str, dict[str, Any]]
    reserved: list[Reserved]
    diagnostics: dict[str, DiagBlock]
    quality_table: Table | None = None
    bridge: dict[int, BridgeBlock] = field(default_factory=dict)
    dtc: dict[str, DtcBlock] = field(default_factory=dict)


_SIGNAL_KEYS = {"unit", "table", "address", "count", "encoding", "word_order", "scale", "quality"}


def load_map_file(path: Path) -> MapFile | None:
    """Read a map file (None when it does not exist). Raises ConfigError for a malformed one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise _problem(path, f"cannot read the register map: {e.strerror or e}") from e
    try:
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise _problem(path, f"YAML syntax: {e}") from e
    if not isinstance(data, dict):
        raise _problem(path, "a register map must be a mapping with 'signals:'")
    unknown = set(data) - {"version", "quality_table", "signals", "reserved", "diagnostics", "bridge_diagnostics",
                         "dtc"}
    if unknown:
        raise _problem(path, f"unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    version = data.get("version", MAP_VERSION)
    if version != MAP_VERSION:
        raise _problem(path, f"register map version {version!r} is not supported (expected {MAP_VERSION})")
    signals: dict[str, dict[str, Any]] = {}
    raw_signals = _section(data, "signals", dict, path, "map signal names to {unit, table, address, ...}")
    for name, entry in raw_signals.items():
        where = f"signals.{name}"
        if not isinstance(entry, dict):
            raise _problem(path, "must be a mapping with at least 'address'", where)
        bad = set(entry) - _SIGNAL_KEYS
        if bad:
            raise _problem(path, f"unknown key(s): {', '.join(sorted(map(str, bad)))}", where)
        if "address" not in entry:
            raise _problem(path, "'address' is missing", where)
        _int(entry["address"], path, where + ".address", 0, MAX_ADDRESS)
        if "unit" in entry:
            _int(entry["unit"], path, where + ".unit", 1, 247)
        if "table" in entry:
            _table(entry["table"], path, where + ".table")
        if "quality" in entry:
            _int(entry["quality"], path, where + ".quality", 0, MAX_ADDRESS)
        if "encoding" in entry and entry["encoding"] not in ENCODINGS:
            raise _problem(path, f"encoding must be one of {', '.join(ENCODINGS)}", where + ".encoding")
        if "word_order" in entry and entry["word_order"] not in WORD_ORDERS:
            raise _problem(path, f"word_order must be one of {', '.join(WORD_ORDERS)}", where + ".word_order")
        if "scale" in entry:
            s = entry["scale"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s == 0 or not math.isfinite(s):
                raise _problem(path, f"scale must be a non-zero number, got {s!r}", where + ".scale")
        signals[str(name)] = dict(entry)
    reserved: list[Reserved] = []
    raw_reserved = _section(data, "reserved", list, path, "be a list")
    for i, r in enumerate(raw_reserved):
        where = f"reserved[{i}]"
        if not isinstance(r, dict) or "address" not in r or "table" not in r:
            raise _problem(path, "needs at least 'table' and 'address'", where)
        reserved.append(
            Reserved(
                signal=str(r.get("signal", f"<reserved {i}>")),
                unit=_int(r.get("unit", 1), path, where + ".unit", 1, 247),
                table=_table(r["table"], path, where + ".table"),
                address=_int(r["address"], path, where + ".address", 0, MAX_ADDRESS),
                count=_int(r.get("count", 1), path, where + ".count", 1, DIAG_SIZE),
                quality_address=(
                    None
                    if r.get("quality") is None
                    else _int(r["quality"], path, where + ".quality", 0, MAX_ADDRESS)
                ),
            )
        )
    diagnostics: dict[str, DiagBlock] = {}
    raw_diag = _section(data, "diagnostics", dict, path, "map bus names to {unit, table, address}")
    for bus, d in raw_diag.items():
        where = f"diagnostics.{bus}"
        if not isinstance(d, dict) or "address" not in d:
            raise _problem(path, "needs at least 'address'", where)
        order = d.get("word_order", "ABCD")
        if order not in WORD_ORDERS:
            raise _problem(path, f"word_order must be one of {', '.join(WORD_ORDERS)}", where)
        diagnostics[str(bus)] = DiagBlock(
            bus=str(bus),
            unit=_int(d.get("unit", 1), path, where + ".unit", 1, 247),
            table=_table(d.get("table", "input_register"), path, where + ".table"),
            address=_int(d["address"], path, where + ".address", 0, MAX_ADDRESS - DIAG_SIZE + 1),
            word_order=order,
        )
    bridge: dict[int, BridgeBlock] = {}
    raw_bridge = _section(data, "bridge_diagnostics", dict, path, "map unit ids to {table, address}")
    for unit, d in raw_bridge.items():
        where = f"bridge_diagnostics.{unit}"
        uid = _int(unit, path, where, 1, 247)
        if not isinstance(d, dict) or "address" not in d:
            raise _problem(path, "needs at least 'address'", where)
        order = d.get("word_order", "ABCD")
        if order not in WORD_ORDERS:
            raise _problem(path, f"word_order must be one of {', '.join(WORD_ORDERS)}", where)
        bridge[uid] = BridgeBlock(
            unit=uid,
            table=_table(d.get("table", "input_register"), path, where + ".table"),
            address=_int(d["address"], path, where + ".address", 0, MAX_ADDRESS - BRIDGE_DIAG_SIZE + 1),
            word_order=order,
        )
    dtc = _dtc_blocks(data, path)
    quality_table = data.get("quality_table")
    if quality_table is not None and quality_table not in ("input_register", "holding_register"):
        raise _problem(path, "quality_table must be input_register or holding_register", "quality_table")
    return MapFile(signals, reserved, diagnostics, quality_table, bridge, dtc)


def _dtc_blocks(data: dict[str, Any], path: Path) -> dict[str, DtcBlock]:
    out: dict[str, DtcBlock] = {}
    raw = _section(data, "dtc", dict, path, "map bus names to {unit, table, address, count}")
    for bus, d in raw.items():
        where = f"dtc.{bus}"
        if not isinstance(d, dict) or "address" not in d or "count" not in d:
            raise _problem(path, "needs at least 'address' and 'count'", where)
        count = _int(d["count"], path, where + ".count", 1, 32)
        block = DtcBlock(
            bus=str(bus),
            unit=_int(d.get("unit", 1), path, where + ".unit", 1, 247),
            table=_table(d.get("table", "input_register"), path, where + ".table"),
            address=_int(d["address"], path, where + ".address", 0, MAX_ADDRESS),
            count=count,
        )
        if block.table not in ("input_register", "holding_register"):
            raise _problem(path, "table must be input_register or holding_register", where + ".table")
        if block.address + block.size > MAX_ADDRESS + 1:
            raise _problem(path, f"{DTC_SOURCES} blocks of {block.stride} registers at {block.address} run past "
                           "address 65535", where)
        out[str(bus)] = block
    return out


def _num(v: float) -> float | int:
    return int(v) if float(v).is_integer() else v


def dump_map(rmap: RegisterMap) -> str:
    """The register map as map file text."""
    signals: dict[str, Any] = {}
    for p in sorted(rmap.placements.values(), key=lambda p: (p.unit, TABLES.index(p.table), p.address)):
        signals[p.signal] = {
            "unit": p.unit,
            "table": p.table,
            "address": p.address,
            "count": p.count,
            "encoding": p.encoding,
            "word_order": p.word_order,
            "scale": _num(p.scale),
            "quality": p.quality_address,
        }
    reserved = [
        {
            "signal": r.signal,
            "unit": r.unit,
            "table": r.table,
            "address": r.address,
            "count": r.count,
            **({"quality": r.quality_address} if r.quality_address is not None else {}),
        }
        for r in rmap.reserved
    ]
    diagnostics = {
        d.bus: {"unit": d.unit, "table": d.table, "address": d.address, "word_order": d.word_order}
        for d in rmap.diagnostics.values()
    }
    bridge = {
        b.unit: {"table": b.table, "address": b.address, "word_order": b.word_order}
        for b in sorted(rmap.bridge.values(), key=lambda b: b.unit)
    }
    dtc = {
        d.bus: {"unit": d.unit, "table": d.table, "address": d.address, "count": d.count}
        for d in rmap.dtc.values()
    }
    head = (
        "# canbridge Modbus register map (0-based protocol addresses).\n"
        "# Addresses here never move: new signals are added after the highest address, removed\n"
        "# signals stay reserved. Edit by hand if you must; overlapping addresses are an error.\n"
    )
    body = yaml.dump(
        {
            "version": MAP_VERSION,
            "quality_table": rmap.quality_table,
            "signals": signals,
            "reserved": reserved,
            "diagnostics": diagnostics,
            "bridge_diagnostics": bridge,
            **({"dtc": dtc} if dtc else {}),
        },
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=None,
        width=200,
    )
    return head + body


def save_map(path: Path, rmap: RegisterMap) -> None:
    """Write the map file atomically (a crash never leaves half a map)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_map(rmap))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
