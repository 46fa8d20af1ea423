"""J1939 address claiming against an independent peer on a real kernel: can-utils' ``j1939acd`` (the
kernel's J1939 stack, module can-j1939) claims the bridge's address with a lower NAME, and the bridge
yields: Cannot Claim on the bus, no more transmission, the bus state a warning with the reason."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from canbridge import BusState, Caller, RefusalReason, WriteRefused, testing
from tests.socketcan.conftest import Candump, run

DBC = Path(__file__).resolve().parents[1] / "data" / "dbc" / "j1939_test.dbc"
NAME = 0x0000_1000_0000_0050  # the bridge's
LOWER = 0x0000_0800_0000_0001  # j1939acd's: it wins


def _le(name: int) -> str:
    return name.to_bytes(8, "little").hex().upper()


async def seen(dump: Candump, prefix: str, limit: float = 10.0) -> None:
    """Read on until a line starting with ``prefix`` has been seen, bounded by ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not any(line.startswith(prefix) for line in dump.lines):
        left = deadline - loop.time()
        before = len(dump.lines)
        if left <= 0 or len(await dump.collect(before + 1, limit=left)) == before:
            raise AssertionError(f"candump did not show {prefix}... within {limit}s (last: {dump.lines[-3:]})")


@pytest.fixture
async def bridge(scratch_vcan: str, tmp_path: Path) -> AsyncIterator[Any]:
    from canbridge.core.app import runtime_from_data
    from canbridge.core.host import load_registry

    _, registry = load_registry(load_entry_points=False)
    rt = runtime_from_data({
        "buses": [{"name": "truck", "interface": "socketcan", "channel": scratch_vcan,
                   "j1939": {"name": NAME, "address": 0x80}}],
        "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["TSC1"], "writable": ["TSC1.*"]}],
        "state_dir": str(tmp_path), "gc_freeze": False}, registry=registry)
    await rt.start()
    rt.dev = scratch_vcan  # type: ignore[attr-defined]
    try:
        yield rt
    finally:
        await rt.stop()


async def test_j1939acd_with_a_lower_name_takes_the_address_and_the_bridge_yields(
        bridge: Any, tmp_path: Path) -> None:
    if shutil.which("j1939acd") is None:
        pytest.fail("j1939acd not found (can-utils)")
    if run("modprobe", "can-j1939", check=False).returncode != 0:
        pytest.fail("the kernel has no can-j1939 module")
    dev = bridge.dev
    dump = await Candump(dev).start()
    try:
        await testing.until(lambda: bridge.bus_status("truck").address_claim["state"] == "claimed", 15)
        await bridge.write("truck.TSC1.RequestedSpeedLimit", 1000, Caller("test"))
        await seen(dump, "0C000080#")  # TSC1 to the engine from the claimed address
        acd = await asyncio.create_subprocess_exec(
            "j1939acd", "-r", "128", "-a", "128", "-c", str(tmp_path / "acd.cache"), f"{LOWER:016X}", dev,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await dump.wait_for(f"18EEFF80#{_le(LOWER)}", limit=15)  # the independent peer's claim
            await dump.wait_for(f"18EEFFFE#{_le(NAME)}", limit=15)  # the bridge: Cannot Claim
            await testing.until(lambda: bridge.bus_status("truck").state is BusState.WARNING, 15)
            st = bridge.bus_status("truck")
            assert st.address_claim["state"] == "lost" and f"0x{LOWER:016X}" in (st.last_error or "")
            with pytest.raises(WriteRefused) as e:
                await bridge.write("truck.TSC1.RequestedSpeedLimit", 500, Caller("test"))
            assert e.value.reason is RefusalReason.NO_ADDRESS
            n = len(dump.lines)
            await dump.collect(n + 1, limit=1.0)  # whatever else arrives (j1939acd's own frames)
            assert not [line for line in dump.lines[n:] if line.startswith("0C0000")]
        finally:
            acd.kill()
            await acd.wait()
    finally:
        await dump.stop()
