"""DM1 traffic for the plugin tests: a J1939 bus with the test DBC, DM1 frames of one code, and a DM1
of several codes sent by BAM (TP.CM then TP.DT packets), as a peer ECU puts them on the bus."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

DBC = Path(__file__).resolve().parents[1] / "data" / "dbc" / "j1939_test.dbc"

# SPN, FMI, occurrence count: five codes, more than a small N
FIVE = [(100, 1, 1), (110, 0, 2), (190, 2, 3), (524287, 31, 4), (84, 12, 126)]


def j1939_config(plugins: dict[str, Any]) -> dict[str, Any]:
    return {"buses": [{"name": "truck", "interface": "virtual", "channel": f"dtc-{uuid.uuid4().hex[:8]}"}],
            "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["ET1"]}],
            "plugins": plugins}


def dtc(spn: int, fmi: int, oc: int, cm: int = 0) -> bytes:
    return bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) << 5) | fmi, (cm << 7) | oc])


def dm1_frame(source: int, lamps: int, codes: list[tuple[int, int, int]]) -> str:
    """A single-frame DM1 (at most one code) as a cansend string."""
    assert len(codes) <= 1
    body = bytes([lamps, 0xFF]) + (dtc(*codes[0]) if codes else bytes(4)) + bytes((0xFF, 0xFF))
    return f"18FECA{source:02X}#{body.hex().upper()}"


def dm1_bam(source: int, lamps: int, codes: list[tuple[int, int, int]]) -> list[str]:
    """A DM1 of several codes as a BAM: the announcement, then the numbered 7-byte packets."""
    payload = bytes([lamps, 0xFF]) + b"".join(dtc(*c) for c in codes)
    n = -(-len(payload) // 7)
    out = [f"1CECFF{source:02X}#20{len(payload):02X}00{n:02X}FFCAFE00"]
    for i in range(n):
        chunk = payload[i * 7:(i + 1) * 7].ljust(7, b"\xff")
        out.append(f"1CEBFF{source:02X}#{i + 1:02X}{chunk.hex().upper()}")
    return out
