"""J1939 DM1 of every source address in registers: a fixed block per source (registers.DtcBlock), the
header (quality, count, lamps, age) and the first N trouble codes, refreshed from the bus status.

The block of a source is at ``address + source * stride`` whether the source was heard or not, so a
PLC reads fixed addresses; a source never heard reads as status 3 (waiting) and zeros."""

from __future__ import annotations

from canbridge import BusStatus, Dm1, Quality, dm1_quality
from canbridge_modbus.registers import DTC_HEADER_SIZE, DTC_SIZE, DTC_SOURCES, DtcBlock

_LAMP_CODES = {"off": 0, "on": 1, "reserved": 2, "not_available": 3}


class DtcRegisters:
    """Fills one bus's DM1 block; trouble codes are rewritten only when the source's DM1 changed."""

    def __init__(self, block: DtcBlock, regs: list[int]) -> None:
        self.block = block
        self.regs = regs
        self._written: dict[int, Dm1] = {}  # source -> the DM1 whose codes are in the registers

    def apply(self, status: BusStatus, now_ns: int, stale_after_s: float) -> None:
        b, regs = self.block, self.regs
        for source, dm1 in status.dm1.items():
            if not 0 <= source < DTC_SOURCES:
                continue  # 254 (cannot claim) and 255 (global) are no senders
            a = b.source_address(source)
            age = (now_ns - dm1.timestamp_ns) // 1_000_000_000
            regs[a] = dm1_quality(dm1, status, now_ns, stale_after_s).code
            regs[a + 6] = min(max(age, 0), 0xFFFF)
            regs[a + 7] = dm1.messages & 0xFFFF
            if self._written.get(source) is dm1:
                continue
            self._written[source] = dm1
            regs[a + 1] = len(dm1.dtcs)
            regs[a + 2 : a + 6] = [_LAMP_CODES[dm1.mil], _LAMP_CODES[dm1.red_stop],
                                   _LAMP_CODES[dm1.amber_warning], _LAMP_CODES[dm1.protect]]
            codes = a + DTC_HEADER_SIZE
            words: list[int] = []
            for d in dm1.dtcs[: b.count]:
                words += [d.spn >> 16, d.spn & 0xFFFF, d.fmi, (d.conversion_method << 7) | d.occurrences]
            words += [0] * (DTC_SIZE * b.count - len(words))
            regs[codes : codes + DTC_SIZE * b.count] = words

    def waiting(self) -> None:
        """Every source's status register reads 3 (waiting) and ``age`` 65535 until it is heard."""
        b = self.block
        for source in range(DTC_SOURCES):
            a = b.source_address(source)
            self.regs[a] = Quality.WAITING.code
            self.regs[a + 6] = 0xFFFF
