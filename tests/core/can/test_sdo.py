"""CANopen SDO through the one write path (canbridge/core/can/sdo.py, core/writepath.py, core/sdoreads.py):
expedited and segmented uploads and downloads seen by the peer, a node's abort turned into a refusal with
its code, a refused write that sends no SDO request, a timeout that makes a value bad, one transfer in
flight per node. The peer is the ``canopen`` package's LocalNode (an SDO server from tests/data/eds/servo.eds,
written for these tests) on python-can's virtual bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import can
import canopen
import pytest
from canopen.sdo.base import SdoVariable
from canopen.sdo.exceptions import SdoAbortedError

import canbridge
from canbridge import Caller, Quality, RefusalReason, WriteRefused
from canbridge.config import parse_config
from canbridge.core.app import unique_channel
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.mapping.table import build_table
from canbridge.testing import BridgeHarness

EDS = Path(__file__).resolve().parents[2] / "data" / "eds" / "servo.eds"
FORMATS = collect(make_plugin_manager(load_entry_points=False)).formats
WRITER = Caller("test", "alice")
WRITABLE = ["Controlword", "Target_*", "Serial_number", "Gear_ratio", "Reset_command", "Modes_of_operation"]


def node_config(channel: str, **node: Any) -> dict[str, Any]:
    return {"buses": [{"name": "line", "interface": "virtual", "channel": channel,
                       "nodes": [{"id": 5, "name": "servo", "eds": str(EDS), "writable": WRITABLE,
                                  "write_rate": None, **node}]}], "mappings": []}


class Peer:
    """A LocalNode on the bridge's virtual channel, and a plain observer of every SDO request frame."""

    def __init__(self, channel: str) -> None:
        self.network = canopen.Network()
        self.network.connect(interface="virtual", channel=channel, receive_own_messages=False)
        self.node = canopen.LocalNode(5, str(EDS))
        self.network.add_node(self.node)
        self.seen = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)

    def value(self, index: int) -> Any:
        """The object in the peer's own data store."""
        var = self.node.sdo[index]
        assert isinstance(var, SdoVariable)
        return var.raw

    def set(self, index: int, value: Any) -> None:
        var = self.node.sdo[index]
        assert isinstance(var, SdoVariable)
        var.raw = value

    def requests(self) -> Iterator[can.Message]:
        """The SDO requests (0x605) on the bus so far."""
        while (msg := self.seen.recv(0)) is not None:
            if msg.arbitration_id == 0x605:
                yield msg

    def close(self) -> None:
        self.seen.shutdown()
        self.network.disconnect()


@asynccontextmanager
async def bridge_and_peer(**node: Any) -> AsyncIterator[tuple[BridgeHarness, Peer]]:
    channel = unique_channel("sdo")
    async with BridgeHarness(node_config(channel, **node)) as h:
        peer = Peer(channel)
        try:
            yield h, peer
        finally:
            peer.close()


def audit(h: BridgeHarness) -> list[dict[str, Any]]:
    path = h.bridge.state_dir / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the table ---------------------------------------------------------------------------------------------


def table(**node: Any) -> Any:
    return build_table(parse_config(node_config("line", **node)), Path.cwd(), FORMATS, "bridge.yaml")


def test_objects_in_no_tpdo_are_signals_served_by_sdo_with_their_access_and_limits() -> None:
    t = table()
    vel = t.signals["line.servo.Target_velocity"]
    assert (vel.writable, vel.minimum, vel.maximum, vel.unit, vel.value_type) == (True, -3000, 3000, "rpm", int)
    assert vel.comment == "CANopen 0x60FFsub0 (rw, SDO)"
    entry = t.message_list[t.signal_message[vel.index]]
    assert entry.sdo is not None and (entry.sdo.index, entry.sdo.subindex, entry.sdo.size) == (0x60FF, 0, 4)
    assert entry.key not in t.by_bus["line"] or t.by_bus["line"][entry.key] is not entry  # no frame lookup
    assert not t.signals["line.servo.Supported_drive_modes"].writable  # ro, and not asked for
    assert t.signals["line.servo.Gear_ratio"].value_type is float
    assert t.signals["line.servo.Statusword"].message == "servo.TPDO1"  # in a TPDO: a PDO signal, not SDO
    assert "line.servo.Device_type" in t.signals
    assert "line.servo.Device_type" not in table(sdo=[], writable=[]).signals


