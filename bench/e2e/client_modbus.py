"""Modbus TCP client process (plain sockets, no library in the way): polls the probe signals' registers
every ``poll_s`` and writes MbCmd.Seq with FC6 and MbCmd16 (Seq, Aux) with FC16 on a second connection.

Spec: ``host``, ``port``, ``probes`` (``{signal: map entry}`` from the bridge's register map),
``poll_s``, ``write_hz`` (each of FC6 and FC16), ``fc6_signal`` / ``fc16_signal`` (map entries too).
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e import wire
from bench.e2e.clientbase import Recorder, main, paced, write_loop

READ_FC = {"holding_register": 3, "input_register": 4}
MAX_READ = 125
FORMATS = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f", "float64": ">d"}


NOT_GOOD = 0x0B  # the bridge's answer while a value is stale, bad or waiting for its first frame


class ModbusException(RuntimeError):
    def __init__(self, function: int, code: int) -> None:
        super().__init__(f"exception {code} to function {function}")
        self.function, self.code = function, code


class ModbusTcp:
    """One Modbus TCP connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tid = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> ModbusTcp:
        return cls(*await asyncio.open_connection(host, port))

    async def request(self, unit: int, pdu: bytes) -> bytes:
        self.tid = (self.tid + 1) & 0xFFFF
        self.writer.write(struct.pack(">HHHB", self.tid, 0, len(pdu) + 1, unit) + pdu)
        head = await self.reader.readexactly(7)
        tid, _, length, _ = struct.unpack(">HHHB", head)
        body = await self.reader.readexactly(length - 1)
        if tid != self.tid:
            raise RuntimeError(f"transaction {tid}, expected {self.tid}")
        if body[0] & 0x80:
            raise ModbusException(body[0] & 0x7F, body[1])
        return body

    async def read(self, unit: int, fc: int, address: int, count: int) -> list[int]:
        body = await self.request(unit, struct.pack(">BHH", fc, address, count))
        return list(struct.unpack(f">{count}H", body[2 : 2 + 2 * count]))

    async def write_single(self, unit: int, address: int, value: int) -> None:
        await self.request(unit, struct.pack(">BHH", 6, address, value))

    async def write_multiple(self, unit: int, address: int, values: list[int]) -> None:
        n = len(values)
        await self.request(unit, struct.pack(f">BHHB{n}H", 16, address, n, 2 * n, *values))

    def close(self) -> None:
        self.writer.close()


def decode(entry: dict[str, Any], regs: list[int]) -> float:
    """A register value as the bridge encoded it (word orders ABCD and CDAB)."""
    words = regs if entry["word_order"] == "ABCD" else list(reversed(regs))
    if entry["word_order"] not in ("ABCD", "CDAB"):
        raise ValueError(f"word order {entry['word_order']} is not read by this client")
    raw = struct.pack(f">{len(words)}H", *words)
    return float(struct.unpack(FORMATS[entry["encoding"]], raw)[0]) / float(entry["scale"])


def blocks(probes: dict[str, dict[str, Any]]) -> list[tuple[int, int, int, int, list[tuple[str, int]]]]:
    """Reads covering every probe: ``(unit, fc, address, count, [(signal, offset)])``, ≤ 125 registers."""
    out: list[tuple[int, int, int, int, list[tuple[str, int]]]] = []
    by_table: dict[tuple[int, int], list[tuple[int, int, str]]] = {}
    for name, e in probes.items():
        key = (int(e["unit"]), READ_FC[e["table"]])
        by_table.setdefault(key, []).append((int(e["address"]), int(e["count"]), name))
    for (unit, fc), items in sorted(by_table.items()):
        items.sort()
        start = -1
        members: list[tuple[str, int]] = []
        end = 0
        for address, count, name in items:
            if start < 0 or address + count - start > MAX_READ:
                if start >= 0:
                    out.append((unit, fc, start, end - start, members))
                start, members = address, []
            members.append((name, address - start))
            end = address + count
        out.append((unit, fc, start, end - start, members))
    return out


async def run(spec: dict[str, Any], rec: Recorder, ready: asyncio.Event, stop: asyncio.Event) -> None:
    probes: dict[str, dict[str, Any]] = spec["probes"]
    reads = blocks(probes)
    poller = await ModbusTcp.connect(spec["host"], int(spec["port"]))
    writer = await ModbusTcp.connect(spec["host"], int(spec["port"]))
    polls: list[float] = []
    rec.samples["poll_s"] = polls
    not_good: list[int] = []  # when a read was refused because a value was not good
    rec.samples["not_good"] = not_good

    async def poll() -> None:
        t0 = time.perf_counter()
        complete = True
        for unit, fc, address, count, members in reads:
            try:
                regs = await poller.read(unit, fc, address, count)
            except ModbusException as e:
                complete = False
                if e.code != NOT_GOOD:
                    rec.error(str(e))
                elif ready.is_set():  # before every probe had its first frame, waiting values are expected
                    # a probe went stale: frames came later than its timeout (a late generator on a busy
                    # machine, or a late bridge); measured and reported, not a client failure
                    not_good.append(time.time_ns())
                continue
            t = time.time_ns()
            for name, offset in members:
                entry = probes[name]
                value = decode(entry, regs[offset : offset + int(entry["count"])])
                rec.value(name, wire.seq_of_speed(value), 0, t)
        polls.append(time.perf_counter() - t0)
        if complete:
            ready.set()

    fc6, fc16 = spec["fc6_signal"], spec["fc16_signal"]
    lock = asyncio.Lock()  # one request at a time on the write connection

    async def write6(seq: int) -> bool:
        async with lock:
            await writer.write_single(int(fc6["unit"]), int(fc6["address"]), seq)
        return True

    async def write16(seq: int) -> bool:
        async with lock:
            await writer.write_multiple(int(fc16["unit"]), int(fc16["address"]), [seq, seq ^ 0xFFFF])
        return True

    hz = float(spec["write_hz"])
    try:
        async def writes() -> None:
            await ready.wait()
            await asyncio.gather(write_loop(rec, stop, hz, fc6["name"], write6),
                                 write_loop(rec, stop, hz, fc16["name"], write16))

        await asyncio.gather(paced(stop, 1 / float(spec["poll_s"]), poll), writes())
    finally:
        poller.close()
        writer.close()


if __name__ == "__main__":
    raise SystemExit(main(run))
