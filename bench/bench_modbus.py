"""Modbus read throughput under a full CAN bus, canbridge against pymodbus's own server, in one run.

Four client processes read 125 input registers in a loop while the bridge receives a full 1 Mbit/s
bus (``--rate``, default 9,000 frames/s) of the Tesla Model 3 DBC's messages with changing payloads.
Nothing of the load or the clients runs in the bridge's interpreter:

  load       a writer process sends real 16-byte ``struct can_frame`` datagrams over a
             ``socketpair(AF_UNIX, SOCK_DGRAM)`` at the paced rate (a full queue loses the frame, as on a
             CAN socket); the bridge reads them with the SocketCAN driver's ``drain`` (``recvmmsg``) into
             the bus's ``BusRunner.on_frames``: the same receive path as a CAN_RAW socket
  clients    ``--client raw`` (default): a minimal poller per process on a blocking socket (one request,
             wait for the whole response, check transaction id and function code, repeat), so that the
             clients cost little next to the server on these two cores; ``--client pymodbus``:
             pymodbus's ``AsyncModbusTcpClient`` (about 100 µs of its own CPU per read: the clients,
             not the server, were the limit of the earlier figures)

Servers, one after the other under the same load:

  canbridge  the Modbus service: subscription batches written into the register arrays and their
             byte images, reads answered from them
  pymodbus   pymodbus 3.16's own server (SimDevice datastore) on the same register map, fed one
             signal at a time with ``await server.async_setValues(...)``, the obvious way

Reported per server: reads/s (all clients, and per client), errors, the bridge process's CPU
(``time.process_time``: the receive path of the load, the feed and the server; not the clients or
the writer), that CPU per read beyond what the load costs alone (measured before the clients start),
the clients' own CPU per read, frames received and lost, register updates/s and feed µs per update.

Usage: .venv/bin/python bench/bench_modbus.py [--seconds 5] [--clients 4] [--rate 9000] [--client raw]
Figures vary by a few percent between runs on shared machines; compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import socket
import struct
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
DBC = ROOT / "tests" / "data" / "dbc" / "tesla_model3_party.dbc"
FRAME = struct.Struct("=IB3x8s")  # struct can_frame: can_id, len, pad/res/len8_dlc, data[8]
SOCKET_BUFFER = 4 * 1024 * 1024  # as the SocketCAN driver's SO_RCVBUF
REGISTERS = 125


# --- the clients (other processes) -----------------------------------------------------------------

def raw_client(port: int, start_at: float, seconds: float) -> tuple[int, int]:
    """Read 125 input registers as fast as the server answers, one request at a time."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ok = errors = tid = 0
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds
    recv = s.recv
    while time.time() < end:
        tid = (tid + 1) & 0xFFFF
        s.sendall(struct.pack(">HHHBBHH", tid, 0, 6, 1, 4, 0, REGISTERS))
        data = recv(512)
        while len(data) < 6 or len(data) < 6 + int.from_bytes(data[4:6], "big"):
            more = recv(512)
            if not more:
                raise ConnectionError("the server closed the connection")
            data += more
        if int.from_bytes(data[:2], "big") == tid and data[7] == 4 and data[8] == 2 * REGISTERS:
            ok += 1
        else:
            errors += 1
    s.close()
    return ok, errors


def pymodbus_client(port: int, start_at: float, seconds: float) -> tuple[int, int]:
    from pymodbus.client import AsyncModbusTcpClient

    async def run() -> tuple[int, int]:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
        await client.connect()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        ok = errors = 0
        end = start_at + seconds
        while time.time() < end:
            r = await client.read_input_registers(0, count=REGISTERS, device_id=1)
            if r.isError():
                errors += 1
            else:
                ok += 1
        client.close()
        return ok, errors

    return asyncio.run(run())


def client_main(kind: str, port: int, start_at: float, seconds: float, out: Any) -> None:
    cpu0 = time.process_time()
    ok, errors = (raw_client if kind == "raw" else pymodbus_client)(port, start_at, seconds)
    out.put((ok, errors, time.process_time() - cpu0))


