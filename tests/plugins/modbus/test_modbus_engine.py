"""Request handling on the register arrays: reads, writes through the write path, refusals."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.engine import FUNCTIONS, ModbusEngine, read_response
from canbridge_modbus.planner import plan_register_map
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.pdu import DecodePDU

from canbridge import BridgeStats, BusState, BusStatus, Quality, RefusalReason, SignalValue
from canbridge.testing import FakeBridge, signal_info
from tests.plugins.modbus.helpers import table

SPEED = signal_info("demo.M.Speed", minimum=-8000, maximum=8000)
POWER = signal_info("demo.M.Power", value_type=float, is_float=True, minimum=-500, maximum=500)
FLAG = signal_info("demo.M.Flag", value_type=bool)
SETPOINT = signal_info("demo.C.Setpoint", maximum=6000, writable=True)
LIMIT = signal_info("demo.C.Limit", value_type=float, maximum=100, writable=True)  # float32 in holding 1..2
ENABLE = signal_info("demo.C.Enable", value_type=bool, writable=True)
MODE = signal_info("demo.C.Mode", maximum=2, writable=True)


def make(tmp_path: Path, **cfg: object) -> tuple[FakeBridge, ModbusEngine]:
    signals = table(SPEED, POWER, FLAG, SETPOINT, LIMIT, ENABLE, MODE)
    bridge = FakeBridge(signals.values(), state_dir=tmp_path)
    config = ModbusConfig.model_validate(cfg)
    rmap = plan_register_map(signals, ["demo"], config, None, tmp_path / "m.yaml")
    refuse = config.bad_quality == "exception"
    engine = ModbusEngine(bridge, rmap, refuse_bad=refuse, read_only=config.read_only)
    return bridge, engine


def good(name: str, value: float | int | bool) -> SignalValue:
    return SignalValue(name, value, Quality.GOOD, 1)


async def call(engine: ModbusEngine, pdu: bytes, unit: int = 1) -> bytes:
    r = engine.handle(unit, pdu, "127.0.0.1:1")
    return r if isinstance(r, bytes) else await r


def read(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


async def test_reads_come_from_the_batches(tmp_path: Path) -> None:
    _, engine = make(tmp_path)
    engine.apply([good("demo.M.Speed", -1234), good("demo.M.Power", 12.5), good("demo.M.Flag", True)])
    r = await call(engine, read(4, 0, 3))
    assert r[:2] == b"\x04\x06"
    assert struct.unpack(">3H", r[2:]) == (0x10000 - 1234, 0x4148, 0)
    assert await call(engine, read(2, 0, 1)) == b"\x02\x01\x01"
    # quality registers: Speed/Power/Flag good, the others waiting
    q = await call(engine, read(4, 20000, 7))
    assert struct.unpack(">7H", q[2:]) == (0, 0, 0, 3, 3, 3, 3)


async def test_bad_quality_is_refused_or_served(tmp_path: Path) -> None:
    _, engine = make(tmp_path)
    engine.apply([good("demo.M.Speed", 5), SignalValue("demo.M.Power", 2.0, Quality.STALE, 1)])
    assert await call(engine, read(4, 0, 1)) == b"\x04\x02\x00\x05"
    assert await call(engine, read(4, 0, 3)) == b"\x84\x0b"  # covers the stale value
    assert await call(engine, read(2, 0, 1)) == b"\x82\x0b"  # Flag never received
    _, lenient = make(tmp_path, bad_quality="last_value")
    lenient.apply([good("demo.M.Speed", 5), SignalValue("demo.M.Power", 2.0, Quality.STALE, 1)])
    r = await call(lenient, read(4, 0, 3))
    assert struct.unpack(">3H", r[2:]) == (5, 0x4000, 0)
    assert struct.unpack(">2H", (await call(lenient, read(4, 20000, 2)))[2:]) == (0, Quality.STALE.code)


@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        (read(4, 3, 1), b"\x84\x02"),  # past the last signal
        (read(4, 0, 0), b"\x84\x03"),  # count 0
        (read(3, 0, 126), b"\x83\x03"),  # more than 125 registers
        (b"\x03\x00\x00", b"\x83\x03"),  # truncated
        (b"\x2b\x0e\x01\x00", b"\xab\x01"),  # function not supported
        (b"\x07", b"\x87\x01"),
        (read(1, 0, 2001), b"\x81\x03"),
        (read(4, 65535, 1), b"\x84\x02"),
        (read(4, 65535, 2), b"\x84\x02"),  # past the end of the address space
        (read(1, 0, 2000), b"\x81\x02"),  # the largest coil read is well-formed: no such coils
        (b"\x83\x00\x00\x00\x01", b"\x83\x01"),  # an exception response is no request
        (b"\x16\x00\x00\xff\xff\x00\x00", b"\x96\x01"),  # mask write: pymodbus knows it, we do not serve it
        (b"\x04\x00\x00\x00", b"\x84\x03"),
    ],
)
async def test_malformed_and_unmapped_reads(tmp_path: Path, pdu: bytes, expected: bytes) -> None:
    _, engine = make(tmp_path, bad_quality="last_value")
    assert await call(engine, pdu) == expected


async def test_writes_go_through_the_write_path(tmp_path: Path) -> None:
    bridge, engine = make(tmp_path)
    assert await call(engine, b"\x06\x00\x00\x04\xd2") == b"\x06\x00\x00\x04\xd2"
    assert (bridge.writes[-1].name, bridge.writes[-1].value) == ("demo.C.Setpoint", 1234)
    assert bridge.writes[-1].caller.plugin == "modbus" and bridge.writes[-1].caller.address == "127.0.0.1:1"
    assert await call(engine, b"\x05\x00\x00\xff\x00") == b"\x05\x00\x00\xff\x00"
    assert (bridge.writes[-1].name, bridge.writes[-1].value) == ("demo.C.Enable", True)
    # float32 42.5 = 0x422A0000 across holding 1..2, with Mode at 3
    pdu = struct.pack(">BHHB3H", 16, 1, 3, 6, 0x422A, 0, 2)
    assert await call(engine, pdu) == b"\x10\x00\x01\x00\x03"
    assert [(w.name, w.value, w.accepted) for w in bridge.writes[-2:]] == [
        ("demo.C.Limit", 42.5, True),
        ("demo.C.Mode", 2, True),
    ]
    # read back at once, before any subscription batch
    assert struct.unpack(">4H", (await call(engine, read(3, 0, 4)))[2:]) == (1234, 0x422A, 0, 2)
    assert await call(engine, struct.pack(">BHHBB", 15, 0, 1, 1, 0)) == b"\x0f\x00\x00\x00\x01"
    assert (bridge.writes[-1].name, bridge.writes[-1].value) == ("demo.C.Enable", False)


UNS, UNK, NW, OOR, WT = (
    RefusalReason.UNSUPPORTED,
    RefusalReason.UNKNOWN_SIGNAL,
    RefusalReason.NOT_WRITABLE,
    RefusalReason.OUT_OF_RANGE,
    RefusalReason.WRONG_TYPE,
)


@pytest.mark.parametrize(
    ("pdu", "expected", "reason"),
    [
        (b"\x06\x00\x01\x42\x2a", b"\x86\x02", UNS),  # half of a float32
        (struct.pack(">BHHB2H", 16, 2, 2, 4, 0, 2), b"\x90\x02", UNS),  # the other half and Mode
        (b"\x06\x00\x09\x00\x01", b"\x86\x02", UNK),  # unmapped
        (b"\x06\x4e\x20\x00\x01", b"\x86\x02", UNK),  # a quality register (input table: nothing there)
        (b"\x06\x00\x00\x17\x71", b"\x86\x03", OOR),  # 6001 > 6000
        (b"\x06\x00\x03\x00\x03", b"\x86\x03", OOR),  # Mode 3 > 2
        (b"\x05\x00\x00\x12\x34", b"\x85\x03", UNS),  # coil value neither FF00 nor 0000
        (struct.pack(">BHHB2H", 16, 1, 2, 4, 0x7FC0, 0), b"\x90\x03", WT),  # NaN
        (struct.pack(">BHHB2H", 16, 1, 2, 4, 0x7F80, 0), b"\x90\x03", WT),  # +inf
        (struct.pack(">BHHB2H", 16, 1, 2, 4, 0x4348, 0), b"\x90\x03", OOR),  # 200.0 > 100
        (struct.pack(">BHHB3H", 16, 1, 3, 6, 0x422A, 0, 3), b"\x90\x03", OOR),  # Limit fine, Mode 3: neither
        (struct.pack(">BHHB", 16, 0, 2, 4) + b"\x00", b"\x90\x03", UNS),  # byte count does not match
        (struct.pack(">BHHBB", 15, 0, 9, 1, 0), b"\x8f\x03", UNS),  # 9 coils need 2 bytes
        (struct.pack(">BHHBB", 15, 1, 1, 1, 1), b"\x8f\x02", UNK),  # no coil 1
        (struct.pack(">BHHBB", 15, 0, 2, 1, 3), b"\x8f\x02", UNK),  # coil 0 fine, no coil 1: neither
        # checks pymodbus's request decoding leaves to its datastore, or does not make
        (struct.pack(">BHHB2B", 16, 0, 2, 2, 0, 1), b"\x90\x03", UNS),  # byte count fits the data, not 2 registers
        (struct.pack(">BHHB3H", 16, 0, 2, 4, 1, 2, 3), b"\x90\x03", UNS),  # more data than the byte count
        (struct.pack(">BHHB", 16, 0, 0, 0), b"\x90\x03", UNS),  # quantity 0
        (struct.pack(">BHHB", 15, 0, 1969, 247) + bytes(247), b"\x8f\x03", UNS),  # over 0x7B0 (pymodbus: 2000)
        (struct.pack(">BHHB", 15, 0, 0, 0), b"\x8f\x03", UNS),
        (b"\x06\x00\x00\x00\x01\x00", b"\x86\x03", UNS),  # a byte after the value
        (b"\x05\x00\x00\xff\x00\x00", b"\x85\x03", UNS),
        (b"\x05\x00\x00\x00\x01", b"\x85\x03", UNS),  # pymodbus would read 0001 as "on"
        (b"\x17\x00\x00\x00\x01\x00\x00\x00\x01\x02\x00\x01", b"\x97\x01", UNS),  # FC 23 read/write
        (b"\x16\x00\x00\xff\xff\x00\x00", b"\x96\x01", UNS),  # FC 22 mask write
    ],
)
async def test_refused_writes_send_nothing_and_are_recorded(
    tmp_path: Path, pdu: bytes, expected: bytes, reason: RefusalReason
) -> None:
    bridge, engine = make(tmp_path)
    assert await call(engine, pdu) == expected
    # every refused write attempt reaches the bridge as a refusal (audited there), none as a write
    assert bridge.writes, "the refusal was not recorded"
    assert not any(w.accepted for w in bridge.writes)
    assert bridge.writes[0].refused is not None and bridge.writes[0].refused.reason is reason
    assert all(w.caller.plugin == "modbus" and w.caller.address == "127.0.0.1:1" for w in bridge.writes)


async def test_the_write_path_gets_the_decoded_value_as_is(tmp_path: Path) -> None:
    # NaN, infinity and out-of-range values are handed over unjudged: the write path refuses them
    bridge, engine = make(tmp_path)
    await call(engine, struct.pack(">BHHB2H", 16, 1, 2, 4, 0x7FC0, 0))
    await call(engine, struct.pack(">BHHB2H", 16, 1, 2, 4, 0xFF80, 0))
    await call(engine, b"\x06\x00\x00\xff\xff")
    nan, ninf, big = (w.value for w in bridge.writes)
    assert isinstance(nan, float) and nan != nan
    assert ninf == float("-inf") and big == 0xFFFF


async def test_input_registers_are_not_writable(tmp_path: Path) -> None:
    # a hand-written map puts a read-only signal into the holding registers
    bridge, _ = make(tmp_path)
    path = tmp_path / "hand.yaml"
    path.write_text("signals:\n  demo.M.Speed: {table: holding_register, address: 50}\n")
    from canbridge_modbus.mapfile import load_map_file

    rmap = plan_register_map(bridge.signals, ["demo"], ModbusConfig(), load_map_file(path), path)
    engine = ModbusEngine(bridge, rmap)
    assert await call(engine, b"\x06\x00\x32\x00\x01") == b"\x86\x02"
    assert [(w.name, w.accepted, w.refused and w.refused.reason) for w in bridge.writes] == [
        ("demo.M.Speed", False, RefusalReason.NOT_WRITABLE)
    ]


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (RefusalReason.RATE_LIMITED, 0x06),
        (RefusalReason.BUS_DOWN, 0x0B),
        (RefusalReason.OUT_OF_RANGE, 0x03),
        (RefusalReason.WRONG_TYPE, 0x03),
        (RefusalReason.NOT_WRITABLE, 0x02),
        (RefusalReason.WAITING, 0x06),
    ],
)
async def test_refusals_map_to_exception_codes(tmp_path: Path, reason: RefusalReason, code: int) -> None:
    bridge, engine = make(tmp_path)
    bridge.refuse_next("demo.C.Setpoint", reason)
    bridge.refuse_next("demo.C.Enable", reason)
    assert await call(engine, b"\x06\x00\x00\x00\x01") == bytes((0x86, code))
    assert await call(engine, b"\x05\x00\x00\xff\x00") == bytes((0x85, code))


async def test_read_only(tmp_path: Path) -> None:
    bridge, engine = make(tmp_path, read_only=True)
    assert await call(engine, b"\x06\x00\x00\x00\x01") == b"\x86\x01"
    assert await call(engine, struct.pack(">BHHB3H", 16, 1, 3, 6, 0x422A, 0, 2)) == b"\x90\x01"
    assert await call(engine, b"\x05\x00\x00\x12\x34") == b"\x85\x01"  # malformed too
    assert not any(w.accepted for w in bridge.writes)
    assert [(w.name, w.refused.reason if w.refused else None) for w in bridge.writes] == [
        ("demo.C.Setpoint", RefusalReason.NOT_ALLOWED),
        ("demo.C.Limit", RefusalReason.NOT_ALLOWED),
        ("demo.C.Mode", RefusalReason.NOT_ALLOWED),
        ("modbus:unit 1 FC 5", RefusalReason.NOT_ALLOWED),
    ]


async def test_diagnostics_registers(tmp_path: Path) -> None:
    _, engine = make(tmp_path)
    status = BusStatus(
        "demo",
        BusState.PASSIVE,
        rx_frames=0x1_0002_0003,
        tx_frames=7,
        rx_error_counter=130,
        bus_load=12.34,
        bus_off_count=2,
        since_ns=1_000_000_000,
    )
    engine.apply_bus_status(status, now_ns=11_000_000_000)
    regs = struct.unpack(">20H", (await call(engine, read(4, 30000, 20)))[2:])
    assert regs[0] == BusState.PASSIVE.code
    assert regs[1:4] == (130, 0xFFFF, 1234)
    assert regs[4:6] == (0x0002, 0x0003)  # uint32, wrapped
    assert regs[6:8] == (0, 7)
    assert regs[16] == 2 and regs[19] == 10


async def test_bridge_diagnostics_registers(tmp_path: Path) -> None:
    _, engine = make(tmp_path)
    block = engine.rmap.bridge[1]
    assert block.address == 30000 + 20  # after the bus block
    stats = BridgeStats(
        writes_accepted=0x1_0000_0005,
        writes_refused={"out_of_range": 3, "audit_unavailable": 4},
        store_batches=0,
        store_update_seconds_total=0.0,
        subscribers=0,
        max_subscriber_lag_s=0.0,
        audit_available=False,
        audit_error="disk full",
        audit_failures=70000,
    )
    engine.apply_bridge_stats(stats, connections=3, evicted=70000, refused=2)
    regs = struct.unpack(">10H", (await call(engine, read(4, block.address, 10)))[2:])
    assert regs == (0, 3, 1, 70000 - 65536, 0, 5, 0, 7, 0xFFFF, 2)
    assert await call(engine, b"\x06\x75\x44\x00\x01") == b"\x86\x02"  # not writable (input table)


@given(
    st.sampled_from([3, 4]),
    st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
)
def test_register_responses_are_pymodbus_bytes(function: int, values: list[int]) -> None:
    # the register read response is packed by the plugin for speed; it must be pymodbus's encoding
    response_class = FUNCTIONS[function][1]
    assert read_response(function, values, bits=False) == bytes((function,)) + response_class(
        registers=values
    ).encode()


@given(st.sampled_from([1, 2]), st.lists(st.integers(0, 1), min_size=1, max_size=2000))
def test_bit_responses_decode_in_pymodbus(function: int, values: list[int]) -> None:
    decoded = DecodePDU(is_server=False).decode(read_response(function, values, bits=True))
    assert decoded is not None and decoded.function_code == function
    assert list(decoded.bits[: len(values)]) == [v == 1 for v in values]
    assert not any(decoded.bits[len(values) :])  # padding bits are 0
