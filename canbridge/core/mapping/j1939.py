"""SAE J1939 identifiers and raw-value conventions: PGN, source and destination address of a 29-bit id,
the key the receive path matches J1939 frames by, and the "not available" / "error" ranges of J1939-71.

A 29-bit id is priority (3 bits) | EDP, DP (2) | PDU format PF (8) | PDU specific PS (8) | source
address SA (8). PF < 240 (PDU1): PS is a destination address and not part of the PGN; PF >= 240
(PDU2): PS is the group extension, part of the PGN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canbridge._j1939 import Dm1, Dtc

PGN_REQUEST = 0xEA00
PGN_TP_CM = 0xEC00  # transport protocol, connection management (RTS, CTS, EoMA, BAM, abort)
PGN_TP_DT = 0xEB00  # transport protocol, data transfer
PGN_DM1 = 0xFECA
PGN_DM2 = 0xFECB  # previously active trouble codes: sent on request only
NULL_ADDRESS = 0xFE  # "cannot claim an address": never a configured source
GLOBAL_ADDRESS = 0xFF  # broadcast destination


def pgn_of(can_id: int) -> int:
    """The parameter group number of a 29-bit id (the destination address of PDU1 groups masked out)."""
    pf = (can_id >> 16) & 0xFF
    if pf < 240:
        return (can_id >> 8) & 0x3FF00
    return (can_id >> 8) & 0x3FFFF


def source_of(can_id: int) -> int:
    return can_id & 0xFF


def destination_of(can_id: int) -> int:
    """The destination address: PS for PDU1 groups, global (0xFF) for PDU2 groups."""
    return (can_id >> 8) & 0xFF if ((can_id >> 16) & 0xFF) < 240 else GLOBAL_ADDRESS


def priority_of(can_id: int) -> int:
    return (can_id >> 26) & 0x7


def is_pdu1(pgn: int) -> bool:
    return ((pgn >> 8) & 0xFF) < 240


def make_id(priority: int, pgn: int, source: int, destination: int = GLOBAL_ADDRESS) -> int:
    """A 29-bit id; the destination goes into PS for PDU1 groups and is ignored for PDU2 groups."""
    ps = destination if is_pdu1(pgn) else pgn & 0xFF
    return ((priority & 7) << 26) | ((pgn & 0x3FF00) << 8) | (ps << 8) | (source & 0xFF)


def match_key(can_id: int) -> int:
    """What a J1939 frame is matched by: (PGN, source address), priority and destination masked out."""
    return (pgn_of(can_id) << 8) | (can_id & 0xFF)


def with_source(can_id: int, source: int) -> int:
    return (can_id & ~0xFF) | (source & 0xFF)


# --- raw values: J1939-71 "not available" and "error indicator" ranges ---------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Unavailable:
    """What a J1939 decoder stores instead of a number: the store shows it as quality ``bad``.

    Compared by identity (the two markers below are the only instances): the decoders compare every
    value with the one stored, and a generated ``__eq__`` would be a Python call per comparison."""

    reason: str

    def __repr__(self) -> str:
        return f"<{self.reason}>"


NOT_AVAILABLE = Unavailable("J1939 not available")
ERROR_INDICATOR = Unavailable("J1939 error indicator")


def special_ranges(length: int) -> tuple[int, int] | None:
    """(first error raw value, first not-available raw value) of an unsigned J1939 parameter, or None
    for lengths without them (1-bit flags).

    Parameters of whole bytes reserve their top byte: 0xFE.. error, 0xFF.. not available (8 bits:
    0xFE, 0xFF; 16 bits: 0xFE00..0xFEFF, 0xFF00..0xFFFF; 32 bits: 0xFE000000.., 0xFF000000..). Shorter
    or odd lengths (2-bit states, 4-bit values) reserve the two top values: all ones minus one is the
    error, all ones not available.
    """
    if length < 2:
        return None
    if length % 8 == 0:
        shift = length - 8
        return 0xFE << shift, 0xFF << shift
    top = (1 << length) - 1
    return top - 1, top


def has_special_ranges(signal: Any) -> bool:
    """Whether a cantools signal follows the J1939 ranges: unsigned integers of 2 bits or more."""
    return not signal.is_signed and not signal.is_float and special_ranges(signal.length) is not None


# --- DM1 / DM2: active and previously active diagnostic trouble codes (J1939-73) --------------------

_LAMP = ("off", "on", "reserved", "not_available")
_FLASH = ("slow", "fast", "reserved", "none")


def decode_dm1(data: bytes, source: int, ts: int, messages: int = 1) -> Dm1 | None:
    """A DM1 or DM2 payload (single frame or reassembled; both have this layout): lamp states (byte 1),
    their flash (byte 2), then 4 bytes per DTC (SPN low 16 bits; SPN high 3 bits and FMI; conversion
    method and occurrence count). None if shorter than 6 bytes. "No DTC" (all zeros) and padding (all
    ones) are not codes."""
    if len(data) < 6:
        return None
    lamps, flash = data[0], data[1]
    dtcs = []
    for i in range(2, len(data) - 3, 4):
        a, b, c, d = data[i], data[i + 1], data[i + 2], data[i + 3]
        if (a | b | c | d) == 0 or (a & b & c & d) == 0xFF:
            continue
        dtcs.append(Dtc(spn=a | (b << 8) | ((c >> 5) << 16), fmi=c & 0x1F, occurrences=d & 0x7F,
                        conversion_method=d >> 7))
    return Dm1(source, _LAMP[lamps >> 6 & 3], _LAMP[lamps >> 4 & 3], _LAMP[lamps >> 2 & 3], _LAMP[lamps & 3],
               _FLASH[flash >> 6 & 3], _FLASH[flash >> 4 & 3], _FLASH[flash >> 2 & 3], _FLASH[flash & 3],
               tuple(dtcs), ts, messages)
