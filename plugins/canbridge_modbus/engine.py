"""Modbus request handling on register arrays, independent of the transport (TCP or RTU).

Reads are answered synchronously from plain lists that the subscription updates in batches, except
a read that covers a signal the device answers on demand (``SignalInfo.on_demand``, a CANopen object
by SDO): its response is a coroutine, like a write's, that awaits ``Bridge.refresh`` of those signals
(the cache answers at once while fresh) before the registers are answered, so the client waits for the
upload, bounded by the node's SDO timeout and ``write_timeout_s``. Writes are decided asynchronously
by the bridge's write path before the response is built, so a refused write reaches the client as an
exception response.

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
import struct
from collections.abc import Callable, Coroutine
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
    BridgeStats,
    BusStatus,
    Caller,
    Quality,
    RefusalReason,
    SignalInfo,
    SignalValue,
    Value,
    WriteReceipt,
    WriteRefused,
)
from canbridge_modbus.codec import Codec, Encoder, encoder
from canbridge_modbus.dtc import DtcRegisters
from canbridge_modbus.registers import (
    BIT_TABLES,
    BRIDGE_DIAG_SIZE,
    BRIDGE_DIAGNOSTICS,
    DIAG_SIZE,
    DIAGNOSTICS,
    Placement,
    RegisterMap,
    Table,
)

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
    RefusalReason.NO_ADDRESS: ExcCodes.GATEWAY_NO_RESPONSE,
    RefusalReason.UNKNOWN_BUS: ExcCodes.GATEWAY_PATH_UNAVIABLE,
    RefusalReason.INVALID_FRAME: ExcCodes.DEVICE_FAILURE,
    RefusalReason.UNAUTHENTICATED: ExcCodes.ILLEGAL_ADDRESS,
    RefusalReason.UNSUPPORTED: ExcCodes.ILLEGAL_VALUE,
    RefusalReason.AUDIT_UNAVAILABLE: ExcCodes.DEVICE_FAILURE,  # 04: nothing was written
    RefusalReason.DEVICE_REFUSED: ExcCodes.DEVICE_FAILURE,  # 04: the CANopen device aborted the SDO write
    RefusalReason.DEVICE_TIMEOUT: ExcCodes.GATEWAY_NO_RESPONSE,  # 0B: the target device did not answer
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
# write function codes pymodbus knows that this server does not serve (refused and audited)
UNSERVED_WRITES = {22: "FC 22 (mask write register)", 23: "FC 23 (read/write multiple registers)"}
MAX_AUDITED_PDU = 64  # bytes of a malformed write request kept in its audit record
_COIL_ON = b"\xff\x00"
_COIL_OFF = b"\x00\x00"
_DECODE_ERRORS = (ValueError, IndexError, struct.error, ModbusException)
MAX_READ_REGISTERS = 125  # pymodbus's ReadHoldingRegistersRequest.MAX_COUNT (FC 3 and 4)
_ADDRESS_COUNT = struct.Struct(">HH").unpack_from
# register tables keep a byte image for reads, refreshed lazily in blocks of 2**BLOCK_BITS registers:
# a store marks its block stale (one byte store), the next read of the block packs it once for all
BLOCK_BITS = 5
BLOCK = 1 << BLOCK_BITS
_PACK_BLOCK = struct.Struct(f">{BLOCK}H").pack

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
    stale: bytearray | None  # the register table's stale blocks (None for bit tables)
    quality_stale: bytearray | None
    refused: bool = False  # whether bad[] is set for this signal now


class UnitSpace:
    """The four tables of one unit id: values, which addresses exist, and which are bad."""

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.values: dict[str, list[int]] = {}
        # register tables also as the bytes a read answers with (two per register, big-endian); a
        # block whose ``stale`` byte is set is packed from ``values`` by the next read that covers it
        self.images: dict[str, bytearray] = {}
        self.stale: dict[str, bytearray] = {}
        self.known: dict[str, bytearray] = {}  # 1: a signal, quality, diagnostics or reserved address
        self.bad: dict[str, bytearray] = {}  # 1: the owning signal's value must not be served
        self.demand: dict[str, bytearray] = {}  # 1: the owning signal is read from the device on demand
        self.owner: dict[str, dict[int, Placement]] = {}  # every address a signal covers
        # what the other known addresses hold: (kind, name), e.g. ("quality", signal)
        self.label: dict[str, dict[int, tuple[str, str]]] = {}

    def ensure(self, table: str, end: int) -> None:
        vals = self.values.setdefault(table, [])
        if len(vals) < end:
            grow = end - len(vals)
            vals.extend([0] * grow)
            if table not in BIT_TABLES:
                self.images.setdefault(table, bytearray()).extend(bytes(2 * grow))
                stale = self.stale.setdefault(table, bytearray())
                stale.extend(b"\x01" * (((end + BLOCK - 1) >> BLOCK_BITS) - len(stale)))
            self.known.setdefault(table, bytearray()).extend(bytes(grow))
            self.bad.setdefault(table, bytearray()).extend(bytes(grow))
            self.demand.setdefault(table, bytearray()).extend(bytes(grow))
            self.owner.setdefault(table, {})

    def touched(self, table: str, address: int, count: int) -> None:
        """``values[address:address + count]`` changed (a bulk store): their blocks are stale."""
        stale = self.stale.get(table)
        if stale is not None and count > 0:
            first, last = address >> BLOCK_BITS, (address + count - 1) >> BLOCK_BITS
            stale[first : last + 1] = b"\x01" * (last - first + 1)

    def image(self, table: str, address: int, end: int) -> bytearray:
        """The bytes of registers ``address`` to ``end - 1`` (which exist), packing stale blocks first."""
        stale = self.stale[table]
        image = self.images[table]
        first, last = address >> BLOCK_BITS, ((end - 1) >> BLOCK_BITS) + 1
        b = stale.find(1, first, last)
        if b != -1:
            values = self.values[table]
            while b != -1:
                lo = b << BLOCK_BITS
                hi = lo + BLOCK
                if hi <= len(values):
                    image[2 * lo : 2 * hi] = _PACK_BLOCK(*values[lo:hi])
                else:  # the table's last, partial block
                    image[2 * lo : 2 * len(values)] = struct.pack(f">{len(values) - lo}H", *values[lo:])
                stale[b] = 0
                b = stale.find(1, b + 1, last)
        return image[2 * address : 2 * end]

    def mark(self, table: str, address: int, count: int, label: tuple[str, str] | None = None) -> None:
        self.ensure(table, address + count)
        self.known[table][address : address + count] = b"\x01" * count
        if label is not None:
            labels = self.label.setdefault(table, {})
            for a in range(address, address + count):
                labels[a] = label


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
        self.refreshes = 0  # reads that waited for on-demand signals
        signals = bridge.signals
        self.on_demand = False  # any signal of the map read from the device on demand
        for p in rmap.placements.values():
            space = self._unit(p.unit)
            space.mark(p.table, p.address, p.count)
            space.mark(rmap.quality_table, p.quality_address, 1, ("quality", p.signal))
            for a in range(p.address, p.address + p.count):
                space.owner[p.table][a] = p
            info = signals.get(p.signal)
            if info is not None and info.on_demand:
                space.demand[p.table][p.address : p.address + p.count] = b"\x01" * p.count
                self.on_demand = True
        for r in rmap.reserved:
            self._unit(r.unit).mark(r.table, r.address, r.count, ("reserved", r.signal))
            if r.quality_address is not None:
                self._unit(r.unit).mark(rmap.quality_table, r.quality_address, 1, ("reserved", r.signal))
        for d in rmap.diagnostics.values():
            self._unit(d.unit).mark(d.table, d.address, DIAG_SIZE, ("diagnostics", f"bus {d.bus}"))
        for b in rmap.bridge.values():
            self._unit(b.unit).mark(b.table, b.address, BRIDGE_DIAG_SIZE, ("diagnostics", "the bridge"))
        self.dtc: dict[str, DtcRegisters] = {}
        for blk in rmap.dtc.values():
            space = self._unit(blk.unit)
            space.mark(blk.table, blk.address, blk.size, ("J1939 DM1", f"bus {blk.bus}"))
            self.dtc[blk.bus] = DtcRegisters(blk, space.values[blk.table])
            self.dtc[blk.bus].waiting()
            space.touched(blk.table, blk.address, blk.size)
        for p in rmap.placements.values():
            space = self.units[p.unit]
            bit = p.table in BIT_TABLES
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
                bit,
                None if bit else space.stale[p.table],
                space.stale.get(rmap.quality_table),
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
                stale = slot.stale
                stale[slot.address >> BLOCK_BITS] = 1  # type: ignore[index]
                stale[(slot.end - 1) >> BLOCK_BITS] = 1  # type: ignore[index]  # a value across two blocks
        slot.quality[slot.quality_address] = _QUALITY_CODES[quality]
        if slot.quality_stale is not None:
            slot.quality_stale[slot.quality_address >> BLOCK_BITS] = 1
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
        self.units[d.unit].touched(d.table, d.address, DIAG_SIZE)

    def apply_dm1(self, status: BusStatus, now_ns: int, stale_after_s: float) -> None:
        """Refresh one J1939 bus's DM1 registers (every source heard)."""
        regs = self.dtc.get(status.name)
        if regs is None:
            return
        regs.apply(status, now_ns, stale_after_s)
        blk = regs.block
        self.units[blk.unit].touched(blk.table, blk.address, blk.size)

    def apply_bridge_stats(self, stats: BridgeStats, connections: int, evicted: int, refused: int) -> None:
        """Refresh the bridge diagnostics registers of every unit id (the audit log alarm point)."""
        fields: dict[str, int] = {
            "audit_available": 1 if stats.audit_available else 0,
            "tcp_connections": connections,
            "audit_failures": stats.audit_failures,
            "writes_accepted": stats.writes_accepted,
            "writes_refused": sum(stats.writes_refused.values()),
            "tcp_evicted": evicted,
            "tcp_refused": refused,
        }
        for b in self.rmap.bridge.values():
            regs = self.units[b.unit].values[b.table]
            codec = Codec("uint32", b.word_order)
            for offset, name, count, _ in BRIDGE_DIAGNOSTICS:
                v = fields[name]
                a = b.address + offset
                if count == 2:
                    regs[a : a + 2] = codec.encode(v & 0xFFFF_FFFF)
                else:
                    regs[a] = min(max(v, 0), 0xFFFF)
            self.units[b.unit].touched(b.table, b.address, BRIDGE_DIAG_SIZE)

    # --- requests -------------------------------------------------------------------------------

    def has_unit(self, unit: int) -> bool:
        return unit in self.units

    def handle(self, unit: int, pdu: bytes, peer: str) -> Response:
        """The response PDU to a request PDU (function code and data), or a coroutine that
        produces it for writes. The unit id must be one :meth:`has_unit` accepts.

        Every refused write attempt is audited: the write path judges values (type, finiteness,
        limits) and audits its refusals; what is refused here, before a value exists (read_only, a
        malformed write request, part of a multi-register value, an address no writable signal
        has), is audited through ``bridge.refuse``."""
        self.requests += 1
        function = pdu[0]
        if function == 3 or function == 4:  # register reads, every PLC's poll: no pymodbus objects
            if len(pdu) != 5:  # what decode_request's size check refuses
                return self._exc(function, ExcCodes.ILLEGAL_VALUE)
            address, count = _ADDRESS_COUNT(pdu, 1)
            if not 1 <= count <= MAX_READ_REGISTERS:  # what pymodbus's decode refuses
                return self._exc(function, ExcCodes.ILLEGAL_VALUE)
            if self.on_demand:
                names = self._demanded(self.units[unit], READ_TABLES[function], address, address + count)
                if names:
                    return self._refresh_then(names, function, lambda: self._read_registers(
                        self.units[unit], function, address, count))
            return self._read_registers(self.units[unit], function, address, count)
        if function not in FUNCTIONS:
            if function in UNSERVED_WRITES:
                self._refuse_request(unit, function, pdu, peer, RefusalReason.UNSUPPORTED,
                                     f"{UNSERVED_WRITES[function]} is not served")
            return self._exc(function, ExcCodes.ILLEGAL_FUNCTION)
        write = function in WRITE_FUNCTIONS
        request = decode_request(pdu)
        values = None if request is None or not write else self._write_values(function, pdu, request)
        if write and self.read_only:
            return self._refuse_read_only(unit, function, pdu, peer, request, values)
        if request is None:
            if write:
                self._refuse_request(unit, function, pdu, peer, RefusalReason.UNSUPPORTED,
                                     f"malformed FC {function} request")
            return self._exc(function, ExcCodes.ILLEGAL_VALUE)
        space = self.units[unit]
        table = READ_TABLES.get(function)
        if table is not None:
            if self.on_demand:
                names = self._demanded(space, table, request.address, request.address + request.count)
                if names:
                    where = table
                    return self._refresh_then(names, function, lambda: self._read(
                        space, function, where, request.address, request.count))
            return self._read(space, function, table, request.address, request.count)
        if values is None:
            self._refuse_request(unit, function, pdu, peer, RefusalReason.UNSUPPORTED,
                                 _malformed_why(function, pdu, request))
            return self._exc(function, ExcCodes.ILLEGAL_VALUE)
        table = WRITE_TABLES[function]
        items, problems = self._plan_write(space, table, request.address, values)
        caller = Caller(plugin="modbus", address=peer)
        if problems:
            first = problems[0]
            for pr in problems:
                self.bridge.refuse(pr.target, pr.value, caller, pr.reason, pr.detail)
            for it in items:  # asked for, not sent: audited like write_many's other items
                self.bridge.refuse(it.signal, it.value, caller, first.reason, f"not sent: {first.detail}")
            log.debug("modbus write from %s refused: %s", peer, first.detail)
            return self._exc(function, first.code)
        done: ModbusPDU
        if function == 5:
            done = WriteSingleCoilResponse(address=request.address, bits=[bool(values[0])])
        elif function == 6:
            done = WriteSingleRegisterResponse(address=request.address, registers=values)
        else:  # 15, 16: address and quantity
            done = FUNCTIONS[function][1](address=request.address, count=len(values))
        return self._write(function, items, caller, single=function in (5, 6), done=pdu_bytes(done))

    @staticmethod
    def _demanded(space: UnitSpace, table: str, address: int, end: int) -> list[str]:
        """The on-demand signals whose registers the range covers (none: answer from the arrays)."""
        demand = space.demand.get(table)
        if demand is None or demand.find(1, address, min(end, len(demand))) == -1:
            return []
        owners = space.owner[table]
        return list(dict.fromkeys(owners[a].signal for a in range(address, min(end, len(demand))) if demand[a]))

    async def _refresh_then(self, names: list[str], function: int, answer: Callable[[], bytes]) -> bytes:
        """Ask the device for ``names`` (``Bridge.refresh``), store what it said, then ``answer()``: the
        value, or the exception (0B) of a value the upload made bad, as for any bad value."""
        self.refreshes += 1
        try:
            values = await asyncio.wait_for(asyncio.gather(*(self.bridge.refresh(n) for n in names)),
                                            timeout=self.write_timeout_s)
        except TimeoutError:
            log.warning("modbus read of %s: no answer of the device within %ss", ", ".join(names), self.write_timeout_s)
            return self._exc(function, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:
            log.exception("modbus read of %s failed", ", ".join(names))
            return self._exc(function, ExcCodes.DEVICE_FAILURE)
        for sv in values:
            self._store(self.slots[sv.name], sv.value, sv.quality)
        return answer()

    def _exc(self, function: int, code: ExcCodes) -> bytes:
        self.exceptions += 1
        return exception_pdu(function, code)

    def _refuse_request(
        self, unit: int, function: int, pdu: bytes, peer: str, reason: RefusalReason, detail: str
    ) -> None:
        """Audit a write request refused as a whole, before any signal could be named."""
        target = f"modbus:unit {unit} FC {function}"
        self.bridge.refuse(target, pdu[:MAX_AUDITED_PDU].hex(), Caller(plugin="modbus", address=peer), reason, detail)
        log.debug("modbus write from %s refused: %s", peer, detail)

    def _refuse_read_only(
        self,
        unit: int,
        function: int,
        pdu: bytes,
        peer: str,
        request: ModbusPDU | None,
        values: list[int] | None,
    ) -> bytes:
        detail = "plugins.modbus.read_only is true: every write is refused"
        space = self.units[unit]
        if request is None or values is None:
            self._refuse_request(unit, function, pdu, peer, RefusalReason.NOT_ALLOWED, detail)
        else:
            items, problems = self._plan_write(space, WRITE_TABLES[function], request.address, values)
            caller = Caller(plugin="modbus", address=peer)
            for target, value in [(i.signal, i.value) for i in items] + [(p.target, p.value) for p in problems]:
                self.bridge.refuse(target, value, caller, RefusalReason.NOT_ALLOWED, detail)
        return self._exc(function, ExcCodes.ILLEGAL_FUNCTION)

    def _read_registers(self, space: UnitSpace, function: int, address: int, count: int) -> bytes:
        """FC 3/4 from the table's byte image: the same checks and bytes as :meth:`_read`."""
        table = READ_TABLES[function]
        end = address + count
        refused = self._unreadable(space, function, table, address, end)
        if refused is not None:
            return refused
        return bytes((function, 2 * count)) + space.image(table, address, end)

    def _read(self, space: UnitSpace, function: int, table: str, address: int, count: int) -> bytes:
        end = address + count
        refused = self._unreadable(space, function, table, address, end)
        if refused is not None:
            return refused
        return read_response(function, space.values[table][address:end], table in BIT_TABLES)

    def _unreadable(self, space: UnitSpace, function: int, table: str, address: int, end: int) -> bytes | None:
        """The exception response when the range cannot be read: an address without a meaning, or a
        value whose quality is refused; None when it can."""
        known = space.known.get(table)
        if known is None or end > len(known) or known.find(0, address, end) != -1:
            return self._exc(function, ExcCodes.ILLEGAL_ADDRESS)
        if space.bad[table].find(1, address, end) != -1:
            return self._exc(function, ExcCodes.GATEWAY_NO_RESPONSE)
        return None

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
            return [1 if b else 0 for b in request.bits[: request.count]]
        if not 1 <= request.count <= MAX_WRITE_REGISTERS or nbytes != 2 * request.count:
            return None
        return list(request.registers)

    def _plan_write(
        self, space: UnitSpace, table: str, address: int, values: list[int]
    ) -> tuple[list[_Item], list[_Problem]]:
        """The signals and decoded values a write request covers, and what in it cannot be written
        at all (part of a multi-register value, addresses without a signal). Values are not judged:
        that is the write path's job."""
        end = address + len(values)
        owners = space.owner.get(table, {})
        labels = space.label.get(table, {})
        items: list[_Item] = []
        problems: list[_Problem] = []
        bits = table in BIT_TABLES
        shown = (lambda ws: [bool(w) for w in ws]) if bits else list
        a = address
        while a < end:
            p = owners.get(a)
            if p is None:
                # a run of addresses with the same meaning (nothing, a reserved signal, quality, ...)
                label = labels.get(a)
                run = a
                while run < end and run not in owners and labels.get(run) == label:
                    run += 1
                run = max(run, a + 1)
                problems.append(_gap(space.unit, table, a, run, label, shown(values[a - address : run - address])))
                a = run
                continue
            words = values[max(p.address, address) - address : min(p.address + p.count, end) - address]
            if p.address < address or p.address + p.count > end:
                problems.append(
                    _Problem(
                        p.signal,
                        list(words),
                        RefusalReason.UNSUPPORTED,
                        f"the request covers {len(words)} of the {p.count} registers of {p.signal} "
                        f"({p.encoding} at {table} {p.address} to {p.address + p.count - 1}); "
                        "write all of them in one request (FC 16)",
                        ExcCodes.ILLEGAL_ADDRESS,
                    )
                )
            else:
                items.append(_Item(p.signal, bool(words[0]) if bits else p.codec.decode(words)))
            a = p.address + p.count
        return items, problems

    async def _write(self, function: int, items: list[_Item], caller: Caller, single: bool, done: bytes) -> bytes:
        """Write the decoded values through the bridge's write path (all or nothing for FC 15/16);
        ``done`` is the normal response."""
        peer = caller.address
        try:
            if single:
                coro: Coroutine[Any, Any, Any] = self.bridge.write(items[0].signal, items[0].value, caller)  # type: ignore[arg-type]
            else:
                coro = self.bridge.write_many([(i.signal, i.value) for i in items], caller)
            result = await asyncio.wait_for(coro, timeout=self.write_timeout_s)
        except WriteRefused as e:
            log.debug("modbus write from %s to %s refused: %s", peer, e.target, e.detail)
            return self._exc(function, REFUSAL_CODES.get(e.reason, ExcCodes.DEVICE_FAILURE))
        except TimeoutError:
            log.warning("modbus write from %s timed out after %ss", peer, self.write_timeout_s)
            return self._exc(function, ExcCodes.GATEWAY_NO_RESPONSE)
        except Exception:
            log.exception("modbus write from %s to %s failed", peer, ", ".join(i.signal for i in items))
            return self._exc(function, ExcCodes.DEVICE_FAILURE)
        receipts: list[WriteReceipt] = [result] if single else result
        for receipt in receipts:
            self.writes += 1
            # read-after-write sees the value at once; the subscription confirms it later
            self._store(self.slots[receipt.name], receipt.value, Quality.GOOD)
        return done


@dataclass(slots=True)
class _Item:
    """One signal of a write request with the value its registers mean (not yet judged)."""

    signal: str
    value: object


@dataclass(slots=True)
class _Problem:
    """Part of a write request that names no value to write: refused before the write path."""

    target: str
    value: object
    reason: RefusalReason
    detail: str
    code: ExcCodes


def _gap(unit: int, table: str, start: int, end: int, label: tuple[str, str] | None, value: object) -> _Problem:
    where = f"{table} {start}" + (f" to {end - 1}" if end - start > 1 else "")
    if label is None:
        return _Problem(f"modbus:unit {unit} {where}", value, RefusalReason.UNKNOWN_SIGNAL,
                        f"no signal at {where} (unit {unit})", ExcCodes.ILLEGAL_ADDRESS)
    kind, name = label
    if kind == "reserved":  # the signal left the mapping table; its addresses stay unused
        return _Problem(name, value, RefusalReason.UNKNOWN_SIGNAL,
                        f"{where} is reserved for {name}, which is no longer in the mapping table",
                        ExcCodes.ILLEGAL_ADDRESS)
    return _Problem(f"modbus:unit {unit} {where}", value, RefusalReason.NOT_WRITABLE,
                    f"{where} holds the {kind} of {name} (read only)", ExcCodes.ILLEGAL_ADDRESS)


def _malformed_why(function: int, pdu: bytes, request: ModbusPDU) -> str:
    if function == 5:
        return f"FC 5 coil value {pdu[3:5].hex()} is neither ff00 nor 0000"
    limit = MAX_WRITE_COILS if function == 15 else MAX_WRITE_REGISTERS
    return (f"FC {function} quantity {request.count} with byte count {pdu[5]} "
            f"(quantity 1 to {limit}, byte count to match)")
