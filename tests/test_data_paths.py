"""The ways through the tree (docs/architecture.md, "Paths through the tree"), traced with sys.setprofile:
a received batch goes from the receive module through the bus runner into the store, never back through
the driver; the OPC UA service takes it from there without asking the core again; a write reaches the
driver through the write path with each module once on the stack."""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from canbridge import Caller, Permission, Quality, SignalValue
from canbridge.core.can.receive import AVAILABLE, MmsgReceiver
from canbridge.core.can.socketcan import SocketcanDriver
from canbridge.testing import BridgeHarness, FakeBridge
from tests.plugins.opcua.conftest import small_table

ROOT = Path(__file__).resolve().parent.parent
CAN_FRAME = struct.Struct("=IB3x8s")
WRITER = Caller("test", permissions=frozenset({Permission.WRITE}))
# Not stations of a path: the test harness, and the CPU meter that wraps every event-loop callback while a
# bridge runs (asyncio's own Handle._run is below it; it is the loop's instrumentation, not the data's way).
NOT_STATIONS = frozenset({"canbridge/testing.py", "canbridge/core/cpuaccount.py"})


def _module(filename: str) -> str | None:
    """The project module a code object belongs to (relative path), None for libraries and tests."""
    try:
        rel = Path(filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None
    return rel if rel.startswith(("canbridge/", "plugins/")) and rel not in NOT_STATIONS else None


@contextmanager
def traced(calls: list[tuple[str, str, list[str]]]) -> Iterator[None]:
    """Every call into the project's modules while inside: (module, function, the project modules on
    the stack below it, outermost first)."""

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = _module(frame.f_code.co_filename)
        if module is None:
            return
        stack: list[str] = []
        f = frame.f_back
        while f is not None:
            m = _module(f.f_code.co_filename)
            if m is not None and (not stack or stack[-1] != m):
                stack.append(m)
            f = f.f_back
        calls.append((module, frame.f_code.co_qualname, stack[::-1]))

    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)


def first_entered(calls: list[tuple[str, str, list[str]]]) -> list[str]:
    return list(dict.fromkeys(m for m, _, _ in calls))


async def test_a_received_batch_goes_from_the_receive_module_to_the_store_not_back_through_the_driver() -> None:
    async with BridgeHarness() as h:
        runner = h.bridge.runners["demo"]
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # datagrams as a CAN_RAW socket gives them
        with a, b:
            b.setblocking(False)
            drv = SocketcanDriver(h.bridge.config.buses[0])
            drv._sock = b
            drv._receiver = MmsgReceiver(16) if AVAILABLE else None
            drv._on_frames, drv._on_error = runner.on_frames, runner.on_error
            reader = drv._reader()  # what start_reading gives the event loop
            a.send(CAN_FRAME.pack(0x100, 8, bytes.fromhex("E803000000000000")))
            calls: list[tuple[str, str, list[str]]] = []
            with traced(calls):
                reader()
            drv._sock = None
        assert h.bridge.read("demo.MotorStatus.MotorSpeed").value == 1000
        assert first_entered(calls) == ["canbridge/core/can/receive.py", "canbridge/core/busrunner.py",
                                        "canbridge/core/store.py"], calls
        publish = [stack for m, fn, stack in calls if fn == "SignalStore.publish"]
        assert publish == [["canbridge/core/can/receive.py", "canbridge/core/busrunner.py", "canbridge/core/store.py"]]


async def test_the_opcua_service_puts_a_batch_into_the_address_space_without_the_core(tmp_path: Path) -> None:
    from canbridge_opcua.config import OpcUaConfig
    from canbridge_opcua.service import OpcUaService

    config = OpcUaConfig.model_validate({"listen": "opc.tcp://127.0.0.1:0", "security_policies": ["None"],
                                         "users": {}, "allow_anonymous": True, "pki_dir": str(tmp_path / "pki")})
    svc = OpcUaService(FakeBridge(small_table(), state_dir=tmp_path), config)
    await svc.start()
    try:
        before = svc.updates
        calls: list[tuple[str, str, list[str]]] = []
        with traced(calls):
            await svc.apply([SignalValue("b0.Status.Speed", 7, Quality.GOOD, 1_700_000_000_000_000_000)])
        assert svc.updates == before + 1
    finally:
        await svc.stop()
    # the batch carries all it needs: nothing is asked of the bridge again (the store is not visited twice)
    entered = first_entered(calls)
    assert entered[0] == "plugins/canbridge_opcua/service.py", calls
    assert all(m.startswith("plugins/canbridge_opcua/") for m in entered), calls


async def test_a_write_reaches_the_driver_through_the_write_path_each_module_once() -> None:
    async with BridgeHarness() as h:
        calls: list[tuple[str, str, list[str]]] = []
        with traced(calls):
            await asyncio.wait_for(h.bridge.write("demo.MotorCommand.SpeedSetpoint", 1500, WRITER), 5)
    at_driver = [stack for m, fn, stack in calls if m.startswith("canbridge/core/can/")
                 and fn.rsplit(".", 1)[-1] in ("send", "modify", "send_periodic")]
    assert at_driver, calls
    stack = at_driver[0]
    assert stack[:3] == ["canbridge/core/runtime.py", "canbridge/core/writepath.py", "canbridge/core/busrunner.py"]
    assert len(stack) == len(set(stack)), stack  # no module twice on the way