@pytest.mark.parametrize(("writable", "message"), [
    (["Supported_drive_modes"], "matches Supported_drive_modes (0x6502sub0), which the dictionary marks ro"),
    (["Statusword"], "matches Statusword, mapped in a TPDO: objects the node transmits are not written"),
    (["Nope*"], "writable pattern 'Nope*' matches no object in an RPDO or served by SDO"),
])
def test_writable_objects_must_be_writable_in_the_dictionary_and_in_no_pdo(writable: list[str], message: str) -> None:
    with pytest.raises(canbridge.ConfigError, match=r"buses\[0\]\.nodes\[0\]\.eds") as e:
        table(writable=writable)
    assert message in str(e.value)


# --- against the LocalNode --------------------------------------------------------------------------------


async def test_expedited_and_segmented_writes_are_seen_by_the_peer_and_read_back() -> None:
    async with bridge_and_peer() as (h, peer):
        receipt = await h.bridge.write("line.servo.Target_velocity", -1500, WRITER)
        assert peer.value(0x60FF) == -1500
        assert receipt.frame.can_id == 0x605 and receipt.frame.data[0] == 0x23  # expedited, 4 bytes
        await h.bridge.write("line.servo.Modes_of_operation", -3, WRITER)  # INTEGER8: 1 byte
        assert peer.value(0x6060) == -3
        await h.bridge.write("line.servo.Serial_number", 0x1122334455667788, WRITER)  # UNSIGNED64: segmented
        assert peer.value(0x2100) == 0x1122334455667788
        await h.bridge.write("line.servo.Gear_ratio", 2.25, WRITER)  # REAL64: segmented
        assert peer.value(0x2101) == 2.25
        assert h.bridge.read("line.servo.Target_velocity").value == -1500
        assert h.bridge.read("line.servo.Serial_number").quality is Quality.GOOD
        records = [r for r in audit(h) if r.get("result") == "accepted"]
        assert [(r["target"], r["sdo"]) for r in records] == [
            ("line.servo.Target_velocity", "download 0x60FFsub0 node 5"),
            ("line.servo.Modes_of_operation", "download 0x6060sub0 node 5"),
            ("line.servo.Serial_number", "download 0x2100sub0 node 5"),
            ("line.servo.Gear_ratio", "download 0x2101sub0 node 5")]
        assert records[2]["frame"] == "605#2100210008000000"  # segmented: the size, 8 bytes


async def test_expedited_and_segmented_reads_come_from_the_peer() -> None:
    async with bridge_and_peer() as (h, peer):
        assert h.bridge.read("line.servo.Supported_drive_modes").quality is Quality.WAITING
        sv = await h.bridge.refresh("line.servo.Supported_drive_modes")
        assert (sv.value, sv.quality) == (0x65, Quality.GOOD)
        peer.set(0x2100, 0xA1B2C3D4E5F60718)
        assert (await h.bridge.refresh("line.servo.Serial_number")).value == 0xA1B2C3D4E5F60718  # segmented
        peer.set(0x2101, -0.125)
        assert (await h.bridge.refresh("line.servo.Gear_ratio")).value == -0.125
        assert (await h.bridge.refresh("line.servo.Device_type")).value == 0x00020192
        # a signal that is not an SDO object: refresh gives its latest value, no request
        list(peer.requests())
        assert (await h.bridge.refresh("line.servo.Statusword")).quality is Quality.WAITING
        assert list(peer.requests()) == []


