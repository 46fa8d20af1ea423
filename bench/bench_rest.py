"""REST plugin benchmark: GET /api/v1/signals/{name} per second and stream updates per second with many
SSE subscribers, while the bridge receives a steady CAN load.

    .venv/bin/python bench/bench_rest.py [--duration 5] [--rate 2000] [--sse-clients 50]

The bridge (demo mapping on a python-can virtual bus) and the REST service run in this process; the HTTP
clients run in separate processes and the CAN load generator in a thread. Everything shares the
machine's cores, so the figures are a floor for the server, not a ceiling: compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import can

from canbridge.testing import BridgeHarness

SIGNAL = "demo.MotorStatus.MotorSpeed"
IDS = (0x100, 0x110, 0x200)  # MotorStatus, PowerStatus, BatteryStatus: 12 signals change per round


# --- client processes ----------------------------------------------------------------------------


def _get_worker(url: str, concurrency: int, duration: float, out: Any) -> None:
    async def main() -> tuple[int, int, list[float]]:
        lat: list[float] = []
        errors = 0
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as s:
            end = time.perf_counter() + duration

            async def loop() -> None:
                nonlocal errors
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    async with s.get(f"{url}api/v1/signals/{SIGNAL}") as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                    lat.append(time.perf_counter() - t)

            await asyncio.gather(*(loop() for _ in range(concurrency)))
        return len(lat), errors, lat

    out.put(asyncio.run(main()))


def _sse_worker(url: str, clients: int, duration: float, out: Any) -> None:
    async def main() -> tuple[int, int, int, float]:
        events = updates = connected = 0
        started: list[float] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s:

            async def client() -> None:
                nonlocal events, updates, connected
                async with s.get(f"{url}api/v1/stream", params={"interval": "0.1"}) as r:
                    connected += 1
                    end = time.perf_counter() + duration
                    first = True
                    while time.perf_counter() < end:
                        try:
                            line = await asyncio.wait_for(r.content.readline(), end - time.perf_counter())
                        except TimeoutError:
                            break
                        if line.startswith(b"data:"):
                            n = len(json.loads(line[5:])["signals"])
                            if first:  # the initial state is not an update; the clock starts here
                                first = False
                                started.append(time.perf_counter())
                                continue
                            events += 1
                            updates += n

            await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
        elapsed = time.perf_counter() - (statistics.median(started) if started else time.perf_counter())
        return events, updates, connected, elapsed

    out.put(asyncio.run(main()))


async def _wrk(url: str, concurrency: int, duration: float) -> dict[str, Any]:
    """GET rate measured by wrk (C, one thread): the server, not a Python client, is the limit."""
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        f"{url}api/v1/signals/{SIGNAL}",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    text = out.decode()
    row: dict[str, Any] = {"errors": 0}
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            row["get_per_s"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            num = parts[1].rstrip("umsµ")
            suffix = parts[1][len(num) :]
            row["p50_ms" if parts[0] == "50%" else "p99_ms"] = float(num) * unit.get(suffix, 1.0)
        elif "Non-2xx" in line:
            row["errors"] = int(parts[-1])
    return row


def _run_proc(target: Any, *args: Any) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q), daemon=True)
    p.start()
    return p, q


# --- load generator --------------------------------------------------------------------------------


class Load(threading.Thread):
    """Sends frames with changing payloads at a steady rate on the bridge's virtual channel."""

    def __init__(self, channel: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.channel = channel
        self.rate = rate
        self.sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        if self.rate <= 0:
            return
        bus = can.Bus(interface="virtual", channel=self.channel, receive_own_messages=False)
        t0 = time.perf_counter()
        i = 0
        try:
            while not self._halt.is_set():
                due = int((time.perf_counter() - t0) * self.rate)
                while self.sent < due:
                    i += 1
                    can_id = IDS[i % len(IDS)]
                    data = (i % 6000).to_bytes(2, "little") + bytes([i & 0xFF, 0, 0, 0x10, 0, 0])
                    bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
                    self.sent += 1
                time.sleep(0.002)
        finally:
            bus.shutdown()

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


# --- scenarios -------------------------------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


async def _collect(q: Any, proc: mp.Process, wait_s: float) -> Any:
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, q.get, True, wait_s)
    await loop.run_in_executor(None, proc.join, 5)
    return result


