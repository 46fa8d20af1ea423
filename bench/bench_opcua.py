"""OPC UA value updates delivered to one subscribed client: the batched path against the obvious way.

    .venv/bin/python bench/bench_opcua.py [--sizes 1000 10000] [--seconds 5]

The server (canbridge's OPC UA service on an in-memory bridge) runs in this process and changes every
variable every 50 ms (the bridge's batch interval; offered load 20 x N updates/s); one asyncua client
in a separate process subscribes to all of them (publishing interval 50 ms, queue size 0 -> revised
to 1) and counts the notifications it receives.
Rows, measured in the same run:

* ``write_value``: the obvious way, ``await node.write_value(...)`` per signal, asyncua's own
  monitored items (a ``copy.deepcopy`` per notification);
* ``batched+deepcopy``: the service's batched ``apply`` with asyncua's monitored items;
* ``batched``: what the plugin does: batched ``apply`` and monitored items without the deepcopy.

"delivered/s" counts updates the client received; "produced/s" the updates the server applied
(coalesced by the queue size of 1 when the client's publishing interval is slower). The load generator,
the server and the client share the machine's cores: compare rows of one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "plugins"))

from asyncua import ua  # noqa: E402
from asyncua.client.client import Client  # noqa: E402
from asyncua.server.server import Server  # noqa: E402
from canbridge_opcua.config import OpcUaConfig  # noqa: E402
from canbridge_opcua.service import OpcUaService  # noqa: E402

from canbridge import Quality, SignalValue  # noqa: E402
from canbridge.testing import FakeBridge, signal_info  # noqa: E402

PUBLISH_MS = 50.0
BATCH_S = 0.05  # every variable changes once per batch, a batch every 50 ms: 20 updates/s per variable


def bench_bridge(n: int, state_dir: Path) -> FakeBridge:
    """N float signals on one bus, 8 per message, all good. The benchmark drives updates itself
    (``svc.apply``): nothing is published to the bridge, so the service's own subscription stays idle."""
    infos = [
        signal_info(
            f"bench.M{i // 8:05d}.S{i % 8}", frame_id=i // 8, extended=True, value_type=float, scale=0.1, unit="V"
        )
        for i in range(n)
    ]
    bridge = FakeBridge(infos, state_dir=state_dir)
    now = time.time_ns()
    bridge.publish(*(SignalValue(s.name, 0.0, Quality.GOOD, now) for s in infos))
    return bridge


# --- the client process ---------------------------------------------------------------------------


async def client_main(url: str, n: int) -> None:
    count = 0

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            nonlocal count
            count += 1

        def status_change_notification(self, status: Any) -> None:
            print(f"status {status}", file=sys.stderr, flush=True)

    # a client decoding 10,000 notifications per publish misses asyncua's 1 s watchdog probe: relax it
    async with Client(url, timeout=60, watchdog_intervall=60) as client:
        idx = await client.get_namespace_index("urn:canbridge")
        ids = [f"bench.M{i // 8:05d}.S{i % 8}" for i in range(n)]
        nodes = [client.get_node(ua.NodeId(cast(Any, s), cast(Any, idx))) for s in ids]
        sub = await client.create_subscription(PUBLISH_MS, Handler())
        for i in range(0, n, 1000):
            await sub.subscribe_data_change(nodes[i : i + 1000], queuesize=0)
        print("ready", flush=True)
        while True:
            await asyncio.sleep(0.1)
            print(f"count {time.monotonic():.6f} {count}", flush=True)


# --- the server side ------------------------------------------------------------------------------


async def _pace(next_at: float) -> float:
    """Sleep until the next batch is due (as the bridge's subscription delivers one per interval)."""
    next_at += BATCH_S
    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return max(next_at, time.monotonic() - BATCH_S)  # when behind, do not try to catch up


async def produce_batched(svc: OpcUaService, names: list[str], stop: asyncio.Event, produced: list[int]) -> None:
    k = 0
    next_at = time.monotonic()
    while not stop.is_set():
        k += 1
        now = time.time_ns()
        batch = [SignalValue(n, float(k % 1000) + i * 1e-3, Quality.GOOD, now) for i, n in enumerate(names)]
        await svc.apply(batch)
        produced[0] += len(batch)
        next_at = await _pace(next_at)


