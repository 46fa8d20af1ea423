"""Planning the register map: a pure function of the mapping table, the plugin configuration and the
map file, so ``canbridge modbus-map`` prints exactly what a running bridge serves."""

from __future__ import annotations

import bisect
import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from canbridge import ConfigError, Problem, SignalInfo
from canbridge_modbus.codec import Codec, register_count
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.mapfile import MapFile
from canbridge_modbus.registers import (
    BIT_TABLES,
    BRIDGE_DIAG_SIZE,
    DIAG_SIZE,
    MAX_ADDRESS,
    BridgeBlock,
    DiagBlock,
    DtcBlock,
    Placement,
    RegisterMap,
    Reserved,
    Table,
)


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


class _Ranges:
    """The occupied ranges of one (unit, table), sorted by start: lookups are bisections, so planning
    10,000 signals stays linear-logarithmic (a scan of every range per signal took 18 s)."""

    __slots__ = ("items", "longest", "starts")

    def __init__(self) -> None:
        self.items: list[tuple[int, int, int, str]] = []  # (start, end, insertion number, label)
        self.starts: list[int] = []
        self.longest = 0  # an upper bound of end - start: how far back a range can reach

    def insert(self, item: tuple[int, int, int, str]) -> None:
        i = bisect.bisect_right(self.items, item)
        self.items.insert(i, item)
        self.starts.insert(i, item[0])
        self.longest = max(self.longest, item[1] - item[0])

    def remove(self, item: tuple[int, int, int, str]) -> None:
        i = bisect.bisect_left(self.items, item)
        del self.items[i]
        del self.starts[i]

    def first_reaching(self, address: int) -> int:
        """Index of the first range that may end after ``address`` (every earlier one ends at or before)."""
        return bisect.bisect_left(self.starts, address - self.longest + 1)


class _Space:
    """Occupied address ranges per (unit, table), for overlap checks and allocation."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[int, str], _Ranges] = {}
        self._labels: dict[str, list[tuple[_Ranges, tuple[int, int, int, str]]]] = {}
        self._seq = 0

    def overlaps(self, unit: int, table: str, start: int, count: int) -> list[str]:
        """Labels of the ranges overlapping [start, start + count), in the order they were added."""
        r = self.ranges.get((unit, table))
        if r is None:
            return []
        end = start + count
        hits = [
            it for it in r.items[r.first_reaching(start) : bisect.bisect_left(r.starts, end)]
            if it[0] < end and start < it[1]
        ]
        return [it[3] for it in sorted(hits, key=lambda it: it[2])]

    def add(self, unit: int, table: str, start: int, count: int, label: str) -> None:
        r = self.ranges.get((unit, table))
        if r is None:
            r = self.ranges[(unit, table)] = _Ranges()
        item = (start, start + count, self._seq, label)
        self._seq += 1
        r.insert(item)
        self._labels.setdefault(label, []).append((r, item))

    def release(self, label: str) -> None:
        for r, item in self._labels.pop(label, []):
            r.remove(item)

    def allocate(self, unit: int, table: str, floor: int, count: int) -> int | None:
        """The lowest address >= floor where ``count`` registers are free, or None."""
        addr = floor
        r = self.ranges.get((unit, table))
        if r is not None:
            for s, e, _, _ in r.items[r.first_reaching(floor) :]:
                if e <= addr:
                    continue
                if s >= addr + count:
                    break
                addr = e
        return addr if addr + count <= MAX_ADDRESS + 1 else None

    def highest_end(self, unit: int, table: str, floor: int, below: int | None) -> int:
        """The highest end of the ranges starting in [floor, below), or ``floor`` when there is none."""
        r = self.ranges.get((unit, table))
        if r is None:
            return floor
        lo = bisect.bisect_left(r.starts, floor)
        hi = len(r.starts) if below is None else bisect.bisect_left(r.starts, below)
        best: int | None = None
        for j in range(hi - 1, lo - 1, -1):
            s, e = r.items[j][0], r.items[j][1]
            if best is not None and s + r.longest <= best:
                break  # every range further down ends at or before best
            best = e if best is None else max(best, e)
        return floor if best is None else best


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

    # 3b. J1939 DM1 blocks pinned in the file, also of buses no longer listed (kept, never reused)
    dtc: dict[str, DtcBlock] = {}
    for bus, blk in existing.dtc.items():
        dtc[bus] = blk
        claim(blk.unit, blk.table, blk.address, blk.size, f"J1939 DM1 registers of bus {bus}")
        if bus in config.dtc.buses and blk.count != config.dtc.count:
            warnings.append(f"the DM1 registers of bus {bus} keep {blk.count} trouble codes per source as the "
                            f"register map pins them (dtc.count is {config.dtc.count}; delete the entry to re-plan)")
    for bus in config.dtc.buses:
        if bus not in bus_names:
            problems.append(Problem(f"dtc.buses names {bus!r}, which is not a configured bus", file))

    if problems:
        raise ConfigError(problems)

    highest_end = space.highest_end

    def value_limit(table: str) -> int | None:
        # values stay below the quality and diagnostics regions of their table
        if table != quality_table:
            return None
        return min(config.quality_base, config.diagnostics_base, *_dtc_base(config))

    # 4. new signals: after the highest address of their table, in mapping table order
    reserved_by_name: dict[str, list[Reserved]] = {}
    for r in reserved:
        reserved_by_name.setdefault(r.signal, []).append(r)
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
        olds = reserved_by_name.get(info.name)
        old = olds[0] if olds else None
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
            reserved_by_name[info.name].pop(0)
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

    # 6c. a J1939 DM1 block for each listed bus that has none yet, from dtc.base on
    for bus in config.dtc.buses:
        if bus in dtc:
            continue
        unit = unit_of(bus)
        size = DtcBlock(bus, unit, quality_table, 0, config.dtc.count).size
        above = _region_end(config, config.dtc.base)
        floor = highest_end(unit, quality_table, config.dtc.base, above)
        address = space.allocate(unit, quality_table, max(floor, config.dtc.base), size)
        if address is None or (above is not None and address + size > above):
            problems.append(Problem(f"no room for the {size} J1939 DM1 registers of bus {bus} on unit {unit} "
                                    "(give the bus its own unit id in unit_ids, or lower dtc.count)", file))
            continue
        space.add(unit, quality_table, address, size, f"J1939 DM1 registers of bus {bus}")
        dtc[bus] = DtcBlock(bus, unit, quality_table, address, config.dtc.count)
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
    return RegisterMap(ordered, reserved, diagnostics, quality_table, changed, warnings, bridge, dtc)


def _dtc_base(config: ModbusConfig) -> tuple[int, ...]:
    return (config.dtc.base,) if config.dtc.buses else ()


def _region_end(config: ModbusConfig, start: int) -> int | None:
    """Where the region beginning at ``start`` ends: the next base above it (quality, diagnostics, DM1)."""
    above = [b for b in (config.quality_base, config.diagnostics_base, *_dtc_base(config)) if b > start]
    return min(above) if above else None


def _above(config: ModbusConfig) -> int | None:
    # the quality region ends where the next region begins (if one lies above it)
    return _region_end(config, config.quality_base)


def _above_diag(config: ModbusConfig) -> int | None:
    return _region_end(config, config.diagnostics_base)
