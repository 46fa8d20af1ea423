"""canbridge.testing's FakeBridge and signal_info: public API for plugin unit tests.

The fake's write checks must agree with the real write path on the same SignalInfo, so a plugin tested
against the fake answers the same refusals as on a real bridge: the last tests compare the two.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from canbridge import (
    BusInfo,
    BusState,
    Caller,
    Frame,
    FrameFormatError,
    Permission,
    Quality,
    RefusalReason,
    SignalInfo,
    SignalValue,
    Subscription,
    UnknownSignal,
    WriteRefused,
)
from canbridge.core.app import demo_config, unique_channel
from canbridge.testing import BridgeHarness, FakeBridge, signal_info, until

WRITER = Caller("test")
READER = Caller("test", permissions=frozenset())
RAW = Caller("test", permissions=frozenset({Permission.RAW}))


def table() -> list[SignalInfo]:
    return [
        signal_info("b0.Status.Speed", minimum=-8000, maximum=8000, unit="rpm"),
        signal_info("b0.Status.Temp", bit_length=8, offset=-40),
        signal_info("b0.Command.Setpoint", frame_id=0x300, maximum=6000, writable=True, unit="rpm"),
        signal_info("b0.Command.Mode", frame_id=0x300, bit_length=2, writable=True, choices={0: "Off", 2: "On"}),
        signal_info("b0.Command.Enable", frame_id=0x300, value_type=bool, writable=True),
        signal_info("b0.Command.Gain", frame_id=0x300, value_type=float, scale=0.5, bit_length=8, writable=True),
        signal_info("b1.Other.Level", value_type=float, is_float=True, writable=True),
    ]


@pytest.fixture
def fake(tmp_path: Path) -> FakeBridge:
    return FakeBridge(table(), state_dir=tmp_path / "state")


async def refusal(fake: FakeBridge, name: str, value: Any, caller: Caller = WRITER) -> RefusalReason:
    with pytest.raises(WriteRefused) as err:
        await fake.write(name, value, caller)
    return err.value.reason


async def next_batch(sub: Subscription, timeout: float = 2.0) -> list[SignalValue]:
    it = aiter(sub)
    return await asyncio.wait_for(anext(it), timeout)


# --- signal_info --------------------------------------------------------------------------------


def test_signal_info_defaults() -> None:
    s = signal_info()
    assert (s.name, s.bus, s.message, s.signal) == ("bus.Msg.Sig", "bus", "Msg", "Sig")
    assert (s.value_type, s.bit_length, s.signed, s.is_float, s.scale, s.offset) == (int, 16, False, False, 1.0, 0.0)
    assert (s.minimum, s.maximum, s.direction, s.writable) == (0, 65535, "rx", False)
    assert (s.index, s.frame_id, s.extended, s.unit, s.choices) == (0, 0x100, False, None, None)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"value_type": bool}, {"bit_length": 1, "minimum": 0, "maximum": 1}),
        ({"signed": True}, {"minimum": -32768, "maximum": 32767}),
        ({"minimum": -5, "maximum": 5}, {"signed": True}),
        ({"bit_length": 8, "offset": -40}, {"minimum": -40, "maximum": 215}),
        ({"bit_length": 8, "scale": -2.0}, {"minimum": -510, "maximum": 0}),
        ({"value_type": float, "is_float": True}, {"bit_length": 32, "maximum": 3.4028234663852886e38}),
        ({"writable": True}, {"direction": "tx"}),
        ({"frame_id": 0x18FEF100}, {"extended": True}),
        ({"maximum": 10}, {"minimum": 0, "maximum": 10}),
    ],
)
def test_signal_info_derives(kw: dict[str, Any], expected: dict[str, Any]) -> None:
    s = signal_info("a.B.C", **kw)
    assert {k: getattr(s, k) for k in expected} == expected


def test_signal_info_rejects_mistakes() -> None:
    with pytest.raises(ValueError, match=r"<bus>\.<message>\.<signal>"):
        signal_info("Speed")
    with pytest.raises(TypeError, match="no field unitt"):
        signal_info(unitt="rpm")
    with pytest.raises(ValueError, match="bool, int or float"):
        signal_info(value_type=str)


# --- the table and values -----------------------------------------------------------------------


def test_table(fake: FakeBridge, tmp_path: Path) -> None:
    assert list(fake.signals) == [s.name for s in table()]
    assert [s.index for s in fake.signals.values()] == list(range(7))  # positions, as in the real table
    m = fake.messages["b0.Command"]
    assert (m.frame_id, m.direction, m.signals[0]) == (0x300, "tx", "b0.Command.Setpoint")
    assert list(fake.buses) == ["b0", "b1"]
    assert fake.state_dir.is_dir() and fake.config_path is None and fake.ready
    fake.ready = False
    assert not fake.ready
    more = FakeBridge([], state_dir=tmp_path, buses=["x", BusInfo("y", "socketcan", "can0", True, None)],
                      config_path=tmp_path / "c.yaml")
    assert more.buses["y"].fd and more.buses["x"].interface == "virtual" and more.config_path == tmp_path / "c.yaml"
    with pytest.raises(ValueError, match="twice"):
        FakeBridge([signal_info(), signal_info()], state_dir=tmp_path)


def test_read_and_set(fake: FakeBridge) -> None:
    assert fake.read("b0.Status.Speed") == SignalValue("b0.Status.Speed", None, Quality.WAITING, None)
    fake.set("b0.Status.Speed", 5, Quality.STALE, timestamp_ns=123)
    assert fake.read("b0.Status.Speed") == SignalValue("b0.Status.Speed", 5, Quality.STALE, 123)
    assert [v.name for v in fake.read_many(["b0.Status.Temp", "b0.Status.Speed"])] == ["b0.Status.Temp",
                                                                                       "b0.Status.Speed"]
    assert len(fake.read_many()) == 7
    with pytest.raises(UnknownSignal):
        fake.read("b0.Status.Nope")
    with pytest.raises(UnknownSignal):
        fake.read_many(["b0.Status.Nope"])
    with pytest.raises(UnknownSignal):
        fake.publish(SignalValue("b0.Status.Nope", 1, Quality.GOOD, 1))


def test_message_status_counts_published_messages(fake: FakeBridge) -> None:
    fake.publish(SignalValue("b0.Status.Speed", 1, Quality.GOOD, 10), SignalValue("b0.Status.Temp", 2, Quality.GOOD, 9))
    fake.set("b0.Status.Temp", 3, Quality.STALE)
    status = {m.name: m for m in fake.message_status()}
    assert status["b0.Status"].frames == 2 and status["b0.Status"].quality is Quality.STALE
    assert status["b0.Status"].age_s is not None and status["b0.Status"].age_s >= 0
    assert status["b0.Command"].frames == 0 and status["b0.Command"].age_s is None
    assert [m.name for m in fake.message_status("b1")] == ["b1.Other"]


# --- subscriptions ------------------------------------------------------------------------------


async def test_subscribe_first_batch_then_coalesced_changes(fake: FakeBridge) -> None:
    async with fake.subscribe(["b0.Status.Speed", "b0.Status.Temp"], interval=0.05) as sub:
        first = await next_batch(sub)
        assert [v.name for v in first] == ["b0.Status.Speed", "b0.Status.Temp"]
        assert all(v.quality is Quality.WAITING for v in first)
        for v in (1, 2, 3):
            fake.set("b0.Status.Speed", v)
        fake.set("b0.Command.Setpoint", 9)  # not subscribed
        assert sub.lag_s >= 0 and fake.stats().max_subscriber_lag_s >= 0
        batch = await next_batch(sub)
        assert [(v.name, v.value) for v in batch] == [("b0.Status.Speed", 3)]  # newest only, once
        assert sub.lag_s == 0
        fake.set("b0.Status.Temp", 7)
        fake.set("b0.Status.Speed", 4)
        assert [(v.name, v.value) for v in await next_batch(sub)] == [("b0.Status.Speed", 4), ("b0.Status.Temp", 7)]
        assert fake.stats().subscribers == 1
    assert fake.stats().subscribers == 0


async def test_subscription_ends_when_closed(fake: FakeBridge) -> None:
    sub = fake.subscribe()
    got: list[list[SignalValue]] = []

    async def consume() -> None:
        async for batch in sub:
            got.append(batch)

    task = asyncio.create_task(consume())
    await until(lambda: got, what="the initial batch")  # iterating when closed
    sub.close()
    await asyncio.wait_for(task, 2)
    assert len(got) == 1 and len(got[0]) == 7
    with pytest.raises(UnknownSignal):
        fake.subscribe(["b0.Nope.X"])


async def test_subscribe_frames(fake: FakeBridge) -> None:
    async with fake.subscribe_frames("b1", maxlen=2) as only_b1, fake.subscribe_frames() as every:
        fake.receive("123#01", bus="b0")
        fake.receive(Frame(0x1, b"\x01", bus="b1"), "002#02", "003#03", bus="b1")
        frames = await asyncio.wait_for(anext(aiter(every)), 2)
        assert [(f.can_id, f.bus) for f in frames] == [(0x123, "b0"), (0x1, "b1"), (0x2, "b1"), (0x3, "b1")]
        frames = await asyncio.wait_for(anext(aiter(only_b1)), 2)
        assert [f.can_id for f in frames] == [2, 3] and only_b1.dropped == 1  # bounded: the oldest went
    with pytest.raises(KeyError):
        fake.subscribe_frames("nope")
    with pytest.raises(KeyError):
        fake.receive("001#00", bus="nope")


# --- bus state ----------------------------------------------------------------------------------


async def test_bus_state(fake: FakeBridge) -> None:
    assert fake.bus_status("b0").state is BusState.ACTIVE
    fake.set_bus_state("b0", BusState.BUS_OFF, bus_off_count=1, last_error="no ack")
    status = fake.bus_status("b0")
    assert (status.state, status.bus_off_count, status.last_error) == (BusState.BUS_OFF, 1, "no ack")
    assert await refusal(fake, "b0.Command.Setpoint", 1) is RefusalReason.BUS_DOWN
    with pytest.raises(WriteRefused) as err:
        await fake.send_frame("b0", "123#00", RAW)
    assert err.value.reason is RefusalReason.BUS_DOWN
    fake.set_bus_state("b0", BusState.WARNING)  # still usable
    await fake.write("b0.Command.Setpoint", 1, WRITER)
    assert fake.bus_status("b0").tx_frames == 1
    with pytest.raises(KeyError):
        fake.bus_status("nope")


# --- writes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "caller", "reason"),
    [
        ("b0.Nope.X", 1, WRITER, RefusalReason.UNKNOWN_SIGNAL),
        ("b0.Status.Speed", 1, WRITER, RefusalReason.NOT_WRITABLE),
        ("b0.Command.Setpoint", 1, READER, RefusalReason.NOT_ALLOWED),
        ("b0.Command.Setpoint", 1.5, WRITER, RefusalReason.WRONG_TYPE),
        ("b0.Command.Setpoint", True, WRITER, RefusalReason.WRONG_TYPE),
        ("b0.Command.Setpoint", "1", WRITER, RefusalReason.WRONG_TYPE),
        ("b0.Command.Setpoint", math.nan, WRITER, RefusalReason.WRONG_TYPE),
        ("b0.Command.Setpoint", 6001, WRITER, RefusalReason.OUT_OF_RANGE),
        ("b0.Command.Mode", 1, WRITER, RefusalReason.OUT_OF_RANGE),  # no such choice
        ("b0.Command.Mode", "Auto", WRITER, RefusalReason.WRONG_TYPE),
        ("b0.Command.Enable", 2, WRITER, RefusalReason.WRONG_TYPE),
        ("b1.Other.Level", math.inf, WRITER, RefusalReason.WRONG_TYPE),
    ],
)
async def test_static_refusals(fake: FakeBridge, name: str, value: Any, caller: Caller, reason: RefusalReason) -> None:
    assert await refusal(fake, name, value, caller) is reason
    (record,) = fake.writes
    assert (record.name, record.value, record.caller, record.accepted) == (name, value, caller, False)
    assert record.refused is not None and record.refused.reason is reason and record.refused.target == name
    assert fake.stats().writes_refused[reason.value] == 1 and fake.stats().writes_accepted == 0


@pytest.mark.parametrize(
    ("name", "value", "phys", "raw"),
    [
        ("b0.Command.Setpoint", 1500, 1500, 1500),
        ("b0.Command.Setpoint", 1500.0, 1500, 1500),
        ("b0.Command.Mode", "On", 2, 2),
        ("b0.Command.Enable", 1, True, 1),
        ("b0.Command.Gain", 3, 3.0, 6),
        ("b1.Other.Level", 1.5, 1.5, 0x3FC00000),
    ],
)
async def test_accepted_writes(fake: FakeBridge, name: str, value: Any, phys: Any, raw: int) -> None:
    async with fake.subscribe([name], interval=0) as sub:
        await next_batch(sub)
        receipt = await fake.write(name, value, WRITER)
        assert (receipt.name, receipt.value, type(receipt.value), receipt.raw) == (name, phys, type(phys), raw)
        info = fake.signals[name]
        assert (receipt.frame.can_id, receipt.frame.bus, receipt.cyclic) == (info.frame_id, info.bus, False)
        assert fake.read(name).value == phys and fake.read(name).quality is Quality.GOOD
        assert [(v.name, v.value) for v in await next_batch(sub)] == [(name, phys)]
    assert fake.writes[-1].receipt == receipt and fake.stats().writes_accepted == 1


async def test_scripted_refusals(fake: FakeBridge) -> None:
    fake.refuse_next("b0.Command.Setpoint", RefusalReason.RATE_LIMITED)
    fake.refuse_next(None, RefusalReason.WAITING, "no frame yet")
    # a static refusal comes first and leaves the scripted one waiting
    assert await refusal(fake, "b0.Command.Setpoint", 9999) is RefusalReason.OUT_OF_RANGE
    assert await refusal(fake, "b0.Command.Enable", True) is RefusalReason.WAITING  # the one for any signal
    assert await refusal(fake, "b0.Command.Setpoint", 1) is RefusalReason.RATE_LIMITED
    await fake.write("b0.Command.Setpoint", 2, WRITER)  # each scripted refusal serves once
    seen: list[tuple[str, Any]] = []

    def hook(info: SignalInfo, value: Any, caller: Caller) -> RefusalReason | None:
        seen.append((info.name, value))
        return RefusalReason.BUS_DOWN if value > 100 else None

    fake.on_write = hook
    await fake.write("b0.Command.Setpoint", 100, WRITER)
    assert await refusal(fake, "b0.Command.Setpoint", 101) is RefusalReason.BUS_DOWN
    assert seen == [("b0.Command.Setpoint", 100), ("b0.Command.Setpoint", 101)]
    assert [w.accepted for w in fake.writes] == [False, False, False, True, True, False]


async def test_send_frame(fake: FakeBridge) -> None:
    with pytest.raises(WriteRefused) as err:
        await fake.send_frame("b0", "123#00", WRITER)
    assert err.value.reason is RefusalReason.NOT_ALLOWED
    with pytest.raises(WriteRefused) as err:
        await fake.send_frame("nope", "123#00", RAW)
    assert err.value.reason is RefusalReason.UNKNOWN_BUS
    with pytest.raises(WriteRefused) as err:
        await fake.send_frame("b0", "123##1AA", RAW)
    assert err.value.reason is RefusalReason.INVALID_FRAME  # b0 is not an FD bus
    with pytest.raises(FrameFormatError):
        await fake.send_frame("b0", "nonsense", RAW)
    sent = await fake.send_frame("b0", {"canid": 0x123, "data": [1, 2]}, RAW)
    assert (sent.can_id, sent.data, sent.bus) == (0x123, b"\x01\x02", "b0")
    assert [(r.frame, r.caller) for r in fake.frames] == [(sent, RAW)]
    assert fake.bus_status("b0").tx_frames == 1
    stats = fake.stats()
    assert stats.writes_accepted == 1
    assert [stats.writes_refused[r.value] for r in (RefusalReason.NOT_ALLOWED, RefusalReason.UNKNOWN_BUS,
                                                     RefusalReason.INVALID_FRAME)] == [1, 1, 2]


# --- agreement with the real write path ---------------------------------------------------------

WRITABLE = ["MotorCommand.*", "PowerStatus.*", "MotorStatus.MotorCurrent", "BatteryStatus.PackVoltage"]
CASES: list[tuple[str, Any, Caller]] = [
    ("demo.Nope.X", 1, WRITER),
    ("demo.MotorStatus.MotorSpeed", 5, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", 1500, READER),
    ("demo.MotorCommand.SpeedSetpoint", 1500, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", 1500.0, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", 1500.5, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", 6001, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", -1, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", True, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", "fast", WRITER),
    ("demo.MotorCommand.SpeedSetpoint", math.nan, WRITER),
    ("demo.MotorCommand.SpeedSetpoint", None, WRITER),
    ("demo.MotorCommand.Enable", True, WRITER),
    ("demo.MotorCommand.Enable", 0.0, WRITER),
    ("demo.MotorCommand.Enable", 2, WRITER),
    ("demo.MotorCommand.Enable", "on", WRITER),
    ("demo.MotorCommand.Mode", "Torque", WRITER),
    ("demo.MotorCommand.Mode", "Turbo", WRITER),
    ("demo.MotorCommand.Mode", 3, WRITER),
    ("demo.MotorCommand.Mode", 1, WRITER),
    ("demo.MotorCommand.TorqueLimit", 100, WRITER),
    ("demo.MotorCommand.TorqueLimit", 100.5, WRITER),
    ("demo.PowerStatus.MotorPower", 12.5, WRITER),  # float32
    ("demo.PowerStatus.MotorPower", -501, WRITER),
    ("demo.PowerStatus.MotorPower", math.inf, WRITER),
    ("demo.PowerStatus.Efficiency", 50.5, WRITER),  # scale 0.5
    ("demo.PowerStatus.Efficiency", 50, WRITER),
    ("demo.MotorStatus.MotorCurrent", -12.3, WRITER),  # signed, scale 0.1
    ("demo.MotorStatus.MotorCurrent", 500, WRITER),
    ("demo.BatteryStatus.PackVoltage", 655, WRITER),  # 65500 fits 16 bits
]


async def _outcome(write: Any) -> tuple[str, object]:
    try:
        receipt = await write
    except WriteRefused as e:
        return ("refused", e.reason)
    return ("accepted", (receipt.value, type(receipt.value), receipt.raw))


async def test_refusals_agree_with_the_real_write_path(tmp_path: Path) -> None:
    config = demo_config(unique_channel("test"))
    config["mappings"][0]["writable"] = WRITABLE
    async with BridgeHarness(config=config) as h:
        real = [await _outcome(h.bridge.write(n, v, c)) for n, v, c in CASES]
        fake = FakeBridge(h.bridge.signals.values(), state_dir=tmp_path, buses=h.bridge.buses.values())
    assert len({o[0] for o in real}) == 2  # the cases cover both outcomes on the real bridge
    faked = [await _outcome(fake.write(n, v, c)) for n, v, c in CASES]
    mismatches = [(case[:2], r, f) for case, r, f in zip(CASES, real, faked, strict=True) if r != f]
    assert mismatches == []
