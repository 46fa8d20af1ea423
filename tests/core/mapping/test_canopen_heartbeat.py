"""CANopen node state as quality (canbridge/core/canopennode.py): the heartbeat consumer makes a lost node's
signals bad with the reason, a boot-up is counted and makes values from before it bad until each PDO comes
again, and the NMT state is a signal; live against the ``canopen`` package's LocalNode on a virtual bus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import canopen
import pytest

from canbridge import Quality
from canbridge.config import parse_config
from canbridge.core.app import unique_channel
from canbridge.core.busrunner import BusRunner
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
    assert r.canopen is not None and r.canopen.summary()["drive1"]["lost"] is False


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
    assert r.canopen.summary()["drive1"] == {"id": 5, "state": 5, "heartbeats": 3, "boot_ups": 1, "lost": False}
    r.on_frames([BOOT])
    sv = read(store, t, "Statusword")
    assert (sv.quality, sv.reason) == (Quality.BAD, "CANopen node drive1 restarted (boot-up): waiting for its PDO")
    assert read(store, t, "NMT_state").value == 0
    r.on_frames([HB_PREOP, BOOT, HB_PREOP])  # the same payload again still counts
    assert r.canopen.summary()["drive1"]["boot_ups"] == 3
    store.expire(later(0.05))
    assert read(store, t, "Statusword").quality is Quality.BAD
    r.on_frames([HB_OP, TPDO1])
    store.expire(later(0.05))
    assert read(store, t, "Statusword").quality is Quality.GOOD


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
        finally:
            network.disconnect()
