"""Regression: a replay bus with ``speed: recorded`` and ``loop: true`` played the second pass with
the first pass's clock: every frame was "late", nothing awaited, and the event loop never ran again
(the bridge hung). Fixed in ReplayDriver._play: each pass restarts the clock, and batches yield."""

from __future__ import annotations

from pathlib import Path

from canbridge.core.app import DEMO_DBC, runtime_from_data
from canbridge.testing import until

LOG = Path(__file__).resolve().parent.parent / "data" / "replay" / "demo.log"


async def test_loop_at_recorded_speed_keeps_the_loop_running(tmp_path: Path) -> None:
    rt = runtime_from_data({
        "buses": [{"name": "demo", "interface": "replay", "replay": {"file": str(LOG), "loop": True}}],
        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC)}], "state_dir": str(tmp_path)})
    await rt.start()
    try:
        # the first pass lasts ~1 s; until() returns only if the loop keeps running through the second
        await until(lambda: rt.bus_status("demo").rx_frames > 30, timeout=10, what="frames of the second pass")
    finally:
        await rt.stop()
