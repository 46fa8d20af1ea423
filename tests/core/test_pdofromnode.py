"""``pdo: from_node`` (canbridge/core/pdofromnode.py): the TPDO layouts read from the node by SDO at start
and after every boot-up replace the file's mapping; until then the PDO values are bad ("pdo mapping
unknown"). The peer is the ``canopen`` package's LocalNode from tests/data/eds/drive.eds (TPDO1 at 0x185:
Statusword 16 + Drive_status.Temperature 8; TPDO2 at 0x285: Position_actual_value 32 + Drive_status.Current
REAL32) on python-can's virtual bus, its mapping changed in its own data store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import canopen
import pytest
from canopen.sdo.base import SdoRecord

from canbridge import ConfigError, Quality
from canbridge.config import parse_config
from canbridge.core.app import unique_channel
from canbridge.testing import BridgeHarness

EDS = Path(__file__).resolve().parents[1] / "data" / "eds" / "drive.eds"
STATUS, TEMP = "line.drive1.Statusword", "line.drive1.Drive_status.Temperature"
POSITION, CURRENT = "line.drive1.Position_actual_value", "line.drive1.Drive_status.Current"


class Drive:
    """A LocalNode whose PDO parameters are set in its own data store (what an SDO upload answers)."""

    def __init__(self, channel: str) -> None:
        self.network = canopen.Network()
        self.network.connect(interface="virtual", channel=channel, receive_own_messages=False)
        self.node = canopen.LocalNode(5, str(EDS))
        self.network.add_node(self.node)

    def set(self, index: int, sub: int, value: int) -> None:
        record = self.node.sdo[index]
        assert isinstance(record, SdoRecord)
        record[sub].raw = value

    def map_tpdo(self, n: int, cob: int, *entries: int) -> None:
        self.set(0x1800 + n - 1, 1, cob)
        self.set(0x1A00 + n - 1, 0, len(entries))
        for k, e in enumerate(entries, 1):
            self.set(0x1A00 + n - 1, k, e)

    def close(self) -> None:
        self.network.disconnect()


def config(channel: str, **node: Any) -> dict[str, Any]:
    return {"buses": [{"name": "line", "interface": "virtual", "channel": channel, "nodes": [
        {"id": 5, "name": "drive1", "eds": str(EDS), "pdo": "from_node", "sdo_timeout_ms": 100, **node}]}],
        "mappings": []}


@asynccontextmanager
async def drive_and_bridge(**node: Any) -> AsyncIterator[tuple[BridgeHarness, Drive]]:
    channel = unique_channel("pdo")
    drive = Drive(channel)
    try:
        async with BridgeHarness(config(channel, **node)) as h:
            yield h, drive
    finally:
        drive.close()


def quality(h: BridgeHarness, name: str) -> Quality:
    return h.bridge.read(name).quality


async def test_the_layout_the_node_reports_replaces_the_files() -> None:
    channel = unique_channel("pdo")
    drive = Drive(channel)
    # TPDO1 moved to 0x195 with its objects swapped; TPDO2 without the current
    drive.map_tpdo(1, 0x195, 0x20000108, 0x60410010)
    drive.map_tpdo(2, 0x285, 0x60640020)
    try:
        async with BridgeHarness(config(channel)) as h:
            await h.until(lambda: quality(h, STATUS) is Quality.WAITING, what="TPDO1 layout read")
            await h.until(lambda: quality(h, POSITION) is Quality.WAITING, what="TPDO2 layout read")
            h.inject("195#193702")  # temperature 25, statusword 0x0237
            h.inject("185#37021900")  # the file's COB-ID: no longer this TPDO (frames arrive in order)
            h.inject("285#40E20100")  # position 123456, no current
            await h.until(lambda: quality(h, POSITION) is Quality.GOOD and quality(h, STATUS) is Quality.GOOD)
            assert (h.bridge.read(TEMP).value, h.bridge.read(STATUS).value) == (25, 0x0237)
            assert h.bridge.read(POSITION).value == 123456
            current = h.bridge.read(CURRENT)
            assert current.quality is Quality.BAD
            assert current.reason == "CANopen node drive1: Drive_status.Current is not in the node's TPDO2 mapping"
    finally:
        drive.close()


async def test_values_are_bad_until_the_mapping_is_read_and_a_boot_up_reads_it_again() -> None:
    channel = unique_channel("pdo")
    async with BridgeHarness(config(channel)) as h:  # no node yet: the start-up read times out
        await h.until(lambda: "not read" in (h.bridge.read(STATUS).reason or ""), what="start-up read failed")
        sv = h.bridge.read(STATUS)
        assert sv.quality is Quality.BAD
        assert (sv.reason or "").startswith("CANopen node drive1: pdo mapping unknown: TPDO1 not read")
        h.inject("185#3702190000")
        h.inject("705#05")  # a heartbeat after it: the frame before it was received
        await h.until(lambda: h.bridge.bus_status("line").canopen["drive1"].heartbeats == 1)
        assert quality(h, STATUS) is Quality.BAD  # a frame does not make an unknown layout good
        drive = Drive(channel)
        try:
            drive.map_tpdo(1, 0x185, 0x60410010)  # statusword only
            h.inject("705#00")  # its boot-up
            await h.until(lambda: quality(h, STATUS) is Quality.WAITING, what="layout read after the boot-up")
            h.inject("185#3702")
            await h.until(lambda: quality(h, STATUS) is Quality.GOOD)
            assert h.bridge.read(STATUS).value == 0x0237
            assert "not in the node's TPDO1 mapping" in (h.bridge.read(TEMP).reason or "")
            # the node restarts with another mapping: bad again until it is read, then decoded its way
            drive.map_tpdo(1, 0x185, 0x20000108, 0x60410010)
            h.inject("705#00")
            await h.until(lambda: quality(h, STATUS) is not Quality.GOOD, what="bad after the boot-up")
            await h.until(lambda: quality(h, STATUS) is Quality.WAITING, what="new layout read")
            h.inject("185#F64100")
            await h.until(lambda: quality(h, TEMP) is Quality.GOOD)
            assert (h.bridge.read(TEMP).value, h.bridge.read(STATUS).value) == (-10, 0x0041)
        finally:
            drive.close()


async def test_a_node_that_did_not_answer_at_start_is_read_at_its_next_heartbeat() -> None:
    channel = unique_channel("pdo")
    async with BridgeHarness(config(channel)) as h:
        await h.until(lambda: "not read" in (h.bridge.read(POSITION).reason or ""), what="start-up read failed")
        drive = Drive(channel)
        try:
            h.inject("705#05")  # operational, no boot-up seen: the bridge asks again
            await h.until(lambda: quality(h, POSITION) is Quality.WAITING, what="layout read at the heartbeat")
            h.inject("285#40E20100CDCC4C3E")  # the file's layout: position 123456, current 0.2 A
            await h.until(lambda: quality(h, CURRENT) is Quality.GOOD)
            assert h.bridge.read(POSITION).value == 123456
        finally:
            drive.close()


@pytest.mark.parametrize(("entries", "reason"), [
    ((0x60410008,), "TPDO1 maps 0x6041sub0 with 8 bits, its data type has 16"),
    ((0x60640020, 0x00070040), "TPDO1 maps 96 bits, more than the 64 of a PDO"),  # a 64-bit dummy gap
])
async def test_a_layout_the_bridge_cannot_decode_is_bad_with_why(entries: tuple[int, ...], reason: str) -> None:
    async with drive_and_bridge() as (h, drive):
        drive.map_tpdo(1, 0x185, *entries)
        h.inject("705#00")
        await h.until(lambda: reason in (h.bridge.read(STATUS).reason or ""), what=reason)
        assert quality(h, STATUS) is Quality.BAD


def test_pdo_is_file_or_from_node() -> None:
    with pytest.raises(ConfigError, match=r"buses\[0\]\.nodes\[0\]\.pdo"):
        parse_config(config("line", pdo="guess"))
