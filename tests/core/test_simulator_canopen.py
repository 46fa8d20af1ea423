"""The simulator plays a CANopen node from its EDS (canbridge/core/simulator_canopen.py): boot-up and
heartbeat, cyclic TPDOs with changing values, an SDO server over its dictionary, RPDOs kept, a new boot on
an NMT reset; and the demo's CANopen bus (canbridge/demo/io_module.eds) through the bridge."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import can
import pytest

from canbridge import Caller, Permission, Quality
from canbridge.core.app import DEMO_CANOPEN_BUS, DEMO_EDS, demo_config, runtime_from_data, unique_channel
from canbridge.core.simulator import Simulator
from canbridge.core.simulator_canopen import value_at
from canbridge.testing import BridgeHarness

WRITER = Caller("test", permissions=frozenset({Permission.WRITE}))
IO = "canopen.io1"
AI1 = f"{IO}.Read_analogue_input_16_bit.Analogue_input_1"
DI = f"{IO}.Read_input_8_bit.Digital_inputs_1_8"
DO = f"{IO}.Write_output_8_bit.Digital_outputs_1_8"
AO = f"{IO}.Write_analogue_output_16_bit.Analogue_output_1"


def config() -> dict[str, Any]:
    data = demo_config(unique_channel("co"), canopen=True)
    data["buses"] = [b for b in data["buses"] if b["name"] == DEMO_CANOPEN_BUS]
    data["mappings"], data["simulators"] = [], [s for s in data["simulators"] if s["bus"] == DEMO_CANOPEN_BUS]
    return data


def test_the_dbc_simulator_leaves_the_nodes_messages_to_the_node() -> None:
    rt = runtime_from_data(config(), base_dir=Path.cwd())
    sim = Simulator(rt.table, DEMO_CANOPEN_BUS, None)  # type: ignore[arg-type]
    assert sim.played == [] and sim.heard == {}  # no SDO "frames", heartbeats or TPDOs from the DBC side
    assert len(sim.canopen.nodes) == 1 and sim.canopen.nodes[0].node.id == 3


def test_the_demo_has_no_canopen_bus_unless_asked() -> None:
    assert [b["name"] for b in demo_config()["buses"]] == ["demo"]
    assert [b["name"] for b in demo_config(canopen=True)["buses"]] == ["demo", DEMO_CANOPEN_BUS]
    assert DEMO_EDS.is_file()


@pytest.mark.parametrize("t", [0.0, 3.3, 7.9, 12.5])
def test_values_stay_within_the_objects_limits(t: float) -> None:
    import canopen

    od: Any = canopen.objectdictionary.import_od(str(DEMO_EDS), 3)
    for var, lo, hi in ((od[0x6401][1], 0, 10000), (od[0x6401][2], -10000, 10000), (od[0x6000][1], 0, 255)):
        assert lo <= value_at(var, t, 1) <= hi


async def test_boot_up_heartbeat_and_changing_tpdo_values() -> None:
    async with BridgeHarness(config(), simulate=True, base_dir=Path.cwd()) as h:
        await h.until(lambda: h.bridge.read(f"{IO}.NMT_state").value == 5, timeout=5)
        assert h.bridge.bus_status(DEMO_CANOPEN_BUS).canopen["io1"].boot_ups >= 1
        seen: set[Any] = set()

        def changing() -> bool:
            v = h.bridge.read(AI1)
            if v.quality is Quality.GOOD:
                seen.add(v.value)
            return len(seen) >= 3

        await h.until(changing, timeout=5)
        assert h.bridge.read(DI).quality is Quality.GOOD


async def test_sdo_uploads_and_downloads_against_the_played_dictionary() -> None:
    async with BridgeHarness(config(), simulate=True, base_dir=Path.cwd()) as h:
        await h.until(lambda: h.bridge.read(f"{IO}.NMT_state").value == 5, timeout=5)
        assert (await h.bridge.refresh(f"{IO}.Identity_object.Product_code")).value == 401
        assert (await h.bridge.refresh(f"{IO}.Device_type")).value == 0x000F0191
        await h.bridge.write(AO, 4321, WRITER)
        assert (await h.bridge.refresh(AO)).value == 4321  # read back from the node, not the bridge's cache


async def test_an_nmt_reset_boots_the_node_again() -> None:
    async with BridgeHarness(config(), simulate=True, base_dir=Path.cwd()) as h:
        await h.until(lambda: h.bridge.read(AI1).quality is Quality.GOOD, timeout=5)
        before = h.bridge.bus_status(DEMO_CANOPEN_BUS).canopen["io1"].boot_ups
        await h.bridge.write(f"{IO}.NMT_command", "reset_node", WRITER)
        await h.until(lambda: h.bridge.bus_status(DEMO_CANOPEN_BUS).canopen["io1"].boot_ups == before + 1)
        await h.until(lambda: h.bridge.read(AI1).quality is Quality.GOOD, timeout=5)
        assert h.bridge.read(f"{IO}.NMT_state").value in (127, 5)


async def test_the_rpdo_value_is_what_an_sdo_upload_of_the_object_returns() -> None:
    bus = can.Bus(interface="virtual", channel=(cfg := config())["buses"][0]["channel"], receive_own_messages=False)
    try:
        async with BridgeHarness(cfg, simulate=True, base_dir=Path.cwd()) as h:
            await h.until(lambda: h.bridge.read(f"{IO}.NMT_state").value == 5, timeout=5)
            await h.bridge.write(DO, 0x5A, WRITER)
            import canopen

            client = canopen.Network(bus)
            remote = canopen.RemoteNode(3, str(DEMO_EDS))
            client.add_node(remote)
            notifier = can.Notifier(bus, client.listeners)
            try:
                value = await asyncio.get_running_loop().run_in_executor(None, lambda: remote.sdo[0x6200][1].raw)
            finally:
                notifier.stop()
            assert value == 0x5A
    finally:
        bus.shutdown()
