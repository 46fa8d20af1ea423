"""Regression: a replay bus with ``speed: recorded`` and ``loop: true`` played the second pass with
the first pass's clock: every frame was "late", nothing awaited, and the event loop never ran again
(the bridge hung). Fixed in ReplayDriver._play: each pass restarts the clock, and batches yield."""

from __future__ import annotations

import asyncio
from pathlib import Path

from canbridge.core.app import DEMO_DBC, runtime_from_data

LOG = Path(__file__).resolve().parent.parent / "data" / "replay" / "demo.log"


async def test_loop_at_recorded_speed_keeps_the_loop_running(tmp_path: Path) -> None:
    rt = runtime_from_data({
        "buses": [{"name": "demo", "interface": "replay", "replay": {"file": str(LOG), "loop": True}}],
        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC)}], "state_dir": str(tmp_path)})
    await rt.start()
    try:
        ticks = 0
        for _ in range(400):  # the first pass lasts ~1 s; the loop must keep ticking through the second
            await asyncio.sleep(0.01)
            ticks += 1
            if rt.bus_status("demo").rx_frames > 30:
                break
        assert rt.bus_status("demo").rx_frames > 30 and ticks < 400
    finally:
        await rt.stop()
