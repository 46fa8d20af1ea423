"""Is a SocketCAN interface there and up? Answers in words a user can act on (``canbridge check``/``run``)."""

from __future__ import annotations

from canbridge.core.can.netlink import missing_hint, sysfs_link
from canbridge.core.can.socketcan import can_available


def check_interface(channel: str) -> str | None:
    """None when the interface exists and is up, else what is wrong and how to fix it."""
    why = can_available()
    if why is not None:
        return (f"this kernel has no SocketCAN support ({why}): load the can and can_raw modules "
                "(sudo modprobe can_raw) or run the tests in the VM (make test-socketcan)")
    link = sysfs_link(channel)
    if not link["exists"]:
        return f"CAN interface {channel} does not exist; fix: {missing_hint(channel)}"
    if link.get("up") is False:
        fix = f"sudo ip link set up {channel}" if channel.startswith("vcan") else missing_hint(channel)
        return f"CAN interface {channel} is down; fix: {fix}"
    return None
