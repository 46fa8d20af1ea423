"""The SocketCAN driver on a socket opened elsewhere, for bus kinds that get their socket another way."""

from __future__ import annotations

import socket

from canbridge._plugin import BusDriver
from canbridge.config import BusConfig


def socketcan_on_socket(config: BusConfig, sock: socket.socket) -> BusDriver:
    """The SocketCAN driver receiving from and sending on ``sock``, a datagram socket opened elsewhere.

    ``sock`` carries the kernel's ``struct can_frame`` (16 bytes; ``struct canfd_frame``, 72, with
    ``fd: true``) datagrams: a ``CAN_RAW`` socket bound by someone else (a socket handed over by a
    service manager), or a stand-in such as one end of ``socketpair(AF_UNIX, SOCK_DGRAM)``. Reception is
    the driver's own (batched ``recvmmsg``, kernel timestamps, receive buffer from the bus config);
    frames are sent on the same socket. There is no interface behind it: no netlink settings, no
    kernel filters unless it is a CAN socket, no cyclic frames (the broadcast manager needs an
    interface). The driver owns ``sock`` and closes it on ``close()``; a reopen needs a new socket,
    so the bus kind's ``open`` should make one per call (``socket.socket(fileno=os.dup(fd))``).
    """
    from canbridge.core.can.socketcan import SocketcanDriver

    return SocketcanDriver(config, sock=sock)
