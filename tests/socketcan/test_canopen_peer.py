"""CANopen on the real kernel: the bridge's SocketCAN driver on vcan0 against the ``canopen`` package's
LocalNode in its own process on a python-can SocketCAN bus on vcan0 (tests/interop/canopen_peer.py), the
scenario of tests/interop/canopen_scenario.py: live PDOs on REST and OPC UA, SDO read and write, a refused
write that sends no request, heartbeat loss and boot-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from canbridge.core import runtime
from tests.interop import canopen_scenario


async def test_the_bridge_against_a_local_node_in_another_process_on_vcan(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Python in the VM is 18-30x slower: the OPC UA server's start (its address space, a certificate) takes
    # longer than the 30 s a plugin gets on a real machine; the peer's start and each wait get room too
    monkeypatch.setattr(runtime, "START_TIMEOUT_S", 300.0)
    await canopen_scenario.run({"interface": "socketcan", "channel": "vcan0"}, ["--socketcan", "vcan0"],
                               tmp_path / "pki", timeout=60)
