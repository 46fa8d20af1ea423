"""The Modbus service on a running bridge, with pymodbus's own client."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
import yaml
from canbridge_modbus.service import ModbusService
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from canbridge import BusState, ListenError, Quality
from canbridge.testing import eventually
from tests.plugins.modbus.conftest import demo_frame, mapped, modbus_bridge, sent_matching

SPEED_IR = 0  # demo.MotorStatus.MotorSpeed, int16 (see the printed map in test_first_map)


async def client(port: int) -> AsyncModbusTcpClient:
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await c.connect()
    return c


def address(svc: ModbusService, name: str) -> int:
    return mapped(svc).placements[name].address


async def test_first_map_and_reads(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (h, svc, port):
        assert svc.map_path == tmp_path / "modbus-map.yaml"
        pinned = yaml.safe_load(svc.map_path.read_text())
        assert pinned["signals"]["demo.MotorStatus.MotorSpeed"]["address"] == SPEED_IR
        c = await client(port)
        try:
            h.inject(demo_frame("MotorStatus", MotorSpeed=-1234, MotorEnabled=1, MotorCurrent=-12.5))
            r = await eventually(
                lambda: c.read_input_registers(SPEED_IR, count=1, device_id=1),
                lambda r: not r.isError() and r.registers == [0x10000 - 1234],
            )
            cur = address(svc, "demo.MotorStatus.MotorCurrent")
            r = await c.read_input_registers(cur, count=2, device_id=1)
            assert c.convert_from_registers(r.registers, c.DATATYPE.FLOAT32) == -12.5
            di = address(svc, "demo.MotorStatus.MotorEnabled")
            r = await c.read_discrete_inputs(di, count=1, device_id=1)
            assert r.bits[0] is True
            q = mapped(svc).placements["demo.MotorStatus.MotorSpeed"].quality_address
            r = await c.read_input_registers(q, count=1, device_id=1)
            assert r.registers == [Quality.GOOD.code]
        finally:
            c.close()


async def test_addresses_survive_a_restart(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (_, svc, _port):
        first = dict(mapped(svc).placements)
    temperature = "demo.MotorStatus.MotorTemperature"
    async with modbus_bridge(state_dir=tmp_path, exclude=[temperature]) as (_, svc, _p):
        second = mapped(svc).placements
        assert "demo.MotorStatus.MotorTemperature" not in second
        assert all(second[n] == first[n] for n in second)
        assert [r.signal for r in mapped(svc).reserved] == ["demo.MotorStatus.MotorTemperature"]


async def test_writes_reach_the_bus(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (h, svc, port):
        c = await client(port)
        try:
            sp = address(svc, "demo.MotorCommand.SpeedSetpoint")
            r = await c.write_register(sp, 1500, device_id=1)
            assert not r.isError()
            await sent_matching(h, 0x300, lambda f: int.from_bytes(f.data[0:2], "little") == 1500)
            coil = address(svc, "demo.MotorCommand.Enable")
            r = await c.write_coil(coil, True, device_id=1)
            assert not r.isError()
            await sent_matching(h, 0x300, lambda f: bool(f.data[2] & 1))
            r = await c.read_holding_registers(sp, count=1, device_id=1)
            assert r.registers == [1500]
            r = await c.read_coils(coil, count=1, device_id=1)
            assert r.bits[0] is True
            # FC 16 over Mode and TorqueLimit
            mode = address(svc, "demo.MotorCommand.Mode")
            r = await c.write_registers(mode, [2, 80], device_id=1)
            assert not r.isError()
            await sent_matching(h, 0x300, lambda f: (f.data[2] >> 1) & 3 == 2 and f.data[3] == 80)
        finally:
            c.close()


def exception_code(r: ModbusPDU) -> int | None:
    return r.exception_code if isinstance(r, ExceptionResponse) else None


async def test_refusals_reach_the_client(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (_h, svc, port):
        c = await client(port)
        try:
            sp = address(svc, "demo.MotorCommand.SpeedSetpoint")
            assert exception_code(await c.write_register(sp, 6001, device_id=1)) == 0x03
            assert exception_code(await c.write_register(999, 1, device_id=1)) == 0x02
            ir = await c.read_input_registers(999, count=1, device_id=1)
            assert exception_code(ir) == 0x02
            # the demo allows 20 writes a second per signal: a burst runs into the bound
            codes = []
            for i in range(60):
                codes.append(exception_code(await c.write_register(sp, i, device_id=1)))
                if codes[-1] is not None:
                    break
            assert codes[-1] == 0x06
            # nothing received yet for MotorStatus: waiting, refused with 0B
            assert exception_code(await c.read_input_registers(SPEED_IR, count=1, device_id=1)) == 0x0B
            # an unknown unit id
            assert exception_code(await c.read_input_registers(SPEED_IR, count=1, device_id=9)) == 0x0A
        finally:
            c.close()


async def test_stale_values(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (h, _svc, port):
        c = await client(port)
        try:
            h.inject(demo_frame("MotorStatus", MotorSpeed=42))
            await eventually(
                lambda: c.read_input_registers(SPEED_IR, count=1, device_id=1),
                lambda r: not r.isError() and r.registers == [42],
            )
            # MotorStatus is cyclic every 100 ms; without frames it turns stale: refused with 0B
            await eventually(
                lambda: c.read_input_registers(SPEED_IR, count=1, device_id=1),
                lambda r: exception_code(r) == 0x0B,
            )
        finally:
            c.close()


async def test_stale_values_with_quality_registers(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, bad_quality="last_value") as (h, svc, port):
        c = await client(port)
        q = mapped(svc).placements["demo.MotorStatus.MotorSpeed"].quality_address
        try:
            r = await c.read_input_registers(q, count=1, device_id=1)
            assert r.registers == [Quality.WAITING.code]
            h.inject(demo_frame("MotorStatus", MotorSpeed=42))
            await eventually(
                lambda: c.read_input_registers(q, count=1, device_id=1),
                lambda r: r.registers == [Quality.STALE.code],
            )
            r = await c.read_input_registers(SPEED_IR, count=1, device_id=1)
            assert r.registers == [42]  # the last value
        finally:
            c.close()


async def test_diagnostics_registers(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, diagnostics_interval=0.05) as (h, svc, port):
        c = await client(port)
        base = mapped(svc).diagnostics["demo"].address
        try:
            for _ in range(3):
                h.inject(demo_frame("BatteryStatus", PackVoltage=400))
            r = await eventually(
                lambda: c.read_input_registers(base, count=20, device_id=1),
                lambda r: not r.isError() and (r.registers[4] << 16 | r.registers[5]) >= 3,
            )
            assert r.registers[0] == BusState.ACTIVE.code
        finally:
            c.close()


async def test_holding_only_and_unit_alias(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, holding_only=True, unit_id=5) as (h, svc, port):
        c = await client(port)
        try:
            h.inject(demo_frame("MotorStatus", MotorSpeed=7, MotorEnabled=1))
            en = address(svc, "demo.MotorStatus.MotorEnabled")
            for unit in (5, 0, 255):
                await eventually(
                    lambda u=unit: c.read_holding_registers(en, count=1, device_id=u),  # type: ignore[misc]
                    lambda r: not r.isError() and r.registers == [1],
                )
        finally:
            c.close()


def raw_read(port: int) -> bytes:
    """One FC 3 request on a fresh connection; b"" when the server closed or reset it."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, 1))
            return s.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            return b""


