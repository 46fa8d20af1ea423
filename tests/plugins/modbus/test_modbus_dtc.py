"""J1939 DM1 in Modbus registers, read by a pymodbus client: every source address has a fixed block
(``dtc.base + source * stride``) with status, count, lamps and the first N codes; two sources, five codes
by BAM with N = 3, a code that clears, a source heard late, staleness, and addresses pinned in the map
file across restarts."""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from pathlib import Path

import pytest
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.engine import ModbusEngine
from canbridge_modbus.listing import map_rows
from canbridge_modbus.mapfile import load_map_file, save_map
from canbridge_modbus.planner import plan_register_map
from canbridge_modbus.service import ModbusService
from pymodbus.client import AsyncModbusTcpClient

from canbridge import BusState, ConfigError, Dm1, Dtc
from canbridge.testing import BridgeHarness, FakeBridge
from tests.plugins.dm1frames import FIVE, dm1_bam, dm1_frame, j1939_config

BASE = 40000
N = 3
STRIDE = 8 + 4 * N


def block(source: int) -> int:
    return BASE + source * STRIDE


async def read(c: AsyncModbusTcpClient, source: int) -> list[int]:
    r = await c.read_input_registers(block(source), count=STRIDE, device_id=1)
    assert not r.isError(), r
    return list(r.registers)


def codes(regs: list[int]) -> list[tuple[int, int, int]]:
    out = []
    for i in range(N):
        hi, lo, fmi, oc = regs[8 + 4 * i: 12 + 4 * i]
        out.append(((hi << 16) | lo, fmi, oc))
    return out


def modbus(tmp_path: Path, **dtc: object) -> dict[str, object]:
    return {"modbus": {"port": 0, "diagnostics_interval": 0.05, "map_file": str(tmp_path / "map.yaml"),
                       "dtc": {"buses": ["truck"], "count": N, **dtc}}}


async def started(h: BridgeHarness) -> tuple[ModbusService, AsyncModbusTcpClient]:
    svc = h.service("modbus")
    assert isinstance(svc, ModbusService)
    port = int(svc.endpoints()[0].rsplit(":", 1)[1])
    c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    assert await c.connect()
    return svc, c


async def until_regs(c: AsyncModbusTcpClient, source: int, pred: object, timeout: float = 5.0) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        regs = await read(c, source)
        if pred(regs):  # type: ignore[operator]
            return regs
        assert loop.time() < deadline, f"registers of 0x{source:02X}: {regs}"
        await asyncio.sleep(0.02)


async def test_two_sources_five_codes_by_bam_beyond_n_a_clear_and_a_late_source(tmp_path: Path) -> None:
    async with BridgeHarness(j1939_config(modbus(tmp_path))) as h:
        _svc, c = await started(h)
        try:
            assert (await read(c, 0x21))[0] == 3 and (await read(c, 0x21))[6] == 0xFFFF  # never heard: waiting
            h.inject(dm1_frame(0x00, 0b00000100, [(190, 2, 5)]))  # amber warning on
            for f in dm1_bam(0x03, 0b01000000, FIVE):  # MIL on, five codes
                h.inject(f)
            engine = await until_regs(c, 0x00, lambda r: r[1] == 1)
            assert engine[:6] == [0, 1, 0, 0, 1, 0]  # good, 1 code, MIL off, red off, amber on, protect off
            assert codes(engine) == [(190, 2, 5), (0, 0, 0), (0, 0, 0)]
            gearbox = await until_regs(c, 0x03, lambda r: r[1] == 5)
            assert gearbox[:6] == [0, 5, 1, 0, 0, 0]  # all five counted, MIL on
            assert codes(gearbox) == FIVE[:N]  # only the first N in registers
            # the block after 0x03's is 0x04's, untouched by the codes beyond N
            assert (await read(c, 0x04))[0] == 3
            h.inject(dm1_frame(0x00, 0, []))  # the engine's code clears
            engine = await until_regs(c, 0x00, lambda r: r[1] == 0)
            assert engine[:6] == [0, 0, 0, 0, 0, 0] and codes(engine) == [(0, 0, 0)] * N
            h.inject(dm1_frame(0x21, 0b00010000, [(524287, 31, 127)]))  # heard late: red stop on
            late = await until_regs(c, 0x21, lambda r: r[0] == 0)
            assert late[:6] == [0, 1, 0, 1, 0, 0] and codes(late)[0] == (524287, 31, 127)
            assert late[7] == 1  # one DM1 received
        finally:
            c.close()


