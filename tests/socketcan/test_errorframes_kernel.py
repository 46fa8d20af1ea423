"""Error frames at the socket boundary.

vcan has no controller, so the kernel never generates error frames on it; but a raw socket may send a
frame with CAN_ERR_FLAG set, and vcan loops it back to sockets whose CAN_RAW_ERR_FILTER selects its
class. That is what a real controller's driver delivers, so the whole path (error filter, parsing,
classification) is exercised with the kernel's own delivery rules.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from canbridge import BusState, FrameFlags
from canbridge.core.can import errorframes as ef
from canbridge.core.can.linuxcan import AF_CAN, CAN_ERR_FLAG, CAN_RAW, CAN_RAW_ERR_FILTER, SOL_CAN_RAW
from tests.socketcan.conftest import OpenDriver


@pytest.fixture
def injector() -> Iterator[socket.socket]:
    s = socket.socket(AF_CAN, socket.SOCK_RAW, CAN_RAW)
    s.bind(("vcan0",))
    yield s
    s.close()


def _error_frame(cls: int, data: bytes) -> bytes:
    return struct.pack("=IBBBB8s", CAN_ERR_FLAG | cls, 8, 0, 0, 0, data.ljust(8, b"\0"))


async def test_injected_error_frames_reach_the_driver_and_classify(
    open_driver: OpenDriver, injector: socket.socket
) -> None:
    # id filters do not apply to error frames: those go by the error mask (all classes)
    _drv, col = await open_driver("vcan0", filters=[(0x100, False)])
    cases = [
        (ef.CAN_ERR_CRTL | ef.CAN_ERR_CNT, bytes([0, ef.CAN_ERR_CRTL_TX_WARNING, 0, 0, 0, 0, 97, 3])),
        (ef.CAN_ERR_CRTL | ef.CAN_ERR_CNT, bytes([0, ef.CAN_ERR_CRTL_TX_PASSIVE, 0, 0, 0, 0, 128, 3])),
        (ef.CAN_ERR_BUSOFF, b""),
        (ef.CAN_ERR_RESTARTED, b""),
        (ef.CAN_ERR_PROT | ef.CAN_ERR_BUSERROR, bytes([0, 0, 0x04, 0x0A])),
        (ef.CAN_ERR_ACK, b""),
    ]
    for cls, data in cases:
        injector.send(_error_frame(cls, data))
    await col.count(len(cases))
    assert all(f[1] == int(FrameFlags.ERROR) for f in col.frames)
    assert [f[0] for f in col.frames] == [c for c, _ in cases]  # the class bits, flag removed
    infos = [ef.classify_error_frame(i, d) for i, _, d, _ in col.frames]
    assert [i.state for i in infos] == [
        BusState.WARNING,
        BusState.PASSIVE,
        BusState.BUS_OFF,
        BusState.ACTIVE,
        None,
        None,
    ]
    assert (infos[1].tx_error_counter, infos[1].rx_error_counter) == (128, 3)
    assert infos[2].bus_off and infos[3].restarted
    assert "bit stuffing error" in infos[4].description and "data section" in infos[4].description
    assert "no ACK" in infos[5].description


async def test_error_mask_selects_classes(open_driver: OpenDriver, injector: socket.socket) -> None:
    # a socket that asked for bus-off only (what a driver could do to avoid bus-error floods)
    drv, col = await open_driver("vcan0")
    assert drv._sock is not None
    drv._sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, ef.CAN_ERR_BUSOFF)
    injector.send(_error_frame(ef.CAN_ERR_BUSERROR, b""))
    injector.send(_error_frame(ef.CAN_ERR_BUSOFF, b""))
    injector.send(struct.pack("=IBBBB8s", 0x7FF, 1, 0, 0, 0, b"\x01"))  # a data frame, as end marker
    await col.count(2)
    assert [(f[0], f[1]) for f in col.frames] == [(ef.CAN_ERR_BUSOFF, int(FrameFlags.ERROR)), (0x7FF, 0)]