@pytest.mark.parametrize(("code", "reason"), [
    (0x06090030, RefusalReason.OUT_OF_RANGE),
    (0x06090031, RefusalReason.OUT_OF_RANGE),
    (0x06010002, RefusalReason.NOT_WRITABLE),
    (0x08000022, RefusalReason.DEVICE_REFUSED),
    (0x08000000, RefusalReason.DEVICE_REFUSED),
])
async def test_an_abort_of_the_node_is_a_refusal_that_keeps_its_code(code: int, reason: RefusalReason) -> None:
    async with bridge_and_peer() as (h, peer):
        def refuse(index: int, subindex: int, od: Any, data: bytes) -> None:
            if index == 0x607A:
                raise SdoAbortedError(code)

        peer.node.add_write_callback(refuse)  # type: ignore[no-untyped-call]
        with pytest.raises(WriteRefused) as e:
            await h.bridge.write("line.servo.Target_position", 5000, WRITER)
        assert (e.value.reason, e.value.abort_code, e.value.target) == (reason, code, "line.servo.Target_position")
        assert f"SDO abort 0x{code:08X}" in e.value.detail and "from the node" in e.value.detail
        assert peer.value(0x607A) == 0
        rec = audit(h)
        accepted = next(r for r in rec if r.get("result") == "accepted")
        follow = next(r for r in rec if r.get("event") == "sdo_abort")
        assert (follow["of"], follow["abort_code"], follow["result"], follow["by"]) == (
            accepted["seq"], f"0x{code:08X}", reason.value, "node")
        assert h.bridge.read("line.servo.Target_position").quality is Quality.WAITING  # nothing was written


@pytest.mark.parametrize(("name", "value", "reason", "caller"), [
    ("line.servo.Target_velocity", 3001, RefusalReason.OUT_OF_RANGE, WRITER),  # HighLimit 3000
    ("line.servo.Target_velocity", 2.5, RefusalReason.WRONG_TYPE, WRITER),
    ("line.servo.Supported_drive_modes", 1, RefusalReason.NOT_WRITABLE, WRITER),  # ro
    ("line.servo.Controlword", 6, RefusalReason.NOT_ALLOWED, Caller("test", permissions=frozenset())),
    ("line.servo.Controlword", 0x10000, RefusalReason.OUT_OF_RANGE, WRITER),  # UNSIGNED16
])
async def test_a_refused_write_sends_no_sdo_request(name: str, value: Any, reason: RefusalReason,
                                                    caller: Caller) -> None:
    async with bridge_and_peer() as (h, peer):
        with pytest.raises(WriteRefused) as e:
            await h.bridge.write(name, value, caller)
        assert e.value.reason is reason and e.value.abort_code is None
        await h.bridge.write("line.servo.Controlword", 0x0F, WRITER)  # the marker: the next request on the bus
        first = next(peer.requests())
        assert bytes(first.data[:4]) == b"\x2b\x40\x60\x00"  # expedited 2 bytes to 0x6040: the marker
        assert peer.value(0x6040) == 0x0F


async def test_a_write_rate_bound_refuses_before_any_request() -> None:
    async with bridge_and_peer(write_rate=1.0) as (h, peer):
        await h.bridge.write("line.servo.Controlword", 1, WRITER)
        with pytest.raises(WriteRefused) as e:
            await h.bridge.write("line.servo.Controlword", 2, WRITER)
        assert e.value.reason is RefusalReason.RATE_LIMITED
        assert len(list(peer.requests())) == 1 and peer.value(0x6040) == 1


async def test_several_sdo_objects_in_one_request_are_refused_whole() -> None:
    async with bridge_and_peer() as (h, peer):
        with pytest.raises(WriteRefused) as e:
            await h.bridge.write_many([("line.servo.Controlword", 1), ("line.servo.Target_velocity", 2)], WRITER)
        assert e.value.reason is RefusalReason.UNSUPPORTED and e.value.index == 0
        assert list(peer.requests()) == []


