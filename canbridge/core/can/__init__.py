"""The CAN side: drivers, batch receive, Linux CAN constants, netlink, error frames, replay, python-can."""
