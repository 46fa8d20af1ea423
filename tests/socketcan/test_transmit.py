"""Transmission through the SocketCAN driver: single frames and kernel broadcast-manager cycles."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time

import pytest

from canbridge import BusError, Frame
from tests.socketcan.conftest import CandumpFactory, OpenDriver, sent_since


async def test_sent_frames_appear_in_candump(open_driver: OpenDriver, candump: CandumpFactory) -> None:
    drv, _ = await open_driver("vcan0", fd=True, read=False)
    dump = await candump("vcan0")
    drv.send(Frame(0x300, bytes.fromhex("0102030405060708")))
    drv.send(Frame(0x18FEF100, b"\xaa\xbb", extended=True))
    drv.send(Frame(0x123, bytes(range(12)), fd=True, brs=True))
    drv.send(Frame(0x124, b"", rtr=True, dlc=4))
    lines = await dump.collect(4)
    assert lines[:2] == ["300#0102030405060708", "18FEF100#AABB"]
    # the flags nibble: BRS (1), plus FDF (4) on kernels that mark CAN FD frames with it
    assert lines[2] in ("123##1000102030405060708090A0B", "123##5000102030405060708090A0B")
    assert lines[3] in ("124#R", "124#R4")  # candump versions differ in printing an RTR length


async def test_the_transmit_socket_receives_nothing(open_driver: OpenDriver) -> None:
    # reception is the raw socket's job; python-can's socket must not queue up frames nobody reads
    drv, col = await open_driver("vcan0")
    other, _ = await open_driver("vcan0", read=False)
    other.send(Frame(0x100, b"\x01"))
    await col.count(1)
    tx_sock = drv._bus.socket
    tx_sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        tx_sock.recv(72)


def _gaps_ms(frames: list[tuple[int, int, bytes, int]]) -> list[float]:
    stamps = [f[3] for f in frames]
    return [(b - a) / 1e6 for a, b in itertools.pairwise(stamps)]


async def test_bcm_periodic_modify_atomic_and_stop(open_driver: OpenDriver) -> None:
    drv, _ = await open_driver("vcan0", read=False)
    _watch, col = await open_driver("vcan0", filters=[(0x310, False)])
    old = bytes([0x11] * 8)
    new = bytes([0x22] * 8)
    handle = drv.send_periodic(Frame(0x310, old), 0.05)
    await col.count(6)
    # modify while running, several times: every frame on the bus is entirely old or entirely new
    for _ in range(5):
        handle.modify(Frame(0x310, new))
        handle.modify(Frame(0x310, old))
    handle.modify(Frame(0x310, new))
    n_mod = len(col.frames)
    await col.until(lambda: len(col.frames) >= n_mod + 6 and col.frames[-1][2] == new, what="new data")
    assert {f[2] for f in col.frames} <= {old, new}
    assert col.frames[-1][2] == new
    gaps = _gaps_ms(col.frames[:n_mod])
    # sent by the kernel at the period (emulated CPU: only a loose check that it is the period)
    assert 25 < statistics.median(gaps) < 100, gaps
    handle.stop()
    stopped_ns = time.time_ns()
    await asyncio.sleep(0.5)  # ten periods: a task still running would send ~10 frames in this time
    assert await sent_since(drv, col, 0x310, stopped_ns) == [], "frames still sent after stop()"
    with pytest.raises(BusError):
        handle.modify(Frame(0x310, old))


async def test_close_stops_periodic_frames(open_driver: OpenDriver) -> None:
    drv, _ = await open_driver("vcan0", read=False)
    _watch, col = await open_driver("vcan0", filters=[(0x311, False)])
    drv.send_periodic(Frame(0x311, b"\x01"), 0.05)
    drv.send_periodic(Frame(0x311, b"\x02"), 0.05)  # two tasks, same id: both owned and stopped
    await col.until(lambda: {f[2] for f in col.frames} == {b"\x01", b"\x02"}, what="both tasks")
    marker, _ = await open_driver("vcan0", read=False)
    await drv.close()
    closed_ns = time.time_ns()
    await asyncio.sleep(0.5)  # ten periods: a task still running would send ~10 frames in this time
    assert await sent_since(marker, col, 0x311, closed_ns) == [], "BCM frames still sent after close()"


async def test_send_when_closed_raises(open_driver: OpenDriver) -> None:
    drv, _ = await open_driver("vcan0", read=False)
    await drv.close()
    with pytest.raises(BusError, match="not open"):
        drv.send(Frame(0x100))
    with pytest.raises(BusError, match="not open"):
        drv.send_periodic(Frame(0x100), 0.1)
