"""The simulator's J1939 ECUs (canbridge/core/simulator_j1939.py) decoded by a bridge on a virtual bus: each
source's groups with its own address, multi-packet groups and the DM1 by BAM, Requests answered."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import can
import yaml

from canbridge import Quality
from canbridge.core.app import demo_truck, unique_channel
from canbridge.core.can import j1939tp as tp
from canbridge.core.mapping.j1939 import (
    PGN_DM1,
    PGN_REQUEST,
    PGN_TP_CM,
    PGN_TP_DT,
    decode_dm1,
    make_id,
    pgn_of,
    priority_of,
)
from canbridge.core.simulator import Simulator
from canbridge.core.simulator_j1939 import Ecu, bam_frames, dm1_payload
from canbridge.testing import BridgeHarness

EC1 = 0xFEE3
ROOT = Path(__file__).resolve().parents[2]


def truck_config(channel: str) -> dict[str, Any]:
    t = demo_truck(channel)
    return {"buses": [t["bus"]], "mappings": [t["mapping"]], "simulators": [t["simulator"]]}


async def test_both_sources_and_their_dm1_reach_the_bridge() -> None:
    async with BridgeHarness(truck_config(unique_channel("j1939sim")), simulate=True) as h:
        b = h.bridge
        names = ["truck.engine.EEC1.EngineSpeed", "truck.transmission.EEC1.EngineSpeed",
                 "truck.engine.ET1.EngineCoolantTemperature", "truck.transmission.CCVS.WheelBasedVehicleSpeed"]
        await h.until(lambda: all(b.read(n).quality is Quality.GOOD for n in names), timeout=10)
        engine, gearbox, coolant = (float(b.read(n).value or 0) for n in names[:3])
        assert 650 <= engine <= 1900 and 600 <= gearbox <= 1200  # each source its own waves
        assert 82 <= coolant <= 94
        assert b.read("truck.transmission.EEC1.SourceAddressOfController").value == 3
        # DM1 of each source, 4 DTCs each (2 + 16 bytes: by BAM), lamps amber
        await h.until(lambda: set(b.bus_status("truck").dm1) >= {0x00, 0x03}, timeout=10)
        st = b.bus_status("truck")
        for sa in (0x00, 0x03):
            dm1 = st.dm1[sa]
            assert len(dm1.dtcs) == 4 and dm1.amber_warning == "on"
        assert {d.spn for d in st.dm1[0x00].dtcs} <= {110, 190, 100, 97, 158}
        assert {d.spn for d in st.dm1[0x03].dtcs} <= {177, 127, 161, 191, 523}
        assert st.transport["completed"] >= 2
        assert sum(v for k, v in st.transport.items() if k in tp.REASONS) == 0  # no broken transfer
        # EC1 (39 bytes) has no cycle time: sent only when asked for, then by BAM
        assert b.read("truck.engine.EC1.EngineReferenceTorque").quality is not Quality.GOOD
        peer = can.Bus(interface="virtual", channel=h.data["buses"][0]["channel"], receive_own_messages=False)
        try:
            peer.send(can.Message(arbitration_id=make_id(6, PGN_REQUEST, 0xF9, 0x00),
                                  data=EC1.to_bytes(3, "little"), is_extended_id=True))
            await h.until(lambda: b.read("truck.engine.EC1.EngineReferenceTorque").quality is Quality.GOOD,
                          timeout=5)
            assert b.read("truck.transmission.EC1.EngineReferenceTorque").quality is not Quality.GOOD  # not asked
        finally:
            peer.shutdown()


async def test_dtcs_take_turns_one_clears_one_appears() -> None:
    ecu = Ecu(0x00, ((110, 0), (190, 2), (100, 1), (97, 3)))
    ecu.turn(0)
    first = set(ecu.active)
    ecu.turn(1)
    second = set(ecu.active)
    assert len(first) == len(second) == 3
    assert len(first - second) == 1 and len(second - first) == 1
    back = (second - first).pop()
    assert ecu.counts[back] == 1
    ecu.turn(2)  # (190, 2), left out in epoch 1, is back: its second occurrence
    assert ecu.counts[(190, 2)] == 2
    dm1 = decode_dm1(ecu.dm1(), 0, 0)
    assert dm1 is not None and {(d.spn, d.fmi) for d in dm1.dtcs} == set(ecu.active)


def test_bam_frames_are_what_the_reassembler_takes() -> None:
    data = dm1_payload([(520192 + i, i, i + 1) for i in range(5)], amber=True)  # 22 bytes, SPN of 19 bits
    frames = bam_frames(7, PGN_DM1, 0x03, data)
    assert [pgn_of(i) for i, _ in frames] == [PGN_TP_CM] + [PGN_TP_DT] * 4
    assert all(priority_of(i) == 7 for i, _ in frames)
    r = tp.Reassembler()
    done = [r.feed(i, d, n * 60_000_000) for n, (i, d) in enumerate(frames)]
    completed = done[-1]
    assert completed is not None and completed.pgn == PGN_DM1 and completed.source == 0x03
    assert completed.data == data
    dm1 = decode_dm1(completed.data, 3, 0)
    assert dm1 is not None and [(d.spn, d.fmi, d.occurrences) for d in dm1.dtcs] == \
        [(520192 + i, i, i + 1) for i in range(5)]


async def test_bam_packets_are_50_to_200_ms_apart() -> None:
    channel = unique_channel("j1939gap")
    async with BridgeHarness(truck_config(channel), simulate=True) as h:
        listener = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        try:
            stamps: list[float] = []
            # one whole BAM of the engine's DM1 (4 codes: the announcement and 3 packets); a DM1 goes out once
            # a second, so the bound only stops a test that would hang
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(stamps) < 4:
                msg = await asyncio.to_thread(listener.recv, 0.5)
                if msg is not None and pgn_of(msg.arbitration_id) in (PGN_TP_CM, PGN_TP_DT) \
                        and msg.arbitration_id & 0xFF == 0x00:
                    if pgn_of(msg.arbitration_id) == PGN_TP_CM:
                        stamps = []
                    stamps.append(msg.timestamp)  # set by the sender's send(): no reader delay in it
            assert len(stamps) >= 3, stamps
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            assert all(0.045 <= g <= 0.2 for g in gaps[:3]), gaps
        finally:
            listener.shutdown()
        assert h.bridge.bus_status("truck").transport["completed"] >= 1


def test_the_demo_file_has_the_truck_of_canbridge_demo() -> None:
    """mappings/demo/demo.yaml is `canbridge demo` as a file: its truck bus must not drift from the command's."""
    data = yaml.safe_load((ROOT / "mappings" / "demo" / "demo.yaml").read_text())
    t = demo_truck("x")
    mapping = next(m for m in data["mappings"] if m["bus"] == "truck")
    assert (ROOT / "mappings" / "demo" / mapping["dbc"]).resolve() == Path(t["mapping"]["dbc"]).resolve()
    assert {k: v for k, v in mapping.items() if k != "dbc"} == {k: v for k, v in t["mapping"].items() if k != "dbc"}
    sim = next(s for s in data["simulators"] if s["bus"] == "truck")
    assert sim["waves"].items() <= t["simulator"]["waves"].items()
    assert sim["constants"].items() <= t["simulator"]["constants"].items()


