"""The whole bridge on a real SocketCAN interface: the demo DBC, cansend in, candump out.

The runtime is built with the core's own plugin only (no OPC UA/Modbus/HTTP imports: they would cost
minutes in the emulated guest). Each test owns its vcan interface, so taking it down hurts no other.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from canbridge import BusState, Caller, Permission, Quality, RefusalReason, WriteRefused, testing
from tests.socketcan.conftest import Candump, cansend, ip

ROOT = Path(__file__).resolve().parents[2]
DEMO_DBC = ROOT / "mappings" / "demo" / "demo.dbc"
CALLER = Caller("test")
RAW_CALLER = Caller("test", permissions=frozenset({Permission.RAW}))
SPEED = "demo.MotorStatus.MotorSpeed"
END = "300#A5A5A5A5A5A5A5A5"  # an end marker on MotorCommand's id, sent by a peer


def config(dev: str, tmp: Path, kernel_filters: bool = True, **mapping: Any) -> dict[str, Any]:
    return {
        "buses": [
            {
                "name": "demo",
                "interface": "socketcan",
                "channel": dev,
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "kernel_filters": kernel_filters,
            }
        ],
        "mappings": [
            {
                "bus": "demo",
                "dbc": str(DEMO_DBC),
                "writable": ["MotorCommand.*"],
                "write_rate": None,
                "transmit": {"MotorCommand": {"period_ms": 100}},
                **mapping,
            }
        ],
        "state_dir": str(tmp),
        "gc_freeze": False,
    }


async def until(pred: Callable[[], object], limit: float = 15.0, what: str = "condition") -> None:
    await testing.until(pred, limit, 0.05, what=what)


async def decodes(bridge: Any, frame: str, speed: int, what: str) -> None:
    """A peer sends this MotorStatus frame (cansend syntax) once the bus is active; returns when the
    bridge shows its speed, good."""
    await until(lambda: bridge.bus_status("demo").state is BusState.ACTIVE, what=f"bus active ({what})")
    cansend(bridge.dev, frame)
    await until(lambda: bridge.read(SPEED).value == speed and bridge.read(SPEED).quality is Quality.GOOD, what=what)


@pytest.fixture
async def bridge(scratch_vcan: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    try:
        from canbridge.core.app import runtime_from_data
        from canbridge.core.host import load_registry
    except ImportError as e:  # pragma: no cover - the core runtime is part of the project
        pytest.fail(f"core runtime missing: {e}")
    _, registry = load_registry(load_entry_points=False)
    kernel_filters = getattr(request, "param", True)
    rt = runtime_from_data(config(scratch_vcan, tmp_path, kernel_filters), registry=registry)
    await rt.start()
    rt.dev = scratch_vcan  # type: ignore[attr-defined]  # what the tests need beside the runtime
    rt.stopped_by_test = False  # type: ignore[attr-defined]
    try:
        yield rt
    finally:
        if not rt.stopped_by_test:  # type: ignore[attr-defined]
            await rt.stop()


@pytest.mark.parametrize("bridge", [True, False], ids=["kernel_filters", "no_filters"], indirect=True)
async def test_cansend_frames_decode_with_kernel_timestamps_and_unmapped_ids_stay_in_the_kernel(
    bridge: Any,
) -> None:
    dev = bridge.dev
    await until(lambda: bridge.bus_status("demo").state is BusState.ACTIVE, what="bus active")
    before = time.time_ns()
    cansend(dev, "123#01", "7FF#02", "00000100#03", "301#04")  # unmapped ids (0x100 extended too)
    cansend(dev, "100#E803320000000000", "18FEF100#0000000000000000")
    speed = "demo.MotorStatus.MotorSpeed"
    await until(lambda: bridge.read(speed).quality is Quality.GOOD, what="MotorSpeed good")
    await until(lambda: bridge.read("demo.VehicleInfo.VehicleSpeed").quality is Quality.GOOD)
    after = time.time_ns()
    value = bridge.read(speed)
    assert value.value == 1000
    assert bridge.read("demo.MotorStatus.MotorTemperature").value == 50 - 40
    assert before <= value.timestamp_ns <= after  # the kernel's receive time is the source timestamp
    status = bridge.bus_status("demo")
    assert status.state is BusState.ACTIVE
    if bridge.config.buses[0].kernel_filters:
        # the kernel dropped the 4 unmapped frames: they never reached user space
        assert status.unmapped_frames == 0
    else:
        assert status.unmapped_frames == 4  # the control: without kernel filters they do arrive


async def test_signals_turn_bad_when_the_link_goes_down_and_recover_after_up(bridge: Any) -> None:
    dev = bridge.dev
    await decodes(bridge, "100#1027000000000000", 10000, "good")
    ip("link", "set", "down", dev)
    await until(lambda: bridge.read(SPEED).quality is Quality.BAD, what="bad after down")
    status = bridge.bus_status("demo")
    assert status.state is BusState.DOWN
    assert status.last_error and "down" in status.last_error.lower()
    # writes are refused with a reason while the link is down, and nothing is half-done
    shadow_before = bridge.read("demo.MotorCommand.SpeedSetpoint").value
    with pytest.raises(WriteRefused) as refused:
        await bridge.write("demo.MotorCommand.SpeedSetpoint", 1234, CALLER)
    assert refused.value.reason is RefusalReason.BUS_DOWN
    assert "down" in refused.value.detail
    assert bridge.read("demo.MotorCommand.SpeedSetpoint").value == shadow_before
    ip("link", "set", "up", dev)
    await decodes(bridge, "100#2003000000000000", 800, "good again with the new value")
    assert bridge.bus_status("demo").reconnects >= 1


async def test_the_bridge_reopens_an_interface_that_was_deleted_and_created_again(bridge: Any) -> None:
    dev = bridge.dev
    await decodes(bridge, "100#6400000000000000", 100, "first value")
    ip("link", "del", "dev", dev)
    await until(lambda: bridge.read(SPEED).quality is Quality.BAD, what="bad after delete")
    assert bridge.bus_status("demo").state is BusState.DOWN
    # several reconnect attempts fail while the interface is missing (each waits out its backoff)
    runner = bridge.runners["demo"]
    backoffs: list[float] = []
    backoff = runner._sleep

    async def counted(delay: float) -> None:
        backoffs.append(delay)
        await backoff(delay)

    runner._sleep = counted
    await until(lambda: len(backoffs) >= 3, what="three failed reopen attempts")
    assert bridge.bus_status("demo").state is BusState.DOWN
    ip("link", "add", "dev", dev, "type", "vcan")
    ip("link", "set", "up", dev)
    await decodes(bridge, "100#C800000000000000", 200, "reopened by itself, decoding again on the new interface")
    assert bridge.bus_status("demo").reconnects >= 1


async def test_cyclic_motor_command_via_bcm_modified_by_writes_and_stopped_with_the_bridge(bridge: Any) -> None:
    dev = bridge.dev
    dump = await Candump(dev, "300:7FF").start()
    try:
        lines = await dump.collect(3)
        initial = lines[-1]
        assert initial.startswith("300#")
        receipt = await bridge.write("demo.MotorCommand.SpeedSetpoint", 1500, CALLER)
        assert receipt.cyclic
        new = receipt.frame.to_cansend()
        assert new.startswith("300#DC05")  # 1500 little-endian
        n = len(dump.lines)
        await dump.collect(n + 30, limit=20)
        after = dump.lines[n:]
        # atomic: every frame is the old payload or the new one, and once new, never old again
        assert set(after) <= {initial, new}
        assert after[-1] == new
        first_new = after.index(new)
        assert all(x == new for x in after[first_new:])
        # a raw frame through the write path appears too
        await bridge.send_frame("demo", "300#0102030405060708", RAW_CALLER)
        await dump.wait_for("300#0102030405060708")
        gaps = [b - a for a, b in itertools.pairwise(dump.stamps)]
        # sent by the kernel every 100 ms (emulated CPU: only a loose check that it is that period)
        assert 0.05 < statistics.median(gaps) < 0.2, gaps
        bridge.stopped_by_test = True
        await bridge.stop()
        stopped = time.time()
        await asyncio.sleep(1.0)  # ten periods: a transmission still running would send ~10 frames in this time
        cansend(dev, END)  # once candump shows this frame, it has shown everything sent before it
        await dump.wait_for(END)
        late = [line for line, t in zip(dump.lines, dump.stamps, strict=True) if t > stopped and line != END]
        assert late == [], "MotorCommand still sent after the bridge stopped"
    finally:
        await dump.stop()
