"""The ECU simulator (canbridge/core/simulator.py) as the demo runs it, beside a bridge."""

from __future__ import annotations

from pathlib import Path

import pytest

from canbridge import Caller, Quality
from canbridge.core.app import demo_config, runtime_from_data, unique_channel
from canbridge.core.simulator import Simulator
from canbridge.testing import BridgeHarness


async def test_values_change_over_time_and_follow_commands() -> None:
    async with BridgeHarness(simulate=True) as h:
        b = h.bridge
        await h.until(lambda: all(b.read(n).quality is Quality.GOOD for n in
                                  ("demo.MotorStatus.MotorCurrent", "demo.BatteryStatus.PackVoltage",
                                   "demo.VehicleInfo.Odometer", "demo.PowerStatus.MotorPower")))
        first = {n: b.read(n).value for n in ("demo.MotorStatus.MotorCurrent", "demo.BatteryStatus.PackVoltage")}
        await h.until(lambda: all(b.read(n).value != v for n, v in first.items()), timeout=10)
        for name in b.signals:
            info = b.signals[name]
            v = b.read(name).value
            if v is not None and info.direction == "rx":
                assert info.minimum <= v <= info.maximum, name
        await b.write("demo.MotorCommand.SpeedSetpoint", 1500, Caller("test"))
        await b.write("demo.MotorCommand.Enable", True, Caller("test"))
        await h.until(lambda: b.read("demo.MotorStatus.SetpointEcho").value == 1500)
        await h.until(lambda: b.read("demo.MotorStatus.MotorEnabled").value is True)
        # ramp: the speed moves towards the setpoint, and gets there
        await h.until(lambda: b.read("demo.MotorStatus.MotorSpeed").value == 1500, timeout=10)


async def test_multiplexed_pages_take_turns() -> None:
    async with BridgeHarness(simulate=True) as h:
        seen: set[int] = set()

        def page() -> bool:
            v = h.bridge.read("demo.Diagnostics.DiagPage").value
            if v is not None:
                seen.add(int(v))
            return seen == {0, 1, 2}

        await h.until(page, timeout=10)  # Diagnostics every second, pages 0, 1, 2


def test_rules_must_name_message_and_signal() -> None:
    rt = runtime_from_data(demo_config(unique_channel("sim"), state_dir=Path("/tmp/unused")))
    with pytest.raises(ValueError, match=r"use Message\.Signal"):
        Simulator(rt.table, "demo", None, follow={"SetpointEcho": "MotorCommand.SpeedSetpoint"})  # type: ignore[arg-type]
    sim = Simulator(rt.table, "demo", None)  # type: ignore[arg-type]
    assert {e.info.message for e in sim.played} == {"MotorStatus", "PowerStatus", "BatteryStatus",
                                                    "VehicleInfo", "Diagnostics"}
    assert [e.info.message for e in sim.heard.values()] == ["MotorCommand"]
    a = sim._payload(rt.table.messages["demo.BatteryStatus"], 1.0)
    assert len(a) == 8
