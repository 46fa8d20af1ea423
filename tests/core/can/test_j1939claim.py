"""J1939-81 address claiming as a state machine, with time injected (no bus)."""

from __future__ import annotations

import pytest

from canbridge.config import J1939NameFields, J1939Settings
from canbridge.core.can.j1939claim import (
    CLAIM_WAIT_S,
    AddressClaimer,
    ClaimState,
    claim_frame,
    request_frame,
)
from canbridge.core.mapping.j1939 import source_of

OURS = 0x0000_1000_0000_0050  # not arbitrary address capable
ARBITRARY = OURS | 1 << 63
LOWER = 0x0000_0800_0000_0001  # wins against OURS and ARBITRARY
HIGHER = OURS + 1


def claimed(c: AddressClaimer, now: float = 0.0) -> None:
    c.start(now)
    assert c.tick(now + CLAIM_WAIT_S) == []
    assert c.state is ClaimState.CLAIMED


def test_claim_is_sent_and_transmission_waits_250_ms() -> None:
    c = AddressClaimer(OURS, 0x80)
    assert c.refusal() is not None and not c.can_transmit
    out = c.start(10.0)
    assert out == [(0x18EEFF80, OURS.to_bytes(8, "little"))]
    assert c.state is ClaimState.CLAIMING and not c.can_transmit
    assert "250 ms" in (c.refusal() or "")
    c.tick(10.0 + CLAIM_WAIT_S - 0.001)
    assert not c.can_transmit
    c.tick(10.0 + CLAIM_WAIT_S)
    assert c.can_transmit and c.refusal() is None and c.address == 0x80


@pytest.mark.parametrize("during_wait", [True, False], ids=["while claiming", "after the claim"])
def test_a_higher_name_contesting_our_address_loses_and_we_claim_again(during_wait: bool) -> None:
    c = AddressClaimer(OURS, 0x80)
    c.start(0.0)
    if not during_wait:
        c.tick(1.0)
    out = c.on_frame(*claim_frame(HIGHER, 0x80), 0.1)
    assert out == [claim_frame(OURS, 0x80)]
    assert c.contests == 1 and c.address == 0x80
    c.tick(1.0)
    assert c.can_transmit


@pytest.mark.parametrize("during_wait", [True, False], ids=["while claiming", "a later competing claim"])
def test_a_lower_name_wins_and_a_fixed_address_name_sends_cannot_claim(during_wait: bool) -> None:
    c = AddressClaimer(OURS, 0x80)
    c.start(0.0)
    if not during_wait:
        c.tick(1.0)
        assert c.can_transmit
    out = c.on_frame(*claim_frame(LOWER, 0x80), 2.0)
    assert out == [(0x18EEFFFE, OURS.to_bytes(8, "little"))]  # Cannot Claim: source address 254
    assert c.state is ClaimState.LOST and not c.can_transmit
    assert "0x0000080000000001" in (c.refusal() or "") and "not arbitrary address capable" in (c.reason or "")
    c.tick(100.0)  # no retry configured: it stays lost
    assert c.state is ClaimState.LOST


def test_an_arbitrary_address_capable_name_claims_the_next_free_address() -> None:
    c = AddressClaimer(ARBITRARY, 0x80, (0x80, 0x82))
    c.start(0.0)
    c.on_frame(*claim_frame(LOWER, 0x81), 0.0)  # 0x81 is held by a lower NAME: skipped
    out = c.on_frame(*claim_frame(LOWER, 0x80), 0.1)
    assert out == [claim_frame(ARBITRARY, 0x82)]
    assert c.state == ClaimState.CLAIMING and c.address == 0x82
    c.tick(0.1 + CLAIM_WAIT_S)
    assert c.can_transmit and c.address == 0x82
    # losing that one too: every address of the range is taken by a lower NAME
    out = c.on_frame(*claim_frame(LOWER, 0x82), 1.0)
    assert [source_of(i) for i, _ in out] == [0xFE]
    assert c.state.value == "lost" and "no free address" in (c.reason or "")


