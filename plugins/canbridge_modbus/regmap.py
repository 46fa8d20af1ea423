"""The register map: which signal lives at which Modbus address, pinned in a map file.

The first run assigns addresses and writes them to the map file; later runs keep every address
in it, put new signals after the highest one and leave the addresses of removed signals reserved.
Everything here is a pure function of the mapping table, the plugin configuration and the map
file, so ``canbridge modbus-map`` prints exactly what a running bridge serves.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from canbridge import ConfigError, Problem, SignalInfo
from canbridge_modbus.codec import Codec, register_count
from canbridge_modbus.config import ENCODINGS, WORD_ORDERS, ModbusConfig

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
TABLES: tuple[Table, ...] = ("coil", "discrete_input", "input_register", "holding_register")
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})
FUNCTION_TABLES: dict[int, Table] = {
    1: "coil",
    5: "coil",
    15: "coil",
    2: "discrete_input",
    3: "holding_register",
    6: "holding_register",
    16: "holding_register",
    4: "input_register",
}
MAX_ADDRESS = 0xFFFF
MAP_VERSION = 1

# Bus diagnostics block: (offset, name, registers, description). Counters are uint32 and wrap.
DIAGNOSTICS: tuple[tuple[int, str, int, str], ...] = (
    (0, "state", 1, "BusState.code: 0 active, 1 warning, 2 passive, 3 bus-off, 4 down, 5 stopped, 6 start"),
    (1, "rx_error_counter", 1, "controller REC (65535 when the interface does not report it)"),
    (2, "tx_error_counter", 1, "controller TEC (65535 when the interface does not report it)"),
    (3, "bus_load", 1, "percent of the bitrate used x 100 (0 to 10000)"),
    (4, "rx_frames", 2, "frames received (uint32)"),
    (6, "tx_frames", 2, "frames sent (uint32)"),
    (8, "error_frames", 2, "error frames (uint32)"),
    (10, "dropped_frames", 2, "frames the kernel dropped (uint32)"),
    (12, "decode_errors", 2, "frames that failed to decode (uint32)"),
    (14, "unmapped_frames", 2, "frames with no mapping (uint32)"),
    (16, "bus_off_count", 1, "times the controller went bus-off"),
    (17, "restarts", 1, "controller restarts after bus-off"),
    (18, "reconnects", 1, "times the bridge reopened the interface"),
    (19, "state_age", 1, "seconds in the current state (saturates at 65535)"),
)
DIAG_SIZE = 20

# Bridge diagnostics block, one per unit id, after the bus blocks (added later, so it never moves
# a pinned bus block). Offset 0 is the alarm point: 0 while the audit log cannot be written.
BRIDGE_DIAGNOSTICS: tuple[tuple[int, str, int, str], ...] = (
    (0, "audit_available", 1, "1 while the audit log can be written; 0: every write is refused (alarm)"),
    (1, "tcp_connections", 1, "Modbus TCP clients connected now"),
    (2, "audit_failures", 2, "audit writes that failed since start (uint32)"),
    (4, "writes_accepted", 2, "writes the bridge accepted since start, every plugin (uint32)"),
    (6, "writes_refused", 2, "writes the bridge refused since start, every plugin and reason (uint32)"),
    (8, "tcp_evicted", 1, "idle Modbus TCP clients closed to admit another (saturates at 65535)"),
    (9, "tcp_refused", 1, "Modbus TCP connections refused: allow list or all places busy (saturates)"),
)
BRIDGE_DIAG_SIZE = 10


@dataclass(frozen=True)
class Placement:
    """Where one signal is served and how it is encoded."""

    signal: str
    unit: int
    table: Table
    address: int
    encoding: str
    word_order: str
    scale: float
    quality_address: int
    writable: bool = False
    phys_unit: str | None = None

    @property
    def count(self) -> int:
        return 1 if self.table in BIT_TABLES else register_count(self.encoding)

    @property
    def codec(self) -> Codec:
        return Codec(self.encoding, self.word_order, self.scale)


@dataclass(frozen=True)
class Reserved:
    """Addresses of a signal that is no longer in the mapping table: never given to another."""

    signal: str
    unit: int
    table: Table
    address: int
    count: int
    quality_address: int | None = None


@dataclass(frozen=True)
class DiagBlock:
    """The diagnostics registers of one bus."""

    bus: str
    unit: int
    table: Table
    address: int
    word_order: str = "ABCD"


@dataclass(frozen=True)
class BridgeBlock:
    """The bridge diagnostics registers (audit log alarm point, write and connection counters) of
    one unit id."""

    unit: int
    table: Table
    address: int
    word_order: str = "ABCD"


@dataclass
class RegisterMap:
    """The whole register map of one configuration."""

    placements: dict[str, Placement]
    reserved: list[Reserved]
    diagnostics: dict[str, DiagBlock]
    quality_table: Table
    changed: bool = False  # the map file must be written
    warnings: list[str] = field(default_factory=list)
    bridge: dict[int, BridgeBlock] = field(default_factory=dict)  # by unit id

    def units(self) -> list[int]:
        ids = {p.unit for p in self.placements.values()} | {d.unit for d in self.diagnostics.values()}
        return sorted(ids)


# --- the map file -----------------------------------------------------------------------------


def default_map_path(config: ModbusConfig, config_path: Path | None, state_dir: Path) -> Path:
    """``map_file`` if set (relative to the configuration), else ``<config-stem>.modbus-map.yaml``
    next to the configuration, or ``<state_dir>/modbus-map.yaml`` for a built-in configuration."""
    base = config_path.parent if config_path is not None else state_dir
    if config.map_file is not None:
        return config.map_file if config.map_file.is_absolute() else base / config.map_file
    if config_path is None:
        return state_dir / "modbus-map.yaml"
    return base / f"{config_path.stem}.modbus-map.yaml"


def _problem(path: Path, msg: str, where: str | None = None) -> ConfigError:
    return ConfigError([Problem(msg, str(path), None, where)])


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
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise _problem(path, f"YAML syntax: {e}") from e
    if not isinstance(data, dict):
        raise _problem(path, "a register map must be a mapping with 'signals:'")
    unknown = set(data) - {"version", "quality_table", "signals", "reserved", "diagnostics", "bridge_diagnostics"}
    if unknown:
        raise _problem(path, f"unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    version = data.get("version", MAP_VERSION)
    if version != MAP_VERSION:
        raise _problem(path, f"register map version {version!r} is not supported (expected {MAP_VERSION})")
    signals: dict[str, dict[str, Any]] = {}
    raw_signals = data.get("signals") or {}
    if not isinstance(raw_signals, dict):
        raise _problem(path, "'signals' must map signal names to {unit, table, address, ...}", "signals")
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
    raw_reserved = data.get("reserved") or []
    if not isinstance(raw_reserved, list):
        raise _problem(path, "'reserved' must be a list", "reserved")
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
    raw_diag = data.get("diagnostics") or {}
    if not isinstance(raw_diag, dict):
        raise _problem(path, "'diagnostics' must map bus names to {unit, table, address}", "diagnostics")
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
    raw_bridge = data.get("bridge_diagnostics") or {}
    if not isinstance(raw_bridge, dict):
        raise _problem(path, "'bridge_diagnostics' must map unit ids to {table, address}", "bridge_diagnostics")
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
    quality_table = data.get("quality_table")
    if quality_table is not None and quality_table not in ("input_register", "holding_register"):
        raise _problem(path, "quality_table must be input_register or holding_register", "quality_table")
    return MapFile(signals, reserved, diagnostics, quality_table, bridge)


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
    head = (
        "# canbridge Modbus register map (0-based protocol addresses).\n"
        "# Addresses here never move: new signals are added after the highest address, removed\n"
        "# signals stay reserved. Edit by hand if you must; overlapping addresses are an error.\n"
    )
    body = yaml.safe_dump(
        {
            "version": MAP_VERSION,
            "quality_table": rmap.quality_table,
            "signals": signals,
            "reserved": reserved,
            "diagnostics": diagnostics,
            "bridge_diagnostics": bridge,
        },
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
        with _suppress_oserror():
            os.unlink(tmp)
        raise


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return isinstance(exc, OSError)


# --- planning -----------------------------------------------------------------------------------


def auto_encoding(info: SignalInfo, scale: float = 1.0) -> str:
    """The encoding ``auto`` picks: bool for one-bit flags, the smallest integer encoding that
    holds the signal's range for integer signals, float32 otherwise (float64 for 64-bit floats and
    for scaled signals of more than 24 bits, which float32 cannot carry exactly)."""
    if info.value_type is bool:
        return "bool"
    if info.value_type is int:
        for enc in (
            ("int16", "uint16", "int32", "uint32")
            if info.minimum < 0
            else ("uint16", "int16", "uint32", "int32")
        ):
            lo, hi = Codec(enc, scale=scale).physical_limits()
            if lo <= info.minimum and info.maximum <= hi:
                return enc
        return "float64"
    if info.is_float:
        return "float64" if info.bit_length == 64 else "float32"
    # a scaled integer: float32 carries 24 bits exactly, longer raw values need float64
    return "float64" if info.bit_length > 24 else "float32"


def selected(name: str, config: ModbusConfig) -> bool:
    """Whether the configuration serves this signal (include and exclude globs)."""
    return any(fnmatch.fnmatchcase(name, g) for g in config.include) and not any(
        fnmatch.fnmatchcase(name, g) for g in config.exclude
    )


def _options(name: str, config: ModbusConfig) -> tuple[str, str, float]:
    encoding: str = config.encoding
    order: str = config.word_order
    scale = config.scale
    for pattern, opt in config.signals.items():  # later patterns win
        if fnmatch.fnmatchcase(name, pattern):
            encoding = opt.encoding or encoding
            order = opt.word_order or order
            scale = opt.scale if opt.scale is not None else scale
    return encoding, order, scale


def _table_for(info: SignalInfo, encoding: str, holding_only: bool) -> Table:
    if holding_only:
        return "holding_register"
    if encoding == "bool":
        return "coil" if info.writable else "discrete_input"
    return "holding_register" if info.writable else "input_register"


class _Space:
    """Occupied address ranges per (unit, table), for overlap checks and allocation."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[int, str], list[tuple[int, int, str]]] = {}

    def overlaps(self, unit: int, table: str, start: int, count: int) -> list[str]:
        end = start + count
        return [label for s, e, label in self.ranges.get((unit, table), []) if s < end and start < e]

    def add(self, unit: int, table: str, start: int, count: int, label: str) -> None:
        self.ranges.setdefault((unit, table), []).append((start, start + count, label))

    def release(self, label: str) -> None:
        for key, ranges in self.ranges.items():
            self.ranges[key] = [r for r in ranges if r[2] != label]

    def allocate(self, unit: int, table: str, floor: int, count: int) -> int | None:
        """The lowest address >= floor where ``count`` registers are free, or None."""
        addr = floor
        for s, e, _ in sorted(self.ranges.get((unit, table), [])):
            if e <= addr:
                continue
            if s >= addr + count:
                break
            addr = e
        return addr if addr + count <= MAX_ADDRESS + 1 else None


