"""Modbus request handling on register arrays, independent of the transport (TCP or RTU).

Reads are answered synchronously from plain lists that the subscription updates in batches;
writes are decided asynchronously by the bridge's write path before the response is built, so a
refused write reaches the client as an exception response.

pymodbus 3.16's server is not used: its datastore API is deprecated and in flux, its context
methods do not see who is asking, its socket framer waits forever on a wrong protocol id and
loses sync on a zero length, and its request handler reads the last PDU after awaiting. The
protocol itself is small; owning it keeps every malformed request and every refusal explicit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from canbridge import (
    Bridge,
    BusStatus,
    Caller,
    Quality,
    RefusalReason,
    SignalInfo,
    SignalValue,
    Value,
    WriteRefused,
)
from canbridge_modbus.codec import Codec, EncodeError, Encoder, encoder
from canbridge_modbus.regmap import BIT_TABLES, DIAG_SIZE, DIAGNOSTICS, Placement, RegisterMap, Table

log = logging.getLogger("canbridge.modbus")


class ExceptionCode(IntEnum):
    """Modbus exception codes this server answers with."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    SERVER_DEVICE_BUSY = 0x06
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_FAILED = 0x0B


REFUSAL_CODES: dict[RefusalReason, ExceptionCode] = {
    RefusalReason.UNKNOWN_SIGNAL: ExceptionCode.ILLEGAL_DATA_ADDRESS,
    RefusalReason.NOT_WRITABLE: ExceptionCode.ILLEGAL_DATA_ADDRESS,
    RefusalReason.NOT_ALLOWED: ExceptionCode.ILLEGAL_DATA_ADDRESS,
    RefusalReason.WRONG_TYPE: ExceptionCode.ILLEGAL_DATA_VALUE,
    RefusalReason.OUT_OF_RANGE: ExceptionCode.ILLEGAL_DATA_VALUE,
    RefusalReason.RATE_LIMITED: ExceptionCode.SERVER_DEVICE_BUSY,
    RefusalReason.WAITING: ExceptionCode.SERVER_DEVICE_BUSY,
    RefusalReason.BUS_DOWN: ExceptionCode.GATEWAY_TARGET_FAILED,
    RefusalReason.UNKNOWN_BUS: ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
    RefusalReason.INVALID_FRAME: ExceptionCode.SERVER_DEVICE_FAILURE,
}

READ_FUNCTIONS = {
    1: ("coil", 2000),
    2: ("discrete_input", 2000),
    3: ("holding_register", 125),
    4: ("input_register", 125),
}
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16})

Response = bytes | Coroutine[Any, Any, bytes]


def exception_pdu(function: int, code: int) -> bytes:
    return bytes(((function | 0x80) & 0xFF, code))


def pack_bits(bits: list[int]) -> bytes:
    """Coil and discrete input values, eight per byte, the first in the lowest bit."""
    out = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


_QUALITY_CODES = {q: q.code for q in Quality}


@dataclass(slots=True)
class _Slot:
    """Where one signal's value and quality go: resolved once so batch updates are list stores."""

    placement: Placement
    info: SignalInfo
    encode: Encoder
    values: list[int]
    bad: bytearray
    quality: list[int]
    address: int
    end: int
    quality_address: int
    bit: bool
    refused: bool = False  # whether bad[] is set for this signal now


class UnitSpace:
    """The four tables of one unit id: values, which addresses exist, and which are bad."""

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.values: dict[str, list[int]] = {}
        self.known: dict[str, bytearray] = {}  # 1: a signal, quality, diagnostics or reserved address
        self.bad: dict[str, bytearray] = {}  # 1: the owning signal's value must not be served
        self.owner: dict[str, dict[int, Placement]] = {}  # every address a signal covers

    def ensure(self, table: str, end: int) -> None:
        vals = self.values.setdefault(table, [])
        if len(vals) < end:
            grow = end - len(vals)
            vals.extend([0] * grow)
            self.known.setdefault(table, bytearray()).extend(bytes(grow))
            self.bad.setdefault(table, bytearray()).extend(bytes(grow))
            self.owner.setdefault(table, {})

    def mark(self, table: str, address: int, count: int) -> None:
        self.ensure(table, address + count)
        self.known[table][address : address + count] = b"\x01" * count


