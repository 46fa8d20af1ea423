"""The J1939 ECUs of a simulated bus: what ``core/simulator.py`` hands over for buses with J1939 mappings.

Each mapped source address is an ECU. Its parameter groups go out with its source address and the
DBC's priority in the id (the mapping table already gives each source its own id); groups longer than
8 bytes and the DM1 (active trouble codes, PGN 65226, every second) go out by BAM (TP.CM BAM, then
TP.DT packets 60 ms apart: J1939-21 asks for 50..200 ms), one transfer at a time per ECU. Each ECU
has a few DTCs that take turns: one clears and another appears every ``dtc_change_s``. Groups without a
cycle time in the DBC are sent only when asked for by a Request (PGN 59904) to the ECU or to global.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import can

from canbridge.core.mapping.j1939 import (
    GLOBAL_ADDRESS,
    PGN_DM1,
    PGN_REQUEST,
    PGN_TP_CM,
    PGN_TP_DT,
    destination_of,
    make_id,
    pgn_of,
    source_of,
)
from canbridge.core.mapping.table import MappingTable, MessageEntry

log = logging.getLogger("canbridge.simulator")

BAM = 32  # TP.CM control byte of a broadcast announcement
PACKET_GAP_S = 0.06  # between TP.DT packets of a BAM (J1939-21: 50..200 ms)
DM1_PERIOD_S = 1.0  # J1939-73: DM1 once a second
DTC_CHANGE_S = 10.0
_TP_PRIORITY = 7
_DM1_PRIORITY = 6

# (SPN, FMI) pools, J1939-71/73 numbers that fit an engine and a transmission; other ECUs take the third.
_POOLS = (
    ((110, 0), (190, 2), (100, 1), (97, 3), (158, 4)),  # coolant temperature high, engine speed erratic, oil
    # pressure low, water in fuel, keyswitch battery potential low
    ((177, 0), (127, 1), (161, 2), (191, 9), (523, 7)),  # transmission oil temperature, oil pressure, input
    # shaft speed, output shaft speed, current gear
    ((84, 2), (91, 3), (168, 1), (171, 4), (639, 14)),  # vehicle speed, pedal, battery, ambient, J1939 link
)


def dm1_payload(dtcs: list[tuple[int, int, int]], amber: bool) -> bytes:
    """A DM1: lamps (amber warning when ``amber``), flash none, then SPN, FMI, occurrence count per DTC
    (conversion method 0); one DTC or none fits a single frame, padded with 0xFF."""
    lamps = 0x04 if amber else 0x00  # bits 3-2: amber warning lamp on
    out = bytearray([lamps, 0xFF])
    for spn, fmi, count in dtcs:
        out += bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) & 0x7) << 5 | (fmi & 0x1F), count & 0x7F])
    if not dtcs:
        out += b"\x00\x00\x00\x00"
    return bytes(out.ljust(8, b"\xff"))


def bam_frames(priority: int, pgn: int, source: int, data: bytes) -> list[tuple[int, bytes]]:
    """(id, data) of the TP.CM BAM announcement and the TP.DT packets of one broadcast."""
    n = -(-len(data) // 7)
    cm = bytes([BAM, len(data) & 0xFF, len(data) >> 8, n, 0xFF]) + pgn.to_bytes(3, "little")
    out = [(make_id(priority, PGN_TP_CM, source, GLOBAL_ADDRESS), cm)]
    for seq in range(1, n + 1):
        chunk = data[(seq - 1) * 7:seq * 7]
        out.append((make_id(priority, PGN_TP_DT, source, GLOBAL_ADDRESS), bytes([seq]) + chunk.ljust(7, b"\xff")))
    return out


@dataclass
class Ecu:
    """One simulated source address: its DTCs and its queue of transfers (one BAM at a time)."""

    address: int
    pool: tuple[tuple[int, int], ...]
    counts: dict[tuple[int, int], int] = field(default_factory=dict)
    active: list[tuple[int, int]] = field(default_factory=list)
    pending: dict[int, bytes] = field(default_factory=dict)  # PGN -> data to send by BAM (TP at priority 7)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def turn(self, epoch: int) -> None:
        """The active DTCs in ``epoch``: all of the pool but one, the one left out moving on each epoch, so
        each turn one code clears and another appears (and counts one more occurrence)."""
        out = self.pool[epoch % len(self.pool)]
        active = [c for c in self.pool if c != out]
        for c in active:
            if c not in self.active:
                self.counts[c] = min(126, self.counts.get(c, 0) + 1)
        self.active = active

    def dm1(self) -> bytes:
        return dm1_payload([(spn, fmi, self.counts[(spn, fmi)]) for spn, fmi in self.active], bool(self.active))


class J1939Ecus:
    """The J1939 side of one simulated bus."""

    def __init__(self, table: MappingTable, bus_name: str, bus: can.BusABC,
                 payload: Callable[[MessageEntry, float], bytes], dtc_change_s: float = DTC_CHANGE_S,
                 packet_gap_s: float = PACKET_GAP_S) -> None:
        self.bus = bus
        self.payload = payload
        self.dtc_change_s = dtc_change_s
        self.packet_gap_s = packet_gap_s
        self.entries = {e.index: e for e in table.j1939.get(bus_name, {}).values()}
        addresses = sorted({source_of(e.info.frame_id) for e in self.entries.values()})
        self.ecus = {a: Ecu(a, _POOLS[min(i, len(_POOLS) - 1)]) for i, a in enumerate(addresses)}
        self.transfers_sent = 0
        self.requests_answered = 0
        self._t = 0.0
        self._stop = asyncio.Event()

    @classmethod
    def for_bus(cls, table: MappingTable, bus_name: str, bus: can.BusABC,
                payload: Callable[[MessageEntry, float], bytes]) -> J1939Ecus | None:
        """The bus's J1939 ECUs, or None on a bus without received J1939 groups."""
        return cls(table, bus_name, bus, payload) if table.j1939.get(bus_name) else None

    def cyclic(self, e: MessageEntry) -> bool | None:
        """Whether the simulator sends ``e`` on its own: None if not a J1939 group (the simulator's
        business), False for groups without a cycle time (sent on request)."""
        if e.index not in self.entries:
            return None
        return bool(e.info.cycle_time_ms)

    def send(self, e: MessageEntry, data: bytes) -> None:
        """One group of an ECU: a single frame, or a BAM queued behind the ECU's transfer under way."""
        if len(data) <= 8:
            self.bus.send(can.Message(arbitration_id=e.info.frame_id, data=data, is_extended_id=True))
            return
        self._queue(source_of(e.info.frame_id), pgn_of(e.info.frame_id), data)

    def _queue(self, source: int, pgn: int, data: bytes) -> None:
        ecu = self.ecus.get(source)
        if ecu is None:
            return
        ecu.pending[pgn] = data  # a newer copy of a group waiting replaces the older
        ecu.wake.set()

    def _send_dm1(self, ecu: Ecu) -> None:
        data = ecu.dm1()
        if len(data) <= 8:
            self.bus.send(can.Message(arbitration_id=make_id(_DM1_PRIORITY, PGN_DM1, ecu.address), data=data,
                                      is_extended_id=True))
        else:
            self._queue(ecu.address, PGN_DM1, data)

    def on_message(self, msg: can.Message, t: float) -> None:
        """A Request (PGN 59904) to one of the ECUs or to global: the asked group from each ECU asked."""
        if not msg.is_extended_id or pgn_of(msg.arbitration_id) != PGN_REQUEST or len(msg.data) < 3:
            return
        asked = int.from_bytes(bytes(msg.data[:3]), "little")
        dest = destination_of(msg.arbitration_id)
        for ecu in self.ecus.values():
            if dest not in (GLOBAL_ADDRESS, ecu.address):
                continue
            if asked == PGN_DM1:
                self._send_dm1(ecu)
                self.requests_answered += 1
                continue
            for e in self.entries.values():
                if source_of(e.info.frame_id) == ecu.address and pgn_of(e.info.frame_id) == asked:
                    try:
                        self.send(e, self.payload(e, t))
                        self.requests_answered += 1
                    except Exception as ex:  # a bus hiccup must not end the simulation
                        log.debug("simulator: request for %s: %s", e.info.name, ex)

    async def _transfers(self, ecu: Ecu) -> None:
        """Send the ECU's queued BAMs one after another, packets ``packet_gap_s`` apart."""
        while not self._stop.is_set():
            await ecu.wake.wait()
            ecu.wake.clear()
            while ecu.pending and not self._stop.is_set():
                pgn = next(iter(ecu.pending))
                data = ecu.pending.pop(pgn)
                frames = bam_frames(_TP_PRIORITY, pgn, ecu.address, data)
                try:
                    for i, (can_id, payload) in enumerate(frames):
                        if i > 0:  # J1939-21: 50..200 ms between the packets of a BAM
                            await asyncio.sleep(self.packet_gap_s)
                        self.bus.send(can.Message(arbitration_id=can_id, data=payload, is_extended_id=True))
                    self.transfers_sent += 1
                except Exception as ex:
                    log.debug("simulator: BAM of PGN 0x%X from 0x%02X: %s", pgn, ecu.address, ex)

    async def run(self, clock: Callable[[], float]) -> None:
        """DM1 of every ECU once a second, the DTCs turning every ``dtc_change_s``; the BAM senders."""
        senders = [asyncio.create_task(self._transfers(ecu)) for ecu in self.ecus.values()]
        try:
            while not self._stop.is_set():
                epoch = int(clock() / self.dtc_change_s)
                for ecu in self.ecus.values():
                    ecu.turn(epoch)
                    try:
                        self._send_dm1(ecu)
                    except Exception as ex:
                        log.debug("simulator: DM1 from 0x%02X: %s", ecu.address, ex)
                try:
                    await asyncio.wait_for(self._stop.wait(), DM1_PERIOD_S)
                except TimeoutError:
                    pass
        finally:
            self._stop.set()
            for ecu in self.ecus.values():
                ecu.wake.set()
            await asyncio.gather(*senders, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()
        for ecu in self.ecus.values():
            ecu.wake.set()