async def test_no_answer_aborts_with_0x05040000_a_read_turns_bad_and_a_write_is_refused() -> None:
    channel = unique_channel("sdo")
    async with BridgeHarness(node_config(channel, sdo_timeout_ms=50)) as h:
        seen = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        try:
            sv = await h.bridge.refresh("line.servo.Device_type")  # no node on the bus
            assert sv.quality is Quality.BAD
            assert sv.reason == ("CANopen node servo: 0x1000sub0 not read: SDO abort 0x05040000 (SDO protocol "
                                 "timed out): node servo did not answer within 50 ms")
            with pytest.raises(WriteRefused) as e:
                await h.bridge.write("line.servo.Controlword", 1, WRITER)
            assert (e.value.reason, e.value.abort_code) == (RefusalReason.DEVICE_TIMEOUT, 0x05040000)
            frames = [m for m in iter(lambda: seen.recv(0), None) if m.arbitration_id == 0x605]
            # each transfer: its request, then the bridge's abort 0x05040000 to the node
            assert [bytes(m.data) for m in frames] == [
                bytes.fromhex("4000100000000000"), bytes.fromhex("8000100000000405"),
                bytes.fromhex("2b40600001000000"), bytes.fromhex("8040600000000405")]
        finally:
            seen.shutdown()


async def test_one_transfer_in_flight_per_node_under_concurrent_writes() -> None:
    async with bridge_and_peer() as (h, peer):
        sdo = h.bridge.runners["line"].sdo
        assert sdo is not None
        in_flight: list[int] = []

        def watch(index: int, subindex: int, od: Any, data: bytes) -> None:
            in_flight.append(sdo.counters(5).queued)

        peer.node.add_write_callback(watch)  # type: ignore[no-untyped-call]
        writes = [h.bridge.write("line.servo.Target_velocity", v, WRITER) for v in range(10)]
        writes += [h.bridge.write("line.servo.Serial_number", 1 << 40 | v, WRITER) for v in range(10)]
        await asyncio.gather(*writes)
        assert peer.value(0x60FF) == 9 and peer.value(0x2100) == 1 << 40 | 9  # in request order
        assert len(in_flight) == 20 and max(in_flight) >= 2  # the others waited in the node's queue
        assert sdo.counters(5).transfers == 20 and sdo.counters(5).queued == 0


async def test_a_full_node_queue_refuses_more_writes_without_a_request() -> None:
    async with bridge_and_peer(sdo_queue=2) as (h, peer):
        writes = [asyncio.ensure_future(h.bridge.write("line.servo.Target_velocity", v, WRITER)) for v in range(5)]
        results = await asyncio.gather(*writes, return_exceptions=True)
        refused = [r for r in results if isinstance(r, WriteRefused)]
        assert len(refused) == 2 and all(r.reason is RefusalReason.RATE_LIMITED for r in refused)
        assert "has 2 SDO transfers waiting (at most 2)" in refused[0].detail
        assert peer.value(0x60FF) == 2  # one in flight, two waited, two refused
        assert len([m for m in peer.requests() if m.data[0] == 0x23]) == 3


async def test_polled_objects_are_read_at_their_interval_and_turn_stale_past_their_age() -> None:
    async with bridge_and_peer(poll_ms={"Supported_*": 20}, max_age_ms=60_000) as (h, peer):
        await h.until(lambda: h.bridge.read("line.servo.Supported_drive_modes").value == 0x65, what="first poll")
        peer.set(0x6502, 0x7F)
        await h.until(lambda: h.bridge.read("line.servo.Supported_drive_modes").value == 0x7F, what="next poll")
        assert h.bridge.read("line.servo.Device_type").quality is Quality.WAITING  # not polled
        assert h.bridge.signals["line.servo.Supported_drive_modes"].timeout_s == 60.0


# --- NMT commands ------------------------------------------------------------------------------------------


