"""The register map's model: tables, address limits, diagnostics blocks, and where each signal
lives (Placement), what stays reserved, and the whole map (RegisterMap)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from canbridge_modbus.codec import Codec, register_count

Table = Literal["coil", "discrete_input", "input_register", "holding_register"]
TABLES: tuple[Table, ...] = ("coil", "discrete_input", "input_register", "holding_register")
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete_input"})
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

# J1939 DM1 block of one source address: this header, then ``count`` trouble codes of DTC_SIZE each.
# Every source address 0..253 has its block at address + source * stride, heard or not.
DTC_HEADER: tuple[tuple[int, str, str], ...] = (
    (0, "status", "quality of this source's DM1: 0 good, 1 stale, 2 bad (bus down), 3 waiting (never heard)"),
    (1, "dtc_count", "active trouble codes in the DM1 (all of them, also those beyond the registers' N)"),
    (2, "mil", "malfunction indicator lamp: 0 off, 1 on, 2 reserved, 3 not available"),
    (3, "red_stop", "red stop lamp: 0 off, 1 on, 2 reserved, 3 not available"),
    (4, "amber_warning", "amber warning lamp: 0 off, 1 on, 2 reserved, 3 not available"),
    (5, "protect", "protect lamp: 0 off, 1 on, 2 reserved, 3 not available"),
    (6, "age", "seconds since the last DM1 (saturates at 65535; 65535 when never heard)"),
    (7, "messages", "DM1 messages received from this source (low 16 bits, wraps)"),
)
DTC_HEADER_SIZE = 8
DTC_FIELDS: tuple[tuple[int, str, str], ...] = (
    (0, "spn", "suspect parameter number, uint32 high word first (2 registers); 0: no code in this slot"),
    (2, "fmi", "failure mode identifier, 0 to 31"),
    (3, "occurrences", "occurrence count (bits 0-6, 127: not available) | conversion method << 7 (the wire's byte)"),
)
DTC_SIZE = 4
DTC_SOURCES = 254  # source addresses 0..253 (254 is the null address, 255 global)


@dataclass(frozen=True)
class DtcBlock:
    """The DM1 registers of one J1939 bus: a block of ``stride`` registers per source address."""

    bus: str
    unit: int
    table: Table
    address: int
    count: int  # trouble codes per source

    @property
    def stride(self) -> int:
        return DTC_HEADER_SIZE + DTC_SIZE * self.count

    @property
    def size(self) -> int:
        return DTC_SOURCES * self.stride

    def source_address(self, source: int) -> int:
        return self.address + source * self.stride


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
    dtc: dict[str, DtcBlock] = field(default_factory=dict)  # J1939 DM1 blocks by bus (pinned ones of gone buses too)

    def units(self) -> list[int]:
        ids = {p.unit for p in self.placements.values()} | {d.unit for d in self.diagnostics.values()}
        ids |= {d.unit for d in self.dtc.values()}
        return sorted(ids)