def test_the_default_range_of_an_arbitrary_name_is_128_to_247() -> None:
    c = AddressClaimer(ARBITRARY, 247)
    c.start(0.0)
    assert c.on_frame(*claim_frame(LOWER, 247), 0.0) == [claim_frame(ARBITRARY, 128)]


@pytest.mark.parametrize("destination", [0xFF, 0x80], ids=["global", "to us"])
def test_a_request_for_address_claimed_is_answered_with_our_claim(destination: int) -> None:
    c = AddressClaimer(OURS, 0x80)
    assert c.on_frame(*request_frame(0xEE00, 0x10, destination), 0.0) == []  # not started: nothing to say
    claimed(c)
    assert c.on_frame(*request_frame(0xEE00, 0x10, destination), 1.0) == [claim_frame(OURS, 0x80)]
    assert c.on_frame(*request_frame(0xEE00, 0x10, 0x33), 1.0) == []  # to another ECU
    assert c.on_frame(*request_frame(0xFEE5, 0x10, destination), 1.0) == []  # another PGN
    c.on_frame(*claim_frame(LOWER, 0x80), 2.0)
    assert c.on_frame(*request_frame(0xEE00, 0x10), 3.0) == [claim_frame(OURS, 0xFE)]  # lost: cannot claim


def test_our_own_claim_echoed_and_other_addresses_do_not_contest() -> None:
    c = AddressClaimer(OURS, 0x80)
    claimed(c)
    assert c.on_frame(*claim_frame(OURS, 0x80), 1.0) == []
    assert c.on_frame(*claim_frame(LOWER, 0x81), 1.0) == []
    assert c.on_frame(*claim_frame(LOWER, 0xFE), 1.0) == []  # someone's Cannot Claim
    assert c.can_transmit and c.contests == 0


def test_a_lost_claim_is_retried_and_a_later_success_clears_the_reason() -> None:
    c = AddressClaimer(OURS, 0x80, retry_s=5.0)
    claimed(c)
    c.on_frame(*claim_frame(LOWER, 0x80), 1.0)
    assert c.state is ClaimState.LOST
    assert c.tick(3.0) == []
    assert c.tick(6.0) == [claim_frame(OURS, 0x80)]  # the winner went away in between
    c.tick(6.0 + CLAIM_WAIT_S)
    assert c.can_transmit and c.reason is None


def test_a_bus_that_closes_claims_again_when_it_reopens() -> None:
    c = AddressClaimer(OURS, 0x80)
    claimed(c)
    c.stop()
    assert c.state is ClaimState.IDLE and not c.can_transmit
    assert c.start(5.0) == [claim_frame(OURS, 0x80)]


def test_short_frames_are_ignored() -> None:
    c = AddressClaimer(OURS, 0x80)
    claimed(c)
    assert c.on_frame(0x18EEFF80, b"\x01\x02", 1.0) == []
    assert c.on_frame(0x18EAFF10, b"\x00\xee", 1.0) == []
    assert c.can_transmit


def test_name_from_its_fields() -> None:
    fields = J1939NameFields(identity_number=0x1F_FFFF, manufacturer_code=0x7FF, ecu_instance=7,
                             function_instance=31, function=0xFF, vehicle_system=0x7F,
                             vehicle_system_instance=15, industry_group=7, arbitrary_address_capable=True)
    assert J1939Settings(name=fields, address=0x80).name_value == 0xFFFE_FFFF_FFFF_FFFF  # bit 48 reserved
    one = J1939Settings(name=J1939NameFields(manufacturer_code=1, function=0x81), address=3).name_value
    assert one == (1 << 21) | (0x81 << 40)
    assert J1939Settings(name=0x1234, address=3).name_value == 0x1234


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": 1 << 64, "address": 1}, "64-bit"),
    ({"name": 1, "address": 254}, "less than or equal to 253"),
    ({"name": 1, "address": 1, "address_range": (128, 247)}, "arbitrary address capable"),
    ({"name": 1 << 63, "address": 1, "address_range": (200, 130)}, "first <= last"),
    ({"name": {"function": 256}, "address": 1}, "less than 256"),
])
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        J1939Settings.model_validate(kwargs)
