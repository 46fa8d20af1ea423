"""The register-read fast path (byte images, no pymodbus objects) answers exactly as the general path:
pymodbus's request decoding, the list values and ``read_response``; TCP framing is pymodbus's bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from canbridge_modbus.engine import ModbusEngine, decode_request
from canbridge_modbus.tcp import frame
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU

from canbridge import BridgeStats, BusState, BusStatus, Quality, SignalValue
from tests.plugins.modbus.test_modbus_engine import make

NAMES = ["demo.M.Speed", "demo.M.Power", "demo.M.Flag", "demo.C.Setpoint", "demo.C.Limit", "demo.C.Mode"]


def general(engine: ModbusEngine, unit: int, pdu: bytes) -> bytes:
    """The answer of the general path: pymodbus decodes the request, the lists are packed."""
    request = decode_request(pdu)
    if request is None:
        return engine._exc(pdu[0], 3)  # type: ignore[arg-type]
    table = "holding_register" if pdu[0] == 3 else "input_register"
    return engine._read(engine.units[unit], pdu[0], table, request.address, request.count)


def images_match(engine: ModbusEngine) -> None:
    """Every register table's image, read whole and in odd pieces, is its values packed."""
    for space in engine.units.values():
        for table in space.images:
            values = space.values[table]
            n = len(values)
            for a, e in ((n - 1, n), (max(0, n - 40), n), (min(n - 1, 31), min(n, 33)), (0, n)):
                assert bytes(space.image(table, a, e)) == struct.pack(f">{e - a}H", *values[a:e]), (table, a, e)


def requests(engine: ModbusEngine) -> list[bytes]:
    """Every interesting FC 3/4 request of this map: each mapped range, its edges, bad counts and sizes."""
    out: list[bytes] = []
    space = engine.units[1]
    for fc, table in ((3, "holding_register"), (4, "input_register")):
        size = len(space.values[table])
        starts = sorted({0, 1, 2, 3, size - 1, size, 20000, 20001, 20006, 30000, 30019, 30020, 65535})
        for a in starts:
            for n in (0, 1, 2, 3, 7, 20, 125, 126, 65535):
                out.append(struct.pack(">BHH", fc, a, n))
        out += [bytes([fc]), bytes([fc, 0, 0, 0]), struct.pack(">BHHB", fc, 0, 1, 0), struct.pack(">BHHH", fc, 0, 1, 0)]
    return out


@pytest.mark.parametrize("bad_quality", ["exception", "last_value"])
async def test_fast_reads_answer_as_the_general_path(tmp_path: Path, bad_quality: str) -> None:
    _, engine = make(tmp_path, bad_quality=bad_quality)
    reqs = requests(engine)
    for pdu in reqs:  # nothing received yet: waiting, refused in exception mode
        assert engine.handle(1, pdu, "p") == general(engine, 1, pdu), pdu.hex()
    engine.apply([
        SignalValue("demo.M.Speed", -1234, Quality.GOOD, 1),
        SignalValue("demo.M.Power", 12.5, Quality.GOOD, 1),
        SignalValue("demo.C.Setpoint", 99, Quality.STALE, 1),
        SignalValue("demo.C.Limit", 1e39, Quality.GOOD, 1),
    ])
    engine.apply_bus_status(BusStatus("demo", BusState.PASSIVE, rx_frames=0x1_0002_0003, bus_load=12.3,
                                      since_ns=1), now_ns=5_000_000_000)
    engine.apply_bridge_stats(BridgeStats(7, {"out_of_range": 2}, 0, 0.0, 0, 0.0), 3, 1, 2)
    for pdu in reqs:  # each read packs the stale blocks it covers, no more
        assert engine.handle(1, pdu, "p") == general(engine, 1, pdu), pdu.hex()
    engine.apply([SignalValue("demo.M.Speed", 77, Quality.GOOD, 2), SignalValue("demo.C.Mode", 2, Quality.BAD, 2)])
    for pdu in reqs:
        assert engine.handle(1, pdu, "p") == general(engine, 1, pdu), pdu.hex()
    images_match(engine)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True)),
                          st.sampled_from(list(Quality))), max_size=30))
def test_the_byte_image_follows_every_update(tmp_path_factory: pytest.TempPathFactory,
                                             updates: list[tuple[str, float, Quality]]) -> None:
    _, engine = make(tmp_path_factory.mktemp("img"))
    engine.apply([SignalValue(n, v, q, 1) for n, v, q in updates])
    engine.apply([SignalValue(n, None, Quality.WAITING, None) for n, _, _ in updates[:3]])
    images_match(engine)


@given(st.binary(min_size=1, max_size=253), st.integers(0, 255), st.integers(0, 0xFFFF))
def test_tcp_framing_is_pymodbus_bytes(pdu: bytes, unit: int, tid: int) -> None:
    assert frame(pdu, unit, tid) == FramerSocket(DecodePDU(is_server=True)).encode(pdu, unit, tid)
