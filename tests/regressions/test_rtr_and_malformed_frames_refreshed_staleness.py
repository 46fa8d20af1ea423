"""Regression: a remote request (RTR) or a too-short frame of a mapped id updated the message's
timestamp and frame count, so stale values looked fresh and never went stale while a peer kept
polling or sent garbage. Fixed in BusRunner.on_frames: only decoded data frames refresh a message."""

from __future__ import annotations

from pathlib import Path

from canbridge import FrameFlags, Quality
from canbridge.testing import until
from tests.core.test_busrunner import SPEED, fake_runtime, motor_status, now_ns


async def test_rtr_and_short_frames_do_not_refresh(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, mapping={"stale_after_ms": {"MotorStatus": 100}}) as (rt, link):
        link.deliver(motor_status(1))
        ts = rt.read(SPEED).timestamp_ns
        await until(lambda: rt.read(SPEED).quality is Quality.STALE)
        link.deliver((0x100, int(FrameFlags.RTR), b"", now_ns()), (0x100, 0, b"\x01", now_ns()))
        v = rt.read(SPEED)
        assert (v.quality, v.timestamp_ns, v.value) == (Quality.STALE, ts, 1)
        [ms] = [m for m in rt.message_status() if m.name == "demo.MotorStatus"]
        assert ms.frames == 1
