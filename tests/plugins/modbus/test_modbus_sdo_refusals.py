"""A CANopen SDO refusal on Modbus: the exception code of its reason (plugins/canbridge_modbus/engine.py)."""

from __future__ import annotations

import pytest
from canbridge_modbus.engine import REFUSAL_CODES

from canbridge import RefusalReason


def test_every_refusal_reason_has_an_exception_code() -> None:
    assert set(REFUSAL_CODES) == set(RefusalReason)


@pytest.mark.parametrize(("reason", "code"), [
    (RefusalReason.OUT_OF_RANGE, 0x03),  # SDO abort 0x0609003x: ILLEGAL DATA VALUE
    (RefusalReason.NOT_WRITABLE, 0x02),  # 0x06010002: ILLEGAL DATA ADDRESS
    (RefusalReason.DEVICE_REFUSED, 0x04),  # SERVER DEVICE FAILURE
    (RefusalReason.DEVICE_TIMEOUT, 0x0B),  # GATEWAY TARGET DEVICE FAILED TO RESPOND
])
def test_sdo_refusals_map_to_modbus_exceptions(reason: RefusalReason, code: int) -> None:
    assert int(REFUSAL_CODES[reason]) == code
