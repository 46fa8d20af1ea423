"""Regression: when the broadcast manager refused the update of a cyclic frame, the write was refused
(bus_down) but the runner had already remembered the new frame: the next reconnect started sending the
refused value. Fixed in BusRunner.set_cyclic: the frame is remembered only once the driver took it."""

from __future__ import annotations

from pathlib import Path

import pytest

from canbridge import BusError, Caller, RefusalReason, WriteRefused
from canbridge.testing import until
from tests.core.test_busrunner import FakePeriodic, fake_runtime

SET = "demo.MotorCommand.SpeedSetpoint"


async def test_the_refused_value_never_reaches_the_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = {"writable": ["MotorCommand.*"], "transmit": {"MotorCommand": {"period_ms": 100}}}
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        await rt.write(SET, 100, Caller("test"))
        real = FakePeriodic.modify

        def refuse(self: FakePeriodic, frame: object) -> None:
            raise BusError("bcm: No buffer space available")

        monkeypatch.setattr(FakePeriodic, "modify", refuse)
        with pytest.raises(WriteRefused) as info:
            await rt.write(SET, 4000, Caller("test"))
        assert info.value.reason is RefusalReason.BUS_DOWN
        monkeypatch.setattr(FakePeriodic, "modify", real)
        link.fail(OSError(100, "Network is down"))
        await until(lambda: rt.bus_status("demo").reconnects == 1 and link.running_periodic)
        (restarted,) = link.running_periodic
        assert int.from_bytes(restarted.frame.data[0:2], "little") == 100
        assert rt.read(SET).value == 100
