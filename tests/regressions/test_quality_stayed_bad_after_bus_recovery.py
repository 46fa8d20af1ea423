"""Regression: after the bus went down and came back, received messages kept quality "bad" until
their next frame (forever for a message without a timeout that is sent only on change). Fixed in
Runtime._bus_state_changed: back on a usable bus they are "stale" (seen before) or "waiting"."""

from __future__ import annotations

from pathlib import Path

from canbridge import Quality
from canbridge.testing import until
from tests.core.test_busrunner import SPEED, fake_runtime, motor_status


async def test_recovered_bus_is_not_bad(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(3))
        link.fail(OSError(100, "Network is down"))
        await until(lambda: rt.bus_status("demo").reconnects == 1)
        assert rt.read(SPEED).quality is Quality.STALE
        assert rt.read("demo.Diagnostics.DiagPage").quality is Quality.WAITING
