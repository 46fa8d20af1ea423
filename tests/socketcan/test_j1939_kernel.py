"""Multi-packet J1939 through the kernel's CAN_J1939 socket, with can-utils' j1939cat as the independent
peer. The bridge listens on one end of a vxcan pair, the peers talk on the other: each end has its own
kernel J1939 stack, as two machines on one bus would."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from canbridge import testing
from tests.socketcan.conftest import cansend, ip, run

ROOT = Path(__file__).resolve().parents[2]
DBC = ROOT / "mappings" / "examples" / "j1939.dbc"
PEER, BRIDGE = "vxcanj0", "vxcanj1"


def dm1(dtcs: list[tuple[int, int, int]]) -> bytes:
    """A DM1 payload: amber lamp on, then SPN/FMI/occurrence count per DTC."""
    out = bytearray(b"\x04\xff")
    for spn, fmi, oc in dtcs:
        out += struct.pack("<BBBB", spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 11) & 0xE0) | fmi, oc & 0x7F)
    return bytes(out)


def broken(transport: dict[str, int]) -> int:
    return sum(n for k, n in transport.items() if k not in ("completed", "kernel", "duplicates", "ignored",
                                                            "active"))


FIVE = [(190, 2, 5), (110, 3, 1), (84, 9, 2), (100, 1, 7), (91, 4, 3)]


@pytest.fixture
def vxcan() -> Iterator[None]:
    run("modprobe", "vxcan", check=False)
    ip("link", "del", "dev", PEER, check=False)
    ip("link", "add", "dev", PEER, "type", "vxcan", "peer", "name", BRIDGE)
    ip("link", "set", "up", PEER)
    ip("link", "set", "up", BRIDGE)
    yield
    ip("link", "del", "dev", PEER, check=False)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, bus: dict[str, Any], mapping: dict[str, Any]) -> AsyncIterator[Any]:
    """The bridge on the vxcan end ``BRIDGE`` with the example J1939 DBC; ``bus``/``mapping``: more keys."""
    from canbridge.core.app import runtime_from_data
    from canbridge.core.host import load_registry

    _, registry = load_registry(load_entry_points=False)
    cfg = {"buses": [{"name": "truck", "interface": "socketcan", "channel": BRIDGE, **bus}],
           "mappings": [{"bus": "truck", "dbc": str(DBC), **mapping}], "state_dir": str(tmp_path),
           "gc_freeze": False}
    rt = runtime_from_data(cfg, registry=registry)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


@pytest.fixture
async def bridge(vxcan: None, tmp_path: Path) -> AsyncIterator[Any]:
    async with running(tmp_path, {}, {}) as rt:
        yield rt


async def j1939cat(tmp: Path, payload: bytes, *args: str) -> None:
    src = tmp / "payload.bin"
    src.write_bytes(payload)
    proc = await asyncio.create_subprocess_exec("j1939cat", "-i", str(src), *args,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:  # its exit code says nothing (see docs/j1939.md); what the bridge decodes does
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def test_bam_and_rts_cts_from_j1939cat_decoded_once_broken_counted(bridge: Any, tmp_path: Path) -> None:
    st = bridge.bus_status("truck")
    await testing.until(lambda: bridge.bus_status("truck").transport.get("kernel") is not None, 30, 0.05,
                        what="the kernel's J1939 socket in use")
    # BAM: a DM1 with 5 DTCs from 0x00, broadcast
    await j1939cat(tmp_path, dm1(FIVE), "-B", f"{PEER}:0x00", ":,0x0FECA")
    await testing.until(lambda: 0 in bridge.bus_status("truck").dm1, 30, 0.05, what="the BAM DM1")
    got = bridge.bus_status("truck").dm1[0]
    assert [(d.spn, d.fmi, d.occurrences) for d in got.dtcs] == FIVE and got.amber_warning == "on"
    # RTS/CTS to an address a receiver on the bridge's side uses: the kernel there answers and reassembles
    rx = await asyncio.create_subprocess_exec("j1939cat", "-r", f"{BRIDGE}:0x80",
                                              stdout=asyncio.subprocess.DEVNULL,
                                              stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(5):  # j1939cat -r gives no sign it is bound: the sender tries again
            await j1939cat(tmp_path, dm1(FIVE[:3]), f"{PEER}:0x03", ":0x80,0x0FECA")
            if 3 in bridge.bus_status("truck").dm1:
                break
        await testing.until(lambda: 3 in bridge.bus_status("truck").dm1, 20, 0.05, what="the RTS/CTS DM1")
        assert [(d.spn, d.fmi) for d in bridge.bus_status("truck").dm1[3].dtcs] == [(s, f) for s, f, _ in FIVE[:3]]
    finally:
        rx.kill()
        await rx.wait()
    st = bridge.bus_status("truck")
    assert st.dm1[0].messages == 1, "the BAM was decoded twice (raw and J1939 socket)"
    assert st.transport["kernel"] >= 2
    # a broken transfer: the announcement of a BAM DM1 from 0x05, and no data
    before = broken(st.transport)
    cansend(PEER, "18ECFF05#2016000403CAFE00")
    await testing.until(lambda: broken(bridge.bus_status("truck").transport) > before,
                        20, 0.05, what="the broken BAM counted",
                        detail=lambda: str(bridge.bus_status("truck").transport))
    assert 5 not in bridge.bus_status("truck").dm1


async def test_a_dm2_by_bam_from_j1939cat_is_decoded_through_the_kernel_socket(bridge: Any, tmp_path: Path) -> None:
    # DM2 (previously active codes) is one of the PGNs the kernel's J1939 socket is filtered to: with the
    # socket in use the raw socket's TP frames are ignored, so without it this transfer would be lost
    await testing.until(lambda: bridge.bus_status("truck").transport.get("kernel") is not None, 30, 0.05,
                        what="the kernel's J1939 socket in use")
    await j1939cat(tmp_path, dm1(FIVE), "-B", f"{PEER}:0x00", ":,0x0FECB")
    await testing.until(lambda: 0 in bridge.bus_status("truck").dm2, 30, 0.05, what="the BAM DM2")
    st = bridge.bus_status("truck")
    assert [(d.spn, d.fmi, d.occurrences) for d in st.dm2[0].dtcs] == FIVE and st.dm2[0].messages == 1
    assert 0 not in st.dm1 and st.transport["kernel"] >= 1


@pytest.fixture
async def claiming_bridge(vxcan: None, tmp_path: Path) -> AsyncIterator[Any]:
    async with running(tmp_path, {"j1939": {"name": 0x0000_1000_0000_0050, "address": 0x80}},
                       {"sources": {0x00: "engine"}}) as rt:
        yield rt


async def test_a_request_from_the_bridge_is_answered_by_can_utils_and_the_multi_packet_answer_decoded(
        claiming_bridge: Any, tmp_path: Path) -> None:
    from canbridge import Caller

    bridge = claiming_bridge
    await testing.until(lambda: bridge.bus_status("truck").address_claim["state"] == "claimed", 15, 0.05,
                        what="the bridge's address claimed")
    # the peer: candump waits for the bridge's Request to the engine (PGN 59904 from 0x80 to 0x00, any
    # priority), then j1939cat answers from 0x00 with the 39-byte EC1 (PGN 65251) to 0x80: RTS/CTS, to which
    # the bridge, holding 0x80, is the receiver (CTS, end of message)
    ec1 = bytes([0x40, 0x1F, 0x9B, 0x80, 0x3E, 0xA0]) + bytes(13) + (1500).to_bytes(2, "little") + bytes(18)
    (tmp_path / "ec1.bin").write_bytes(ec1)
    peer = await asyncio.create_subprocess_exec(
        "sh", "-c", f"candump -n 1 {PEER},00EA0080:03FFFFFF >/dev/null && "
                    f"j1939cat -i {tmp_path / 'ec1.bin'} {PEER}:0x00 :0x80,0x0FEE3",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(10):  # candump gives no sign it is listening: the request is made again until answered
            frame = await bridge.request_pgn("truck", 65251, Caller("test"), destination=0x00)
            assert frame.can_id & 0x03FFFFFF == 0x00EA0080 and frame.data[:3] == bytes([0xE3, 0xFE, 0x00])
            with contextlib.suppress(AssertionError):
                await testing.until(lambda: bridge.read("truck.EC1.EngineReferenceTorque").value is not None,
                                    1.5, 0.05, what="the answer")
                break
        await testing.until(lambda: bridge.read("truck.EC1.EngineReferenceTorque").value == 1500, 20, 0.05,
                            what="the RTS/CTS answer decoded")
        assert bridge.read("truck.EC1.EngineSpeedAtIdlePoint1").value == 0x1F40 * 0.125
    finally:
        with contextlib.suppress(ProcessLookupError):
            peer.kill()
        await peer.wait()
