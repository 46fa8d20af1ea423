"""J1939 transmission on python-can's virtual bus with a peer ECU the test scripts: the bridge claims its
address before it sends anything, writes go out with the claimed source address, nothing leaves while
no address is claimed (claiming, or lost to a lower NAME), a lost claim is a bus warning that a later
successful claim clears, and Requests (PGN 59904) are answered with a single frame or an RTS/CTS
transfer to the bridge's address that the bridge receives (CTS, end of message)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from canbridge import BusState, Caller, Permission, RefusalReason, WriteRefused
from canbridge.core.can import j1939claim
from canbridge.testing import BridgeHarness
from tests.core.test_writepath import audit

DATA = Path(__file__).resolve().parents[1] / "data" / "dbc"
NAME = 0x0000_1000_0000_0050  # the bridge's NAME (not arbitrary address capable)
LOWER = 0x0000_0800_0000_0001  # a peer's NAME that wins against it
ADDRESS = 0x80
CLAIM = 0x18EEFF80  # Address Claimed from 0x80
CANNOT_CLAIM = 0x18EEFFFE
TSC1_TO_ENGINE = 0x0C000080  # TSC1 (PGN 0, PDU1) to 0x00 from 0x80
CALLER = Caller("test", permissions=frozenset({Permission.WRITE, Permission.RAW}))


def config(**j1939: Any) -> dict[str, Any]:
    return {
        "buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939tx-{uuid.uuid4().hex[:8]}",
                   "j1939": {"name": NAME, "address": ADDRESS, **j1939}}],
        "mappings": [
            {"bus": "truck", "dbc": str(DATA / "j1939_test.dbc"), "messages": ["TSC1"], "writable": ["TSC1.*"]},
            {"bus": "truck", "dbc": str(DATA / "j1939_test.dbc"), "messages": ["EC1"]},
            {"bus": "truck", "dbc": str(DATA / "j1939_hours.dbc")},
        ],
    }


def claim(name: int, address: int) -> str:
    return f"18EEFF{address:02X}#{name.to_bytes(8, 'little').hex().upper()}"


async def refused(h: BridgeHarness, call: Awaitable[object], reason: RefusalReason = RefusalReason.NO_ADDRESS,
                  detail: str = "") -> None:
    with pytest.raises(WriteRefused) as e:
        await call
    assert e.value.reason is reason and detail in e.value.detail, e.value


async def claimed(h: BridgeHarness) -> None:
    frame = await h.next_sent(CLAIM)
    assert frame.data == NAME.to_bytes(8, "little")
    await h.until(lambda: h.bridge.bus_status("truck").address_claim["state"] == "claimed")


async def nothing_sent_but(h: BridgeHarness, ids: set[int]) -> None:
    """Every frame the bridge sent so far has one of ``ids``: a Request for Address Claimed makes it
    answer, and frames on the virtual bus arrive in order, so anything sent before is seen by then."""
    h.inject("18EAFF10#00EE00")
    answer = await h.next_sent(CLAIM) if CLAIM in ids else await h.next_sent(CANNOT_CLAIM)
    assert answer.data == NAME.to_bytes(8, "little")
    other = [f for f in h._sent["truck"].frames if f.can_id not in ids]
    assert other == [], f"sent while it must not: {other}"


async def test_the_bridge_claims_its_address_then_writes_with_it() -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        st = h.bridge.bus_status("truck")
        assert st.address_claim == {"state": "claimed", "address": ADDRESS, "name": f"0x{NAME:016X}",
                                    "claims_sent": 1, "contests": 0}
        receipt = await h.bridge.write("truck.TSC1.RequestedSpeedLimit", 1000, CALLER)
        assert receipt.frame.can_id == TSC1_TO_ENGINE
        sent = await h.next_sent(TSC1_TO_ENGINE)
        assert sent.data[1:3] == (8000).to_bytes(2, "little")  # 1000 rpm at 0.125 rpm/bit
        # a read-modify-write: the next write keeps the speed limit
        await h.bridge.write("truck.TSC1.RequestedTorqueLimit", 50, CALLER)
        sent = await h.next_sent(TSC1_TO_ENGINE)
        assert sent.data[1:4] == bytes((0x40, 0x1F, 175))


async def test_nothing_is_sent_while_the_claim_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(j1939claim, "CLAIM_WAIT_S", 60.0)  # the 250 ms wait, long enough to act inside it
    async with BridgeHarness(config()) as h:
        await h.next_sent(CLAIM)
        assert h.bridge.bus_status("truck").address_claim["state"] == "claiming"
        await refused(h, h.bridge.write("truck.TSC1.RequestedSpeedLimit", 1000, CALLER), detail="250 ms")
        await refused(h, h.bridge.request_pgn("truck", 65253, CALLER))
        await refused(h, h.bridge.send_frame("truck", "123#00", CALLER))
        await nothing_sent_but(h, {CLAIM})
        assert h.bridge.stats().writes_refused["no_address"] == 3


async def test_a_lost_claim_stops_transmission_warns_and_a_later_claim_clears_it() -> None:
    async with BridgeHarness(config(retry_s=0.5)) as h:
        await claimed(h)
        h.clear_sent()
        h.inject(claim(LOWER, ADDRESS))  # a peer with a lower NAME takes 0x80
        cannot = await h.next_sent(CANNOT_CLAIM)
        assert cannot.data == NAME.to_bytes(8, "little")
        st = h.bridge.bus_status("truck")
        assert st.state is BusState.WARNING and st.address_claim["state"] == "lost"
        assert st.last_error is not None and f"0x{LOWER:016X}" in st.last_error
        await refused(h, h.bridge.write("truck.TSC1.RequestedSpeedLimit", 1000, CALLER), detail="lost")
        await refused(h, h.bridge.request_pgn("truck", 65253, CALLER))
        await refused(h, h.bridge.send_frame("truck", "123#00", CALLER))
        await nothing_sent_but(h, {CANNOT_CLAIM})
        # the peer is gone: the retry claims 0x80 again and the warning clears
        await h.next_sent(CLAIM, timeout=5.0)
        await h.until(lambda: h.bridge.bus_status("truck").state is BusState.ACTIVE)
        assert h.bridge.bus_status("truck").address_claim["state"] == "claimed"
        await h.bridge.write("truck.TSC1.RequestedSpeedLimit", 1000, CALLER)
        await h.next_sent(TSC1_TO_ENGINE)


async def test_a_higher_name_contesting_the_address_makes_the_bridge_claim_again() -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        h.inject(claim(NAME + 1, ADDRESS))
        again = await h.next_sent(CLAIM)
        assert again.data == NAME.to_bytes(8, "little")
        st = h.bridge.bus_status("truck")
        assert st.address_claim["state"] == "claimed" and st.address_claim["contests"] == 1
        assert st.state is BusState.ACTIVE


async def test_a_request_answered_with_one_frame_arrives_as_signals() -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        sent = await h.bridge.request_pgn("truck", 65253, CALLER, destination=0x00)
        assert (sent.can_id, sent.data) == (0x18EA0080, bytes((0xE5, 0xFE, 0x00)))
        seen = await h.next_sent(0x18EA0080)
        assert seen.data == bytes((0xE5, 0xFE, 0x00))
        h.inject("18FEE500#40420F0010270000")  # 1,000,000 x 0.05 h; 10,000 x 1000 r
        await h.until(lambda: h.bridge.read("truck.HOURS.EngineTotalHoursOfOperation").value == 50000)
        assert h.bridge.read("truck.HOURS.EngineTotalRevolutions").value == 10_000_000


async def test_a_request_answered_with_rts_cts_to_our_address_is_received() -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        await h.bridge.request_pgn("truck", 65251, CALLER, destination=0x00)
        await h.next_sent(0x18EA0080)
        payload = bytearray(b"\xff" * 39)
        payload[0:2] = (6000).to_bytes(2, "little")  # 750 rpm at idle
        payload[19:21] = (2500).to_bytes(2, "little")  # reference torque 2500 Nm
        h.inject("1CEC8000#10270006 03E3FE00".replace(" ", ""))  # RTS: 39 bytes, 6 packets, 3 per CTS
        cts = await h.next_sent(0x1CEC0080)
        assert cts.data == bytes((17, 3, 1, 0xFF, 0xFF, 0xE3, 0xFE, 0x00))
        for seq in (1, 2, 3):
            h.inject(f"1CEB8000#{seq:02X}{payload[(seq - 1) * 7:seq * 7].hex()}")
        cts = await h.next_sent(0x1CEC0080)
        assert cts.data == bytes((17, 3, 4, 0xFF, 0xFF, 0xE3, 0xFE, 0x00))
        for seq in (4, 5, 6):
            chunk = bytes(payload[(seq - 1) * 7:seq * 7]).ljust(7, b"\xff")
            h.inject(f"1CEB8000#{seq:02X}{chunk.hex()}")
        eom = await h.next_sent(0x1CEC0080)
        assert eom.data == bytes((19, 39, 0, 6, 0xFF, 0xE3, 0xFE, 0x00))
        await h.until(lambda: h.bridge.read("truck.EC1.EngineReferenceTorque").value == 2500)
        assert h.bridge.read("truck.EC1.EngineSpeedAtIdlePoint1").value == 750
        assert h.bridge.bus_status("truck").transport["completed"] == 1


@pytest.mark.parametrize(("body", "reason"), [
    ({"pgn": 1 << 18}, RefusalReason.OUT_OF_RANGE),
    ({"pgn": 65253, "destination": 256}, RefusalReason.OUT_OF_RANGE),
    ({"pgn": "65253"}, RefusalReason.WRONG_TYPE),
])
async def test_bad_requests_are_refused_and_send_nothing(body: dict[str, Any], reason: RefusalReason) -> None:
    async with BridgeHarness(config()) as h:
        await claimed(h)
        await refused(h, h.bridge.request_pgn("truck", body["pgn"], CALLER, body.get("destination", 255)), reason)
        await nothing_sent_but(h, {CLAIM})


async def test_requests_need_the_write_permission_and_are_rate_bounded_and_audited() -> None:
    async with BridgeHarness(config(request_rate=1)) as h:
        await claimed(h)
        await refused(h, h.bridge.request_pgn("truck", 65253, Caller("reader", permissions=frozenset())),
                      RefusalReason.NOT_ALLOWED)
        await h.bridge.request_pgn("truck", 65253, CALLER)
        await refused(h, h.bridge.request_pgn("truck", 65253, CALLER), RefusalReason.RATE_LIMITED)
        assert h.bridge.stats().writes_accepted == 1
        entries = [e for e in audit(h.bridge.state_dir) if e["target"] == "truck (J1939 request PGN 65253)"]
        assert [e["result"] for e in entries] == ["not_allowed", "accepted", "rate_limited"]
        assert entries[1]["frame"] == "18EA FF80#E5FE00".replace(" ", "")
