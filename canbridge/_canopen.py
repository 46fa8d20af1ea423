"""CANopen node state as plugins see it: the NMT state, heartbeat counters and the last emergency (EMCY)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Emcy:
    """One CANopen emergency message (CiA 301: COB-ID 0x80 + node id, 8 bytes)."""

    code: int  # emergency error code, 16 bits (0x0000: error reset / no error)
    error_class: str  # CiA 301 class of the code, e.g. "temperature / device"
    error_register: int  # the error register (object 0x1001)
    register_bits: tuple[str, ...]  # the register's set bits by name: "generic", "current", ...
    manufacturer: bytes  # the 5 manufacturer-specific bytes
    timestamp_ns: int  # receive time of the frame


@dataclass(frozen=True, slots=True)
class CanopenNodeStatus:
    """A CANopen node of a bus: its NMT state from the heartbeat, counters, and its last EMCY."""

    node_id: int
    nmt_state: str | None  # boot_up, stopped, operational, pre_operational, or "0x.." for another value
    heartbeats: int
    boot_ups: int
    lost: bool  # no heartbeat within the consumer time: the node's signals are bad
    emcy_count: int
    last_emcy: Emcy | None
    sdo_transfers: int = 0  # SDO uploads and downloads begun with the node (reads, writes, PDO layouts)
    sdo_aborts: int = 0  # transfers the node aborted
    sdo_timeouts: int = 0  # transfers the node did not answer within sdo_timeout_ms (the bridge aborted them)


# CiA 301 SDO abort codes (table 22) with their meaning; a code not listed is shown as its number only.
SDO_ABORT_CODES: dict[int, str] = {
    0x05030000: "toggle bit not alternated",
    0x05040000: "SDO protocol timed out",
    0x05040001: "client/server command specifier not valid or unknown",
    0x05040002: "invalid block size",
    0x05040003: "invalid sequence number",
    0x05040004: "CRC error",
    0x05040005: "out of memory",
    0x06010000: "unsupported access to an object",
    0x06010001: "attempt to read a write only object",
    0x06010002: "attempt to write a read only object",
    0x06020000: "object does not exist in the object dictionary",
    0x06040041: "object cannot be mapped to the PDO",
    0x06040042: "the number and length of the objects to be mapped would exceed the PDO length",
    0x06040043: "general parameter incompatibility",
    0x06040047: "general internal incompatibility in the device",
    0x06060000: "access failed due to a hardware error",
    0x06070010: "data type does not match, length of service parameter does not match",
    0x06070012: "data type does not match, length of service parameter too high",
    0x06070013: "data type does not match, length of service parameter too low",
    0x06090011: "sub-index does not exist",
    0x06090030: "value range of parameter exceeded",
    0x06090031: "value of parameter written too high",
    0x06090032: "value of parameter written too low",
    0x06090036: "maximum value is less than minimum value",
    0x060A0023: "resource not available: SDO connection",
    0x08000000: "general error",
    0x08000020: "data cannot be transferred or stored to the application",
    0x08000021: "data cannot be transferred or stored to the application because of local control",
    0x08000022: "data cannot be transferred or stored to the application because of the present device state",
    0x08000023: "object dictionary dynamic generation fails or no object dictionary is present",
    0x08000024: "no data available",
}


def sdo_abort_text(code: int) -> str:
    """``SDO abort 0x06090030 (value range of parameter exceeded)``: the code and its CiA 301 meaning."""
    meaning = SDO_ABORT_CODES.get(code)
    return f"SDO abort 0x{code:08X}" + (f" ({meaning})" if meaning else "")
