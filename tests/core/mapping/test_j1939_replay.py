"""A J1939 truck log (candump -L) replayed through a J1939 mapping end to end: several sources of one PGN,
an unconfigured sender (signals of its own, heard at run time), a not-available value, a BAM and an
RTS/CTS multi-packet message, a broken BAM."""

from __future__ import annotations

from pathlib import Path

import pytest

from canbridge import Quality
from canbridge.core.app import runtime_from_data
from canbridge.core.can.replay import ReplayDriver
from canbridge.testing import until

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize("speed", ["fast", "recorded"])
async def test_a_truck_log_replays_into_per_source_signals(tmp_path: Path, speed: str) -> None:
    rt = runtime_from_data({
        "buses": [{"name": "truck", "interface": "replay", "channel": "log",
                   "replay": {"file": str(DATA / "replay" / "j1939_truck.log"), "speed": speed}}],
        "mappings": [{"bus": "truck", "dbc": str(DATA / "dbc" / "j1939_test.dbc"),
                      "sources": {0x00: "engine", 0x0F: "retarder", 0x0B: "brakes"}}],
        "state_dir": str(tmp_path),
    })
    await rt.start()
    try:
        d = rt.runners["truck"].driver
        assert isinstance(d, ReplayDriver)
        await until(lambda: d.finished.is_set(), timeout=20)
        assert rt.read("truck.engine.EEC1.EngineSpeed").value == 1600.0
        assert rt.read("truck.retarder.EEC1.EngineSpeed").value == 700.0
        coolant = rt.read("truck.engine.ET1.EngineCoolantTemperature")
        assert (coolant.value, coolant.quality, coolant.reason) == (None, Quality.BAD, "J1939 not available")
        assert rt.read("truck.engine.ET1.EngineOilTemperature").value == pytest.approx(90.0)
        assert rt.read("truck.brakes.CCVS.WheelBasedVehicleSpeed").value == pytest.approx(88.5)
        # the BAM from the engine and the RTS/CTS transfer from the retarder, decoded like frames
        assert rt.read("truck.engine.EC1.EngineSpeedAtIdlePoint1").value == 600.0
        assert rt.read("truck.engine.EC1.EngineSpeedAtPoint2").value == 1600.0
        assert rt.read("truck.engine.EC1.EngineMaxMomentaryOverrideTime").value == pytest.approx(5.0)
        assert rt.read("truck.retarder.EC1.EngineSpeedAtIdlePoint1").value == 700.0
        assert rt.read("truck.retarder.EC1.EngineReferenceTorque").value == 2070
        st = rt.bus_status("truck")
        # the sender nobody configured got signals of its own when it was heard
        assert rt.read("truck.sa0x21.EEC1.EngineSpeed").value == 0x1F38 * 0.125
        assert st.unconfigured_sources == {}
        assert st.transport == {"completed": 2, "sequence": 1, "ignored": 3}  # 2 packets after the gap, 1 EoMA
        assert st.unmapped_frames == 0 and st.decode_errors == 0
        assert st.rx_frames == 29
        [ec1] = [m for m in rt.message_status() if m.name == "truck.retarder.EC1"]
        assert ec1.frames == 1  # the broken BAM from the retarder was never decoded
    finally:
        await rt.stop()
