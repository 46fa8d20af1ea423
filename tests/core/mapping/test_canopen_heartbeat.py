"""CANopen node state as quality (canbridge/core/canopennode.py): the heartbeat consumer makes a lost node's
signals bad with the reason, a boot-up is counted and makes values from before it bad until each PDO comes
again, and the NMT state is a signal; live against the ``canopen`` package's LocalNode on a virtual bus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import canopen
import pytest

from canbridge import CanopenNodeStatus, Emcy, Quality
from canbridge.config import parse_config
from canbridge.core.app import unique_channel
from canbridge.core.busrunner import BusRunner
from canbridge.core.canopennode import decode_emcy, error_class
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.mapping.table import MappingTable, build_table
from canbridge.core.store import SignalStore
from canbridge.testing import BridgeHarness

REGISTRY = collect(make_plugin_manager(load_entry_points=False))
EDS = Path(__file__).resolve().parents[2] / "data" / "eds" / "drive.eds"
TPDO1 = (0x185, 0, b"\x37\x02\xf4", 1)  # Statusword 0x0237, temperature -12
HB_PREOP = (0x705, 0, b"\x7f", 1)
HB_OP = (0x705, 0, b"\x05", 1)
BOOT = (0x705, 0, b"\x00", 1)


def runner(**node: Any) -> tuple[BusRunner, SignalStore, MappingTable]:
    cfg = parse_config({"buses": [{"name": "line", "interface": "virtual", "channel": "line",
                                   "nodes": [{"id": 5, "name": "drive1", "eds": str(EDS), **node}]}]})
    t = build_table(cfg, Path.cwd(), REGISTRY.formats, "bridge.yaml")
    store = SignalStore(t)
    return BusRunner(cfg.buses[0], REGISTRY.bus_kinds["virtual"], t, store, lambda r, s: None), store, t


def read(store: SignalStore, t: MappingTable, name: str) -> Any:
    return store.value(t.signals[f"line.drive1.{name}"].index)


def later(seconds: float) -> float:
    return time.monotonic() + seconds


def test_a_missing_heartbeat_makes_the_node_bad_with_the_reason_until_it_comes_again() -> None:
    r, store, t = runner()
    r.on_frames([HB_OP, TPDO1])
    store.expire(later(0.1))  # within 1.5 x 100 ms
    assert read(store, t, "Statusword").quality is Quality.GOOD
    assert read(store, t, "NMT_state").value == 5
    store.expire(later(0.2))
    for name in ("Statusword", "Drive_status.Temperature", "NMT_state", "Position_actual_value"):
        sv = read(store, t, name)
        assert (sv.quality, sv.reason) == (Quality.BAD, "CANopen node drive1: no heartbeat for 150 ms"), name
    assert read(store, t, "Statusword").value == 0x0237  # the last value stays readable
    r.on_frames([TPDO1])  # PDOs without a heartbeat do not make a lost node good
    assert read(store, t, "Statusword").quality is Quality.BAD
    r.on_frames([HB_OP])
    assert read(store, t, "NMT_state").quality is Quality.GOOD
    assert read(store, t, "Statusword").quality is Quality.GOOD  # its PDO came while the node was lost
    assert read(store, t, "Position_actual_value").quality is not Quality.GOOD  # never received
    assert r.canopen is not None and r.canopen.summary()["drive1"].lost is False


def test_a_node_never_heard_is_bad_after_its_consumer_time() -> None:
    _r, store, t = runner(heartbeat_timeout_ms=500)
    store.expire(later(0.4))
    assert read(store, t, "NMT_state").quality is Quality.WAITING
    store.expire(later(0.6))
    sv = read(store, t, "NMT_state")
    assert (sv.quality, sv.reason) == (Quality.BAD, "CANopen node drive1: no heartbeat for 500 ms")


@pytest.mark.parametrize("timeout", [0])
def test_a_zero_consumer_time_turns_supervision_off(timeout: int) -> None:
    r, store, t = runner(heartbeat_timeout_ms=timeout)
    r.on_frames([HB_OP, TPDO1])
    store.expire(later(3600))
    assert read(store, t, "Statusword").quality is Quality.GOOD


def test_boot_ups_are_counted_and_make_older_values_bad_until_the_pdo_comes_again() -> None:
    r, store, t = runner()
    r.on_frames([BOOT, HB_PREOP, HB_OP, TPDO1])
    assert r.canopen is not None
    assert r.status().canopen["drive1"] == CanopenNodeStatus(5, "operational", 3, 1, False, 0, None)
    r.on_frames([BOOT])
    sv = read(store, t, "Statusword")
    assert (sv.quality, sv.reason) == (Quality.BAD, "CANopen node drive1 restarted (boot-up): waiting for its PDO")
    assert read(store, t, "NMT_state").value == 0
    r.on_frames([HB_PREOP, BOOT, HB_PREOP])  # the same payload again still counts
    assert r.status().canopen["drive1"].boot_ups == 3
    store.expire(later(0.05))
    assert read(store, t, "Statusword").quality is Quality.BAD
    r.on_frames([HB_OP, TPDO1])
    store.expire(later(0.05))
    assert read(store, t, "Statusword").quality is Quality.GOOD


@pytest.mark.parametrize("batch, good", [
    ([BOOT, HB_PREOP, TPDO1], True),  # the PDO came after the boot-up in the same batch
    ([TPDO1, BOOT, HB_PREOP], False),  # before it: a value from before the restart
])
def test_the_order_within_a_batch_decides_which_pdo_is_from_before_a_boot_up(
        batch: list[Any], good: bool) -> None:
    r, store, t = runner()
    r.on_frames([HB_OP, (0x185, 0, b"\x00\x00\x00", 1)])
    r.on_frames(batch)
    store.expire(later(0.01))
    assert (read(store, t, "Statusword").quality is Quality.GOOD) is good
    assert read(store, t, "Statusword").value == 0x0237


@pytest.mark.parametrize("code, name", [
    (0x0000, "error reset / no error"), (0x1000, "generic"), (0x2310, "current / device output side"),
    (0x2000, "current"), (0x3210, "voltage / inside the device"), (0x4210, "temperature / device"),
    (0x4000, "temperature"), (0x5530, "device hardware"), (0x6320, "device software / data set"),
    (0x7300, "additional modules"), (0x8110, "monitoring / communication"), (0x8611, "monitoring"),
    (0x9000, "external error"), (0xFF42, "device specific"), (0xF001, "additional functions"),
    (0xA000, "unknown"),
])
def test_emcy_error_codes_get_their_cia_301_class(code: int, name: str) -> None:
    assert error_class(code) == name


def test_an_emcy_is_decoded_into_the_bus_status_and_its_points() -> None:
    r, store, t = runner()
    r.on_frames([(0x085, 0, bytes.fromhex("1042 09 0102030405"), 7), HB_OP])
    assert r.status().canopen["drive1"].last_emcy == Emcy(
        0x4210, "temperature / device", 0x09, ("generic", "temperature"), bytes.fromhex("0102030405"), 7)
    assert r.status().canopen["drive1"].emcy_count == 1
    assert read(store, t, "EMCY.error_code").value == 0x4210
    assert read(store, t, "EMCY.error_register").value == 9
    assert read(store, t, "EMCY.manufacturer").value == 0x0504030201
    assert decode_emcy(bytes(8), 1).register_bits == ()
    r.on_frames([(0x085, 0, b"\x00\x00", 8)])  # not an EMCY: 8 bytes by CiA 301
    assert r.status().canopen["drive1"].emcy_count == 1
    store.expire(later(1))  # a lost node's last EMCY is bad too, and good again with its heartbeat
    assert read(store, t, "EMCY.error_code").quality is Quality.BAD
    r.on_frames([HB_OP])
    assert read(store, t, "EMCY.error_code").quality is Quality.GOOD


async def test_a_local_node_heartbeat_stopping_and_booting_again() -> None:
    channel = unique_channel("canopen")
    config = {"buses": [{"name": "line", "interface": "virtual", "channel": channel,
                         "nodes": [{"id": 5, "name": "drive1", "eds": str(EDS)}]}], "mappings": []}
    async with BridgeHarness(config) as h:
        network = canopen.Network()
        network.connect(interface="virtual", channel=channel, receive_own_messages=False)
        try:
            node = canopen.LocalNode(5, str(EDS))
            network.add_node(node)
            node.tpdo.read(from_od=True)  # type: ignore[no-untyped-call]
            node.nmt.send_command(0x81)  # reset node: boot-up, then pre-operational with the 0x1017 heartbeat
            node.nmt.send_command(0x80)
            node.nmt.send_command(0x01)  # operational
            await h.until(lambda: h.bridge.read("line.drive1.NMT_state").value == 5, what="operational")
            node.tpdo[1].transmit()
            await h.until(lambda: h.bridge.read("line.drive1.Statusword").quality is Quality.GOOD, what="TPDO1")
            node.nmt.stop_heartbeat()  # type: ignore[no-untyped-call]
            await h.until(lambda: h.bridge.read("line.drive1.Statusword").quality is Quality.BAD, what="lost")
            assert h.bridge.read("line.drive1.Statusword").reason == "CANopen node drive1: no heartbeat for 150 ms"
            node.nmt.send_command(0x81)
            node.nmt.send_command(0x80)
            await h.until(lambda: h.bridge.read("line.drive1.NMT_state").value == 127, what="pre-operational")
            assert h.bridge.read("line.drive1.NMT_state").quality is Quality.GOOD
            assert h.bridge.read("line.drive1.Statusword").quality is Quality.BAD  # restarted: PDO not yet again
            node.tpdo[1].transmit()
            await h.until(lambda: h.bridge.read("line.drive1.Statusword").quality is Quality.GOOD, what="back")
            node.emcy.send(0x8130, 0x11, b"\xaa\xbb")  # life guard / heartbeat error, communication
            await h.until(lambda: h.bridge.bus_status("line").canopen["drive1"].last_emcy is not None, what="EMCY")
            st = h.bridge.bus_status("line").canopen["drive1"]
            assert (st.nmt_state, st.boot_ups, st.emcy_count) == ("pre_operational", 2, 1)
            assert st.last_emcy is not None
            assert (st.last_emcy.code, st.last_emcy.error_class, st.last_emcy.register_bits,
                    st.last_emcy.manufacturer) == (0x8130, "monitoring / communication", ("generic", "communication"),
                                                   b"\xaa\xbb\x00\x00\x00")
            await h.until(lambda: h.bridge.read("line.drive1.EMCY.error_code").value == 0x8130, what="EMCY point")
        finally:
            network.disconnect()
