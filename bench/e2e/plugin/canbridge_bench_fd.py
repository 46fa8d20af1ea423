"""A third-party bus kind for the end-to-end benchmark: ``interface: fd``, ``channel: "<descriptor>"``.

The bridge process inherits one end of a ``socketpair(AF_UNIX, SOCK_DGRAM)`` carrying the kernel's
``struct can_frame`` bytes (the load generator holds the other end) and runs the real SocketCAN driver's
receive code on it through the public ``canbridge.socketcan_on_socket``. It is registered as any
installed plugin is: ``canbridge_bench_fd-0.1.dist-info/entry_points.txt`` next to this file, found on
``PYTHONPATH``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import canbridge


def open_fd(config: canbridge.BusConfig) -> canbridge.BusDriver:
    try:
        fd = int(config.channel)
    except ValueError:
        raise canbridge.BusError(f"bus {config.name}: channel must be an inherited descriptor number") from None
    try:
        sock = socket.socket(fileno=os.dup(fd))  # a new socket per open: the driver closes its own
    except OSError as e:
        raise canbridge.BusUnavailable(f"bus {config.name}: descriptor {fd} is not open: {e}", None) from e
    return canbridge.socketcan_on_socket(config, sock)


@canbridge.hookimpl
def register_bus_kinds(register: Any) -> None:
    register(canbridge.BusKind("fd", open=open_fd, description="SocketCAN frames on an inherited socket"))