def test_nmt_commands_are_a_writable_signal_only_where_the_node_enables_them() -> None:
    t = table(nmt=True)
    cmd = t.signals["line.servo.NMT_command"]
    assert cmd.writable and cmd.choices == {1: "start", 2: "stop", 128: "pre_operational", 129: "reset_node",
                                            130: "reset_communication"}
    entry = t.message_list[t.signal_message[cmd.index]]
    assert (entry.info.frame_id, entry.initial) == (0x000, b"\x00\x05")  # the node id in the second byte
    assert "line.servo.NMT_command" not in table().signals


async def test_an_nmt_command_needs_the_write_permission_and_is_audited() -> None:
    async with bridge_and_peer(nmt=True) as (h, peer):
        peer.node.nmt.state = "PRE-OPERATIONAL"
        with pytest.raises(WriteRefused) as e:  # a caller with the read role only
            await h.bridge.write("line.servo.NMT_command", "start", Caller("opcua", "guest", permissions=frozenset()))
        assert e.value.reason is RefusalReason.NOT_ALLOWED
        assert peer.node.nmt.state == "PRE-OPERATIONAL"
        receipt = await h.bridge.write("line.servo.NMT_command", "start", WRITER)
        assert (receipt.frame.can_id, receipt.frame.data) == (0x000, b"\x01\x05")
        await h.until(lambda: peer.node.nmt.state == "OPERATIONAL", what="the node started")
        await h.bridge.write("line.servo.NMT_command", "stop", WRITER)
        await h.until(lambda: peer.node.nmt.state == "STOPPED", what="the node stopped")
        records = [r for r in audit(h) if r.get("target") == "line.servo.NMT_command"]
        assert [(r["result"], r.get("frame")) for r in records] == [
            ("not_allowed", None), ("accepted", "000#0105"), ("accepted", "000#0205")]


# --- receive PDOs -------------------------------------------------------------------------------------------


def test_an_rpdo_with_a_writable_object_is_a_transmitted_message_from_the_files_defaults() -> None:
    t = table()
    torque = t.signals["line.servo.Target_torque"]
    assert (torque.writable, torque.direction, torque.message, torque.minimum, torque.maximum) == (
        True, "tx", "servo.RPDO1", -1000, 1000)
    assert not t.signals["line.servo.Velocity_offset"].writable  # in the RPDO, not in the writable list
    entry = t.messages["line.servo.RPDO1"]
    assert (entry.info.frame_id, entry.initial) == (0x205, bytes.fromhex("0000 07000000"))  # DefaultValue 7
    # an RPDO without a writable object is not sent: its objects stay reachable by SDO
    t2 = table(writable=["Controlword"])
    assert "line.servo.RPDO1" not in t2.messages and t2.signals["line.servo.Target_torque"].comment == \
        "CANopen 0x6071sub0 (rw, SDO)"
    assert table(rpdo_period_ms={"RPDO1": 50}).messages["line.servo.RPDO1"].info.period_ms == 50
    with pytest.raises(canbridge.ConfigError, match=r"transmit names message 'servo\.RPDO2', which is not mapped"):
        table(rpdo_period_ms={"RPDO2": 50})


async def test_an_rpdo_write_is_read_modify_write_of_its_frame_and_seen_by_the_peer() -> None:
    async with bridge_and_peer() as (h, peer):
        peer.node.rpdo.read(from_od=True)  # type: ignore[no-untyped-call]
        rpdo = peer.node.rpdo[1]
        receipt = await h.bridge.write("line.servo.Target_torque", -250, WRITER)
        assert (receipt.frame.can_id, receipt.frame.data) == (0x205, (-250).to_bytes(2, "little", signed=True)
                                                              + (7).to_bytes(4, "little"))
        await h.until(lambda: rpdo.is_received, what="the RPDO at the peer")
        assert (rpdo["Target torque"].raw, rpdo["Velocity offset"].raw) == (-250, 7)
        with pytest.raises(WriteRefused) as e:
            await h.bridge.write("line.servo.Target_torque", 1001, WRITER)  # HighLimit 1000
        assert e.value.reason is RefusalReason.OUT_OF_RANGE
        assert [r["frame"] for r in audit(h) if r.get("result") == "accepted"] == ["205#06FF07000000"]