async def produce_write_value(
    server: Server, nodeids: list[ua.NodeId], stop: asyncio.Event, produced: list[int]
) -> None:
    nodes = [server.get_node(nid) for nid in nodeids]
    k = 0
    next_at = time.monotonic()
    while not stop.is_set():
        k += 1
        for i, node in enumerate(nodes):
            dv = ua.DataValue(
                ua.Variant(float(k % 1000) + i * 1e-3, ua.VariantType.Double),
                SourceTimestamp=cast(Any, datetime.now(UTC)),
            )
            await node.write_value(dv)
            produced[0] += 1
            if i % 100 == 99:
                await asyncio.sleep(0)  # as a per-frame handler would: other tasks get the loop
            if stop.is_set():
                break
        next_at = await _pace(next_at)


@contextlib.asynccontextmanager
async def service(n: int, fast_items: bool) -> AsyncIterator[OpcUaService]:
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        bridge = bench_bridge(n, Path(tmp))
        cfg = OpcUaConfig(
            listen="opc.tcp://127.0.0.1:0",
            security_policies=["None"],
            generate_certificate=False,
            allow_anonymous=True,
            diagnostics_interval=3600,
            min_publishing_interval_ms=10,
        )
        svc = OpcUaService(bridge, cfg)
        if not fast_items:  # asyncua's own monitored items, deepcopy included
            svc.is_fast_node = lambda nodeid: False  # type: ignore[method-assign]
        await svc.start()
        try:
            yield svc
        finally:
            await svc.stop()


async def run_one(n: int, method: str, seconds: float) -> dict[str, float]:
    async with service(n, fast_items=(method == "batched")) as svc:
        url = svc.endpoints()[0]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            url,
            str(n),
            stdout=asyncio.subprocess.PIPE,
            env=dict(os.environ, PYTHONPATH=str(ROOT / "plugins")),
        )
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 300)
            if line.strip() != b"ready":
                raise RuntimeError(f"client failed to start: {line!r}")
            names = list(svc.bridge.signals)
            stop = asyncio.Event()
            produced = [0]
            if method == "write_value":
                assert svc.server is not None
                nodeids = [svc.node_id(s) for s in names]
                prod = asyncio.create_task(produce_write_value(svc.server, nodeids, stop, produced))
            else:
                prod = asyncio.create_task(produce_batched(svc, names, stop, produced))

            latest: list[tuple[float, int]] = []
            fresh = asyncio.Event()

            async def read_counts() -> None:  # keep only the newest count line (the pipe buffers old ones)
                assert proc.stdout is not None
                while raw := await proc.stdout.readline():
                    parts = raw.split()
                    if parts and parts[0] == b"count":
                        latest[:] = [(float(parts[1]), int(parts[2]))]
                        fresh.set()

            reader = asyncio.create_task(read_counts())

            async def sample() -> tuple[float, int]:
                fresh.clear()
                await asyncio.wait_for(fresh.wait(), 60)
                return latest[0]

            await asyncio.sleep(1.0)  # warm up: initial values and first publishes
            t0, c0 = await sample()
            cpu0, p0, wall0 = time.process_time(), produced[0], time.monotonic()
            await asyncio.sleep(seconds)
            t1, c1 = await sample()
            cpu1, p1, wall1 = time.process_time(), produced[0], time.monotonic()
            stop.set()
            await prod
            reader.cancel()
            return {
                "delivered": (c1 - c0) / (t1 - t0),
                "produced": (p1 - p0) / (wall1 - wall0),
                "cpu": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
                # server process CPU (producer + apply + publishing) per update it applied
                "us": 1e6 * (cpu1 - cpu0) / max(1, p1 - p0),
            }
        finally:
            proc.kill()
            await proc.wait()


async def bench(sizes: list[int], seconds: float) -> None:
    rows = []
    for n in sizes:
        base = None
        for method in ("write_value", "batched+deepcopy", "batched"):
            r = await run_one(n, method, seconds)
            base = base or r["delivered"]
            rows.append((n, method, r["produced"], r["delivered"], r["delivered"] / base, r["cpu"], r["us"]))
            print(f"  {n:>6} {method:<17} done", file=sys.stderr, flush=True)
    print()
    head = f"{'variables':>9}  {'method':<17} {'produced/s':>11} {'delivered/s':>12} {'vs write_value':>15}"
    print(f"{head} {'server CPU':>11} {'µs/update':>10}")
    for n, method, prod, deliv, ratio, cpu, us in rows:
        print(f"{n:>9}  {method:<17} {prod:>11,.0f} {deliv:>12,.0f} {ratio:>14.1f}x {cpu:>10.0f}% {us:>10.1f}")
    print(
        f"\n(publishing interval {PUBLISH_MS:.0f} ms, queue size 1; {os.cpu_count()} CPUs shared by "
        "load generator, server and client)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--client", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.client:
        asyncio.run(client_main(args.client[0], int(args.client[1])))
    else:
        asyncio.run(bench(args.sizes, args.seconds))


if __name__ == "__main__":
    main()
