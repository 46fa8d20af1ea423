#!/usr/bin/env python3
"""Frames through the core's receive path (socket drain → generated decoder → store) on one core,
against python-can Notifier + cantools ``decode_message`` baselines, in the same run.

    .venv/bin/python bench/bench_core.py [--frames N] [--rate FPS] [--baseline-frames N] [--repeat K]
                                         [--json FILE]

A writer in a separate process sends real 16-byte ``struct can_frame`` datagrams over a
``socketpair(AF_UNIX, SOCK_DGRAM)`` (the stand-in for a CAN_RAW socket on kernels without CAN; both
ends get 4 MB buffers, the reading end SO_TIMESTAMPNS kernel timestamps as on a CAN socket; on a
socketpair the queue is bounded by the writer's send buffer, like a CAN socket's receive queue). The
payload mix uses the demo DBC's ids: about half of the frames change their payload from one frame to
the next, the rest repeat it; one frame in ten is a multiplexed page; one id in twenty is unmapped.
Every scenario reads the same bytes.

Readers:

* ``core recvmmsg``: the SocketCAN driver's ``drain`` (one ``recvmmsg`` per batch of up to 1024
  frames) into ``BusRunner.on_frames`` (generated decoders, latest-value store) and a consumer
  flushing every 50 ms. ``core recvmsg``: the same with one ``recvmsg`` per frame.
* ``baseline asyncio`` (the issue's baseline: the obvious asyncio bridge): ``can.Notifier(bus,
  [reader], loop=loop)`` with a ``can.AsyncBufferedReader``, and a coroutine that awaits each message,
  calls cantools ``decode_message`` and stores every value in a dict. The bus receives exactly as
  python-can's ``SocketcanBus`` (``select``, then ``capture_message``: one ``recvmsg`` and one
  ``can.Message`` per frame); with ``fileno()`` the Notifier uses ``loop.add_reader``.
* ``baseline thread`` (more generous): the Notifier's receive thread calls the decoding listener
  directly: no event loop, queue or await per frame.

Scenarios: ``max`` (the writer blocks when the queue is full: nothing is lost; the rate is what the
reader sustains, often limited by the writer sharing the cores) and ``fixed`` (``--rate`` frames/s,
never waiting: a full queue loses the frame, as the kernel drops it on a CAN socket; ``lost``).

Reported per scenario: frames, frames lost, frames/s (wall; first to last frame for the core, start
to last frame for the baselines), CPU µs per frame of the reading process (``time.process_time``: the
writer process is not counted), the per-core capacity that implies (10^6 / CPU µs), and the ratio of
CPU per frame against each baseline's max-rate row. Then the receive step alone (socket already full)
and decode + store alone. With ``--repeat`` the table is repeated per run with the load average, and
medians follow. Timings vary from run to run on shared machines; compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import select
import socket
import statistics
import struct
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import can  # noqa: E402
import cantools  # noqa: E402
from can.interfaces.socketcan.socketcan import capture_message  # noqa: E402

from canbridge._model import BusState, Quality  # noqa: E402
from canbridge._plugin import BusKind  # noqa: E402
from canbridge.config import BusConfig, parse_config  # noqa: E402
from canbridge.core.app import DEMO_DBC  # noqa: E402
from canbridge.core.busrunner import BusRunner  # noqa: E402
from canbridge.core.can import receive as mmsg  # noqa: E402

# the SocketCAN driver's own drain: the code the bridge runs on a CAN_RAW socket
from canbridge.core.can.receive import drain  # noqa: E402
from canbridge.core.host import collect, make_plugin_manager  # noqa: E402
from canbridge.core.mapping.table import build_table  # noqa: E402
from canbridge.core.store import SignalStore  # noqa: E402

CAN_EFF_FLAG = 0x80000000
FRAME = struct.Struct("=IB3x8s")  # struct can_frame: can_id, len, pad/res/len8_dlc, data[8]
BUF = 4 * 1024 * 1024
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_TIMESTAMPNS = 35


# --- the payload mix -----------------------------------------------------------------------------

def frames(n: int) -> list[bytes]:
    """``n`` frames cycling through the demo ids; about half change payload frame to frame."""
    out = []
    slot = 0
    counters = {"speed": 0, "battery": 0, "page": 0}
    static_power = struct.pack("<fBxxx", 42.5, 180)
    static_vehicle = bytes([0x10, 0x27, 0, 0, 0x01, 0x40, 0x3A, 0x98])
    static_cmd = bytes([0xDC, 0x05, 0x01, 0x32, 0, 0, 0, 0])
    pattern = [0x100, 0x110, 0x100, 0x200, 0x100, 0x18FEF100, 0x100, 0x400, 0x300, 0x110,
               0x100, 0x110, 0x100, 0x200, 0x100, 0x18FEF100, 0x100, 0x400, 0x7AB, 0x110]
    for _ in range(n):
        can_id = pattern[slot]
        slot = (slot + 1) % len(pattern)
        if can_id == 0x100:  # MotorStatus: speed and current move every frame
            counters["speed"] = (counters["speed"] + 7) % 8000
            s = counters["speed"]
            data = struct.pack("<hBhBH", s, 80, (s * 3) % 5000, 0x12, 1500)
        elif can_id == 0x110:
            data = static_power
        elif can_id == 0x200:  # BatteryStatus: changes one time in four
            counters["battery"] += 1
            data = struct.pack("<HhBBxx", 40000 + counters["battery"] // 4 % 100, -120, 150, 70)
        elif can_id == 0x18FEF100:
            data = static_vehicle
        elif can_id == 0x400:  # Diagnostics: multiplexer pages 0, 1, 2 in turn
            counters["page"] += 1
            page = counters["page"] % 3
            data = bytes([page, counters["page"] & 0xFF, 0, 0, 0, 0, 0, 0])
        elif can_id == 0x300:
            data = static_cmd
        else:
            data = b"\x01\x02\x03\x04\x05\x06\x07\x08"
        raw = can_id | CAN_EFF_FLAG if can_id > 0x7FF else can_id
        out.append(FRAME.pack(raw, len(data), data))
    return out


# --- the writer process --------------------------------------------------------------------------

def writer(sock: socket.socket, n: int, rate: float | None, go: Any, report: Connection) -> None:
    data = frames(n)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
    send = sock.send
    lost = 0
    go.wait()
    t0 = time.perf_counter()
    if rate is None:  # as fast as the reader takes them: the writer waits when the queue is full
        sock.setblocking(True)
        for d in data:
            send(d)
    else:  # paced, never waiting: a full queue loses the frame, as on a CAN socket
        sock.setblocking(False)
        tick = 0.001
        per_tick = rate * tick
        i = 0
        due = 0.0
        while i < n:
            due += per_tick
            end = min(n, int(due))
            while i < end:
                try:
                    send(data[i])
                except BlockingIOError:
                    lost += 1
                i += 1
            next_t = t0 + (i / rate)
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    report.send({"sent": n - lost, "lost": lost, "seconds": time.perf_counter() - t0})
    report.close()


def start_writer(n: int, rate: float | None) -> tuple[socket.socket, Any, Any, Connection]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        a.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUF)
    except OSError:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    a.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # kernel receive timestamps, as on a CAN socket
    ctx = mp.get_context("fork")
    go = ctx.Event()
    rx, tx = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=writer, args=(b, n, rate, go, tx), daemon=True)
    proc.start()
    b.close()
    tx.close()
    return a, proc, go, rx


# --- the core ------------------------------------------------------------------------------------

def make_runner() -> tuple[BusRunner, SignalStore]:
    formats = collect(make_plugin_manager(load_entry_points=False)).formats
    config = parse_config({"buses": [{"name": "bench", "interface": "virtual", "kernel_filters": False}],
                           "mappings": [{"bus": "bench", "dbc": str(DEMO_DBC)}]})
    table = build_table(config, ROOT, formats)
    store = SignalStore(table)
    kind = BusKind("bench", lambda cfg: None)  # type: ignore[arg-type,return-value]
    cfg: BusConfig = config.buses[0]
    runner = BusRunner(cfg, kind, table, store, lambda r, s: None)
    runner.state = BusState.ACTIVE
    return runner, store


async def run_core(n: int, rate: float | None, batch: bool = True) -> dict[str, Any]:
    """The core: the driver's ``drain`` (``recvmmsg`` per batch, or ``recvmsg`` per frame without
    ``batch``) into ``BusRunner.on_frames`` (generated decoders, latest-value store), a 50 ms consumer."""
    runner, store = make_runner()
    sub = store.subscribe(None, 0.05)  # a northbound consumer flushing every 50 ms, as the plugins do
    flushed = 0

    async def consume() -> None:
        nonlocal flushed
        async for batch in sub:
            flushed += len(batch)

    consumer = asyncio.create_task(consume())
    sock, proc, go, report = start_writer(n, rate)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    received = 0
    first = last = 0.0
    done = asyncio.Event()
    result: dict[str, Any] = {}

    def readable() -> None:
        nonlocal received, first, last
        frames_ = drain(sock, 1024, batch=batch)
        if frames_:
            if not received:
                first = time.perf_counter()
            last = time.perf_counter()
            received += len(frames_)
            runner.on_frames(frames_)

    def writer_done() -> None:
        result.update(report.recv())
        loop.remove_reader(report.fileno())
        done.set()

    loop.add_reader(sock.fileno(), readable)
    loop.add_reader(report.fileno(), writer_done)
    gc.collect()
    gc.freeze()  # as Runtime.run does after start-up
    cpu0 = time.process_time()
    go.set()
    await done.wait()
    while received < result["sent"]:  # the rest is in the socket queue  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    cpu = time.process_time() - cpu0
    loop.remove_reader(sock.fileno())
    await asyncio.sleep(0.06)
    sub.close()
    await consumer
    proc.join(5)
    sock.close()
    gc.unfreeze()
    assert runner.decode_errors == 0, "the bench frames must decode"
    st = runner.status()
    good = sum(1 for q in store.msg_quality if q is Quality.GOOD)
    return {"received": received, "lost": result["lost"], "sent": result["sent"], "cpu_s": cpu,
            "wall_s": max(last - first, 1e-9), "unmapped": st.unmapped_frames, "good_messages": good,
            "flushed_values": flushed}


# --- the baselines: python-can's Notifier, one Message and one cantools decode per frame -------------

class SocketPairBus(can.BusABC):
    """A python-can bus on the socketpair that receives exactly as ``SocketcanBus`` does: ``select`` then
    python-can's own ``capture_message`` (one ``recvmsg`` with the SO_TIMESTAMPNS timestamp, one
    ``can.Message``) per frame; ``fileno()`` lets a ``Notifier`` with a loop use ``add_reader``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.channel_info = "socketpair"
        super().__init__(channel="bench")

    def fileno(self) -> int:
        return self.sock.fileno()

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None, False
        return capture_message(self.sock), False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        super().shutdown()


