"""Values to 16-bit registers and back, in the encodings and word orders PLC vendors use.

The byte string of a value is built big-endian (``ABCD`` for 32 bits: A is the most significant
byte), then rearranged: ``CDAB`` swaps the words, ``BADC`` swaps the bytes inside each word and
``DCBA`` does both (the value little-endian). 16- and 64-bit values follow the same rule.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_FORMATS = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "float32": ("f", 2),
    "float64": ("d", 4),
    "bool": ("H", 1),
}

INT_LIMITS = {
    "int16": (-0x8000, 0x7FFF),
    "uint16": (0, 0xFFFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "uint32": (0, 0xFFFF_FFFF),
    "bool": (0, 1),
}

FLOAT32_MAX = 3.4028234663852886e38


def register_count(encoding: str) -> int:
    """How many 16-bit registers a value of this encoding takes."""
    return _FORMATS[encoding][1]


def _arrange(data: bytes, order: str) -> bytes:
    """Big-endian bytes in the given order; the same call undoes it (each order is an involution)."""
    if order == "ABCD" or len(data) == 1:
        return data
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return b"".join(words)


class EncodeError(ValueError):
    """A value cannot be represented in the signal's encoding."""


@dataclass(frozen=True, slots=True)
class Codec:
    """One signal's register encoding."""

    encoding: str
    word_order: str = "ABCD"
    scale: float = 1.0

    @property
    def count(self) -> int:
        return register_count(self.encoding)

    @property
    def _order(self) -> str:
        # a one-bit value in a register is plain 0/1 whatever the word order
        return "ABCD" if self.encoding == "bool" else self.word_order

    @property
    def is_float(self) -> bool:
        return self.encoding in ("float32", "float64")

    def raw_limits(self) -> tuple[float, float]:
        if self.encoding == "float32":
            return -FLOAT32_MAX, FLOAT32_MAX
        if self.encoding == "float64":
            return -math.inf, math.inf
        lo, hi = INT_LIMITS[self.encoding]
        return float(lo), float(hi)

    def physical_limits(self) -> tuple[float, float]:
        """The physical values this encoding can carry with its scale."""
        lo, hi = self.raw_limits()
        a, b = lo / self.scale, hi / self.scale
        return (a, b) if a <= b else (b, a)

    def encode(self, value: float | int | bool, clamp: bool = True) -> list[int]:
        """The registers of a physical value. Out-of-range values saturate when ``clamp``,
        else raise :class:`EncodeError`."""
        fmt, _ = _FORMATS[self.encoding]
        if self.encoding == "bool":
            raw: float | int = 1 if value else 0
        elif self.is_float:
            raw = float(value) * self.scale
            if self.encoding == "float32" and abs(raw) > FLOAT32_MAX and math.isfinite(raw):
                if not clamp:
                    raise EncodeError(f"{value} does not fit a float32")
                raw = math.copysign(FLOAT32_MAX, raw)
        else:
            scaled = float(value) * self.scale
            if not math.isfinite(scaled):
                if not clamp:
                    raise EncodeError(f"{value} is not a finite number")
                scaled = 0.0
            raw = round(scaled)
            lo, hi = INT_LIMITS[self.encoding]
            if not lo <= raw <= hi:
                if not clamp:
                    raise EncodeError(f"{value} x {self.scale:g} = {raw} does not fit {self.encoding}")
                raw = min(max(raw, lo), hi)
        data = _arrange(struct.pack(">" + fmt, raw), self._order)
        return list(struct.unpack(f">{len(data) // 2}H", data))

    def decode(self, registers: Sequence[int]) -> float | int:
        """The value registers as a client wrote them mean, as is: NaN, infinity and a one-bit
        register holding 2 come back unjudged (the bridge's write path judges and audits them).
        Raises EncodeError only when the number of registers is not the encoding's."""
        fmt, n = _FORMATS[self.encoding]
        if len(registers) != n:
            raise EncodeError(f"{self.encoding} needs {n} registers, got {len(registers)}")
        data = _arrange(struct.pack(f">{n}H", *registers), self._order)
        raw: float | int = struct.unpack(">" + fmt, data)[0]
        if self.encoding == "bool" or self.scale == 1:
            return float(raw) if self.is_float else int(raw)
        return raw / self.scale


# Fast encoders for the update path. Packing the value little-endian reverses its bytes, and
# reading the words little-endian swaps the bytes inside each word, so (pack order, word order)
# gives each layout in two C calls: ABCD (>,>), CDAB (<,<), BADC (>,<), DCBA (<,>).
_ORDER_STRUCTS = {"ABCD": (">", ">"), "CDAB": ("<", "<"), "BADC": (">", "<"), "DCBA": ("<", ">")}

Encoder = Callable[[float | int | bool], tuple[int, ...]]


@functools.lru_cache(maxsize=256)
def encoder(encoding: str, word_order: str = "ABCD", scale: float = 1.0) -> Encoder:
    """A function from a physical value to its registers, saturating like ``Codec.encode``."""
    fmt, n = _FORMATS[encoding]
    if encoding == "bool":
        return lambda v: (1 if v else 0,)
    pack_order, word_order_ = _ORDER_STRUCTS[word_order]
    pack = struct.Struct(pack_order + fmt).pack
    unpack = struct.Struct(f"{word_order_}{n}H").unpack
    if encoding in ("float32", "float64"):
        limit = FLOAT32_MAX if encoding == "float32" else math.inf

        def enc_float(v: float | int | bool) -> tuple[int, ...]:
            x = v * scale
            try:
                return unpack(pack(x))
            except OverflowError:  # beyond float32
                return unpack(pack(math.copysign(limit, x)))

        return enc_float
    lo, hi = INT_LIMITS[encoding]

    def enc_int(v: float | int | bool) -> tuple[int, ...]:
        try:
            r = round(v * scale) if scale != 1 or not isinstance(v, int) else int(v)
        except (ValueError, OverflowError):  # NaN or infinite
            r = 0
        if r < lo:
            r = lo
        elif r > hi:
            r = hi
        return unpack(pack(r))

    return enc_int
