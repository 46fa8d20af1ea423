"""asyncua's client-side types for the OPC UA tests, typed once.

asyncua annotates NodeId's arguments with its own wrapper classes (Int32, String, UInt16), re-exports
ObjectIds/StatusCodes/AttributeIds/UaStatusCodeError from `asyncua.ua` only implicitly, and types a
DataValue's Value and StatusCode as optional. The tests use these helpers instead of repeating casts.
"""

from __future__ import annotations

from typing import Any, cast

from asyncua import ua
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

__all__ = ["AttributeIds", "ObjectIds", "StatusCodes", "UaStatusCodeError", "dv_status", "dv_value", "nid"]


def nid(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    """A NodeId (asyncua types its arguments as its own Int32/String/UInt16 classes)."""
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace))


def dv_value(dv: ua.DataValue) -> Any:
    """The value inside a DataValue's Variant (None for an empty Variant, e.g. with a Bad status)."""
    assert dv.Value is not None, f"{dv} has no Variant"
    return dv.Value.Value


def dv_status(dv: ua.DataValue) -> ua.StatusCode:
    """A DataValue's status code (asyncua decodes an absent one as Good, never as None)."""
    assert dv.StatusCode is not None, f"{dv} has no status code"
    return dv.StatusCode
