"""A Modbus read of a CANopen object served by SDO waits for the upload (plugins/canbridge_modbus/engine.py:
the read's response is a coroutine that awaits ``Bridge.refresh``), answered from the cache while the value
is younger than ``max_age_ms``; a node that does not answer is exception 0B. The peer is a LocalNode on
python-can's virtual bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from canbridge_modbus.service import ModbusService
from pymodbus.client import AsyncModbusTcpClient

from canbridge.core.app import unique_channel
from canbridge.testing import BridgeHarness
from tests.core.can.test_sdo import Peer, node_config
from tests.core.test_sdoreads import uploads
from tests.plugins.modbus.conftest import mapped

MODES = "line.servo.Supported_drive_modes"  # UNSIGNED32 0x6502, ro: two input registers


@asynccontextmanager
async def modbus_and_peer(peer: bool = True, **node: Any) -> AsyncIterator[tuple[BridgeHarness, AsyncModbusTcpClient,
                                                                                 int, Peer | None]]:
    channel = unique_channel("sdo-modbus")
    async with BridgeHarness(node_config(channel, **node), plugins={"modbus": {"port": 0}}) as h:
        svc = h.service("modbus")
        assert isinstance(svc, ModbusService)
        port = int(svc.endpoints()[0].rsplit(":", 1)[1])
        p = Peer(channel) if peer else None
        c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
        assert await c.connect()
        try:
            yield h, c, mapped(svc).placements[MODES].address, p
        finally:
            c.close()
            if p is not None:
                p.close()



async def test_a_register_read_of_an_sdo_object_waits_for_its_upload() -> None:
    async with modbus_and_peer() as (h, c, address, peer):
        assert peer is not None
        assert h.bridge.read(MODES).value is None  # never read: the register read itself asks the node
        r = await c.read_input_registers(address, count=2, device_id=1)
        assert not r.isError(), r
        assert c.convert_from_registers(r.registers, c.DATATYPE.UINT32) == 0x65
        peer.set(0x6502, 0x1234)
        r = await c.read_input_registers(address, count=2, device_id=1)
        assert c.convert_from_registers(r.registers, c.DATATYPE.UINT32) == 0x1234
        assert uploads(peer) == 2


async def test_a_fresh_value_is_answered_from_the_cache() -> None:
    async with modbus_and_peer(max_age_ms=60_000) as (_h, c, address, peer):
        assert peer is not None
        await c.read_input_registers(address, count=2, device_id=1)
        peer.set(0x6502, 0x1234)
        r = await c.read_input_registers(address, count=2, device_id=1)
        assert c.convert_from_registers(r.registers, c.DATATYPE.UINT32) == 0x65
        assert uploads(peer) == 1


async def test_a_node_that_does_not_answer_is_exception_0b() -> None:
    async with modbus_and_peer(peer=False, sdo_timeout_ms=50) as (h, c, address, _):
        r = await c.read_input_registers(address, count=2, device_id=1)
        assert r.isError() and r.exception_code == 0x0B, r
        assert "did not answer within 50 ms" in (h.bridge.read(MODES).reason or "")
