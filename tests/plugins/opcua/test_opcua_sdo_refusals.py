"""A CANopen SDO refusal on OPC UA: its reason's status code, or a more precise one where the device's
abort code says so (plugins/canbridge_opcua/service.py, refusal_status)."""

from __future__ import annotations

import pytest
from asyncua.ua.status_codes import StatusCodes
from canbridge_opcua.service import REFUSAL_STATUS, refusal_status

from canbridge import RefusalReason, WriteRefused


def test_every_refusal_reason_has_a_status_code() -> None:
    assert set(REFUSAL_STATUS) == set(RefusalReason)


@pytest.mark.parametrize(("reason", "code", "status"), [
    (RefusalReason.OUT_OF_RANGE, 0x06090030, StatusCodes.BadOutOfRange),
    (RefusalReason.NOT_WRITABLE, 0x06010002, StatusCodes.BadNotWritable),
    (RefusalReason.DEVICE_TIMEOUT, 0x05040000, StatusCodes.BadTimeout),
    (RefusalReason.DEVICE_REFUSED, 0x08000022, StatusCodes.BadInvalidState),  # the present device state
    (RefusalReason.DEVICE_REFUSED, 0x08000021, StatusCodes.BadInvalidState),  # local control
    (RefusalReason.DEVICE_REFUSED, 0x08000000, StatusCodes.BadDeviceFailure),
    (RefusalReason.DEVICE_REFUSED, None, StatusCodes.BadDeviceFailure),
])
def test_an_sdo_abort_maps_to_its_status_code(reason: RefusalReason, code: int | None, status: int) -> None:
    assert refusal_status(WriteRefused(reason, "refused", "line.servo.Target_position", abort_code=code)) == status
