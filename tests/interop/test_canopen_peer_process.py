"""CANopen against an independent device in its own process where the kernel has no CAN: the peer's
python-can bus and the bridge's SocketCAN driver share a ``socketpair(AF_UNIX, SOCK_DGRAM)`` carrying
16-byte ``struct can_frame`` datagrams (python-can's virtual bus does not cross processes). The bridge
side is a bus kind over the public ``canbridge.socketcan_on_socket``, as bench/e2e's ``fd`` plugin does."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import canbridge
from tests.interop import canopen_scenario


class FdBusKind:
    """``interface: fd``, ``channel: "<descriptor>"``: the SocketCAN driver's own code on that socket."""

    @staticmethod
    def _open(config: canbridge.BusConfig) -> canbridge.BusDriver:
        return canbridge.socketcan_on_socket(config, socket.socket(fileno=os.dup(int(config.channel))))

    @canbridge.hookimpl
    def register_bus_kinds(self, register: Any) -> None:
        register(canbridge.BusKind("fd", open=self._open, description="struct can_frame on an inherited socket"))


async def test_the_bridge_against_a_local_node_in_another_process(tmp_path: Path) -> None:
    bridge_end, peer_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        await canopen_scenario.run(
            {"interface": "fd", "channel": str(bridge_end.fileno())}, ["--fd", str(peer_end.fileno())],
            tmp_path / "pki", pass_fds=[peer_end.fileno()], extra_plugins=[FdBusKind()])
    finally:
        bridge_end.close()
        peer_end.close()