class NaiveStore:
    """What a naive bridge does per message: cantools ``decode_message``, every value into a dict."""

    def __init__(self) -> None:
        self.db: Any = cantools.database.load_file(str(DEMO_DBC))
        self.values: dict[tuple[int, str], Any] = {}
        self.count = 0
        self.unmapped = 0

    def on_message(self, msg: can.Message) -> None:
        self.count += 1
        try:
            decoded: Any = self.db.decode_message(msg.arbitration_id, msg.data)
        except KeyError:
            self.unmapped += 1
            return
        values = self.values
        for name, v in decoded.items():
            values[(msg.arbitration_id, name)] = v

    def result(self, sent: dict[str, Any], cpu: float, wall: float) -> dict[str, Any]:
        return {"received": self.count, "lost": sent["lost"], "sent": sent["sent"], "cpu_s": cpu, "wall_s": wall,
                "unmapped": self.unmapped, "good_messages": len({k[0] for k in self.values}), "flushed_values": 0}


async def run_baseline_async(n: int, rate: float | None) -> dict[str, Any]:
    """The obvious asyncio bridge: ``can.Notifier(bus, [reader], loop=loop)`` with an
    ``AsyncBufferedReader`` and a coroutine that awaits each message, decodes it and stores the values."""
    store = NaiveStore()
    sock, proc, go, report = start_writer(n, rate)
    loop = asyncio.get_running_loop()
    bus = SocketPairBus(sock)
    reader = can.AsyncBufferedReader()
    result: dict[str, Any] = {}
    done = asyncio.Event()

    async def bridge() -> None:
        while True:
            msg = await reader.get_message()
            store.on_message(msg)

    def writer_done() -> None:
        result.update(report.recv())
        loop.remove_reader(report.fileno())
        done.set()

    loop.add_reader(report.fileno(), writer_done)
    gc.collect()
    gc.freeze()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    notifier = can.Notifier(bus, [reader], loop=loop)
    task = asyncio.create_task(bridge())
    go.set()
    await done.wait()
    while store.count < result["sent"]:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    notifier.stop()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    bus.shutdown()
    proc.join(5)
    sock.close()
    gc.unfreeze()
    return store.result(result, cpu, wall)


