"""Is a SocketCAN interface there and up? Answers in words a user can act on."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

IFF_UP = 0x1
SYS_NET = Path("/sys/class/net")


def fix_hint(channel: str) -> str:
    if channel.startswith("vcan"):
        return f"create it: sudo ip link add dev {channel} type vcan && sudo ip link set up {channel}"
    return f"bring it up: sudo ip link set {channel} up type can bitrate 500000 restart-ms 100"


def kernel_has_can() -> bool:
    try:
        s = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    except OSError as e:
        return e.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT)
    s.close()
    return True


def check_interface(channel: str) -> str | None:
    """None when the interface exists and is up, else what is wrong and how to fix it."""
    if not kernel_has_can():
        return ("this kernel has no SocketCAN support (AF_CAN unavailable): load the can and can_raw modules "
                "(sudo modprobe can_raw) or run the tests in the VM (make test-socketcan)")
    dev = SYS_NET / channel
    if not dev.exists():
        return f"CAN interface {channel} does not exist; {fix_hint(channel)}"
    try:
        flags = int((dev / "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None
    if not flags & IFF_UP:
        if channel.startswith("vcan"):
            return f"CAN interface {channel} is down; bring it up: sudo ip link set up {channel}"
        return f"CAN interface {channel} is down; {fix_hint(channel)}"
    return None
