"""J1939 senders heard but not configured become signals at run time (core/heard.py, core/j1939bus.py,
table.add_heard_source): named ``<bus>.sa0x<SA>.<message>.<signal>``, decoded from their first frame,
announced to SignalsAddedSubscription, bounded per bus against a flood of forged source addresses."""

from __future__ import annotations

import asyncio
import tracemalloc
from pathlib import Path
from typing import Any

from canbridge import FrameFlags, Quality, RawFrame, SignalInfo
from canbridge.core.app import runtime_from_data
from canbridge.core.mapping import j1939
from canbridge.core.runtime import Runtime

DBC = Path(__file__).resolve().parents[1] / "data" / "dbc" / "j1939_test.dbc"
EXT = int(FrameFlags.EXTENDED)


def runtime(tmp_path: Path, **bus: Any) -> Runtime:
    return runtime_from_data({
        "buses": [{"name": "truck", "interface": "virtual", "channel": "heard", **bus}],
        "mappings": [{"bus": "truck", "dbc": str(DBC), "sources": {0x00: "engine"}}],
        "state_dir": str(tmp_path),
    })


def frame(pgn: int, sa: int, data: bytes, priority: int = 3) -> RawFrame:
    return (j1939.make_id(priority, pgn, sa), EXT, data, 1)


def eec1(rpm: float) -> bytes:
    return bytes([0xF1, 0xFF, 125]) + round(rpm / 0.125).to_bytes(2, "little") + b"\xff\xff\xff"


