"""Shared helpers of the Modbus plugin tests that need a running bridge."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cantools
from canbridge_modbus.registers import RegisterMap
from canbridge_modbus.service import ModbusService

from canbridge import Frame
from canbridge.testing import BridgeHarness
from tests.conftest import DEMO_DBC

_db = cantools.database.load_file(str(DEMO_DBC))
assert isinstance(_db, cantools.database.can.Database)
DB = _db


def demo_frame(message: str, **values: float) -> Frame:
    """A frame of the demo DBC with the given signal values (the others at their minimum or 0)."""
    msg = DB.get_message_by_name(message)
    full = {s.name: max(0, s.minimum or 0) for s in msg.signals}
    full.update(values)
    return Frame(msg.frame_id, msg.encode(full, strict=False), extended=msg.is_extended_frame)


@contextlib.asynccontextmanager
async def modbus_bridge(
    state_dir: Path | None = None, simulate: bool = False, **modbus: Any
) -> AsyncIterator[tuple[BridgeHarness, ModbusService, int]]:
    """The demo bridge with the Modbus plugin on an ephemeral port."""
    cfg = {"port": 0, **modbus}
    async with BridgeHarness(plugins={"modbus": cfg}, simulate=simulate, state_dir=state_dir) as h:
        svc = h.service("modbus")
        assert isinstance(svc, ModbusService)
        port = int(svc.endpoints()[0].rsplit(":", 1)[1]) if cfg.get("tcp", True) else 0
        yield h, svc, port


def mapped(svc: ModbusService) -> RegisterMap:
    """The register map of a started service."""
    assert svc.rmap is not None, "the Modbus service has not started"
    return svc.rmap


def frames_of(h: BridgeHarness, message: str) -> int:
    """How many frames of this demo message the bridge has received."""
    return next(m.frames for m in h.bridge.message_status("demo") if m.name == f"demo.{message}")


async def inject_received(h: BridgeHarness, message: str, **values: float) -> None:
    """A peer sends this demo frame; returns once the bridge has received it."""
    before = frames_of(h, message)
    h.inject(demo_frame(message, **values))
    await h.until(lambda: frames_of(h, message) > before, what=f"{message} received")


async def sent_matching(
    h: BridgeHarness, can_id: int, check: Callable[[Frame], bool], within: float = 3.0
) -> Frame:
    """The first frame the bridge sends with this id that passes ``check`` (cyclic frames repeat)."""
    deadline = time.monotonic() + within
    while True:
        frame = await h.next_sent(can_id, timeout=max(0.05, deadline - time.monotonic()))
        if check(frame):
            return frame