async def test_a_source_without_dm1_turns_stale(tmp_path: Path) -> None:
    async with BridgeHarness(j1939_config(modbus(tmp_path, stale_after_s=0.3))) as h:
        _svc, c = await started(h)
        try:
            h.inject(dm1_frame(0x00, 0, [(110, 0, 1)]))
            await until_regs(c, 0x00, lambda r: r[0] == 0 and r[1] == 1)
            stale = await until_regs(c, 0x00, lambda r: r[0] == 1)
            assert stale[1] == 1 and codes(stale)[0] == (110, 0, 1)  # the last codes stay readable
        finally:
            c.close()


def test_blocks_are_pinned_in_the_map_file_and_never_move(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    one = ModbusConfig.model_validate({"dtc": {"buses": ["a"], "count": 8}})
    first = plan_register_map({}, ["a", "b"], one, None, path)
    assert (first.dtc["a"].address, first.dtc["a"].stride, first.dtc["a"].size) == (40000, 40, 254 * 40)
    save_map(path, first)
    # b listed first now, a's count changed: a keeps its place and count, b goes after it
    two = ModbusConfig.model_validate({"dtc": {"buses": ["b", "a"], "count": 4}})
    second = plan_register_map({}, ["a", "b"], two, load_map_file(path), path)
    assert second.dtc["a"] == first.dtc["a"]
    assert second.dtc["b"].address == 40000 + 254 * 40 and second.dtc["b"].count == 4
    assert any("keep 8 trouble codes" in w for w in second.warnings)
    save_map(path, second)
    # a no longer listed: its block stays reserved in the file, and nothing takes it
    three = ModbusConfig.model_validate({"dtc": {"buses": ["b"]}})
    third = plan_register_map({}, ["a", "b"], three, load_map_file(path), path)
    assert third.dtc["a"] == first.dtc["a"] and third.dtc["b"] == second.dtc["b"]


def test_no_room_and_unknown_buses_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    full = ModbusConfig.model_validate({"dtc": {"buses": ["a", "b"], "count": 32, "base": 50000}})
    with pytest.raises(ConfigError, match="no room for the 34544 J1939 DM1 registers of bus a"):
        plan_register_map({}, ["a", "b"], full, None, path)
    with pytest.raises(ConfigError, match="'x', which is not a configured bus"):
        plan_register_map({}, ["a"], ModbusConfig.model_validate({"dtc": {"buses": ["x"]}}), None, path)


def test_the_printed_map_shows_the_dm1_layout(tmp_path: Path) -> None:
    cfg = ModbusConfig.model_validate({"dtc": {"buses": ["a"], "count": 2}})
    rows = {r["signal"]: r for r in map_rows(plan_register_map({}, ["a"], cfg, None, tmp_path / "m.yaml"))}
    assert rows["a.dm1.0x00.status"]["address"] == "40000"
    assert (rows["a.dm1.0x00.dtc1.spn"]["address"], rows["a.dm1.0x00.dtc1.spn"]["registers"]) == ("40012", "2")
    assert rows["a.dm1.0x00.dtc1.occurrences"]["address"] == "40015"
    rest = rows["a.dm1.0x01..0xFD (the same, every 16 registers)"]
    assert (rest["address"], rest["registers"]) == ("40016", str(253 * 16))


async def test_a_bus_that_goes_down_reads_bad_and_no_sender_writes_outside_its_block(tmp_path: Path) -> None:
    bridge = FakeBridge([], state_dir=tmp_path, buses=["truck"])
    cfg = ModbusConfig.model_validate({"dtc": {"buses": ["truck"], "count": N}})
    engine = ModbusEngine(bridge, plan_register_map({}, ["truck"], cfg, None, tmp_path / "m.yaml"))
    now = time.time_ns()
    code = Dm1(0xFD, "on", "off", "off", "off", "none", "none", "none", "none", (Dtc(190, 2, 5, 1),), now, 7)
    null = dataclasses.replace(code, source=0xFE)  # the null address cannot send: it has no block
    st = bridge.set_bus_state("truck", BusState.ACTIVE, dm1={0xFD: code, 0xFE: null})
    engine.apply_dm1(st, now, 3.0)

    async def regs(source: int) -> list[int]:
        r = engine.handle(1, struct.pack(">BHH", 4, block(source), STRIDE), "127.0.0.1:1")
        data = r if isinstance(r, bytes) else await r
        return list(struct.unpack(f">{STRIDE}H", data[2:]))

    last = await regs(0xFD)
    assert last[:3] == [0, 1, 1] and last[7] == 7 and last[8:12] == [0, 190, 2, 0x80 | 5]
    assert len(engine.units[1].values["input_register"]) == block(0xFE)  # nothing past the last block
    engine.apply_dm1(bridge.set_bus_state("truck", BusState.BUS_OFF), now, 3.0)
    down = await regs(0xFD)
    assert down[0] == 2 and down[8:12] == last[8:12]  # bad; the last codes stay for the record
