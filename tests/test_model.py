"""SignalInfo's ranges (canbridge/_model.py): the one place a signal's raw and physical range is computed;
the quality of a J1939 source's DM1 as every plugin serves it."""

from __future__ import annotations

import pytest

from canbridge import BusState, BusStatus, Dm1, Quality, dm1_quality
from canbridge.testing import signal_info


@pytest.mark.parametrize(("bits", "signed", "raw"), [
    (1, False, (0, 1)), (8, False, (0, 255)), (8, True, (-128, 127)), (16, True, (-32768, 32767)),
    (32, False, (0, 2**32 - 1)), (64, True, (-(2**63), 2**63 - 1)),
])
def test_raw_range(bits: int, signed: bool, raw: tuple[int, int]) -> None:
    assert signal_info(bit_length=bits, signed=signed, value_type=int).raw_range == raw


def test_physical_range_applies_scale_and_offset_low_first() -> None:
    assert signal_info(bit_length=8, signed=False, scale=0.5, offset=-40, value_type=float).physical_range == \
        (-40.0, 87.5)
    assert signal_info(bit_length=8, signed=False, scale=-1, offset=0, value_type=int).physical_range == (-255, 0)


def test_an_ieee_float_carries_its_finite_range() -> None:
    f32 = signal_info(bit_length=32, is_float=True, value_type=float)
    assert f32.physical_range == (-3.4028234663852886e38, 3.4028234663852886e38)
    assert f32.raw_range == (0, 2**32 - 1)  # its bits as an unsigned integer
    assert signal_info(bit_length=64, is_float=True, value_type=float).physical_range[1] == 1.7976931348623157e308


@pytest.mark.parametrize(("state", "age_s", "quality"), [
    (BusState.ACTIVE, 0.5, Quality.GOOD), (BusState.PASSIVE, 2.9, Quality.GOOD), (BusState.ACTIVE, 3.1, Quality.STALE),
    (BusState.BUS_OFF, 0.5, Quality.BAD), (BusState.DOWN, 10.0, Quality.BAD), (BusState.STOPPED, 0.0, Quality.BAD),
])
def test_dm1_quality_follows_the_bus_then_the_age(state: BusState, age_s: float, quality: Quality) -> None:
    d = Dm1(0, "off", "off", "off", "off", "none", "none", "none", "none", (), 1_000_000_000_000, 1)
    now = d.timestamp_ns + int(age_s * 1e9)
    assert dm1_quality(d, BusStatus("truck", state), now, 3.0) is quality
