"""Reception through the SocketCAN driver against the real kernel: parsing, timestamps, filters, drops."""

from __future__ import annotations

import socket
import time

from canbridge import FrameFlags
from canbridge.core.can.receive import drain
from tests.socketcan.conftest import OpenDriver, cansend, run

EXT = int(FrameFlags.EXTENDED)
FD = int(FrameFlags.FD)
BRS = int(FrameFlags.BRS)
RTR = int(FrameFlags.RTR)


async def test_standard_extended_and_remote_frames_parse(open_driver: OpenDriver) -> None:
    _drv, col = await open_driver("vcan0")
    cansend("vcan0", "123#DEADBEEF", "1ABCDEF0#0011223344556677", "7FF#", "123#R", "00000100#AA")
    await col.count(5)
    frames = [(i, f, d) for i, f, d, _ in col.frames]
    assert frames == [
        (0x123, 0, bytes.fromhex("DEADBEEF")),
        (0x1ABCDEF0, EXT, bytes.fromhex("0011223344556677")),
        (0x7FF, 0, b""),
        (0x123, RTR, b""),
        (0x100, EXT, b"\xaa"),  # an extended id 0x100 is not the standard id 0x100
    ]
    assert col.errors == []


async def test_can_fd_frames_up_to_64_bytes(open_driver: OpenDriver) -> None:
    _drv, col = await open_driver("vcan0", fd=True)
    payload64 = bytes(range(64))
    cansend("vcan0", "321##1" + payload64.hex(), "18FEF100##0" + "11" * 12, "321#0102")
    await col.count(3)
    (i1, f1, d1, _), (i2, f2, d2, _), (i3, f3, d3, _) = col.frames
    assert (i1, f1, d1) == (0x321, FD | BRS, payload64)
    assert (i2, f2, d2) == (0x18FEF100, FD | EXT, b"\x11" * 12)
    assert (i3, f3, d3) == (0x321, 0, b"\x01\x02")  # classic frames still arrive as classic


async def test_classic_socket_does_not_receive_fd_frames(open_driver: OpenDriver) -> None:
    _drv, col = await open_driver("vcan0")  # fd: false
    cansend("vcan0", "321##1" + "00" * 16, "322#01")
    await col.count(1)
    assert [f[0] for f in col.frames] == [0x322]


async def test_two_buses_at_once(open_driver: OpenDriver) -> None:
    _d0, c0 = await open_driver("vcan0")
    _d1, c1 = await open_driver("vcan1")
    cansend("vcan0", "100#00")
    cansend("vcan1", "200#01")
    cansend("vcan0", "101#02")
    await c0.count(2)
    await c1.count(1)
    assert c0.ids() == [0x100, 0x101]
    assert c1.ids() == [0x200]


async def test_kernel_timestamps_are_present_and_close_to_wall_time(open_driver: OpenDriver) -> None:
    _drv, col = await open_driver("vcan0")
    before = time.time_ns()
    cansend("vcan0", "100#01", "100#02", "100#03")
    await col.count(3)
    after = time.time_ns()
    stamps = [f[3] for f in col.frames]
    # kernel receive times: inside the window around the sends, in order
    assert all(before <= t <= after for t in stamps), (before, stamps, after)
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 3  # per-frame kernel stamps, not one clock read per batch


async def test_a_burst_is_delivered_in_batches_without_loss(open_driver: OpenDriver) -> None:
    drv, col = await open_driver("vcan0")
    run("cangen", "vcan0", "-g", "0", "-n", "3000", "-I", "i", "-L", "8", "-D", "i", timeout=120)
    await col.count(3000, limit=60)
    assert len(col.frames) == 3000
    assert drv.overflow_drops == 0
    assert col.batches < 3000  # drained several frames per wake-up
    ids = col.ids()
    assert ids[:3] == [0, 1, 2]  # cangen -I i: incrementing ids


async def test_kernel_filters_keep_unmapped_ids_out_of_user_space(open_driver: OpenDriver) -> None:
    drv, col = await open_driver("vcan0", filters=[(0x100, False), (0x18FEF100, True)])
    sent = ["101#00", "100#01", "00000100#02", "200#03", "18FEF100#04", "18FEF101#05", "100#06"]
    cansend("vcan0", *sent)
    cansend("vcan0", "7FF#FF")  # unmapped, last: once the mapped ones are in, this one had its chance
    await col.count(3)
    await col.until(lambda: drv.stats.drains >= 1)
    assert [(i, f, d) for i, f, d, _ in col.frames] == [
        (0x100, 0, b"\x01"),
        (0x18FEF100, EXT, b"\x04"),
        (0x100, 0, b"\x06"),
    ]
    assert drv.stats.frames == 3  # nothing else was ever read from the socket


async def test_empty_filter_list_receives_nothing_and_none_receives_all(open_driver: OpenDriver) -> None:
    drv, col = await open_driver("vcan0", filters=[])
    _probe, pcol = await open_driver("vcan0")  # an unfiltered socket sees the same traffic
    cansend("vcan0", "100#01", "200#02")
    await pcol.count(2)
    assert col.frames == []
    drv.set_filters(None)
    cansend("vcan0", "300#03")
    await col.count(1)
    assert col.ids() == [0x300]


async def test_too_many_ids_fall_back_to_receiving_all(open_driver: OpenDriver) -> None:
    _drv, col = await open_driver("vcan0", filters=[(i, False) for i in range(600)])
    cansend("vcan0", "7FF#01")  # not among the 600
    await col.count(1)
    assert col.ids() == [0x7FF]


async def test_kernel_queue_overflow_is_counted(open_driver: OpenDriver) -> None:
    # A small queue that nobody reads while cangen floods it: the kernel drops, and says so.
    drv, _col = await open_driver("vcan0", read=False, receive_buffer=65536)
    n = 2000
    run("cangen", "vcan0", "-g", "0", "-n", str(n), "-L", "8", timeout=120)
    sock = drv._sock
    assert sock is not None
    got = sum(len(drain(sock, 1024, drv.stats)) for _ in range(5))
    assert 0 < got < n
    # every frame was either queued for us or counted as dropped (SO_MEMINFO, read now)
    assert drv.overflow_drops == n - got
    assert drv.kernel_status()["overflow_drops"] == n - got
    # the next frame carries the count as SO_RXQ_OVFL ancillary data
    cansend("vcan0", "100#01")
    assert [f[0] for f in drain(sock, 16, drv.stats)] == [0x100]
    assert drv.stats.overflow_drops == n - got


def test_drain_parses_the_same_bytes_over_a_socketpair() -> None:
    # The benchmark's stand-in path: the same 16/72-byte structs over AF_UNIX datagrams.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    try:
        import struct

        a.send(struct.pack("=IBBBB8s", 0x123, 2, 0, 0, 0, b"\x01\x02"))
        a.send(struct.pack("=IBBBB64s", 0x80000000 | 0x1ABCDEF0, 64, 1, 0, 0, bytes(range(64))))
        frames = drain(b, 16)
    finally:
        a.close()
        b.close()
    assert [(i, f, d) for i, f, d, _ in frames] == [
        (0x123, 0, b"\x01\x02"),
        (0x1ABCDEF0, EXT | FD | BRS, bytes(range(64))),
    ]