class ModbusEngine:
    """Answers Modbus PDUs for every unit id of one register map."""

    def __init__(
        self,
        bridge: Bridge,
        rmap: RegisterMap,
        *,
        refuse_bad: bool = True,
        read_only: bool = False,
        write_timeout_s: float = 2.0,
    ) -> None:
        self.bridge = bridge
        self.rmap = rmap
        self.refuse_bad = refuse_bad
        self.read_only = read_only
        self.write_timeout_s = write_timeout_s
        self.units: dict[int, UnitSpace] = {}
        self.slots: dict[str, _Slot] = {}
        self.requests = 0
        self.exceptions = 0
        self.writes = 0
        signals = bridge.signals
        for p in rmap.placements.values():
            space = self._unit(p.unit)
            space.mark(p.table, p.address, p.count)
            space.mark(rmap.quality_table, p.quality_address, 1)
            for a in range(p.address, p.address + p.count):
                space.owner[p.table][a] = p
        for r in rmap.reserved:
            self._unit(r.unit).mark(r.table, r.address, r.count)
            if r.quality_address is not None:
                self._unit(r.unit).mark(rmap.quality_table, r.quality_address, 1)
        for d in rmap.diagnostics.values():
            self._unit(d.unit).mark(d.table, d.address, DIAG_SIZE)
        for p in rmap.placements.values():
            space = self.units[p.unit]
            self.slots[p.signal] = slot = _Slot(
                p,
                signals[p.signal],
                encoder(p.encoding, p.word_order, p.scale),
                space.values[p.table],
                space.bad[p.table],
                space.values[rmap.quality_table],
                p.address,
                p.address + p.count,
                p.quality_address,
                p.table in BIT_TABLES,
            )
            # nothing received yet: refused (exception mode) until the first value arrives
            self._store(slot, None, Quality.WAITING)
        self._diag_codecs: dict[str, Codec] = {
            d.bus: Codec("uint32", d.word_order) for d in rmap.diagnostics.values()
        }

    def _unit(self, unit: int) -> UnitSpace:
        if unit not in self.units:
            self.units[unit] = UnitSpace(unit)
        return self.units[unit]

    # --- feeding values -------------------------------------------------------------------------

    def _store(self, slot: _Slot, value: Value | None, quality: Quality) -> None:
        # the hot path of every update: plain list stores, no awaits, no allocations beyond the words
        if value is not None:
            if slot.bit:
                slot.values[slot.address] = 1 if value else 0
            else:
                slot.values[slot.address : slot.end] = slot.encode(value)
        slot.quality[slot.quality_address] = _QUALITY_CODES[quality]
        refuse = self.refuse_bad and (value is None or quality is not Quality.GOOD)
        if refuse is not slot.refused:
            n = slot.end - slot.address
            slot.bad[slot.address : slot.end] = b"\x01" * n if refuse else bytes(n)
            slot.refused = refuse

    def apply(self, batch: list[SignalValue]) -> None:
        """Apply one batch of changed signals to the register arrays (no awaits, no copies)."""
        slots = self.slots
        for sv in batch:
            slot = slots.get(sv.name)
            if slot is not None:
                self._store(slot, sv.value, sv.quality)

    def apply_bus_status(self, status: BusStatus, now_ns: int) -> None:
        """Refresh one bus's diagnostics registers."""
        d = self.rmap.diagnostics.get(status.name)
        if d is None:
            return
        regs = self.units[d.unit].values[d.table]
        codec = self._diag_codecs[d.bus]
        fields: dict[str, int] = {
            "state": status.state.code,
            "rx_error_counter": 0xFFFF if status.rx_error_counter is None else status.rx_error_counter,
            "tx_error_counter": 0xFFFF if status.tx_error_counter is None else status.tx_error_counter,
            "bus_load": round(status.bus_load * 100),
            "rx_frames": status.rx_frames,
            "tx_frames": status.tx_frames,
            "error_frames": status.error_frames,
            "dropped_frames": status.dropped_frames,
            "decode_errors": status.decode_errors,
            "unmapped_frames": status.unmapped_frames,
            "bus_off_count": status.bus_off_count,
            "restarts": status.restarts,
            "reconnects": status.reconnects,
            "state_age": max(0, (now_ns - status.since_ns) // 1_000_000_000) if status.since_ns else 0,
        }
        for offset, name, count, _ in DIAGNOSTICS:
            v = fields[name]
            a = d.address + offset
            if count == 2:
                regs[a : a + 2] = codec.encode(v & 0xFFFF_FFFF)  # counters wrap like a PLC expects
            else:
                regs[a] = min(max(v, 0), 0xFFFF)

    # --- requests -------------------------------------------------------------------------------

    def has_unit(self, unit: int) -> bool:
        return unit in self.units

    def handle(self, unit: int, pdu: bytes, peer: str) -> Response:
        """The response PDU to a request PDU (function code and data), or a coroutine that
        produces it for writes. The unit id must be one :meth:`has_unit` accepts."""
        self.requests += 1
        function = pdu[0]
        space = self.units[unit]
        read = READ_FUNCTIONS.get(function)
        if read is not None:
            table, limit = read
            if len(pdu) != 5:
                return self._exc(function, ExceptionCode.ILLEGAL_DATA_VALUE)
            address, count = struct.unpack_from(">HH", pdu, 1)
            if not 1 <= count <= limit:
                return self._exc(function, ExceptionCode.ILLEGAL_DATA_VALUE)
            return self._read(space, function, table, address, count)
        if function in WRITE_FUNCTIONS:
            if self.read_only:
                return self._exc(function, ExceptionCode.ILLEGAL_FUNCTION)
            parsed = self._parse_write(function, pdu)
            if isinstance(parsed, bytes):
                return parsed
            table, address, values = parsed
            plan = self._plan_write(space, function, table, address, values)
            if isinstance(plan, bytes):
                return plan
            return self._write(function, pdu, plan, peer)
        return self._exc(function, ExceptionCode.ILLEGAL_FUNCTION)

    def _exc(self, function: int, code: ExceptionCode) -> bytes:
        self.exceptions += 1
        return exception_pdu(function, code)

    def _read(self, space: UnitSpace, function: int, table: str, address: int, count: int) -> bytes:
        known = space.known.get(table)
        end = address + count
        if known is None or end > len(known) or known.find(0, address, end) != -1:
            return self._exc(function, ExceptionCode.ILLEGAL_DATA_ADDRESS)
        if space.bad[table].find(1, address, end) != -1:
            return self._exc(function, ExceptionCode.GATEWAY_TARGET_FAILED)
        values = space.values[table][address:end]
        if table in BIT_TABLES:
            data = pack_bits(values)
            return bytes((function, len(data))) + data
        return struct.pack(f">BB{count}H", function, 2 * count, *values)

    @staticmethod
    def _parse_write(function: int, pdu: bytes) -> bytes | tuple[Table, int, list[int]]:
        bad = exception_pdu(function, ExceptionCode.ILLEGAL_DATA_VALUE)
        if function in (5, 6):
            if len(pdu) != 5:
                return bad
            address, value = struct.unpack_from(">HH", pdu, 1)
            if function == 5:
                if value not in (0xFF00, 0x0000):
                    return bad
                return "coil", address, [1 if value else 0]
            return "holding_register", address, [value]
        if len(pdu) < 6:
            return bad
        address, count, nbytes = struct.unpack_from(">HHB", pdu, 1)
        payload = pdu[6:]
        if function == 15:
            if not 1 <= count <= 0x7B0 or nbytes != (count + 7) // 8 or len(payload) != nbytes:
                return bad
            bits = [(payload[i >> 3] >> (i & 7)) & 1 for i in range(count)]
            return "coil", address, bits
        if not 1 <= count <= 0x7B or nbytes != 2 * count or len(payload) != nbytes:
            return bad
        return "holding_register", address, list(struct.unpack(f">{count}H", payload))

    def _plan_write(
        self, space: UnitSpace, function: int, table: str, address: int, values: list[int]
    ) -> bytes | list[tuple[Placement, Value]]:
        """Check a whole write request before anything is written; the signals and values to write."""
        count = len(values)
        owners = space.owner.get(table, {})
        plan: list[tuple[Placement, Value]] = []
        a = address
        end = address + count
        if end > 0x10000:
            return self._exc(function, ExceptionCode.ILLEGAL_DATA_ADDRESS)
        while a < end:
            p = owners.get(a)
            if p is None or not p.writable:
                return self._exc(function, ExceptionCode.ILLEGAL_DATA_ADDRESS)
            # a value spanning several registers is written only by a request covering all of them
            if p.address < address or p.address + p.count > end:
                return self._exc(function, ExceptionCode.ILLEGAL_DATA_ADDRESS)
            words = values[p.address - address : p.address - address + p.count]
            info = self.slots[p.signal].info
            try:
                value = self._value(p, info, words)
            except EncodeError as e:
                log.info("modbus write to %s refused: %s", p.signal, e)
                return self._exc(function, ExceptionCode.ILLEGAL_DATA_VALUE)
            if not isinstance(value, bool) and not info.minimum <= value <= info.maximum:
                return self._exc(function, ExceptionCode.ILLEGAL_DATA_VALUE)
            plan.append((p, value))
            a = p.address + p.count
        return plan

    @staticmethod
    def _value(p: Placement, info: SignalInfo, words: list[int]) -> Value:
        if p.table in BIT_TABLES:
            return bool(words[0])
        raw = p.codec.decode(words)
        if info.value_type is bool:
            if raw not in (0, 1):
                raise EncodeError(f"{info.name} takes 0 or 1, got {raw}")
            return bool(raw)
        if info.value_type is int:
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise EncodeError(f"{info.name} takes whole numbers, got {raw}")
                return int(raw)
            return raw
        if isinstance(raw, float) and not math.isfinite(raw):
            raise EncodeError(f"{raw} is not a finite number")
        return float(raw)

    async def _write(
        self, function: int, pdu: bytes, plan: list[tuple[Placement, Value]], peer: str
    ) -> bytes:
        caller = Caller(plugin="modbus", address=peer)
        for p, value in plan:
            try:
                receipt = await asyncio.wait_for(
                    self.bridge.write(p.signal, value, caller), timeout=self.write_timeout_s
                )
            except WriteRefused as e:
                log.info("modbus write from %s to %s refused: %s", peer, p.signal, e.detail)
                return self._exc(function, REFUSAL_CODES.get(e.reason, ExceptionCode.SERVER_DEVICE_FAILURE))
            except TimeoutError:
                log.warning(
                    "modbus write from %s to %s timed out after %ss", peer, p.signal, self.write_timeout_s
                )
                return self._exc(function, ExceptionCode.GATEWAY_TARGET_FAILED)
            except Exception:
                log.exception("modbus write from %s to %s failed", peer, p.signal)
                return self._exc(function, ExceptionCode.SERVER_DEVICE_FAILURE)
            self.writes += 1
            slot = self.slots[p.signal]
            # read-after-write sees the value at once; the subscription confirms it later
            self._store(slot, receipt.value, Quality.GOOD)
        if function in (5, 6):
            return pdu  # the echo of the request is the normal response
        return pdu[:5]