async def scenario(
    h: BridgeHarness,
    url: str,
    name: str,
    rate: float,
    duration: float,
    get_conc: int,
    sse_clients: int,
    use_wrk: bool,
) -> dict[str, Any]:
    channel = h.bridge.buses["demo"].channel
    load = Load(channel, rate)
    rx0 = h.bridge.bus_status("demo").rx_frames
    procs = []
    if sse_clients:
        procs.append(("sse", *_run_proc(_sse_worker, url, sse_clients, duration + 1.0)))
        await asyncio.sleep(1.0)  # let the SSE clients connect before the clock starts
    load.start()
    t0 = time.perf_counter()
    wrk_task = None
    if get_conc and use_wrk:
        wrk_task = asyncio.create_task(_wrk(url, get_conc, duration))
    elif get_conc:
        procs.append(("get", *_run_proc(_get_worker, url, get_conc, duration)))
    cpu0 = time.process_time()
    lag = 0.0
    while time.perf_counter() - t0 < duration:
        await asyncio.sleep(0.1)
        lag = max(lag, h.bridge.stats().max_subscriber_lag_s)
    cpu = time.process_time() - cpu0
    row: dict[str, Any] = {"scenario": name}
    if wrk_task is not None:
        row |= await wrk_task
    for kind, p, q in procs:
        res = await _collect(q, p, duration + 30)
        if kind == "get":
            n, errors, lat = res
            row |= {
                "get_per_s": n / duration,
                "p50_ms": statistics.median(lat) * 1e3,
                "p99_ms": _pct(lat, 0.99) * 1e3,
                "errors": errors,
            }
        else:
            events, updates, connected, elapsed = res
            row |= {
                "sse_clients": connected,
                "events_per_s": events / elapsed,
                "updates_per_s": updates / elapsed,
            }
    load.stop()
    elapsed = time.perf_counter() - t0
    row["frames_per_s"] = (h.bridge.bus_status("demo").rx_frames - rx0) / elapsed
    row["server_cpu_pct"] = 100 * cpu / duration
    row["max_lag_ms"] = lag * 1e3
    return row


def _fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per scenario")
    ap.add_argument("--rate", type=float, default=2000.0, help="CAN frames per second of steady load")
    ap.add_argument("--sse-clients", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=20, help="concurrent GET connections")
    ap.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="GET load from wrk (when installed) or from an aiohttp client process",
    )
    args = ap.parse_args()
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk") is not None)

    rest = {"port": 0, "anonymous_read": True, "max_stream_clients": max(100, args.sse_clients + 10)}
    async with BridgeHarness(plugins={"rest": rest}) as h:
        url = h.service("rest").endpoints()[0]
        rows = [
            await scenario(h, url, "GET, idle bus", 0, args.duration, args.concurrency, 0, use_wrk),
            await scenario(
                h, url, f"GET, {args.rate:g} frames/s", args.rate, args.duration, args.concurrency, 0, use_wrk
            ),
            await scenario(
                h,
                url,
                f"{args.sse_clients} SSE, {args.rate:g} frames/s",
                args.rate,
                args.duration,
                0,
                args.sse_clients,
                use_wrk,
            ),
            await scenario(
                h,
                url,
                f"GET + {args.sse_clients} SSE, {args.rate:g} frames/s",
                args.rate,
                args.duration,
                args.concurrency,
                args.sse_clients,
                use_wrk,
            ),
        ]
    cols = [
        ("scenario", "scenario", 0),
        ("get_per_s", "GET/s", 0),
        ("p50_ms", "p50 ms", 2),
        ("p99_ms", "p99 ms", 2),
        ("sse_clients", "SSE", 0),
        ("events_per_s", "events/s", 0),
        ("updates_per_s", "updates/s", 0),
        ("frames_per_s", "CAN rx/s", 0),
        ("server_cpu_pct", "server CPU %", 0),
        ("max_lag_ms", "max lag ms", 1),
    ]
    table = [[_fmt(r.get(k), nd) for k, _, nd in cols] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, (_, h, _) in enumerate(cols)]
    print(
        f"\ncanbridge REST benchmark: {os.cpu_count()} CPUs, {args.duration:g} s per scenario, "
        f"{args.concurrency} GET connections ({'wrk' if use_wrk else 'aiohttp client'}), signal {SIGNAL}"
    )
    print("| " + " | ".join(h.ljust(w) for (_, h, _), w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(t, widths, strict=True))
            )
            + " |"
        )
    print(
        "\nGET/s: requests answered per second (clients in another process); events/s and updates/s: SSE\n"
        "events and signal values delivered per second summed over all clients; server CPU %: the\n"
        "bridge process (core, REST and load generator thread) over the scenario."
    )


if __name__ == "__main__":
    asyncio.run(main())