async def test_allow_list_refuses_other_clients(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, allow=["10.0.0.0/8"]) as (_h, svc, port):
        assert await asyncio.to_thread(raw_read, port) == b""  # closed at once
        assert svc.tcp is not None and svc.tcp.refused_connections == 1


async def test_connection_bound(tmp_path: Path) -> None:
    # two active clients (a request within evict_idle_s) keep their places: a third is refused
    async with modbus_bridge(state_dir=tmp_path, max_connections=2, evict_idle_s=600) as (h, svc, port):
        held = [await client(port), await client(port)]
        tcp = svc.tcp
        assert tcp is not None
        try:
            for c in held:
                assert not (await c.read_holding_registers(0, count=1, device_id=1)).isError()
            await h.until(lambda: len(tcp.connections) == 2, what="two connections")
            assert await asyncio.to_thread(raw_read, port) == b""
            r = await held[0].read_holding_registers(0, count=1, device_id=1)
            assert not r.isError()
        finally:
            for c in held:
                c.close()
        # a slot frees when a client leaves
        await eventually(lambda: asyncio.to_thread(raw_read, port), lambda b: len(b) > 0)


async def test_read_only(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, read_only=True) as (_h, _svc, port):
        c = await client(port)
        try:
            assert exception_code(await c.write_register(0, 1, device_id=1)) == 0x01
            assert exception_code(await c.write_coil(0, True, device_id=1)) == 0x01
        finally:
            c.close()


async def test_idle_clients_are_closed(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, idle_timeout_s=0.2) as (_h, svc, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed by the server
        finally:
            writer.close()
        assert svc.tcp is not None and not svc.tcp.connections


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (h, _svc, port):
        from canbridge_modbus.config import ModbusConfig
        from canbridge_modbus.service import ModbusService


        other = ModbusService(h.bridge, ModbusConfig.model_validate({"port": port}))
        with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
            await other.start()


def test_allow_list_matching() -> None:
    from canbridge_modbus.config import ModbusConfig
    from canbridge_modbus.tcp import ModbusTcpServer

    cfg = ModbusConfig.model_validate({"allow": ["10.20.0.0/16", "192.0.2.7", "fd00::/8"]})
    server = ModbusTcpServer.__new__(ModbusTcpServer)
    server.allow = list(cfg.allow)
    assert server.allowed("10.20.3.4") and server.allowed("192.0.2.7") and server.allowed("fd00::1")
    assert server.allowed("::ffff:10.20.0.1")  # IPv4-mapped on a dual-stack socket
    assert not server.allowed("10.21.0.1") and not server.allowed("127.0.0.1") and not server.allowed("x")
    assert [str(n) for n in ModbusConfig().allow] == ["127.0.0.0/8", "::1/128"]