def test_a_frame_from_an_unknown_source_creates_its_signals_and_decodes(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    before = len(rt.signals)
    rt.runners["truck"].on_frames([frame(0xF004, 0x21, eec1(900.0))])
    sv = rt.read("truck.sa0x21.EEC1.EngineSpeed")
    assert (sv.value, sv.quality) == (900.0, Quality.GOOD)
    info = rt.signals["truck.sa0x21.EEC1.EngineSpeed"]
    assert (info.bus, info.message, info.signal, info.unit, info.writable) == ("truck", "sa0x21.EEC1", "EngineSpeed",
                                                                             "rpm", False)
    assert j1939.source_of(info.frame_id) == 0x21 and info.index == list(rt.signals).index(info.name)
    assert "truck.sa0x21.EEC1" in rt.messages and rt.messages["truck.sa0x21.EEC1"].message == "sa0x21.EEC1"
    assert len(rt.signals) == before + 5  # EEC1's five signals, only for the PGN heard (not ET1, CCVS, ...)
    st = rt.bus_status("truck")
    assert st.unconfigured_sources == {} and st.unmapped_frames == 0
    # a later frame at another priority reaches the same signals; read_many covers the new ones
    rt.runners["truck"].on_frames([frame(0xF004, 0x21, eec1(950.0), priority=6)])
    assert rt.read("truck.sa0x21.EEC1.EngineSpeed").value == 950.0
    assert len(rt.read_many()) == len(rt.signals)
    [ms] = [m for m in rt.message_status("truck") if m.name == "truck.sa0x21.EEC1"]
    assert ms.frames == 2


def test_two_sources_of_one_pgn_never_overwrite_each_other(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    rt.runners["truck"].on_frames([frame(0xF004, 0x21, eec1(900.0)), frame(0xF004, 0x22, eec1(1200.0)),
                                   frame(0xF004, 0x00, eec1(1500.0)), frame(0xF004, 0x21, eec1(910.0))])
    assert rt.read("truck.sa0x21.EEC1.EngineSpeed").value == 910.0
    assert rt.read("truck.sa0x22.EEC1.EngineSpeed").value == 1200.0
    assert rt.read("truck.EEC1.EngineSpeed").value == 1500.0  # the configured single source keeps its name


def test_a_heard_source_is_bad_when_its_bus_goes_down_like_any_signal(tmp_path: Path) -> None:
    from canbridge import BusState

    rt = runtime(tmp_path)
    r = rt.runners["truck"]
    r.on_frames([frame(0xFEEE, 0x33, b"\x50" * 8)])
    assert rt.read("truck.sa0x33.ET1.FuelTemperature").value == 40
    rt._bus_state_changed(r, BusState.DOWN)
    assert rt.read("truck.sa0x33.ET1.FuelTemperature").quality is Quality.BAD


def test_a_flood_of_forged_source_addresses_is_bounded_and_counted(tmp_path: Path) -> None:
    rt = runtime(tmp_path, j1939_max_unknown_sources=4)
    r = rt.runners["truck"]
    n0, m0 = len(rt.signals), len(rt.messages)
    flood = [frame(pgn, 0x01 + (i % 253), eec1(100.0) if pgn == 0xF004 else bytes(8))
             for i in range(300) for pgn in (0xF004, 0xFEEE)]
    tracemalloc.start()
    r.on_frames(flood)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    heard = sorted({s.message.split(".")[0] for s in rt.signals.values() if s.message.startswith("sa0x")})
    assert heard == ["sa0x01", "sa0x02", "sa0x03", "sa0x04"]
    assert len(rt.signals) == n0 + 4 * (5 + 3) and len(rt.messages) == m0 + 8  # EEC1 and ET1 of 4 sources
    st = rt.bus_status("truck")
    # the other 249 addresses are counted per (PGN, source), not decoded
    # (300 frames per PGN over addresses 1..253: 1..47 send twice)
    assert len(st.unconfigured_sources) == 2 * 249
    assert st.unconfigured_sources["EEC1@0x05"] == 2 and st.unconfigured_sources["ET1@0x30"] == 1
    assert st.unmapped_frames == 600 - 4 * 2 * 2  # decoded: the four heard sources' two frames of each PGN
    assert peak < 2_000_000, peak  # eight compiled decoders and the counts, not 500 sources' tables


def test_heard_sources_can_be_turned_off(tmp_path: Path) -> None:
    rt = runtime(tmp_path, j1939_max_unknown_sources=0)
    n0 = len(rt.signals)
    rt.runners["truck"].on_frames([frame(0xF004, 0x21, eec1(900.0))])
    assert len(rt.signals) == n0 and rt.bus_status("truck").unconfigured_sources == {"EEC1@0x21": 1}


def test_a_name_taken_by_the_configuration_is_not_reused(tmp_path: Path) -> None:
    rt = runtime_from_data({
        "buses": [{"name": "truck", "interface": "virtual", "channel": "heard"}],
        "mappings": [{"bus": "truck", "dbc": str(DBC), "sources": {0x00: "engine", 0x05: "sa0x21"}}],
        "state_dir": str(tmp_path),
    })
    rt.runners["truck"].on_frames([frame(0xF004, 0x21, eec1(900.0)), frame(0xF004, 0x05, eec1(700.0))])
    assert rt.read("truck.sa0x21.EEC1.EngineSpeed").value == 700.0  # still the configured 0x05's
    assert rt.bus_status("truck").unconfigured_sources == {"EEC1@0x21": 1}


async def test_subscribers_hear_of_added_signals_and_their_values(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    batches: list[list[SignalInfo]] = []
    values: dict[str, object] = {}
    added = rt.subscribe_signals_added()
    sub = rt.subscribe(interval=0.0)

    async def collect_added() -> None:
        async for batch in added:
            batches.append(batch)

    async def collect_values() -> None:
        async for batch in sub:
            values.update({v.name: v.value for v in batch})

    tasks = [asyncio.create_task(collect_added()), asyncio.create_task(collect_values())]
    await asyncio.sleep(0.01)
    rt.runners["truck"].on_frames([frame(0xF004, 0x21, eec1(900.0)), frame(0xFEEE, 0x21, b"\x50" * 8)])
    for _ in range(100):
        if batches and "truck.sa0x21.ET1.FuelTemperature" in values:
            break
        await asyncio.sleep(0.01)
    assert [s.name for b in batches for s in b] == [n for n in rt.signals if n.startswith("truck.sa0x21.")]
    assert len(batches[0]) == 8 and batches[0][0].name == "truck.sa0x21.EEC1.EngineTorqueMode"
    assert values["truck.sa0x21.EEC1.EngineSpeed"] == 900.0 and values["truck.sa0x21.ET1.FuelTemperature"] == 40
    added.close()
    sub.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
