"""CANopen on the real kernel: the bridge's SocketCAN driver on vcan0 against the ``canopen`` package's
LocalNode in its own process on a python-can SocketCAN bus on vcan0 (tests/interop/canopen_peer.py), the
scenario of tests/interop/canopen_scenario.py: live PDOs on REST and OPC UA, SDO read and write, a refused
write that sends no request, heartbeat loss and boot-up."""

from __future__ import annotations

from pathlib import Path

from tests.interop import canopen_scenario


async def test_the_bridge_against_a_local_node_in_another_process_on_vcan(tmp_path: Path) -> None:
    # Python in the VM is 18-30x slower: the peer's start and each wait get room
    await canopen_scenario.run({"interface": "socketcan", "channel": "vcan0"}, ["--socketcan", "vcan0"],
                               tmp_path / "pki", timeout=60)