async def clients(kind: str, port: int, n: int, seconds: float) -> tuple[int, int, float, float, float]:
    """Run ``n`` client processes against ``port``: (reads, errors, wall s, bridge CPU s, clients' CPU s)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 2.0  # spawned interpreters need a moment to start
    procs = [ctx.Process(target=client_main, args=(kind, port, start_at, seconds, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    results = [await asyncio.to_thread(queue.get, True, seconds + 30) for _ in procs]
    cpu = time.process_time() - cpu0
    for p in procs:
        await asyncio.to_thread(p.join, 10)
    return sum(r[0] for r in results), sum(r[1] for r in results), seconds, cpu, sum(r[2] for r in results)


# --- the load (another process) ----------------------------------------------------------------------

def load_frames() -> list[bytes]:
    """Every message of the DBC with 16 random payloads each, as ``struct can_frame`` bytes, interleaved."""
    import cantools

    from canbridge.core.can.linuxcan import CAN_EFF_FLAG

    db = cantools.database.load_file(str(DBC), strict=False)
    assert isinstance(db, cantools.database.can.Database)
    rnd = random.Random(14)
    per_message = [
        [FRAME.pack(m.frame_id | (CAN_EFF_FLAG if m.is_extended_frame else 0), m.length, rnd.randbytes(m.length))
         for _ in range(16)]
        for m in db.messages if m.length <= 8
    ]
    return [variants[i] for i in range(16) for variants in per_message]


def writer(sock: socket.socket, rate: float, stop: Any, report: Connection) -> None:
    """Send frames at ``rate`` per second until ``stop``; a full queue loses the frame (counted)."""
    data = load_frames()
    try:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), SOCKET_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.setblocking(False)
    send = sock.send
    sent = lost = i = 0
    t0 = time.perf_counter()
    while not stop.is_set():
        due = int((time.perf_counter() - t0) * rate)
        while i < due:
            try:
                send(data[i % len(data)])
                sent += 1
            except BlockingIOError:
                lost += 1
            i += 1
        time.sleep(0.001)
    report.send({"sent": sent, "lost": lost})
    report.close()


class Load:
    """The writer process and the bridge's side of the socketpair, read by the driver's drain."""

    def __init__(self, runner: Any, rate: float) -> None:
        from canbridge.core.can.linuxcan import SO_RCVBUFFORCE
        from canbridge.core.can.receive import drain

        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            a.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
        except OSError:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        a.setblocking(False)
        ctx = mp.get_context("fork")
        self.stop = ctx.Event()
        self.report, tx = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=writer, args=(b, rate, self.stop, tx), daemon=True)
        self.proc.start()
        b.close()
        tx.close()
        self.sock = a
        self.received = 0

        def readable() -> None:
            batch = drain(a, 1024)
            if batch:
                self.received += len(batch)
                runner.on_frames(batch)

        asyncio.get_running_loop().add_reader(a.fileno(), readable)

    def close(self) -> dict[str, int]:
        self.stop.set()
        result = cast(dict[str, int], self.report.recv())
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.proc.join(5)
        self.sock.close()
        return result


# --- the run -------------------------------------------------------------------------------------------

async def load_only_cpu(seconds: float = 2.0) -> float:
    """The bridge's CPU per second with the load and no client (what each row's per-read figure excludes)."""
    c0 = time.process_time()
    await asyncio.sleep(seconds)
    return (time.process_time() - c0) / seconds


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
        "gc_freeze": True,
    }
    rows: list[dict[str, Any]] = []
    async with BridgeHarness(config=config) as h:
        svc = h.service("modbus")
        assert isinstance(svc, ModbusService) and svc.engine is not None and svc.rmap is not None
        regs = len(svc.engine.units[1].values["input_register"])
        inputs = [p for p in svc.rmap.placements.values() if p.table == "input_register"]
        if max(p.address + p.count for p in inputs) < REGISTERS:
            print(f"the map has fewer than {REGISTERS} input registers of values", file=sys.stderr)
            return 1
        load = Load(h.bridge.runners["car"], args.rate)

        async def measure(name: str, port: int, feed: dict[str, float]) -> None:
            await asyncio.sleep(1.0)
            idle = await load_only_cpu()
            feed.update(updates=0, seconds=0.0)
            rx0, t0 = load.received, time.monotonic()
            reads, errors, wall, cpu, client_cpu = await clients(args.client, port, args.clients, args.seconds)
            rows.append({"name": name, "reads": reads, "errors": errors, "wall": wall, "cpu": cpu, "idle": idle,
                         "client_cpu": client_cpu,
                         "feed_s": feed["seconds"], "updates": feed["updates"],
                         "frames_per_s": (load.received - rx0) / (time.monotonic() - t0)})

        # canbridge: count updates and time spent in the engine's apply
        engine = svc.engine
        stats = {"updates": 0, "seconds": 0.0}
        original = engine.apply

        def timed_apply(batch: list[Any]) -> None:
            t = time.perf_counter()
            original(batch)
            stats["seconds"] += time.perf_counter() - t
            stats["updates"] += len(batch)

        engine.apply = timed_apply  # type: ignore[method-assign]
        await measure("canbridge", int(svc.endpoints()[0].rsplit(":", 1)[1]), stats)
        await svc.stop()

        # pymodbus's server on the same map, fed one signal at a time
        device = SimDevice(1, simdata=[SimData(0, count=regs, values=0, datatype=DataType.REGISTERS)])
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        listener = cast(asyncio.Server, server.transport)  # a listening server's transport is its asyncio.Server
        pm_port = listener.sockets[0].getsockname()[1]
        # the same encoder as the batched path: the difference measured is the per-call datastore API
        codecs = {p.signal: (p.address, encoder(p.encoding, p.word_order, p.scale)) for p in inputs}
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
        await measure("pymodbus (per-call feed)", pm_port, pstats)
        feeder.cancel()
        await server.shutdown()  # type: ignore[no-untyped-call]
        try:
            await feeder
        except asyncio.CancelledError:
            pass
        sent = load.close()
        dropped = h.bridge.bus_status("car").dropped_frames

    print(
        f"\n{args.clients} clients ({args.client}) x {REGISTERS} input registers, {args.seconds:.0f} s each; "
        f"{len(codecs)} signals in {regs} input registers; load {args.rate:,.0f} frames/s from another "
        f"process ({DBC.name}; {sent['sent']:,} sent, {sent['lost'] + dropped:,} lost); update interval "
        f"{args.interval * 1000:.0f} ms; Python {sys.version.split()[0]}; load average "
        f"{os.getloadavg()[0]:.2f}\n"
    )
    print("| server | reads/s | per client | errors | bridge CPU | of it the load alone | CPU µs per read | "
          "client CPU µs per read | frames/s received | updates/s | feed µs/update |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rate = r["reads"] / r["wall"]
        per_read = (r["cpu"] - r["idle"] * r["wall"]) / r["reads"] * 1e6 if r["reads"] else float("nan")
        per_update = r["feed_s"] / r["updates"] * 1e6 if r["updates"] else float("nan")
        client = r["client_cpu"] / r["reads"] * 1e6 if r["reads"] else float("nan")
        print(f"| {r['name']} | {rate:,.0f} | {rate / args.clients:,.0f} | {r['errors']} | "
              f"{r['cpu'] / r['wall'] * 100:.0f} % | {r['idle'] * 100:.0f} % | {per_read:.1f} | {client:.1f} | "
              f"{r['frames_per_s']:,.0f} | {r['updates'] / r['wall']:,.0f} | {per_update:.2f} |")
    if len(rows) == 2 and rows[1]["reads"]:
        print(f"\nreads/s canbridge / pymodbus: {rows[0]['reads'] / rows[1]['reads']:.2f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=9000, help="CAN frames per second (9,000: a full 1 Mbit/s bus)")
    parser.add_argument("--client", choices=["raw", "pymodbus"], default="raw")
    parser.add_argument("--interval", type=float, default=0.02, help="subscription batch interval (s)")
    sys.exit(asyncio.run(main(parser.parse_args())))