def run_baseline_thread(n: int, rate: float | None) -> dict[str, Any]:
    """A more generous baseline: the Notifier's receive thread calls the decoding listener directly
    (no event loop, no queue, no await per frame)."""
    store = NaiveStore()
    sock, proc, go, report = start_writer(n, rate)
    sock.setblocking(True)
    bus = SocketPairBus(sock)
    gc.collect()
    gc.freeze()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    notifier = can.Notifier(bus, [store.on_message], timeout=0.05)
    go.set()
    result = report.recv()
    while store.count < result["sent"]:
        time.sleep(0.001)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    notifier.stop(1)
    bus.shutdown()
    proc.join(5)
    sock.close()
    gc.unfreeze()
    return store.result(result, cpu, wall)


# --- without the socket: decode and store only, the part the core owns ---------------------------

def processing_only(n: int) -> tuple[float, float]:
    """CPU µs per frame of decode → store alone: the core's ``on_frames`` in batches of 1024 against
    building a ``can.Message`` and ``decode_message`` per frame (what the baseline's listener does)."""
    runner, store = make_runner()
    store.subscribe(None, 0.05)
    raw = []
    msgs = []
    for d in frames(n):
        rid, length, data = FRAME.unpack(d)
        ext = bool(rid & CAN_EFF_FLAG)
        can_id = rid & (0x1FFFFFFF if ext else 0x7FF)
        raw.append((can_id, 1 if ext else 0, data[:length], 0))
        msgs.append((can_id, ext, data[:length]))
    batches = [raw[i:i + 1024] for i in range(0, n, 1024)]
    t0 = time.process_time()
    for batch in batches:
        runner.on_frames(batch)
    core = (time.process_time() - t0) / n * 1e6
    db: Any = cantools.database.load_file(str(DEMO_DBC))
    values: dict[tuple[int, str], Any] = {}
    t0 = time.process_time()
    for can_id, ext, data in msgs:
        msg = can.Message(timestamp=0.0, arbitration_id=can_id, is_extended_id=ext, data=data, channel="bench")
        try:
            decoded: Any = db.decode_message(msg.arbitration_id, msg.data)
        except KeyError:
            continue
        for name, v in decoded.items():
            values[(can_id, name)] = v
    base = (time.process_time() - t0) / n * 1e6
    return core, base


