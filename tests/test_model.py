"""SignalInfo's ranges (canbridge/_model.py): the one place a signal's raw and physical range is computed."""

from __future__ import annotations

import pytest

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
