"""Encodings and the four word orders, against hand-computed register values."""

from __future__ import annotations

import math
import struct

import pytest
from canbridge_modbus.codec import Codec, EncodeError, encoder, register_count
from hypothesis import given
from hypothesis import strategies as st

# 0x12345678 and float32 1.5 (0x3FC00000) as PLC vendors lay them out
INT32_WORDS = {
    "ABCD": [0x1234, 0x5678],
    "CDAB": [0x5678, 0x1234],
    "BADC": [0x3412, 0x7856],
    "DCBA": [0x7856, 0x3412],
}
FLOAT_WORDS = {
    "ABCD": [0x3FC0, 0x0000],
    "CDAB": [0x0000, 0x3FC0],
    "BADC": [0xC03F, 0x0000],
    "DCBA": [0x0000, 0xC03F],
}


@pytest.mark.parametrize("order", INT32_WORDS)
def test_int32_word_orders(order: str) -> None:
    c = Codec("int32", order)
    assert c.encode(0x12345678) == INT32_WORDS[order]
    assert c.decode(INT32_WORDS[order]) == 0x12345678


@pytest.mark.parametrize("order", FLOAT_WORDS)
def test_float32_word_orders(order: str) -> None:
    c = Codec("float32", order)
    assert c.encode(1.5) == FLOAT_WORDS[order]
    assert c.decode(FLOAT_WORDS[order]) == 1.5


def test_float64_orders() -> None:
    be = list(struct.unpack(">4H", struct.pack(">d", -2.25)))
    assert Codec("float64", "ABCD").encode(-2.25) == be
    assert Codec("float64", "CDAB").encode(-2.25) == be[::-1]
    # DCBA is the value little-endian, byte for byte
    assert Codec("float64", "DCBA").encode(-2.25) == list(struct.unpack(">4H", struct.pack("<d", -2.25)))
    assert Codec("float64", "BADC").encode(-2.25) == list(struct.unpack("<4H", struct.pack(">d", -2.25)))


def test_int16_scale_and_byte_swap() -> None:
    assert Codec("int16", scale=10).encode(-12.3) == [0xFF85]
    assert Codec("int16", scale=10).decode([0xFF85]) == pytest.approx(-12.3)
    assert Codec("uint16", "BADC").encode(0x1234) == [0x3412]
    assert Codec("uint16", "CDAB").encode(0x1234) == [0x1234]


def test_bool_ignores_word_order() -> None:
    assert Codec("bool", "DCBA").encode(True) == [1]
    assert Codec("bool").decode([0]) == 0
    assert Codec("bool").decode([2]) == 2  # as written: the write path refuses it, audited


def test_out_of_range_saturates_or_raises() -> None:
    assert Codec("int16").encode(40000) == [0x7FFF]
    assert Codec("uint16").encode(-5) == [0]
    with pytest.raises(EncodeError):
        Codec("int16").encode(40000, clamp=False)
    assert Codec("uint32", scale=10).physical_limits() == (0, 0xFFFFFFFF / 10)


def test_non_finite_written_values_decode_as_they_are() -> None:
    # judging them is the write path's job (and its refusal is audited)
    nan = list(struct.unpack(">2H", struct.pack(">f", math.nan)))
    assert math.isnan(Codec("float32").decode(nan))
    assert Codec("float32", "CDAB").decode([0, 0x7F80]) == math.inf
    assert Codec("float64").decode([0xFFF0, 0, 0, 0]) == -math.inf
    with pytest.raises(EncodeError):
        Codec("float32").decode([1])


def test_register_counts() -> None:
    encodings = ("bool", "int16", "uint16", "int32", "uint32", "float32", "float64")
    assert [register_count(e) for e in encodings] == [1, 1, 1, 2, 2, 2, 4]


@given(
    st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
    st.sampled_from(["int16", "uint16", "int32", "uint32"]),
    st.integers(-(2**31), 2**32 - 1),
)
def test_integer_round_trip(order: str, encoding: str, value: int) -> None:
    c = Codec(encoding, order)
    lo, hi = c.raw_limits()
    if lo <= value <= hi:
        assert c.decode(c.encode(value)) == value


@given(st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]), st.floats(allow_nan=False, allow_infinity=False))
def test_float64_round_trip(order: str, value: float) -> None:
    c = Codec("float64", order)
    assert c.decode(c.encode(value)) == value


@given(
    st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]),
    st.sampled_from(["bool", "int16", "uint16", "int32", "uint32", "float32", "float64"]),
    st.sampled_from([1.0, 10.0, 0.5]),
    st.one_of(st.integers(-(2**40), 2**40), st.floats(-1e40, 1e40, allow_nan=False)),
)
def test_fast_encoder_matches_codec(order: str, encoding: str, scale: float, value: float) -> None:
    # the update path's encoder and the reference implementation give the same registers
    assert list(encoder(encoding, order, scale)(value)) == Codec(encoding, order, scale).encode(value)
