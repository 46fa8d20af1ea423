"""Modbus read throughput and register-update cost, batched against per-signal, in one run.

Four client processes read 125 input registers in a loop (pymodbus's client) while the core
receives a steady load of CAN frames on a virtual bus. The same run measures:

  batched    canbridge's Modbus service: subscription batches written into the register lists
  per-call   pymodbus 3.16's own server (SimDevice datastore) on the same register map, fed one
             signal at a time with ``await server.async_setValues(...)``, the obvious way

Usage: .venv/bin/python bench/bench_modbus.py [--seconds 5] [--clients 4] [--rate 2000]
Figures vary by a few percent between runs on shared machines; compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import sys
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
DBC = ROOT / "tests" / "data" / "dbc" / "tesla_model3_party.dbc"


def client_main(port: int, start_at: float, seconds: float, out: Any) -> None:
    """One Modbus client process: read 125 input registers as fast as the server answers."""
    from pymodbus.client import AsyncModbusTcpClient

    async def run() -> tuple[int, int]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
        await client.connect()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        ok = errors = 0
        end = start_at + seconds
        while time.time() < end:
            r = await client.read_input_registers(0, count=125, device_id=1)
            if r.isError():
                errors += 1
            else:
                ok += 1
        client.close()
        return ok, errors

    out.put(asyncio.run(run()))


async def clients(port: int, n: int, seconds: float) -> tuple[int, int, float, float]:
    """Run ``n`` client processes against ``port``: (reads, errors, wall s, server CPU s)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 2.0  # spawned interpreters need a moment to start
    procs = [ctx.Process(target=client_main, args=(port, start_at, seconds, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    results = [await asyncio.to_thread(queue.get, True, seconds + 30) for _ in procs]
    cpu = time.process_time() - cpu0
    for p in procs:
        await asyncio.to_thread(p.join, 10)
    return sum(r[0] for r in results), sum(r[1] for r in results), seconds, cpu


class Load:
    """A peer node sending every message of the DBC with random payloads at a steady rate."""

    def __init__(self, h: Any, rate: int) -> None:
        import cantools

        from canbridge import Frame

        db = cantools.database.load_file(str(DBC), strict=False)
        assert isinstance(db, cantools.database.can.Database)
        self.frames = [
            [Frame(m.frame_id, random.randbytes(m.length), extended=m.is_extended_frame) for _ in range(16)]
            for m in db.messages
        ]
        self.h = h
        self.rate = rate
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        tick = 0.01
        per_tick = max(1, round(self.rate * tick))
        i = 0
        next_t = time.monotonic()
        while True:
            for _ in range(per_tick):
                variants = self.frames[i % len(self.frames)]
                self.h.inject(variants[(i // len(self.frames)) % len(variants)])
                i += 1
            self.sent += per_tick
            next_t += tick
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))


async def main(args: argparse.Namespace) -> int:
    from canbridge_modbus.codec import encoder
    from canbridge_modbus.service import ModbusService
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import SimData, SimDevice
    from pymodbus.simulator.simutils import DataType

    from canbridge.testing import BridgeHarness

    config = {
        "buses": [{"name": "car", "interface": "virtual", "channel": f"bench-{time.time_ns()}"}],
        "mappings": [{"bus": "car", "dbc": str(DBC), "strict": False}],
        "plugins": {"modbus": {"port": 0, "bad_quality": "last_value", "update_interval": args.interval,
                               "max_connections": max(16, args.clients),  # every client is on 127.0.0.1
                               "max_connections_per_address": max(4, args.clients)}},
    }
    rows: list[tuple[str, int, int, float, float, float, int]] = []
    async with BridgeHarness(config=config) as h:
        svc = h.service("modbus")
        assert isinstance(svc, ModbusService) and svc.engine is not None and svc.rmap is not None
        regs = len(svc.engine.units[1].values["input_register"])
        inputs = [p for p in svc.rmap.placements.values() if p.table == "input_register"]
        value_regs = max(p.address + p.count for p in inputs)
        if value_regs < 125:
            print(f"the map has only {value_regs} input registers of values; need 125", file=sys.stderr)
            return 1
        load = Load(h, args.rate)
        load_task = asyncio.create_task(load.run())

        # batched: count updates and time spent in the engine's apply
        engine = svc.engine
        stats = {"updates": 0, "seconds": 0.0}
        original = engine.apply

        def timed_apply(batch: list[Any]) -> None:
            t = time.perf_counter()
            original(batch)
            stats["seconds"] += time.perf_counter() - t
            stats["updates"] += len(batch)

        engine.apply = timed_apply  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        stats.update(updates=0, seconds=0.0)
        port = int(svc.endpoints()[0].rsplit(":", 1)[1])
        sent0 = load.sent
        reads, errors, wall, cpu = await clients(port, args.clients, args.seconds)
        rows.append(("batched (canbridge)", reads, errors, wall, cpu, stats["seconds"], int(stats["updates"])))
        frames_per_s = (load.sent - sent0) / (wall + 2)
        await svc.stop()

        # per-call: pymodbus's server on the same map, fed one signal at a time
        device = SimDevice(1, simdata=[SimData(0, count=regs, values=0, datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        listener = cast(asyncio.Server, server.transport)  # a listening server's transport is its asyncio.Server
        pm_port = listener.sockets[0].getsockname()[1]
        placements = [p for p in svc.rmap.placements.values() if p.table == "input_register"]
        # the same encoder as the batched path: the difference measured is the per-call datastore API
        codecs = {p.signal: (p.address, encoder(p.encoding, p.word_order, p.scale)) for p in placements}
        pstats = {"updates": 0, "seconds": 0.0}

        async def feed() -> None:
            async with h.bridge.subscribe(list(codecs), interval=args.interval) as sub:
                async for batch in sub:
                    t = time.perf_counter()
                    for sv in batch:
                        address, enc = codecs[sv.name]
                        if sv.value is not None:
                            await server.async_setValues(1, 16, address, list(enc(sv.value)))
                    pstats["seconds"] += time.perf_counter() - t
                    pstats["updates"] += len(batch)

        feeder = asyncio.create_task(feed())
        await asyncio.sleep(1.0)
        pstats.update(updates=0, seconds=0.0)
        reads, errors, wall, cpu = await clients(pm_port, args.clients, args.seconds)
        rows.append(("per-call (pymodbus)", reads, errors, wall, cpu, pstats["seconds"], int(pstats["updates"])))
        feeder.cancel()
        load_task.cancel()
        await server.shutdown()  # type: ignore[no-untyped-call]
        for t in (feeder, load_task):
            try:
                await t
            except asyncio.CancelledError:
                pass

    print(
        f"\n{args.clients} clients x 125 input registers, {args.seconds:.0f} s each; "
        f"{len(codecs)} signals in {regs} input registers; load {frames_per_s:,.0f} frames/s "
        f"({DBC.name}); update interval {args.interval * 1000:.0f} ms; Python {sys.version.split()[0]}\n"
    )
    print("| server | reads/s | per client | errors | server process CPU | updates/s | feed µs/update |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = rows[0][1]
    for name, reads, errors, wall, cpu, feed_s, updates in rows:
        per_update = feed_s / updates * 1e6 if updates else float("nan")
        print(
            f"| {name} | {reads / wall:,.0f} | {reads / wall / args.clients:,.0f} | {errors} | "
            f"{cpu / wall * 100:.0f} % | {updates / wall:,.0f} | {per_update:.2f} |"
        )
    if len(rows) == 2 and rows[1][1] and rows[0][6] and rows[1][6]:
        cost = [r[5] / r[6] for r in rows]
        print(
            f"\nreads/s batched / per-call: {base / rows[1][1]:.2f}; "
            f"feed cost per update per-call / batched: {cost[1] / cost[0]:.1f}"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=int, default=2000, help="CAN frames per second injected")
    parser.add_argument("--interval", type=float, default=0.02, help="subscription batch interval (s)")
    sys.exit(asyncio.run(main(parser.parse_args())))