# --- the receive step alone ------------------------------------------------------------------------

def receive_only(n: int) -> dict[str, float]:
    """CPU µs per frame of taking frames off a socket that already holds them (no writer running):
    ``recvmmsg`` in batches of up to 1024, ``recvmsg`` per frame (both parsing into RawFrame tuples),
    and python-can's ``bus.recv(0)`` (``select`` + ``recvmsg`` + ``can.Message``) per frame."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s_ in (a, b):
        try:
            s_.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, BUF)
            s_.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, BUF)
        except OSError:
            s_.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUF)
            s_.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUF)
    b.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    b.setblocking(False)
    data = frames(1000)
    bus = SocketPairBus(b)
    out: dict[str, float] = {}

    def read_mmsg() -> int:
        return len(drain(b, 1024, batch=True))

    def read_msg() -> int:
        return len(drain(b, 1024, batch=False))

    def read_pycan() -> int:
        got = 0
        while bus.recv(0) is not None:
            got += 1
        return got

    for name, fn in (("recvmmsg", read_mmsg), ("recvmsg", read_msg), ("python-can recv", read_pycan)):
        cpu = 0.0
        got = 0
        while got < n:
            for d in data:
                a.send(d)
            t0 = time.process_time()
            got += fn()
            cpu += time.process_time() - t0
        out[name] = cpu / got * 1e6
    bus.shutdown()
    a.close()
    b.close()
    return out


# --- report --------------------------------------------------------------------------------------

def row(name: str, r: dict[str, Any]) -> dict[str, Any]:
    us = r["cpu_s"] / max(r["received"], 1) * 1e6
    return {"scenario": name, "frames": r["received"], "lost": r["lost"],
            "frames_per_s": round(r["received"] / r["wall_s"]), "cpu_us_per_frame": round(us, 3),
            "capacity_per_core": round(1e6 / us) if us else None, **{k: r[k] for k in ("unmapped", "good_messages")}}


ASYNC_BASE = "baseline asyncio, max rate"
THREAD_BASE = "baseline thread, max rate"


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    rate = f"{args.rate:,.0f}/s"
    load = os.getloadavg()
    rows = [
        row("core recvmmsg, max rate", asyncio.run(run_core(args.frames, None))),
        row(f"core recvmmsg, fixed {rate}", asyncio.run(run_core(args.frames, args.rate))),
        row("core recvmsg, max rate", asyncio.run(run_core(args.frames, None, batch=False))),
        row(ASYNC_BASE, asyncio.run(run_baseline_async(args.baseline_frames, None))),
        row(f"baseline asyncio, fixed {rate}", asyncio.run(run_baseline_async(args.baseline_frames, args.rate))),
        row(THREAD_BASE, run_baseline_thread(args.baseline_frames, None)),
        row(f"baseline thread, fixed {rate}", run_baseline_thread(args.baseline_frames, args.rate)),
    ]
    by = {r["scenario"]: r for r in rows}
    for r in rows:
        us = r["cpu_us_per_frame"]
        r["ratio_async"] = round(by[ASYNC_BASE]["cpu_us_per_frame"] / us, 2) if us else None
        r["ratio_thread"] = round(by[THREAD_BASE]["cpu_us_per_frame"] / us, 2) if us else None
    core_us, base_us = processing_only(args.baseline_frames)
    return {"load_before": load, "load_after": os.getloadavg(), "rows": rows,
            "receive_only_us": {k: round(v, 3) for k, v in receive_only(args.baseline_frames).items()},
            "processing_only": {"core_us_per_frame": round(core_us, 3), "baseline_us_per_frame": round(base_us, 3)}}


def print_rows(rows: list[dict[str, Any]]) -> None:
    head = (f"{'scenario':34s} {'frames':>8s} {'lost':>7s} {'frames/s':>10s} {'CPU µs/frame':>13s} "
            f"{'capacity/core':>14s} {'vs asyncio':>10s} {'vs thread':>9s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['scenario']:34s} {r['frames']:8d} {r['lost']:7d} {r['frames_per_s']:10,d} "
              f"{r['cpu_us_per_frame']:13.2f} {r['capacity_per_core']:14,d} {r['ratio_async']:10.1f} "
              f"{r['ratio_thread']:9.1f}")


def median_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, first in enumerate(runs[0]["rows"]):
        cells = [run["rows"][i] for run in runs]
        med: dict[str, Any] = {"scenario": first["scenario"]}
        for key in ("frames", "lost", "frames_per_s", "cpu_us_per_frame", "capacity_per_core", "ratio_async",
                    "ratio_thread"):
            med[key] = statistics.median(c[key] for c in cells)
        med["frames"] = int(med["frames"])
        med["lost"] = int(med["lost"])
        med["frames_per_s"] = int(med["frames_per_s"])
        med["capacity_per_core"] = int(med["capacity_per_core"])
        out.append(med)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500_000, help="frames per core scenario")
    ap.add_argument("--baseline-frames", type=int, default=100_000, help="frames per baseline scenario")
    ap.add_argument("--rate", type=float, default=100_000, help="frames/s of the fixed-rate scenarios")
    ap.add_argument("--repeat", type=int, default=1, help="run everything this many times; report medians")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    print(f"canbridge core receive path, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"recvmmsg {'available' if mmsg.AVAILABLE else 'unavailable: ' + str(mmsg.UNAVAILABLE)}; "
          "the writer process shares the CPUs")
    runs = []
    for i in range(args.repeat):
        run = one_run(args)
        runs.append(run)
        la = " ".join(f"{x:.2f}" for x in run["load_before"])
        lb = " ".join(f"{x:.2f}" for x in run["load_after"])
        print(f"\nrun {i + 1}/{args.repeat}: load average before {la}, after {lb}")
        print_rows(run["rows"])
        ro = run["receive_only_us"]
        po = run["processing_only"]
        print("receive only (CPU µs/frame, socket already full): "
              + ", ".join(f"{k} {v:.2f}" for k, v in ro.items()))
        print(f"decode + store only (no socket): core {po['core_us_per_frame']:.2f} µs/frame, python-can Message "
              f"+ cantools decode_message {po['baseline_us_per_frame']:.2f} µs/frame")
    med = median_rows(runs)
    if args.repeat > 1:
        print(f"\nmedians of {args.repeat} runs")
        print_rows(med)
        for key in runs[0]["receive_only_us"]:
            print(f"receive only, {key}: {statistics.median(r['receive_only_us'][key] for r in runs):.2f} µs/frame")
        for key in runs[0]["processing_only"]:
            print(f"decode + store only, {key}: "
                  f"{statistics.median(r['processing_only'][key] for r in runs):.2f}")
    top = med[0]
    fixed = med[1]
    print(f"\ntarget: >= 100,000 frames/s per core with no frame lost -> capacity {top['capacity_per_core']:,} "
          f"frames/s per core, {fixed['lost']} lost at {args.rate:,.0f}/s; ratio >= 20 -> "
          f"{top['ratio_async']} against the asyncio Notifier, {top['ratio_thread']} against the thread Notifier")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "rate": args.rate, "runs": runs,
            "medians": med}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
