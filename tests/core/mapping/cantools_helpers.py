"""What the codec tests need from cantools and the generated encoder, shared by test_codec and
test_codec_parity."""

from __future__ import annotations

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
