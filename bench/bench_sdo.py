#!/usr/bin/env python3
"""SDO reads per second per node: the bridge's SDO client against the ``canopen`` package's own client,
both reading from the same LocalNode (tests/data/eds/servo.eds) on python-can's virtual bus, in one run.

    .venv/bin/python bench/bench_sdo.py [--reads N]

Rows: expedited upload (4 bytes, 0x60FF) and segmented upload (8 bytes, 0x2100), through
``Bridge.refresh`` (queue, upload, decode into the store); the baseline is ``node.sdo.upload`` of a
``canopen.RemoteNode`` (a blocking call, run in a thread as its author advises). One transfer is in
flight per node in both, so the figure is bounded by the round trip to the peer, which here is a
python-can reader thread of the same process; a real node on a 250 kbit/s bus answers in about 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import canopen

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from canbridge.core.app import unique_channel  # noqa: E402
from canbridge.testing import BridgeHarness  # noqa: E402

EDS = ROOT / "tests" / "data" / "eds" / "servo.eds"
OBJECTS = (("expedited, 4 bytes", "line.servo.Target_velocity", 0x60FF),
           ("segmented, 8 bytes", "line.servo.Serial_number", 0x2100))


async def bridge_rate(h: BridgeHarness, name: str, reads: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reads):
        await h.bridge.refresh(name)
    return reads / (time.perf_counter() - t0)


def baseline_rate(channel: str, index: int, reads: int) -> float:
    network = canopen.Network()
    network.connect(interface="virtual", channel=channel, receive_own_messages=False)
    try:
        remote = canopen.RemoteNode(5, str(EDS))
        network.add_node(remote)
        t0 = time.perf_counter()
        for _ in range(reads):
            remote.sdo.upload(index, 0)
        return reads / (time.perf_counter() - t0)
    finally:
        network.disconnect()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=500, help="reads per row (default 500)")
    args = ap.parse_args()
    channel = unique_channel("bench-sdo")
    config = {"buses": [{"name": "line", "interface": "virtual", "channel": channel, "kernel_filters": False,
                         "nodes": [{"id": 5, "name": "servo", "eds": str(EDS)}]}], "mappings": []}
    async with BridgeHarness(config) as h:
        network = canopen.Network()
        network.connect(interface="virtual", channel=channel, receive_own_messages=False)
        try:
            network.add_node(canopen.LocalNode(5, str(EDS)))
            print(f"load average {os.getloadavg()[0]:.2f}; {args.reads} reads per row, one node")
            print(f"{'object':<22}{'canbridge reads/s':>20}{'canopen client reads/s':>26}")
            for label, name, index in OBJECTS:
                sv = await h.bridge.refresh(name)
                assert sv.quality.value == "good", sv
                ours = await bridge_rate(h, name, args.reads)
                theirs = await asyncio.to_thread(baseline_rate, channel, index, args.reads)
                print(f"{label:<22}{ours:>20.0f}{theirs:>26.0f}")
        finally:
            network.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
