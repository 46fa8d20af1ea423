"""An independent CANopen device in its own process: the ``canopen`` package's LocalNode built from an EDS
(SDO server, heartbeat producer, TPDOs), on a python-can bus that is either SocketCAN (``--socketcan
vcan0``, the real-kernel tier) or one end of a ``socketpair(AF_UNIX, SOCK_DGRAM)`` inherited as ``--fd N``
carrying 16-byte ``struct can_frame`` datagrams (where the kernel has no CAN).

Nothing of canbridge is imported here. The test drives it by lines on stdin and reads JSON lines on stdout:
``set <value>`` (Analogue input 1 in the next TPDOs), ``silence`` (heartbeat and TPDOs stop, as at a power
loss), ``boot`` (boot-up message, then pre-operational and operational), ``count`` (SDO requests received so
far), ``quit``. It reports ``{"event": "ready"}``, each SDO download as ``{"event": "write", ...}`` and
``{"event": "count", "sdo_requests": n}``.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import threading
import time
from typing import Any

import can
import canopen

FRAME = struct.Struct("=IB3x8s")  # struct can_frame
EFF = 0x80000000
TPDO_PERIOD_S = 0.05
SUPPLY_MV = 23456  # not the file's default (24000): an SDO upload that returns it came from this process


class FdBus(can.BusABC):
    """A python-can bus over an inherited datagram socket carrying ``struct can_frame``."""

    def __init__(self, channel: Any, **kwargs: Any) -> None:
        self.sock = socket.socket(fileno=int(channel))
        self.channel_info = f"fd {channel}"
        super().__init__(channel=channel, **kwargs)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None, False
        can_id, dlc, data = FRAME.unpack(self.sock.recv(FRAME.size))
        return can.Message(arbitration_id=can_id & 0x1FFFFFFF, is_extended_id=bool(can_id & EFF), dlc=dlc,
                           data=data[:dlc], timestamp=time.time()), False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        can_id = msg.arbitration_id | (EFF if msg.is_extended_id else 0)
        self.sock.send(FRAME.pack(can_id, msg.dlc, bytes(msg.data).ljust(8, b"\0")))

    def shutdown(self) -> None:
        super().shutdown()
        self.sock.close()


def say(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int)
    where.add_argument("--socketcan")
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--eds", required=True)
    args = p.parse_args()
    bus = FdBus(args.fd) if args.fd is not None else can.Bus(interface="socketcan", channel=args.socketcan)
    network = canopen.Network(bus)
    network.connect()  # the bus is given: this only starts the notifier
    node: Any = canopen.LocalNode(args.node_id, args.eds)  # partly typed library: Any at this edge
    network.add_node(node)
    node.sdo[0x2100].raw = SUPPLY_MV
    node.tpdo.read(from_od=True)
    tpdo = node.tpdo[1]
    requests = [0]
    network.subscribe(0x600 + args.node_id, lambda *_: requests.__setitem__(0, requests[0] + 1))
    node.add_write_callback(lambda index, subindex, od, data: say(event="write", index=index, subindex=subindex,
                                                                  value=od.decode_raw(data)))
    state = {"value": 0, "running": False}
    lock = threading.Lock()

    def boot() -> None:
        node.nmt.send_command(129)  # reset: state 0, the boot-up message
        node.nmt.send_command(128)  # pre-operational: the producer heartbeat starts (0x1017)
        node.nmt.send_command(1)  # operational: TPDOs go out
        state["running"] = True

    def tpdos() -> None:
        k = 0
        while True:
            time.sleep(TPDO_PERIOD_S)
            with lock:
                if not state["running"] or node.nmt.state != "OPERATIONAL":
                    continue
                k += 1
                tpdo[0].raw = k & 0xFF  # digital inputs: a counter
                tpdo[1].raw = state["value"]
                tpdo[2].raw = -k % 10000
                # the dictionary too, so that an SDO upload of a mapped object agrees with the PDO
                for var in tpdo.map:
                    node.data_store.setdefault(var.od.index, {})[var.od.subindex] = bytes(var.data)
                tpdo.transmit()

    threading.Thread(target=tpdos, daemon=True).start()
    boot()
    say(event="ready")
    for line in sys.stdin:
        cmd, *rest = line.split()
        with lock:
            if cmd == "set":
                state["value"] = int(rest[0])
            elif cmd == "silence":
                state["running"] = False
                node.nmt.stop_heartbeat()
            elif cmd == "boot":
                boot()
            elif cmd == "count":
                say(event="count", sdo_requests=requests[0])
            elif cmd == "quit":
                break
        say(event="done", cmd=cmd)
    node.nmt.stop_heartbeat()
    network.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
