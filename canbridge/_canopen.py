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