async def test_a_dtc_clears_and_another_appears_at_the_bridge() -> None:
    """The simulator beside the bridge, its DTCs turning every 1.5 s: the bridge's DM1 of a source changes by
    one code out, one code in; every id carries the source address and the DBC's priority."""
    channel = unique_channel("j1939turn")
    async with BridgeHarness(truck_config(channel)) as h:  # no simulator of its own: this test's
        b = h.bridge
        bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        listener = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        sim = Simulator(b.table, "truck", bus)
        assert sim.j1939 is not None
        sim.j1939.dtc_change_s = 1.5
        task = asyncio.create_task(sim.run())
        try:
            await h.until(lambda: 0x00 in b.bus_status("truck").dm1, timeout=5)
            first = {(d.spn, d.fmi) for d in b.bus_status("truck").dm1[0x00].dtcs}
            await h.until(lambda: {(d.spn, d.fmi) for d in b.bus_status("truck").dm1[0x00].dtcs} != first,
                          timeout=5)
            second = {(d.spn, d.fmi) for d in b.bus_status("truck").dm1[0x00].dtcs}
            assert len(first) == len(second) == 4
            assert len(first - second) == 1 and len(second - first) == 1  # one cleared, one appeared
            ids = set()
            while (msg := listener.recv(0)) is not None:
                ids.add(msg.arbitration_id)
            # EEC1 at priority 3 and ET1 at 6 as the DBC has them, from both sources; DM1 (BAM) at 7
            assert {0x0CF00400, 0x0CF00403, 0x18FEEE00, 0x18FEEE03} <= ids
            assert {make_id(7, PGN_TP_CM, 0x00, 0xFF), make_id(7, PGN_TP_CM, 0x03, 0xFF)} <= ids
            assert b.bus_status("truck").unconfigured_sources == {}
        finally:
            sim.stop()
            await task
            bus.shutdown()
            listener.shutdown()