def plan_register_map(
    signals: Mapping[str, SignalInfo],
    buses: Iterable[str],
    config: ModbusConfig,
    existing: MapFile | None,
    map_path: Path,
) -> RegisterMap:
    """Reconcile the mapping table with the map file: keep every pinned address, assign new
    signals after the highest address of their table, reserve the addresses of removed signals.

    Raises ConfigError naming both signals when two entries overlap, or a signal whose range does
    not fit its encoding."""
    existing = existing or MapFile({}, [], {})
    wanted: Table = "holding_register" if config.holding_only else "input_register"
    # the quality registers stay in the table the map pins, like every other address
    quality_table: Table = existing.quality_table or wanted
    space = _Space()
    problems: list[Problem] = []
    warnings: list[str] = []
    placements: dict[str, Placement] = {}
    changed = existing.quality_table is None
    file = str(map_path)
    if existing.quality_table is not None and existing.quality_table != wanted:
        warnings.append(
            f"the quality registers stay in {existing.quality_table} as the register map pins them "
            "(holding_only changed; delete the map file to re-assign everything)"
        )
    served = [info for name, info in signals.items() if selected(name, config)]
    bus_names = list(buses)

    def unit_of(bus: str) -> int:
        return config.unit_ids.get(bus, config.unit_id)

    def claim(unit: int, table: str, start: int, count: int, label: str) -> None:
        if start + count > MAX_ADDRESS + 1:
            problems.append(Problem(f"{label}: {count} registers at {start} run past address 65535", file))
            return
        clash = space.overlaps(unit, table, start, count)
        if clash:
            problems.append(
                Problem(
                    f"{label} and {clash[0]} overlap (unit {unit}, {table} {start}"
                    + (f" to {start + count - 1}" if count > 1 else "")
                    + ")",
                    file,
                )
            )
        space.add(unit, table, start, count, label)

    # 1. pinned signals, exactly as the file says
    for info in served:
        entry = existing.signals.get(info.name)
        if entry is None:
            continue
        cfg_encoding, cfg_order, cfg_scale = _options(info.name, config)
        encoding = entry.get("encoding") or (
            auto_encoding(info, cfg_scale) if cfg_encoding == "auto" else cfg_encoding
        )
        table: Table = entry.get("table") or _table_for(info, encoding, config.holding_only)
        unit = entry.get("unit", unit_of(info.bus))
        if unit != unit_of(info.bus):
            warnings.append(
                f"{info.name} stays on unit {unit} as the register map pins it "
                f"(the configuration now says {unit_of(info.bus)})"
            )
        if table in BIT_TABLES and encoding != "bool":
            problems.append(Problem(f"{info.name}: table {table} holds one-bit signals only", file))
            continue
        if encoding == "bool" and info.value_type is not bool:
            problems.append(Problem(f"{info.name}: encoding bool is for one-bit signals", file))
            continue
        if config.holding_only and table != "holding_register":
            warnings.append(
                f"{info.name} stays in {table} as the register map pins it; holding_only applies to "
                "new signals (delete its entry from the map file to move it)"
            )
        if info.writable and table in ("input_register", "discrete_input"):
            warnings.append(f"{info.name} is writable but pinned in {table}: clients cannot write it")
        p = Placement(
            signal=info.name,
            unit=unit,
            table=table,
            address=entry["address"],
            encoding=encoding,
            word_order=entry.get("word_order", cfg_order),
            scale=float(entry.get("scale", cfg_scale)),
            quality_address=entry.get("quality", -1),
            writable=info.writable,
            phys_unit=info.unit,
        )
        if "count" in entry and entry["count"] != p.count:
            problems.append(
                Problem(f"{info.name}: count {entry['count']} does not match {encoding} ({p.count})", file)
            )
        if any(k not in entry for k in ("unit", "table", "encoding", "word_order", "scale", "quality")):
            changed = True  # a hand-written entry: write back what was filled in
        placements[info.name] = p
        claim(p.unit, p.table, p.address, p.count, info.name)
        if p.quality_address >= 0:
            claim(p.unit, quality_table, p.quality_address, 1, f"{info.name} (quality)")

    # 2. reserved addresses: old ones, plus signals that left the table
    # (a signal that came back keeps its reservation until step 4 gives it its old place again)
    reserved: list[Reserved] = list(existing.reserved)
    for name, entry in existing.signals.items():
        if name in placements:
            continue
        enc = entry.get("encoding", "uint16")
        table = entry.get("table", "input_register")
        reserved.append(
            Reserved(
                signal=name,
                unit=entry.get("unit", config.unit_id),
                table=table,
                address=entry["address"],
                count=1 if table in BIT_TABLES else register_count(enc),
                quality_address=entry.get("quality"),
            )
        )
        changed = True
    for r in reserved:
        claim(r.unit, r.table, r.address, r.count, f"{r.signal} (reserved)")
        if r.quality_address is not None:
            claim(r.unit, quality_table, r.quality_address, 1, f"{r.signal} (reserved quality)")

    # 3. diagnostics blocks
    diagnostics: dict[str, DiagBlock] = {}
    for bus in bus_names:
        d = existing.diagnostics.get(bus)
        if d is not None:
            diagnostics[bus] = d
            claim(d.unit, d.table, d.address, DIAG_SIZE, f"diagnostics of bus {bus}")
    for bus, d in existing.diagnostics.items():
        if bus not in diagnostics:  # a removed bus keeps its block reserved
            reserved.append(Reserved(f"diagnostics of bus {bus}", d.unit, d.table, d.address, DIAG_SIZE))
            claim(d.unit, d.table, d.address, DIAG_SIZE, f"diagnostics of bus {bus} (reserved)")
            changed = True
    bus_units = {unit_of(bus) for bus in bus_names} | {d.unit for d in diagnostics.values()}
    bridge: dict[int, BridgeBlock] = {}
    for unit, b in existing.bridge.items():
        if unit in bus_units:
            bridge[unit] = b
            claim(b.unit, b.table, b.address, BRIDGE_DIAG_SIZE, f"bridge diagnostics (unit {unit})")
        else:  # a unit id no bus uses any more keeps its block reserved
            label = f"bridge diagnostics (unit {unit})"
            reserved.append(Reserved(label, b.unit, b.table, b.address, BRIDGE_DIAG_SIZE))
            claim(b.unit, b.table, b.address, BRIDGE_DIAG_SIZE, f"{label} (reserved)")
            changed = True

    if problems:
        raise ConfigError(problems)

    def highest_end(unit: int, table: str, floor: int, below: int | None) -> int:
        ranges = space.ranges.get((unit, table), [])
        ends = [e for s, e, _ in ranges if s >= floor and (below is None or s < below)]
        return max(ends, default=floor)

    def value_limit(table: str) -> int | None:
        # values stay below the quality and diagnostics regions of their table
        if table != quality_table:
            return None
        return min(config.quality_base, config.diagnostics_base)

    # 4. new signals: after the highest address of their table, in mapping table order
    for info in served:
        if info.name in placements:
            continue
        cfg_encoding, order, scale = _options(info.name, config)
        encoding = auto_encoding(info, scale) if cfg_encoding == "auto" else cfg_encoding
        if encoding == "bool" and info.value_type is not bool:
            problems.append(
                Problem(f"{info.name}: encoding bool is for one-bit signals; choose another", file)
            )
            continue
        old = next((r for r in reserved if r.signal == info.name), None)
        table = _table_for(info, encoding, config.holding_only)
        unit = unit_of(info.bus)
        count = 1 if table in BIT_TABLES else register_count(encoding)
        quality = -1
        if old is not None and old.table == table and old.count == count:
            address: int | None = old.address  # a returning signal gets its old place back
            space.release(f"{old.signal} (reserved)")
            if old.quality_address is not None:
                space.release(f"{old.signal} (reserved quality)")
                space.add(old.unit, quality_table, old.quality_address, 1, f"{info.name} (quality)")
                quality = old.quality_address
            reserved.remove(old)
            unit = old.unit
        else:
            limit = value_limit(table)
            floor = highest_end(unit, table, 0, limit)
            address = space.allocate(unit, table, floor, count)
            if address is None or (limit is not None and address + count > limit):
                problems.append(Problem(f"{info.name}: no free {table} addresses left on unit {unit}", file))
                continue
        assert address is not None
        space.add(unit, table, address, count, info.name)
        placements[info.name] = Placement(
            info.name, unit, table, address, encoding, order, float(scale), quality, info.writable, info.unit
        )
        changed = True

    # 5. quality registers for signals that have none yet
    for name, p in list(placements.items()):
        if p.quality_address >= 0:
            continue
        floor = highest_end(p.unit, quality_table, config.quality_base, _above(config))
        q = space.allocate(p.unit, quality_table, max(floor, config.quality_base), 1)
        if q is None:
            problems.append(Problem(f"{name}: no free quality register left on unit {p.unit}", file))
            continue
        space.add(p.unit, quality_table, q, 1, f"{name} (quality)")
        placements[name] = replace(p, quality_address=q)
        changed = True

    # 6. diagnostics blocks for new buses
    for bus in bus_names:
        if bus in diagnostics:
            continue
        unit = unit_of(bus)
        floor = highest_end(unit, quality_table, config.diagnostics_base, _above_diag(config))
        address = space.allocate(unit, quality_table, max(floor, config.diagnostics_base), DIAG_SIZE)
        if address is None:
            problems.append(Problem(f"no room for the diagnostics registers of bus {bus}", file))
            continue
        space.add(unit, quality_table, address, DIAG_SIZE, f"diagnostics of bus {bus}")
        diagnostics[bus] = DiagBlock(bus, unit, quality_table, address, config.word_order)
        changed = True

    # 6b. a bridge diagnostics block for each unit id that has none yet, after the bus blocks
    for unit in sorted({d.unit for d in diagnostics.values()}):
        if unit in bridge:
            continue
        floor = highest_end(unit, quality_table, config.diagnostics_base, _above_diag(config))
        address = space.allocate(unit, quality_table, max(floor, config.diagnostics_base), BRIDGE_DIAG_SIZE)
        if address is None:
            problems.append(Problem(f"no room for the bridge diagnostics registers of unit {unit}", file))
            continue
        space.add(unit, quality_table, address, BRIDGE_DIAG_SIZE, f"bridge diagnostics (unit {unit})")
        bridge[unit] = BridgeBlock(unit, quality_table, address, config.word_order)
        changed = True

    # 7. signals whose range cannot be carried by their encoding
    for p in placements.values():
        info = signals[p.signal]
        if p.encoding in ("bool", "float32", "float64"):
            continue
        lo, hi = p.codec.physical_limits()
        if info.minimum < lo or info.maximum > hi:
            problems.append(
                Problem(
                    f"{p.signal}: range {info.minimum:g} to {info.maximum:g} does not fit {p.encoding} "
                    f"with scale {p.scale:g} ({lo:g} to {hi:g}); choose a wider encoding or a smaller scale",
                    file,
                )
            )
    if problems:
        raise ConfigError(problems)
    ordered = {n: placements[n] for n in signals if n in placements}
    return RegisterMap(ordered, reserved, diagnostics, quality_table, changed, warnings, bridge)


