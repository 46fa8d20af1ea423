"""The bridge as CANopen SYNC producer on a real SocketCAN interface: the kernel's broadcast manager sends
SYNC (0x80, no data) at the configured period, and stops when the bridge stops. candump watches."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from pathlib import Path

from tests.socketcan.conftest import Candump, cansend

END = "7FE#01"  # an end marker sent by a peer


async def test_sync_is_sent_by_the_kernel_at_its_period_and_stops_with_the_bridge(scratch_vcan: str,
                                                                                   tmp_path: Path) -> None:
    from canbridge.core.app import runtime_from_data
    from canbridge.core.host import load_registry

    _, registry = load_registry(load_entry_points=False)
    rt = runtime_from_data({"state_dir": str(tmp_path), "buses": [
        {"name": "line", "interface": "socketcan", "channel": scratch_vcan,
         "canopen": {"sync": {"period_ms": 50}}}], "mappings": []}, registry=registry)
    dump = await Candump(scratch_vcan, "080:7FF", "7FE:7FF").start()
    try:
        await rt.start()
        try:
            lines = await dump.collect(10, limit=20)
            assert lines[:10] == ["080#"] * 10, lines
            gaps = [b - a for a, b in itertools.pairwise(dump.stamps)]
            assert 0.025 < statistics.median(gaps) < 0.1, gaps  # 50 ms (emulated CPU: a loose check)
        finally:
            await rt.stop()
        stopped = time.time()
        await asyncio.sleep(0.5)  # ten periods
        cansend(scratch_vcan, END)
        await dump.wait_for(END)
        late = [line for line, t in zip(dump.lines, dump.stamps, strict=True) if t > stopped and line != END]
        assert late == [], "SYNC still sent after the bridge stopped"
    finally:
        await dump.stop()
