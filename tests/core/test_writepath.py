"""The write path (canbridge/core/writepath.py): every refusal sends nothing and is audited; accepted
writes do read-modify-write of the frame, update cyclic transmissions atomically, and more."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from canbridge import (
    BusState,
    Caller,
    Frame,
    FrameFormatError,
    Permission,
    Quality,
    RefusalReason,
    WriteRefused,
)
from canbridge.core.app import demo_config, unique_channel
from canbridge.testing import BridgeHarness, until
from tests.core.test_busrunner import fake_runtime

SET = "demo.MotorCommand.SpeedSetpoint"
TORQUE = "demo.MotorCommand.TorqueLimit"
WRITER = Caller("test", user="alice", address="127.0.0.1")
NOBODY = Caller("test", user="mallory", permissions=frozenset())
RAW = Caller("test", permissions=frozenset({Permission.RAW}))


def config(transmit: Mapping[str, Any] | None = None, writable: list[str] | None = None,
           write_rate: float | None = 1000, **mapping: Any) -> dict[str, Any]:
    data = demo_config(unique_channel("wp"))
    m = data["mappings"][0]
    m["transmit"] = dict(transmit or {})
    m["writable"] = writable if writable is not None else ["MotorCommand.*"]
    m["write_rate"] = write_rate
    m.update(mapping)
    return data


def audit(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "audit.jsonl"
    def strict(const: str) -> Any:
        raise AssertionError(f"audit line is not strict JSON: {const}")

    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line, parse_constant=strict) for line in lines]


def speed_of(frame: Frame) -> int:
    return int.from_bytes(frame.data[0:2], "little")


async def assert_refused(h: BridgeHarness, name: str, value: Any, reason: RefusalReason,
                         caller: Caller = WRITER, needle: str = "") -> WriteRefused:
    h.clear_sent()
    with pytest.raises(WriteRefused) as info:
        await h.bridge.write(name, value, caller)
    assert info.value.reason is reason
    assert info.value.target == name
    assert needle in info.value.detail
    with pytest.raises(TimeoutError):
        await h.next_sent(timeout=0.3)
    [entry] = [e for e in audit(h.bridge.state_dir) if e["result"] == reason.value and e["target"] == name
               and e["value"] == (value if not isinstance(value, float) or math.isfinite(value) else str(value))]
    assert entry["plugin"] == caller.plugin and entry["user"] == caller.user
    assert entry["detail"] == info.value.detail
    assert h.bridge.stats().writes_refused[reason.value] >= 1
    return info.value


# --- refusals -------------------------------------------------------------------------------------

async def test_every_refusal_sends_nothing_and_is_audited() -> None:
    cfg = config(writable=["MotorCommand.SpeedSetpoint", "MotorCommand.Mode"])
    async with BridgeHarness(config=cfg) as h:
        await assert_refused(h, "demo.Nope.Nothing", 1, RefusalReason.UNKNOWN_SIGNAL)
        await assert_refused(h, "demo.MotorStatus.MotorSpeed", 1, RefusalReason.NOT_WRITABLE, needle="received")
        await assert_refused(h, TORQUE, 10, RefusalReason.NOT_WRITABLE, needle="writable")
        await assert_refused(h, SET, 100, RefusalReason.NOT_ALLOWED, caller=NOBODY)
        await assert_refused(h, SET, "fast", RefusalReason.WRONG_TYPE, needle="string")
        await assert_refused(h, SET, 100.5, RefusalReason.WRONG_TYPE, needle="integer")
        await assert_refused(h, SET, math.nan, RefusalReason.WRONG_TYPE, needle="finite")
        await assert_refused(h, SET, math.inf, RefusalReason.WRONG_TYPE, needle="finite")
        await assert_refused(h, SET, True, RefusalReason.WRONG_TYPE)
        await assert_refused(h, SET, None, RefusalReason.WRONG_TYPE)
        await assert_refused(h, SET, 6001, RefusalReason.OUT_OF_RANGE, needle="0..6000 rpm")
        await assert_refused(h, SET, -1, RefusalReason.OUT_OF_RANGE)
        await assert_refused(h, "demo.MotorCommand.Mode", "Turbo", RefusalReason.WRONG_TYPE, needle="choices")
        await assert_refused(h, "demo.MotorCommand.Mode", 3, RefusalReason.OUT_OF_RANGE)
        assert h.bridge.stats().writes_accepted == 0
        assert h.bridge.bus_status("demo").tx_frames == 0


async def test_rate_bound_refuses_the_write_beyond_it() -> None:
    async with BridgeHarness(config=config(write_rate=1)) as h:
        receipt = await h.bridge.write(SET, 100, WRITER)
        assert speed_of(await h.next_sent(0x300)) == 100 and not receipt.cyclic
        err = await assert_refused(h, SET, 200, RefusalReason.RATE_LIMITED, needle="writes/s")
        assert "retry in" in err.detail
        # the bound is per signal: another signal of the same frame is still writable
        await h.bridge.write(TORQUE, 60, WRITER)
        frame = await h.next_sent(0x300)
        assert (speed_of(frame), frame.data[3]) == (100, 60)
        assert h.bridge.read(SET).value == 100


async def test_waiting_for_a_received_seed() -> None:
    cfg = config(transmit={"MotorCommand": {"seed": "received"}})
    async with BridgeHarness(config=cfg) as h:
        await assert_refused(h, SET, 100, RefusalReason.WAITING, needle="no frame of it")
        h.inject("300#0000010A00000000")  # another node sends MotorCommand: Enable 1, TorqueLimit 10
        await h.until(lambda: h.bridge.bus_status("demo").rx_frames == 1)
        await h.bridge.write(SET, 1000, WRITER)
        frame = await h.next_sent(0x300)
        assert frame.data == bytes.fromhex("E803010A00000000")  # the rest of the frame is what was received


async def test_bus_down_refuses_and_sends_nothing(tmp_path: Path) -> None:
    mapping = {"writable": ["MotorCommand.*"]}
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        link.down = True
        link.fail(OSError(100, "Network is down"))
        await until(lambda: rt.bus_status("demo").state is BusState.DOWN)
        with pytest.raises(WriteRefused) as info:
            await rt.write(SET, 100, WRITER)
        assert info.value.reason is RefusalReason.BUS_DOWN and "down" in info.value.detail
        assert link.sent == []
        with pytest.raises(WriteRefused) as info:
            await rt.send_frame("demo", "123#00", RAW)
        assert info.value.reason is RefusalReason.BUS_DOWN
        assert link.sent == []
        results = [e["result"] for e in audit(rt.state_dir)]
        assert results == ["bus_down", "bus_down"]


async def test_driver_send_failure_is_a_refusal_and_commits_nothing(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, mapping={"writable": ["MotorCommand.*"]}) as (rt, link):
        link.send_fails = True
        with pytest.raises(WriteRefused) as info:
            await rt.write(SET, 100, WRITER)
        assert info.value.reason is RefusalReason.BUS_DOWN and "transmit queue full" in info.value.detail
        assert rt.read(SET).value == 0  # the store still shows what was last sent: the initial frame
        link.send_fails = False
        await rt.write(TORQUE, 70, WRITER)
        assert link.sent[-1].data[0:2] == b"\x00\x00"  # the refused 100 did not reach the shadow
        # recorded before the send (no frame without its record), then the send's failure, tied to it
        records = audit(rt.state_dir)
        assert [e["result"] for e in records] == ["accepted", "bus_down", "accepted"]
        assert records[1]["event"] == "send_failed" and records[1]["of"] == records[0]["seq"]


# --- accepted writes ------------------------------------------------------------------------------

async def test_read_modify_write_keeps_the_other_signals() -> None:
    async with BridgeHarness(config=config()) as h:
        r = await h.bridge.write(SET, 1500, WRITER)
        assert (r.value, r.raw, r.cyclic) == (1500, 1500, False)
        frame = await h.next_sent(0x300)
        assert frame.data == bytes.fromhex("DC05003200000000")  # TorqueLimit initial 50 kept
        assert r.frame.data == frame.data
        await h.bridge.write("demo.MotorCommand.Enable", True, WRITER)
        frame = await h.next_sent(0x300)
        assert frame.data == bytes.fromhex("DC05013200000000")
        v = h.bridge.read(SET)
        assert (v.value, v.quality) == (1500, Quality.GOOD)
        assert h.bridge.read("demo.MotorCommand.Enable").value is True
        [a1, a2] = audit(h.bridge.state_dir)
        assert (a1["result"], a1["target"], a1["value"], a1["raw"], a1["frame"]) == (
            "accepted", SET, 1500, 1500, "300#DC05003200000000")
        assert a1["who"] == "test:alice@127.0.0.1" and a2["value"] is True


async def test_send_once_message_sends_exactly_one_frame() -> None:
    async with BridgeHarness(config=config()) as h:
        assert h.bridge.read(SET).quality is Quality.WAITING  # not sent yet
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)
        await h.bridge.write(SET, 10, WRITER)
        await h.next_sent(0x300)
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)
        assert h.bridge.bus_status("demo").tx_frames == 1


async def test_choice_text_and_float_input() -> None:
    async with BridgeHarness(config=config()) as h:
        r = await h.bridge.write("demo.MotorCommand.Mode", "Torque", WRITER)
        assert (r.value, r.raw) == (2, 2)
        frame = await h.next_sent(0x300)
        assert (frame.data[2] >> 1) & 3 == 2
        r = await h.bridge.write(SET, 250.0, WRITER)  # an integral float is an int
        assert r.value == 250 and isinstance(r.value, int)
        r = await h.bridge.write("demo.MotorCommand.Enable", 1, WRITER)
        assert r.value is True


async def test_cyclic_transmission_is_updated_atomically() -> None:
    async with BridgeHarness() as h:  # the demo: MotorCommand every 100 ms
        runner = h.bridge.runners["demo"]
        [cyc] = runner.cyclic.values()
        handle = cyc.handle
        assert speed_of(await h.next_sent(0x300)) == 0
        r = await h.bridge.write(SET, 3000, WRITER)
        assert r.cyclic
        seen = [speed_of(await h.next_sent(0x300)) for _ in range(6)]
        first_new = seen.index(3000)  # at most the frames already on their way carry the old value
        assert all(s == 3000 for s in seen[first_new:]), seen
        assert seen[:first_new] == [0] * first_new
        assert (cyc.period_s, cyc.handle) == (0.1, handle)  # modified in place, same period
        assert all(f.data[3] == 50 for f in [r.frame])


async def test_multiplexed_signal_sets_its_multiplexer() -> None:
    cfg = config(writable=["Diagnostics.*"])
    async with BridgeHarness(config=cfg) as h:
        assert h.bridge.signals["demo.Diagnostics.UptimeSeconds"].multiplexer == "DiagPage"
        await h.bridge.write("demo.Diagnostics.UptimeSeconds", 77, WRITER)
        frame = await h.next_sent(0x400)
        assert frame.data[0] == 1 and int.from_bytes(frame.data[1:5], "little") == 77
        await h.bridge.write("demo.Diagnostics.FirmwareMajor", 3, WRITER)
        frame = await h.next_sent(0x400)
        assert (frame.data[0], frame.data[1]) == (2, 3)
        assert h.bridge.read("demo.Diagnostics.DiagPage").value == 2
        await h.bridge.write("demo.Diagnostics.ErrorCount", 513, WRITER)
        frame = await h.next_sent(0x400)
        assert frame.data[0] == 0 and int.from_bytes(frame.data[1:3], "little") == 513


# --- raw frames -----------------------------------------------------------------------------------

async def test_send_frame_needs_raw_and_valid_frames() -> None:
    async with BridgeHarness(config=config()) as h:
        sent = await h.bridge.send_frame("demo", "123#DEADBEEF", RAW)
        assert sent == Frame(0x123, bytes.fromhex("DEADBEEF"), bus="demo")
        peer = await h.next_sent(0x123)
        assert peer.data == bytes.fromhex("DEADBEEF")
        await h.bridge.send_frame("demo", {"canid": 0x18FEF100, "ext": True, "data": [1, 2]}, RAW)
        peer = await h.next_sent(0x18FEF100)
        assert peer.extended and peer.data == b"\x01\x02"
        await h.bridge.send_frame("demo", Frame(0x124, rtr=True, dlc=2), RAW)
        assert (await h.next_sent(0x124)).rtr

        h.clear_sent()
        for caller in (WRITER, NOBODY):
            with pytest.raises(WriteRefused) as info:
                await h.bridge.send_frame("demo", "123#00", caller)
            assert info.value.reason is RefusalReason.NOT_ALLOWED
        with pytest.raises(FrameFormatError, match="odd number"):
            await h.bridge.send_frame("demo", "123#ABC", RAW)
        with pytest.raises(WriteRefused) as info:
            await h.bridge.send_frame("demo", "123##1DEADBEEF", RAW)
        assert info.value.reason is RefusalReason.INVALID_FRAME and "fd: true" in info.value.detail
        with pytest.raises(WriteRefused) as info:
            await h.bridge.send_frame("other", "123#00", RAW)
        assert info.value.reason is RefusalReason.UNKNOWN_BUS and "demo" in info.value.detail
        with pytest.raises(TimeoutError):
            await h.next_sent(timeout=0.3)
        results = [e["result"] for e in audit(h.bridge.state_dir)]
        assert results == ["accepted"] * 3 + ["not_allowed", "not_allowed", "invalid_frame", "invalid_frame",
                                              "unknown_bus"]


# --- writer timeouts ------------------------------------------------------------------------------

async def test_writer_timeout_falls_back_to_initial_values() -> None:
    cfg = config(transmit={"MotorCommand": {"period_ms": 20, "writer_timeout_ms": 200,
                                            "on_writer_timeout": "initial"}})
    async with BridgeHarness(config=cfg) as h:
        await h.bridge.write(SET, 2000, WRITER)
        for _ in range(200):
            if speed_of(await h.next_sent(0x300)) == 2000:
                break
        else:
            raise AssertionError("the written value was never sent")
        for _ in range(500):  # the writer went quiet: initial values again, still cyclic
            frame = await h.next_sent(0x300)
            if speed_of(frame) == 0:
                break
        else:
            raise AssertionError("never fell back to the initial values")
        assert frame.data[3] == 50
        await h.until(lambda: h.bridge.read(SET).value == 0)
        assert h.bridge.read(SET).quality is Quality.GOOD
        await h.next_sent(0x300)  # still transmitting


async def test_writer_timeout_stops_the_cyclic_frame() -> None:
    cfg = config(transmit={"MotorCommand": {"period_ms": 20, "writer_timeout_ms": 200,
                                            "on_writer_timeout": "stop", "start": "first_write"}})
    async with BridgeHarness(config=cfg) as h:
        runner = h.bridge.runners["demo"]
        assert runner.cyclic == {}  # start: first_write
        await h.bridge.write(SET, 2000, WRITER)
        assert speed_of(await h.next_sent(0x300)) == 2000
        await h.until(lambda: runner.cyclic == {})
        await h.until(lambda: h.bridge.read(SET).quality is Quality.STALE)
        h.clear_sent()
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)
        await h.bridge.write(SET, 2100, WRITER)  # a new write starts it again
        assert speed_of(await h.next_sent(0x300)) == 2100


# --- write_many: all or nothing ------------------------------------------------------------------

SOC = "demo.BatteryStatus.StateOfCharge"
VOLT = "demo.BatteryStatus.PackVoltage"


async def test_write_many_merges_one_message_into_one_frame() -> None:
    async with BridgeHarness(config=config()) as h:
        receipts = await h.bridge.write_many([(SET, 1200), (TORQUE, 55)], WRITER)
        frame = await h.next_sent(0x300)
        assert speed_of(frame) == 1200 and frame.data[3] == 55
        assert [r.frame for r in receipts] == [receipts[0].frame] * 2  # one frame carries both
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)  # and no second one
        records = audit(h.bridge.state_dir)
        assert [(r["target"], r["result"], r["batch"]) for r in records] == [(SET, "accepted", 2),
                                                                              (TORQUE, "accepted", 2)]


async def test_write_many_spans_messages() -> None:
    async with BridgeHarness(config=config(writable=["MotorCommand.*", "BatteryStatus.*"])) as h:
        await h.bridge.write_many([(SET, 10), (SOC, 50), (TORQUE, 7)], WRITER)
        a, b = await h.next_sent(0x300), await h.next_sent(0x200)
        assert speed_of(a) == 10 and a.data[3] == 7 and b.data[4] == 100  # 50 % at 0.5 %/bit
        assert h.bridge.read(SOC).value == 50


@pytest.mark.parametrize(("bad", "reason"), [
    ((TORQUE, 101), RefusalReason.OUT_OF_RANGE),
    ((TORQUE, math.nan), RefusalReason.WRONG_TYPE),
    ((TORQUE, math.inf), RefusalReason.WRONG_TYPE),
    ((TORQUE, "ten"), RefusalReason.WRONG_TYPE),
    ((TORQUE, [1, 2]), RefusalReason.WRONG_TYPE),
    ((TORQUE, None), RefusalReason.WRONG_TYPE),
    ((TORQUE, b"\x01"), RefusalReason.WRONG_TYPE),
    (("demo.MotorStatus.MotorSpeed", 1), RefusalReason.NOT_WRITABLE),
    (("demo.Nope.Nothing", 1), RefusalReason.UNKNOWN_SIGNAL),
])
@pytest.mark.parametrize("position", [0, 1, 2])
async def test_one_refused_item_refuses_the_whole_request(bad: tuple[str, Any], reason: RefusalReason,
                                                          position: int) -> None:
    async with BridgeHarness(config=config(writable=["MotorCommand.*", "BatteryStatus.*"])) as h:
        items: list[tuple[str, Any]] = [(SET, 100), (SOC, 40)]
        items.insert(position, bad)
        h.clear_sent()
        with pytest.raises(WriteRefused) as info:
            await h.bridge.write_many(items, WRITER)
        assert info.value.reason is reason and info.value.index == position
        with pytest.raises(TimeoutError):
            await h.next_sent(timeout=0.3)
        assert h.bridge.read(SET).value == 0 and h.bridge.read(SOC).value != 40
        records = audit(h.bridge.state_dir)
        assert len(records) == 3  # every item of the request is audited, none as accepted
        assert {r["result"] for r in records} == {reason.value}
        assert all("not sent" in r["detail"] for r in records if r["target"] != bad[0])


async def test_write_many_takes_no_rate_token_when_refused() -> None:
    async with BridgeHarness(config=config(write_rate=1)) as h:
        with pytest.raises(WriteRefused):
            await h.bridge.write_many([(SET, 100), (TORQUE, 500)], WRITER)
        await h.bridge.write(SET, 100, WRITER)  # the one token per second is still there


async def test_write_many_is_rate_limited_as_a_whole() -> None:
    async with BridgeHarness(config=config(write_rate=1)) as h:
        await h.bridge.write(TORQUE, 5, WRITER)
        with pytest.raises(WriteRefused) as info:
            await h.bridge.write_many([(SET, 100), (TORQUE, 6)], WRITER)
        assert info.value.reason is RefusalReason.RATE_LIMITED and info.value.index == 1
        assert h.bridge.read(SET).value == 0


async def test_write_many_of_nothing_sends_nothing() -> None:
    async with BridgeHarness(config=config()) as h:
        assert await h.bridge.write_many([], WRITER) == []
        assert audit(h.bridge.state_dir) == []


async def test_a_single_write_has_no_index() -> None:
    async with BridgeHarness(config=config()) as h:
        with pytest.raises(WriteRefused) as info:
            await h.bridge.write(TORQUE, 500, WRITER)
        assert info.value.index is None


# --- refusals decided by plugins ------------------------------------------------------------------

@pytest.mark.parametrize("reason", [RefusalReason.UNAUTHENTICATED, RefusalReason.NOT_ALLOWED,
                                    RefusalReason.UNSUPPORTED])
async def test_refuse_audits_and_counts(reason: RefusalReason) -> None:
    async with BridgeHarness(config=config()) as h:
        caller = Caller("rest", user=None, address="127.0.0.1")
        e = h.bridge.refuse("rest:PUT /api/v1/signals/x", 5, caller, reason, "no token")
        assert isinstance(e, WriteRefused) and e.reason is reason and e.detail == "no token"
        (record,) = audit(h.bridge.state_dir)
        assert (record["result"], record["plugin"], record["address"], record["value"]) == (
            reason.value, "rest", "127.0.0.1", 5)
        assert h.bridge.stats().writes_refused[reason.value] == 1


# --- the audit log cannot be written ----------------------------------------------------------------

async def test_no_frame_without_its_audit_record(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.core.test_audit import FailingWrites

    async with BridgeHarness(config=config()) as h:
        await h.bridge.write(SET, 1, WRITER)
        await h.next_sent(0x300)
        failing = FailingWrites(budget=0)
        monkeypatch.setattr(os, "write", failing)
        for value, call in [(2, "write"), (3, "write_many"), (4, "frame")]:
            with pytest.raises(WriteRefused) as info:
                if call == "write":
                    await h.bridge.write(SET, value, WRITER)
                elif call == "write_many":
                    await h.bridge.write_many([(SET, value), (TORQUE, value)], WRITER)
                else:
                    await h.bridge.send_frame("demo", f"300#{value:02X}", Caller("t", permissions=frozenset(
                        {Permission.RAW})))
            assert info.value.reason is RefusalReason.AUDIT_UNAVAILABLE
            assert "audit log cannot be written" in info.value.detail
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)
        assert h.bridge.read(SET).value == 1
        stats = h.bridge.stats()
        assert not stats.audit_available and "No space left" in (stats.audit_error or "")
        assert stats.audit_failures >= 1 and stats.writes_refused["audit_unavailable"] >= 3
        monkeypatch.setattr(os, "write", failing.real)  # space again: the alarm clears by itself
        await h.until(lambda: h.bridge.stats().audit_available, timeout=3)
        await h.bridge.write(SET, 5, WRITER)
        assert speed_of(await h.next_sent(0x300)) == 5
        records = audit(h.bridge.state_dir)
        assert records[0]["result"] == "accepted" and records[1]["event"] == "audit_recovered"
        assert [r["result"] for r in records[2:5]] == ["audit_unavailable"] * 3  # refusals kept and written
        assert records[-1]["result"] == "accepted" and records[-1]["value"] == 5
