"""The register map as a table for people: ``canbridge modbus-map`` as CSV or Markdown."""

from __future__ import annotations

import csv
import io

from canbridge_modbus.registers import (
    BRIDGE_DIAGNOSTICS,
    DIAGNOSTICS,
    DTC_FIELDS,
    DTC_HEADER,
    DTC_HEADER_SIZE,
    DTC_SIZE,
    TABLES,
    DtcBlock,
    RegisterMap,
)

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
        rows += _diagnostics_rows(f"{d.bus}.bus.", d.unit, d.table, d.address, d.word_order, DIAGNOSTICS)
    for b in sorted(rmap.bridge.values(), key=lambda b: b.unit):
        rows += _diagnostics_rows("bridge.", b.unit, b.table, b.address, b.word_order, BRIDGE_DIAGNOSTICS)
    for blk in rmap.dtc.values():
        rows += _dtc_rows(blk)
    return rows


def _dtc_rows(blk: DtcBlock) -> list[dict[str, str]]:
    """Source 0x00's block field by field, then one row for the blocks of 0x01..0xFD (the same layout)."""
    fields = [(offset, name, 1, text) for offset, name, text in DTC_HEADER]
    for i in range(blk.count):
        base = DTC_HEADER_SIZE + DTC_SIZE * i
        fields += [(base + offset, f"dtc{i}.{name}", 2 if name == "spn" else 1, text)
                   for offset, name, text in DTC_FIELDS]
    rows = _diagnostics_rows(f"{blk.bus}.dm1.0x00.", blk.unit, blk.table, blk.address, "ABCD", tuple(fields))
    rows.append({**rows[0], "signal": f"{blk.bus}.dm1.0x01..0xFD (the same, every {blk.stride} registers)",
                 "address": str(blk.address + blk.stride), "registers": str(blk.size - blk.stride), "encoding": ""})
    return rows


_DIAG_SCALE = {"bus_load": "100"}  # percent x 100
_DIAG_UNIT = {"bus_load": "%", "state_age": "s"}


def _diagnostics_rows(
    prefix: str, unit: int, table: str, address: int, word_order: str, fields: tuple[tuple[int, str, int, str], ...]
) -> list[dict[str, str]]:
    """The rows of one diagnostics block (a bus's or the bridge's): read-only; counters are uint32 in two."""
    return [
        {
            "signal": f"{prefix}{name}",
            "unit_id": str(unit),
            "table": table,
            "address": str(address + offset),
            "registers": str(count),
            "encoding": "uint32" if count == 2 else "uint16",
            "word_order": word_order if count == 2 else "",
            "scale": _DIAG_SCALE.get(name, "1"),
            "unit": _DIAG_UNIT.get(name, ""),
            "writable": "no",
            "quality_address": "",
        }
        for offset, name, count, _ in fields
    ]


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
