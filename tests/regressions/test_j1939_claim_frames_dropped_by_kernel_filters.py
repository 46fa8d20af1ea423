"""A bus that claims a J1939 address but has no J1939 mapping (plain DBC messages only, or J1939
messages it only sends) kept its exact-id kernel filters: on SocketCAN the kernel dropped the Requests
for Address Claimed and the competing claims before the bridge saw them, so it never answered and
never yielded (seen in the VM tier with j1939acd). Such a bus now receives every frame."""

from __future__ import annotations

from pathlib import Path

from canbridge.testing import until
from tests.core.test_busrunner import fake_runtime

NAME = 0x0000_1000_0000_0050


async def test_a_claiming_bus_without_j1939_mappings_has_no_kernel_filters(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, bus={"j1939": {"name": NAME, "address": 0x80}}) as (rt, link):
        await until(lambda: rt.bus_status("demo").address_claim.get("state") == "claimed")
        assert link.driver.filters is None
        link.deliver((0x18EAFF10, 1, bytes((0x00, 0xEE, 0x00)), 0))  # Request for Address Claimed
        await until(lambda: [f.can_id for f in link.sent].count(0x18EEFF80) == 2)
        link.deliver((0x18EEFF80, 1, (1).to_bytes(8, "little"), 0))  # a lower NAME takes 0x80
        await until(lambda: rt.bus_status("demo").address_claim.get("state") == "lost")
        assert link.sent[-1].can_id == 0x18EEFFFE


async def test_a_bus_without_a_claim_keeps_its_kernel_filters(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (_rt, link):
        await until(lambda: link.drivers and link.driver.filters != "unset")
        assert link.driver.filters is not None
