"""Modbus request handling on register arrays, independent of the transport (TCP or RTU).

Reads are answered synchronously from plain lists that the subscription updates in batches;
writes are decided asynchronously by the bridge's write path before the response is built, so a
refused write reaches the client as an exception response.

The protocol layer is pymodbus's (3.16): its request classes decode every request PDU, its
response classes and ``ExceptionResponse`` build the answers (register reads excepted, see
:func:`read_response`), ``ExcCodes`` names the exception codes. Checks its decoders leave to its
datastore, or do not make (trailing bytes, a byte count that disagrees with the quantity, a coil
value other than FF00/0000), are made here and answered with exception 03.

pymodbus's server and datastore are not used: the datastore API is deprecated and in flux, its
context methods do not see who is asking (the write path needs the caller), the socket framer
waits forever on a wrong protocol id and loses sync on a zero length, and the request handler
reads the last PDU again after awaiting. The transports (tcp.py, rtu.py) and the register
arrays are the plugin's own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import pymodbus
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import WriteSingleCoilResponse
from pymodbus.pdu.register_message import WriteSingleRegisterResponse

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


# Exception codes by the bridge's refusal reasons (pymodbus's names; 0x0A is spelled UNAVIABLE there).
REFUSAL_CODES: dict[RefusalReason, ExcCodes] = {
    RefusalReason.UNKNOWN_SIGNAL: ExcCodes.ILLEGAL_ADDRESS,
    RefusalReason.NOT_WRITABLE: ExcCodes.ILLEGAL_ADDRESS,
    RefusalReason.NOT_ALLOWED: ExcCodes.ILLEGAL_ADDRESS,
    RefusalReason.WRONG_TYPE: ExcCodes.ILLEGAL_VALUE,
    RefusalReason.OUT_OF_RANGE: ExcCodes.ILLEGAL_VALUE,
    RefusalReason.RATE_LIMITED: ExcCodes.DEVICE_BUSY,
    RefusalReason.WAITING: ExcCodes.DEVICE_BUSY,
    RefusalReason.BUS_DOWN: ExcCodes.GATEWAY_NO_RESPONSE,
    RefusalReason.UNKNOWN_BUS: ExcCodes.GATEWAY_PATH_UNAVIABLE,
    RefusalReason.INVALID_FRAME: ExcCodes.DEVICE_FAILURE,
    RefusalReason.UNAUTHENTICATED: ExcCodes.ILLEGAL_ADDRESS,
    RefusalReason.UNSUPPORTED: ExcCodes.ILLEGAL_VALUE,
    RefusalReason.AUDIT_UNAVAILABLE: ExcCodes.DEVICE_FAILURE,  # 04: nothing was written
}

# The request and response classes pymodbus registers for each function code this server serves.
_SERVER_SIDE = DecodePDU(is_server=True)
_CLIENT_SIDE = DecodePDU(is_server=False)


def _pdu_classes(function: int) -> tuple[type[ModbusPDU], type[ModbusPDU]]:
    probe = bytes((0, function))  # lookupPduClass reads a framed PDU: unit id first
    request, response = _SERVER_SIDE.lookupPduClass(probe), _CLIENT_SIDE.lookupPduClass(probe)
    if request is None or response is None:
        raise RuntimeError(f"pymodbus {pymodbus.__version__} has no classes for function code {function}")
    return request, response


READ_TABLES: dict[int, Table] = {1: "coil", 2: "discrete_input", 3: "holding_register", 4: "input_register"}
WRITE_TABLES: dict[int, Table] = {5: "coil", 6: "holding_register", 15: "coil", 16: "holding_register"}
WRITE_FUNCTIONS = frozenset(WRITE_TABLES)
FUNCTIONS: dict[int, tuple[type[ModbusPDU], type[ModbusPDU]]] = {
    fc: _pdu_classes(fc) for fc in (*READ_TABLES, *WRITE_TABLES)
}
# the quantity limits of the Modbus application protocol (pymodbus checks reads, and 2000 for FC15)
MAX_WRITE_COILS = 0x7B0
MAX_WRITE_REGISTERS = 0x7B
_COIL_ON = b"\xff\x00"
_COIL_OFF = b"\x00\x00"
_DECODE_ERRORS = (ValueError, IndexError, struct.error, ModbusException)

Response = bytes | Coroutine[Any, Any, bytes]


def pdu_bytes(message: ModbusPDU) -> bytes:
    """A pymodbus message as a PDU: function code and data (what its framers put in a frame)."""
    return message.function_code.to_bytes(1, "big") + message.encode()


def exception_pdu(function: int, code: int) -> bytes:
    return pdu_bytes(ExceptionResponse(function, code))


def read_response(function: int, values: list[int], bits: bool) -> bytes:
    """The response PDU of a read (FC 1 to 4) of these register or bit values.

    Bits are encoded by pymodbus's ``ReadCoilsResponse``/``ReadDiscreteInputsResponse``. Registers,
    the hot path of every PLC poll, are packed in one step with the same bytes as pymodbus's
    ``ReadHoldingRegistersResponse.encode()``, which in 3.16.1 packs and concatenates register by
    register: about 11 µs per 125-register response against 1.4 µs here.
    tests/plugins/modbus/test_modbus_engine.py checks that the bytes are pymodbus's.
    """
    if bits:
        return pdu_bytes(FUNCTIONS[function][1](bits=[v == 1 for v in values]))
    return struct.pack(f">BB{len(values)}H", function, 2 * len(values), *values)


def decode_request(pdu: bytes) -> ModbusPDU | None:
    """The request in a PDU of a served function code, decoded by pymodbus; None when malformed.

    pymodbus's ``decode`` reads the fields it needs and ignores what follows, so the PDU must
    also have exactly the size pymodbus's RTU framer computes for it (fixed, or from the byte count).
    """
    request_class = FUNCTIONS[pdu[0]][0]
    try:
        if request_class.calculateRtuFrameSize(b"\x00" + pdu) != len(pdu) + 3:  # + unit id and CRC
            return None
        request = request_class()
        request.decode(pdu[1:])  # checks the quantity of reads (1..125 registers, 1..2000 bits)
    except _DECODE_ERRORS:
        return None
    return request


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
        if function not in FUNCTIONS:
            return self._exc(function, ExcCodes.ILLEGAL_FUNCTION)
        if self.read_only and function in WRITE_FUNCTIONS:
            return self._exc(function, ExcCodes.ILLEGAL_FUNCTION)
        request = decode_request(pdu)
        if request is None:
            return self._exc(function, ExcCodes.ILLEGAL_VALUE)
        space = self.units[unit]
        table = READ_TABLES.get(function)
        if table is not None:
            return self._read(space, function, table, request.address, request.count)
        values = self._write_values(function, pdu, request)
        if values is None:
            return self._exc(function, ExcCodes.ILLEGAL_VALUE)
        plan = self._plan_write(space, function, WRITE_TABLES[function], request.address, values)
        if isinstance(plan, bytes):
            return plan
        done: ModbusPDU
        if function == 5:
            done = WriteSingleCoilResponse(address=request.address, bits=[bool(values[0])])
        elif function == 6:
            done = WriteSingleRegisterResponse(address=request.address, registers=values)
        else:  # 15, 16: address and quantity
            done = FUNCTIONS[function][1](address=request.address, count=len(values))
        return self._write(function, plan, peer, pdu_bytes(done))

    def _exc(self, function: int, code: ExcCodes) -> bytes:
        self.exceptions += 1
        return exception_pdu(function, code)

    def _read(self, space: UnitSpace, function: int, table: str, address: int, count: int) -> bytes:
        known = space.known.get(table)
        end = address + count
        if known is None or end > len(known) or known.find(0, address, end) != -1:
            return self._exc(function, ExcCodes.ILLEGAL_ADDRESS)
        if space.bad[table].find(1, address, end) != -1:
            return self._exc(function, ExcCodes.GATEWAY_NO_RESPONSE)
        return read_response(function, space.values[table][address:end], table in BIT_TABLES)

    @staticmethod
    def _write_values(function: int, pdu: bytes, request: ModbusPDU) -> list[int] | None:
        """The values of a decoded write request; None where pymodbus's decoding is lenient.

        pymodbus 3.16 checks these only in ``datastore_update``, which needs its datastore.
        """
        if function == 5:
            # pymodbus turns any value into a bool; the standard allows only FF00 and 0000
            return [1 if request.bits[0] else 0] if pdu[3:5] in (_COIL_ON, _COIL_OFF) else None
        if function == 6:
            return list(request.registers)
        nbytes = pdu[5]  # the size check made sure the data has exactly this many bytes
        if function == 15:
            if not 1 <= request.count <= MAX_WRITE_COILS or nbytes != (request.count + 7) // 8:
                return None
            return [1 if b else 0 for b in request.bits]
        if not 1 <= request.count <= MAX_WRITE_REGISTERS or nbytes != 2 * request.count:
            return None
        return list(request.registers)

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
            return self._exc(function, ExcCodes.ILLEGAL_ADDRESS)
        while a < end:
            p = owners.get(a)
            if p is None or not p.writable:
                return self._exc(function, ExcCodes.ILLEGAL_ADDRESS)
            # a value spanning several registers is written only by a request covering all of them
            if p.address < address or p.address + p.count > end:
                return self._exc(function, ExcCodes.ILLEGAL_ADDRESS)
            words = values[p.address - address : p.address - address + p.count]
            info = self.slots[p.signal].info
            try:
                value = self._value(p, info, words)
            except EncodeError as e:
                log.info("modbus write to %s refused: %s", p.signal, e)
                return self._exc(function, ExcCodes.ILLEGAL_VALUE)
            if not isinstance(value, bool) and not info.minimum <= value <= info.maximum:
                return self._exc(function, ExcCodes.ILLEGAL_VALUE)
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

    async def _write(self, function: int, plan: list[tuple[Placement, Value]], peer: str, done: bytes) -> bytes:
        """Write the planned values through the bridge's write path; ``done`` is the normal response."""
        caller = Caller(plugin="modbus", address=peer)
        for p, value in plan:
            try:
                receipt = await asyncio.wait_for(
                    self.bridge.write(p.signal, value, caller), timeout=self.write_timeout_s
                )
            except WriteRefused as e:
                log.info("modbus write from %s to %s refused: %s", peer, p.signal, e.detail)
                return self._exc(function, REFUSAL_CODES.get(e.reason, ExcCodes.DEVICE_FAILURE))
            except TimeoutError:
                log.warning(
                    "modbus write from %s to %s timed out after %ss", peer, p.signal, self.write_timeout_s
                )
                return self._exc(function, ExcCodes.GATEWAY_NO_RESPONSE)
            except Exception:
                log.exception("modbus write from %s to %s failed", peer, p.signal)
                return self._exc(function, ExcCodes.DEVICE_FAILURE)
            self.writes += 1
            slot = self.slots[p.signal]
            # read-after-write sees the value at once; the subscription confirms it later
            self._store(slot, receipt.value, Quality.GOOD)
        return done