def _above(config: ModbusConfig) -> int | None:
    # the quality region ends where the diagnostics region begins (if that lies above it)
    return config.diagnostics_base if config.diagnostics_base > config.quality_base else None


def _above_diag(config: ModbusConfig) -> int | None:
    return config.quality_base if config.quality_base > config.diagnostics_base else None


# --- printing -------------------------------------------------------------------------------------

COLUMNS = (
    "signal",
    "unit_id",
    "table",
    "address",
    "registers",
    "encoding",
    "word_order",
    "scale",
    "unit",
    "writable",
    "quality_address",
)


def map_rows(rmap: RegisterMap) -> list[dict[str, str]]:
    """One row per signal, then one per bus diagnostics field, for CSV and Markdown."""
    rows: list[dict[str, str]] = []
    for p in sorted(rmap.placements.values(), key=lambda p: (p.unit, TABLES.index(p.table), p.address)):
        rows.append(
            {
                "signal": p.signal,
                "unit_id": str(p.unit),
                "table": p.table,
                "address": str(p.address),
                "registers": str(p.count),
                "encoding": p.encoding,
                "word_order": ""
                if p.encoding == "bool" or (p.count == 1 and p.word_order == "ABCD")
                else p.word_order,
                "scale": f"{p.scale:g}",
                "unit": p.phys_unit or "",
                "writable": "yes" if p.writable and p.table in ("coil", "holding_register") else "no",
                "quality_address": str(p.quality_address),
            }
        )
    for d in rmap.diagnostics.values():
        for offset, name, count, _ in DIAGNOSTICS:
            rows.append(
                {
                    "signal": f"{d.bus}.bus.{name}",
                    "unit_id": str(d.unit),
                    "table": d.table,
                    "address": str(d.address + offset),
                    "registers": str(count),
                    "encoding": "uint32" if count == 2 else "uint16",
                    "word_order": d.word_order if count == 2 else "",
                    "scale": "100" if name == "bus_load" else "1",
                    "unit": "%" if name == "bus_load" else ("s" if name == "state_age" else ""),
                    "writable": "no",
                    "quality_address": "",
                }
            )
    for b in sorted(rmap.bridge.values(), key=lambda b: b.unit):
        for offset, name, count, _ in BRIDGE_DIAGNOSTICS:
            rows.append(
                {
                    "signal": f"bridge.{name}",
                    "unit_id": str(b.unit),
                    "table": b.table,
                    "address": str(b.address + offset),
                    "registers": str(count),
                    "encoding": "uint32" if count == 2 else "uint16",
                    "word_order": b.word_order if count == 2 else "",
                    "scale": "1",
                    "unit": "",
                    "writable": "no",
                    "quality_address": "",
                }
            )
    return rows


def render_csv(rmap: RegisterMap) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(map_rows(rmap))
    return out.getvalue()


def render_markdown(rmap: RegisterMap) -> str:
    rows = map_rows(rmap)
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(r[c].replace("|", "\\|") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
