"""canbridge.socketcan_on_socket: the SocketCAN driver on a socket opened elsewhere (a socketpair carrying
the kernel's struct can_frame bytes): batched reception with timestamps, sending on the same socket."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest

import canbridge
from canbridge import BusError, BusUnavailable, Frame, FrameFlags, RawFrame
from canbridge.testing import until


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield a, b
    a.close()
    b.close()


def config(fd: bool = False) -> canbridge.BusConfig:
    return canbridge.BusConfig(name="t", interface="fd", channel="fd:3", fd=fd, kernel_filters=False)


async def test_receives_batches_with_kernel_timestamps(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    driver = canbridge.socketcan_on_socket(config(), ours)
    await driver.open()
    got: list[RawFrame] = []
    errors: list[BaseException] = []
    driver.start_reading(got.extend, errors.append)
    for i in range(50):
        peer.send(struct.pack("=IBBBB8s", 0x100 + i, 8, 0, 0, 0, bytes([i] * 8)))
    peer.send(struct.pack("=IBBBB8s", 0x80000000 | 0x18FEF100, 3, 0, 0, 0, b"abc"))
    await until(lambda: len(got) == 51, 5, what="51 frames received")
    assert [f[0] for f in got[:50]] == [0x100 + i for i in range(50)]
    assert got[0][2] == bytes(8) and got[49][2] == bytes([49] * 8)
    assert got[50][:3] == (0x18FEF100, FrameFlags.EXTENDED, b"abc")
    assert all(f[3] > 1_000_000_000 * 10**9 for f in got)  # SO_TIMESTAMPNS: wall-clock ns
    assert not errors
    status = driver.kernel_status()
    assert status["receive_path"] in ("recvmmsg", "recvmsg") and status["dropped_frames"] == 0
    await driver.close()


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Frame(0x123, b"\x01\x02"), struct.pack("=IBBBB8s", 0x123, 2, 0, 0, 0, b"\x01\x02")),
        (Frame(0x1ABCDE, bytes(8), extended=True), struct.pack("=IBBBB8s", 0x801ABCDE, 8, 0, 0, 0, bytes(8))),
        (Frame(0x7FF, rtr=True, dlc=4), struct.pack("=IBBBB8s", 0x400007FF, 4, 0, 0, 0, b"")),
    ],
)
async def test_sends_kernel_bytes_on_the_same_socket(
    pair: tuple[socket.socket, socket.socket], frame: Frame, expected: bytes
) -> None:
    ours, peer = pair
    driver = canbridge.socketcan_on_socket(config(), ours)
    await driver.open()
    driver.send(frame)
    assert peer.recv(100) == expected
    await driver.close()


async def test_sends_fd_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, peer = pair
    driver = canbridge.socketcan_on_socket(config(fd=True), ours)
    await driver.open()
    driver.send(Frame(0x55, bytes(range(12)), fd=True, brs=True))
    assert peer.recv(100) == struct.pack("=IBBBB64s", 0x55, 12, 1, 0, 0, bytes(range(12)))
    await driver.close()


async def test_no_cyclic_frames_and_no_reopen(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    driver = canbridge.socketcan_on_socket(config(), ours)
    await driver.open()
    with pytest.raises(BusError, match="broadcast manager"):
        driver.send_periodic(Frame(0x1, b"\x00"), 0.1)
    await driver.close()
    assert ours.fileno() == -1  # the driver owns the socket
    with pytest.raises(BusUnavailable, match="closed"):
        await driver.open()


async def test_a_peer_that_stops_reading_is_a_clear_error(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, _ = pair
    driver = canbridge.socketcan_on_socket(config(), ours)
    await driver.open()
    with pytest.raises(BusError, match="transmit queue full"):
        for _ in range(100_000):
            driver.send(Frame(0x1, bytes(8)))
    await driver.close()


async def test_stream_sockets_are_refused() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pytest.raises(BusError, match="datagrams"):
        await canbridge.socketcan_on_socket(config(), a).open()
    await asyncio.sleep(0)
