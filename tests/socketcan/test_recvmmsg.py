"""The receive path on a real CAN_RAW socket is recvmmsg: one system call for a batch, kernel timestamps."""

from __future__ import annotations

import select
import socket
import struct
import time

from canbridge.core.can.linuxcan import AF_CAN, CAN_EFF_FLAG, CAN_RAW, SO_MEMINFO
from canbridge.testing import until
from tests.socketcan.conftest import OpenDriver

FRAME = struct.Struct("=IB3x8s")


async def _until_queued(sock: socket.socket, timeout: float = 5.0) -> None:
    """Wait until the kernel has queued what was sent: vcan hands frames to the receive softirq, which
    a loaded (emulated) machine may run after send() returned. Settled = the receive queue's memory
    (SO_MEMINFO's rmem_alloc) is non-zero and unchanged over four looks 20 ms apart."""
    select.select([sock], [], [], timeout)
    looks: list[int] = []

    def settled() -> bool:
        looks.append(struct.unpack_from("=I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0])
        return len(looks) >= 4 and looks[-1] > 0 and len(set(looks[-4:])) == 1

    await until(settled, timeout, 0.02, what="the receive queue settled", detail=lambda: f"rmem_alloc {looks[-4:]}")


async def test_a_real_can_socket_is_read_with_recvmmsg_and_kernel_timestamps(open_driver: OpenDriver) -> None:
    drv, _col = await open_driver("vcan0", read=False)
    assert drv.receive_path == "recvmmsg"
    assert drv.kernel_status()["receive_path"] == "recvmmsg"
    rx, sock = drv._receiver, drv._sock
    assert rx is not None and sock is not None
    n = 50
    tx = socket.socket(AF_CAN, socket.SOCK_RAW, CAN_RAW)
    try:
        tx.bind(("vcan0",))
        before = time.time_ns()
        for i in range(n):  # vcan echoes each frame to the other sockets before send() returns
            can_id = (0x18FEF100 | CAN_EFF_FLAG) if i % 2 else 0x100 + i
            tx.send(FRAME.pack(can_id, 8, bytes([i] * 8)))
        after = time.time_ns()
    finally:
        tx.close()
    await _until_queued(sock)
    calls = rx.calls
    frames, err = rx.drain(sock, 1024, drv.stats)
    assert err is None
    assert rx.calls - calls == 1  # all 50 frames in one recvmmsg
    assert [(i, f, d) for i, f, d, _ in frames] == [
        (0x18FEF100, 1, bytes([i] * 8)) if i % 2 else (0x100 + i, 0, bytes([i] * 8)) for i in range(n)
    ]
    stamps = [f[3] for f in frames]
    # the kernel's receive times: in the window of the sends, in order, one per frame
    assert all(before <= t <= after for t in stamps), (before, stamps[:3], after)
    assert stamps == sorted(stamps) and len(set(stamps)) > 1
    assert drv.stats.overflow_drops == 0
