"""What the codec tests share (test_codec, test_codec_parity): the generated encoder for a whole frame,
cantools' decode as a dict, and value equality that holds for NaN."""

from __future__ import annotations

import math
from typing import Any

from canbridge.core.mapping.codec import _message_encoder


def encode_message(message: Any, values: Any) -> bytes:
    """Test helper: a whole frame from physical values with the generated encoder (cached per message),
    as ``message.encode(values, strict=False)`` does with cantools."""
    return _message_encoder(message)(values)


def decoded(message: Any, data: bytes, **kw: Any) -> dict[str, Any]:
    """cantools' decode of one message: a dict of values (its declared type is wider)."""
    out = message.decode(data, **kw)
    assert isinstance(out, dict)
    return out


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)
