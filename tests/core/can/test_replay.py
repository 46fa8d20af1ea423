"""The replay bus kind (canbridge/core/can/replay.py): candump -L and ASC logs played through the mapping,
at recorded speed and fast, once and in a loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from canbridge import BusState, Caller, Quality
from canbridge.core.app import DEMO_DBC, runtime_from_data
from canbridge.core.can.replay import ReplayDriver
from canbridge.core.runtime import Runtime
from canbridge.testing import until

REPLAY = Path(__file__).resolve().parents[2] / "data" / "replay"
LOGS = [REPLAY / "demo.log", REPLAY / "demo.asc"]  # candump -L and Vector ASC, the same 25 frames
MAPPED = 24  # 20 MotorStatus + 4 VehicleInfo; one 0x7FF frame is not mapped


@contextlib.asynccontextmanager
async def replay(tmp_path: Path, log: Path, **options: Any) -> AsyncIterator[Runtime]:
    data = {
        "buses": [{"name": "demo", "interface": "replay", "channel": "log",
                   "replay": {"file": str(log), **options}}],
        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC), "writable": ["MotorCommand.*"]}],
        "state_dir": str(tmp_path),
    }
    rt = runtime_from_data(data)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


def driver(rt: Runtime) -> ReplayDriver:
    d = rt.runners["demo"].driver
    assert isinstance(d, ReplayDriver)
    return d


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.suffix)
@pytest.mark.parametrize("speed", ["recorded", "fast"])
async def test_a_log_plays_once_into_the_store(tmp_path: Path, log: Path, speed: str) -> None:
    async with replay(tmp_path, log, speed=speed) as rt:
        await until(lambda: driver(rt).finished.is_set(), timeout=10)
        st = rt.bus_status("demo")
        assert (st.rx_frames, st.state) == (MAPPED, BusState.ACTIVE)  # kernel-style filters drop 0x7FF
        v = rt.read("demo.MotorStatus.MotorSpeed")
        assert (v.value, v.quality) == (1900, Quality.GOOD)
        assert rt.read("demo.MotorStatus.SetpointEcho").value == 1000
        assert rt.read("demo.VehicleInfo.VehicleSpeed").value == pytest.approx(150.0)
        [ms] = [m for m in rt.message_status() if m.name == "demo.MotorStatus"]
        assert ms.frames == 20
        if speed == "fast":
            assert rt.store.batches == 1  # everything at once
        else:
            # frames 50 ms apart arrive over time, not at once (a late wake-up on a loaded machine may join a few)
            assert rt.store.batches > 1


@pytest.mark.parametrize("log", LOGS, ids=lambda p: p.suffix)
async def test_a_log_loops(tmp_path: Path, log: Path) -> None:
    async with replay(tmp_path, log, speed="fast", loop=True) as rt:
        await until(lambda: rt.bus_status("demo").rx_frames >= 3 * MAPPED, timeout=10)
        assert not driver(rt).finished.is_set()


async def test_recorded_speed_loops_too(tmp_path: Path) -> None:
    async with replay(tmp_path, LOGS[0], speed="recorded", loop=True) as rt:
        await until(lambda: rt.bus_status("demo").rx_frames > MAPPED, timeout=10)


async def test_unmapped_frames_are_seen_without_filters(tmp_path: Path) -> None:
    data = {
        "buses": [{"name": "demo", "interface": "replay", "kernel_filters": False,
                   "replay": {"file": str(LOGS[0]), "speed": "fast"}}],
        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC)}],
        "state_dir": str(tmp_path),
    }
    rt = runtime_from_data(data)
    await rt.start()
    try:
        await until(lambda: driver(rt).finished.is_set())
        st = rt.bus_status("demo")
        assert (st.rx_frames, st.unmapped_frames) == (MAPPED + 1, 1)
    finally:
        await rt.stop()


async def test_writes_to_a_replay_bus_are_accepted_and_kept(tmp_path: Path) -> None:
    async with replay(tmp_path, LOGS[0], speed="fast") as rt:
        await rt.write("demo.MotorCommand.SpeedSetpoint", 1234, Caller("test"))
        sent = driver(rt).sent
        assert sent[-1].can_id == 0x300 and sent[-1].data[:2] == (1234).to_bytes(2, "little")


async def test_a_missing_log_is_a_bus_that_is_down(tmp_path: Path) -> None:
    async with replay(tmp_path, tmp_path / "absent.log") as rt:
        st = rt.bus_status("demo")
        assert st.state is BusState.DOWN
        assert "absent.log not found" in (st.last_error or "")
        assert rt.read("demo.MotorStatus.MotorSpeed").quality is Quality.BAD
