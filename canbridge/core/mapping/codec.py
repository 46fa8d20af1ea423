"""Signal codecs generated once per message, so that no frame goes through cantools at run time.

:func:`compile_decoder` turns a cantools ``Message`` into a Python function, written as source text
with every shift, mask and scale baked in as a constant and compiled with :func:`compile`. Per
frame it costs one precompiled ``struct`` unpack per byte order present, a shift and a mask per
signal and a comparison against the latest value: a quarter to a tenth of ``decode_message``
(``bench/bench_codec.py``).

The values are those of ``message.decode(data, decode_choices=False, scaling=True)``: the same
types (``int`` where cantools gives ``int``), the same order of operations (``raw * scale +
offset``), multiplexers resolved the same way (``int()`` of the multiplexer's *scaled* value).
Deliberate differences, all for frames or files that cantools cannot decode at all:

* a multiplexer value without signals decodes the signals outside the multiplexed part and the
  multiplexer itself, and nothing else (cantools raises ``DecodeError`` for the whole frame);
* in messages loaded leniently, overlapping signals are each decoded from their own bits
  (cantools' bitstruct format then fails with "unpacking failed"), and a signal that does not fit
  in the message is never decoded, nor encoded.

The encoders mirror ``Message.encode(..., strict=False)``: physical to raw with cantools'
conversion arithmetic (``round`` for integer signals), IEEE floats packed with :mod:`struct`, and
a :class:`ValueError` naming the signal when the raw value does not fit its bits (cantools raises
``OverflowError`` from bitstruct; it also turns a float too large for float32 into infinity, which
we refuse instead).
"""

from __future__ import annotations

import linecache
import math
import re
import struct
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cantools.database.can
from cantools.database.conversion import (
    BaseConversion,
    IdentityConversion,
    LinearConversion,
    LinearIntegerConversion,
    NamedSignalConversion,
)

from canbridge._model import Value, raw_range
from canbridge.core.mapping.j1939 import ERROR_INDICATOR, NOT_AVAILABLE, has_special_ranges, special_ranges

Message = cantools.database.can.Message
Signal = cantools.database.can.Signal

Decoder = Callable[[bytes, list[Any], list[int]], None]
"""``decoder(data, values, changed)``: store every signal whose value changed into ``values`` at
its index and append the index to ``changed``. Raises :class:`ValueError` for a short payload."""

MessageEncoder = Callable[[Mapping[str, Value]], bytes]

# IEEE formats that struct packs exactly as bitstruct does ('f16', 'f32', 'f64').
_FLOAT_FORMATS = {16: "e", 32: "f", 64: "d"}
_UINT_FORMATS = {16: "H", 32: "I", 64: "Q"}

_IDENT = re.compile(r"[^0-9A-Za-z_]")


# --- layout ----------------------------------------------------------------------------------------


def network_start(signal: Signal) -> int:
    """Index of a big-endian signal's most significant bit in network (MSB-first) order."""
    return 8 * (signal.start // 8) + (7 - signal.start % 8)


@dataclass(frozen=True)
class BitField:
    """Where a signal's bits are in the payload read as one integer.

    ``order`` is the byte order of that integer (``little`` for little-endian signals, ``big``
    for Motorola ones); the raw bits are ``(x >> shift) & mask``.
    """

    order: str
    shift: int
    mask: int
    fits: bool


def bit_field(signal: Signal, length: int) -> BitField:
    """The bit field of ``signal`` in a payload of ``length`` bytes."""
    mask = (1 << signal.length) - 1
    if signal.byte_order == "little_endian":
        shift = signal.start
        fits = shift + signal.length <= 8 * length
        return BitField("little", shift, mask, fits)
    shift = 8 * length - (network_start(signal) + signal.length)
    return BitField("big", shift, mask, shift >= 0)


def fits(signal: Signal, length: int) -> bool:
    """Whether all of the signal's bits are inside a payload of ``length`` bytes."""
    return signal.length > 0 and bit_field(signal, length).fits


# --- source generation helpers ----------------------------------------------------------------------


class _Source:
    """Lines of generated source plus the constants they refer to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.namespace: dict[str, Any] = {"_from_bytes": int.from_bytes}
        self._names = 0

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def const(self, value: Any) -> str:
        """A literal for ints and finite floats (they round-trip through repr), else a name."""
        if type(value) is int or (type(value) is float and math.isfinite(value)):
            return f"({value!r})"
        return self.bind(value)

    def bind(self, value: Any, hint: str = "_k") -> str:
        self._names += 1
        name = f"{hint}{self._names}"
        self.namespace[name] = value
        return name

    def compile(self, filename: str, func: str) -> Any:
        text = "\n".join(self.lines) + "\n"
        code = compile(text, filename, "exec")
        # Tracebacks through generated code show its source.
        linecache.cache[filename] = (len(text), None, [line + "\n" for line in self.lines], filename)
        exec(code, self.namespace)
        return self.namespace[func]


def _effective(conversion: BaseConversion) -> BaseConversion:
    """The numeric conversion cantools applies with ``decode_choices=False``."""
    if isinstance(conversion, NamedSignalConversion):
        return conversion._conversion  # what raw_to_scaled(..., False) delegates to
    return conversion


def _scaled_expr(src: _Source, conversion: BaseConversion, raw: str) -> str | None:
    """Source computing the physical value from ``raw`` exactly as cantools does; None: identity."""
    conv = _effective(conversion)
    if type(conv) is IdentityConversion:
        return None
    if type(conv) is LinearIntegerConversion:
        # Integer arithmetic: leaving out '* 1' or '+ 0' cannot change the result.
        expr = raw if conv.scale == 1 else f"{raw} * {src.const(conv.scale)}"
        return expr if conv.offset == 0 else f"{expr} + {src.const(conv.offset)}"
    if type(conv) is LinearConversion:
        # Keep both operations even for 1 and 0: with floats they can turn -0.0 into 0.0.
        return f"{raw} * {src.const(conv.scale)} + {src.const(conv.offset)}"
    fn = src.bind(conv.raw_to_scaled, "_conv")
    return f"{fn}({raw}, False)"


# --- decoders ---------------------------------------------------------------------------------------
#
# The payload is read with one precompiled struct per byte order present: the bytes that signals
# occupy are grouped into words (a group is a run of bytes that signals share), so each signal is
# a shift and a mask of a small int. Measured against one int.from_bytes of the whole payload and
# shifts of that (multi-digit) int, this is about 25 % faster for 8 signals in 8 bytes.

_PIECES = ((8, "Q"), (4, "I"), (2, "H"), (1, "B"))


@dataclass
class _Group:
    first: int  # first byte
    last: int  # last byte
    signals: list[Signal]
    var: str = ""
    pieces: list[tuple[int, str]] | None = None  # (size, struct code), in byte order

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def _byte_span(signal: Signal, length: int) -> tuple[int, int]:
    field = bit_field(signal, length)
    if field.order == "little":
        return signal.start // 8, (signal.start + signal.length - 1) // 8
    first = network_start(signal)
    return first // 8, (first + signal.length - 1) // 8


def _plan(signals: Sequence[Signal], length: int) -> list[_Group]:
    """Group signals (all of one byte order) into runs of bytes they share."""
    groups: list[_Group] = []
    for signal in sorted(signals, key=lambda s: _byte_span(s, length)):
        first, last = _byte_span(signal, length)
        if groups and first <= groups[-1].last:
            groups[-1].last = max(groups[-1].last, last)
            groups[-1].signals.append(signal)
        else:
            groups.append(_Group(first, last, [signal]))
    return groups


@dataclass
class _Layout:
    """How the generated code reads the payload: per byte order a struct and its word groups."""

    words: dict[str, list[_Group]]  # 'little' / 'big' -> groups
    structs: dict[str, str]  # 'little' / 'big' -> name of the bound unpack_from
    names: dict[str, list[str]]  # 'little' / 'big' -> the tuple element names, in order
    group_of: dict[str, _Group]  # signal name -> its group


def _layout(src: _Source, signals: Sequence[Signal], length: int) -> _Layout:
    layout = _Layout({}, {}, {}, {})
    for order, prefix, endian in (("little", "a", "<"), ("big", "b", ">")):
        mine = [s for s in signals if bit_field(s, length).order == order]
        if not mine:
            continue
        groups = _plan(mine, length)
        fmt, names, pos = endian, [], 0
        for n, group in enumerate(groups):
            fmt += "x" * (group.first - pos)
            pos = group.last + 1
            lone = group.signals[0] if len(group.signals) == 1 else None
            if (
                lone is not None
                and lone.is_float
                and lone.length == 8 * group.size
                and lone.length in _FLOAT_FORMATS
                and bit_field(lone, length).shift % 8 == 0
            ):
                # A float alone in its bytes: struct decodes it directly.
                group.pieces = [(group.size, _FLOAT_FORMATS[lone.length])]
            else:
                group.pieces = []
                left = group.size
                while left:
                    size, code = next((sz, c) for sz, c in _PIECES if sz <= left)
                    group.pieces.append((size, code))
                    left -= size
            fmt += "".join(code for _, code in group.pieces)
            group.var = f"{prefix}{n}"
            if len(group.pieces) == 1:
                names.append(group.var)
            else:
                names += [f"{group.var}_{k}" for k in range(len(group.pieces))]
            for signal in group.signals:
                layout.group_of[signal.name] = group
        layout.words[order] = groups
        layout.structs[order] = src.bind(struct.Struct(fmt).unpack_from, f"_unpack_{order}")
        layout.names[order] = names
    return layout


def _emit_words(src: _Source, layout: _Layout, indent: int, source: dict[str, str]) -> None:
    """Unpack the words (from the payload, or from tuples passed to a branch function)."""
    for order, groups in layout.words.items():
        names = layout.names[order]
        target = ", ".join(names) + ("," if len(names) == 1 else "")
        src.emit(indent, f"{target} = {source[order]}")
        for group in groups:
            assert group.pieces is not None
            if len(group.pieces) == 1:
                continue
            # Assemble a group that no single struct code covers (3, 5, 6, 7 bytes or more).
            parts, bit = [], 0
            sizes = [size for size, _ in group.pieces]
            sizes_from_low = list(reversed(list(enumerate(sizes)))) if order == "big" else list(enumerate(sizes))
            for k, size in sizes_from_low:
                parts.append(f"{group.var}_{k}" + (f" << {bit}" if bit else ""))
                bit += 8 * size
            src.emit(indent, f"{group.var} = " + " | ".join(parts))


@dataclass
class _DecodeContext:
    message: Message
    indices: Mapping[str, int]
    bools: Collection[str]
    src: _Source
    signals: dict[str, Signal]
    layout: _Layout | None = None
    branch_functions: int = 0
    branches: list[list[str]] | None = None
    tables: list[tuple[str, dict[int, str]]] | None = None
    j1939: bool = False


def _uses(tree: Sequence[Any], ctx: _DecodeContext) -> Iterator[Signal]:
    """Every signal of a signal tree that the decoder reads (in the indices, or a multiplexer)."""
    for node in tree:
        if isinstance(node, dict):
            for mux_name, branches in node.items():
                yield ctx.signals[mux_name]
                for sub in branches.values():
                    yield from _uses(sub, ctx)
        elif node in ctx.indices:
            yield ctx.signals[node]


def _known(conversion: BaseConversion) -> bool:
    return type(_effective(conversion)) in (IdentityConversion, LinearIntegerConversion, LinearConversion)


def _raw_source(ctx: _DecodeContext, signal: Signal) -> str:
    """An expression of the signal's raw value (int, or float for IEEE signals)."""
    assert ctx.layout is not None
    length = ctx.message.length
    group = ctx.layout.group_of[signal.name]
    assert group.pieces is not None
    field = bit_field(signal, length)
    if field.order == "little":
        shift = signal.start - 8 * group.first
    else:
        shift = 8 * (group.last + 1) - (network_start(signal) + signal.length)
    bits = group.var if shift == 0 else f"({group.var} >> {shift})"
    if shift + signal.length != 8 * group.size:
        bits = f"{bits} & {field.mask:#x}"
    if signal.is_float:
        fmt = _FLOAT_FORMATS.get(signal.length)
        if fmt is None:
            raise ValueError(
                f"signal {signal.name} of message {ctx.message.name}: "
                f"IEEE float of {signal.length} bits is not supported"
            )
        if group.pieces[0][1] == fmt:
            return group.var  # struct already decoded it
        unpack = ctx.src.bind(struct.Struct(">" + fmt).unpack, "_unpack")
        return f"{unpack}(({bits}).to_bytes({signal.length // 8}, 'big'))[0]"
    if signal.is_signed:
        sign = 1 << (signal.length - 1)
        return f"(({bits}) ^ {sign}) - {sign}"
    return bits


def _emit_signal(ctx: _DecodeContext, signal: Signal, indent: int, need_value: bool) -> bool:
    """Emit the decoding of one signal into ``r``; False if it is not decoded at all."""
    src, emit = ctx.src, ctx.src.emit
    index = ctx.indices.get(signal.name)
    if (index is None and not need_value) or not fits(signal, ctx.message.length):
        return False
    raw = _raw_source(ctx, signal)
    special = special_ranges(signal.length) if ctx.j1939 and not need_value and has_special_ranges(signal) else None
    if special is not None:  # J1939-71: the top raw values are "error" and "not available", not numbers
        emit(indent, f"w = {raw}")
        raw = "w"
    scaled = _scaled_expr(src, signal.conversion, f"({raw})")
    if special is not None:
        emit(indent, f"if w >= {special[0]:#x}:")
        emit(indent + 1, f"r = {src.bind(NOT_AVAILABLE, '_na')} if w >= {special[1]:#x} else "
                         f"{src.bind(ERROR_INDICATOR, '_err')}")
        emit(indent, "else:")
        indent += 1
    emit(indent, f"r = {raw if scaled is None else scaled}")
    if special is not None:
        indent -= 1
    if index is None:
        return True
    out = "r"
    if signal.name in ctx.bools:
        emit(indent, "v = r != 0" if scaled is None and not signal.is_float else "v = bool(r)")
        out = "v"
    if signal.name not in ctx.bools and (signal.is_float or not _known(signal.conversion)):
        # NaN never equals itself: without the second test it would be 'changed' every frame.
        emit(indent, f"o = values[{index}]")
        emit(indent, f"if {out} != o and ({out} == {out} or o == o):")
    else:
        emit(indent, f"if {out} != values[{index}]:")
    emit(indent + 1, f"values[{index}] = {out}")
    emit(indent + 1, f"changed.append({index})")
    return True


def _emit_tree(ctx: _DecodeContext, tree: Sequence[Any], indent: int) -> None:
    """Emit a signal tree: plain signals in order, then each multiplexer and its branches."""
    src, emit = ctx.src, ctx.src.emit
    for node in tree:
        if not isinstance(node, dict):
            _emit_signal(ctx, ctx.signals[node], indent, need_value=False)
            continue
        for mux_name, branches in node.items():
            mux = ctx.signals[mux_name]
            if not _emit_signal(ctx, mux, indent, need_value=True):
                continue  # a multiplexer outside the payload selects nothing
            live = {mux_id: sub for mux_id, sub in branches.items() if any(_uses(sub, ctx))}
            if not live:
                continue
            integral = not mux.is_float and type(_effective(mux.conversion)) in (
                IdentityConversion,
                LinearIntegerConversion,
            )
            if integral:
                emit(indent, "k = r")
            else:
                # cantools looks the branch up by int() of the scaled value; NaN selects nothing.
                emit(indent, "try:")
                emit(indent + 1, "k = int(r)")
                emit(indent, "except (ValueError, OverflowError):")
                emit(indent + 1, "k = None")
            if len(live) <= 6:
                keyword = "if"
                for mux_id, sub in sorted(live.items()):
                    emit(indent, f"{keyword} k == {mux_id}:")
                    _emit_tree(ctx, sub, indent + 1)
                    keyword = "elif"
                continue
            # Many pages: one function per branch, found by a dict lookup, not an elif chain.
            assert ctx.branches is not None and ctx.tables is not None and ctx.layout is not None
            table: dict[int, str] = {}
            for mux_id, sub in sorted(live.items()):
                ctx.branch_functions += 1
                fname = f"_branch{ctx.branch_functions}"
                saved, src.lines = src.lines, []
                emit(0, f"def {fname}(WL, WB, values, changed):")
                _emit_words(src, ctx.layout, 1, {"little": "WL", "big": "WB"})
                _emit_tree(ctx, sub, 1)
                emit(1, "return None")
                ctx.branches.append(src.lines)
                src.lines = saved
                table[mux_id] = fname
            tname = src.bind(None, "_table")
            ctx.tables.append((tname, table))
            emit(indent, f"f = {tname}.get(k)")
            emit(indent, "if f is not None:")
            emit(indent + 1, "f(WL, WB, values, changed)")


def compile_decoder(message: Message, indices: Mapping[str, int], bools: Collection[str] = (),
                    j1939: bool = False) -> Decoder:
    """Generate the decoder of ``message``.

    ``indices`` maps signal names to positions in the caller's value list; signals not in it are
    not decoded (multiplexers are still read to select their branch). Signals named in ``bools``
    are stored as :class:`bool`. With ``j1939``, unsigned parameters whose raw value is in J1939-71's
    error or not-available range store :data:`~canbridge.core.mapping.j1939.ERROR_INDICATOR` or
    :data:`~canbridge.core.mapping.j1939.NOT_AVAILABLE` instead of a number. Raises
    :class:`ValueError` for IEEE float signals of a length other than 16, 32 or 64 bits.
    """
    src = _Source()
    ctx = _DecodeContext(
        message, indices, frozenset(bools), src, {s.name: s for s in message.signals}, branches=[], tables=[],
        j1939=j1939,
    )
    length = message.length
    tree = message.signal_tree
    used = [s for s in _uses(tree, ctx) if fits(s, length)]
    ctx.layout = _layout(src, list({s.name: s for s in used}.values()), length)
    name = _IDENT.sub("_", message.name)
    src.namespace["_SHORT"] = f"message {message.name} needs {length} data bytes, got "

    body, src.lines = src.lines, []
    _emit_tree(ctx, tree, 1)
    tree_lines, src.lines = src.lines, body
    src.emit(0, f"def decode_{name}(data, values, changed):")
    src.emit(1, f"if len(data) < {length}:")
    src.emit(2, "raise ValueError(_SHORT + str(len(data)))")
    # unpack_from reads the first `length` bytes, so longer payloads need no copy.
    if ctx.branch_functions:
        for order, var in (("little", "WL"), ("big", "WB")):
            unpack = ctx.layout.structs.get(order)
            src.emit(1, f"{var} = {unpack}(data)" if unpack else f"{var} = ()")
        _emit_words(src, ctx.layout, 1, {"little": "WL", "big": "WB"})
    else:
        _emit_words(src, ctx.layout, 1, {o: f"{u}(data)" for o, u in ctx.layout.structs.items()})
    src.lines.extend(tree_lines)
    src.emit(1, "return None")
    for branch in ctx.branches or []:
        src.lines.extend(["", *branch])
    filename = f"<canbridge decoder {message.name} 0x{message.frame_id:x}>"
    fn = src.compile(filename, f"decode_{name}")
    for tname, table in ctx.tables or []:
        src.namespace[tname] = {mux_id: src.namespace[f] for mux_id, f in table.items()}
    return fn  # type: ignore[no-any-return]


# --- encoders ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalEncoder:
    """Writes one signal into a frame payload.

    ``to_raw(value)`` converts a physical value to the signal's bits as an unsigned int (two's
    complement for signed signals, IEEE bits for float signals) and raises :class:`ValueError`
    naming the signal when it does not fit; ``insert(payload, raw)`` replaces the signal's bits of
    a payload of at least ``message.length`` bytes and leaves every other bit as it was.
    """

    name: str
    to_raw: Callable[[Value], int]
    insert: Callable[[bytes, int], bytes]

    def encode(self, payload: bytes, value: Value) -> bytes:
        return self.insert(payload, self.to_raw(value))


def _raw_statements(src: _Source, conversion: BaseConversion, value: str) -> list[str]:
    """Statements computing ``raw`` from physical ``value`` like ``numeric_scaled_to_raw``."""
    conv = _effective(conversion)
    if type(conv) is IdentityConversion:
        return [f"raw = {value}" if conv.is_float else f"raw = round({value})"]
    if type(conv) is LinearIntegerConversion:
        scale, offset = src.const(conv.scale), src.const(conv.offset)
        return [
            f"raw = {value} - {offset}",
            f"q, rem = divmod(raw, {scale})",  # cantools avoids the division when it is exact
            f"raw = round(q if rem == 0 else raw / {scale})",
        ]
    if type(conv) is LinearConversion:
        stmt = f"raw = ({value} - {src.const(conv.offset)}) / {src.const(conv.scale)}"
        return [stmt] if conv.is_float else [stmt, "raw = round(raw)"]
    fn = src.bind(conv.numeric_scaled_to_raw, "_conv")
    return [f"raw = {fn}({value})"]


def _emit_to_bits(src: _Source, message: Message, signal: Signal, value: str, indent: int) -> None:
    """Emit statements that set ``bits`` from the physical value in ``value``, or raise."""
    what = f"signal {signal.name} of message {message.name}"
    emit = src.emit
    src.namespace.setdefault("_struct_error", struct.error)
    bad = src.bind(f"{what}: cannot encode ")
    emit(indent, "try:")
    for line in _raw_statements(src, signal.conversion, value):
        emit(indent + 1, line)
    if signal.is_float:
        fmt = _FLOAT_FORMATS.get(signal.length)
        if fmt is None:
            raise ValueError(f"{what}: IEEE float of {signal.length} bits is not supported")
        pack = src.bind(struct.Struct(">" + fmt).pack, "_pack")
        unpack = src.bind(struct.Struct(">" + _UINT_FORMATS[signal.length]).unpack, "_unpack")
        emit(indent + 1, f"bits = {unpack}({pack}(raw))[0]")
    emit(indent, "except (TypeError, ValueError, OverflowError, ZeroDivisionError, _struct_error) as e:")
    emit(indent + 1, f"raise ValueError({bad} + repr({value}) + ': ' + str(e)) from None")
    if signal.is_float:
        return
    low, high = _raw_range(signal)
    msg = src.bind(f"{what}: raw value {{}} is outside {low}..{high} ({signal.length} bits)")
    emit(indent, f"if not {low} <= raw <= {high}:")
    emit(indent + 1, f"raise ValueError({msg}.format(raw))")
    emit(indent, f"bits = raw & {(1 << signal.length) - 1:#x}" if signal.is_signed else "bits = raw")


def _raw_range(signal: Signal) -> tuple[int, int]:
    return raw_range(signal.length, signal.is_signed)


def raw_to_bits(message: Message, signal: Signal, raw: float) -> int:
    """A raw value (as cantools' ``raw_initial``) as the signal's bits; ValueError if it does not fit."""
    what = f"signal {signal.name} of message {message.name}"
    if signal.is_float:
        fmt = _FLOAT_FORMATS.get(signal.length)
        if fmt is None:
            raise ValueError(f"{what}: IEEE float of {signal.length} bits is not supported")
        try:
            bits: int = struct.unpack(">" + _UINT_FORMATS[signal.length], struct.pack(">" + fmt, raw))[0]
        except (OverflowError, struct.error) as e:
            raise ValueError(f"{what}: raw value {raw!r} does not fit: {e}") from None
        return bits
    value = round(raw)
    low, high = _raw_range(signal)
    if not low <= value <= high:
        raise ValueError(f"{what}: raw value {value} is outside {low}..{high} ({signal.length} bits)")
    return value & ((1 << signal.length) - 1)


def compile_encoder(message: Message, signal: Signal | str) -> SignalEncoder:
    """Generate the encoder of one signal of ``message``.

    A signal that does not fit in the message (possible only in a leniently loaded file) gets an
    encoder whose ``to_raw`` and ``insert`` raise :class:`ValueError` saying so, so the other
    signals of its message stay writable.
    """
    if isinstance(signal, str):
        signal = message.get_signal_by_name(signal)
    length = message.length
    if not fits(signal, length):
        return _refusing_encoder(
            signal.name, f"signal {signal.name} does not fit in message {message.name} ({length} bytes)"
        )
    field = bit_field(signal, length)
    fname = _IDENT.sub("_", signal.name)

    src = _Source()
    src.emit(0, f"def to_raw_{fname}(value):")
    _emit_to_bits(src, message, signal, "value", 1)
    src.emit(1, "return bits")

    clear = ((1 << (8 * length)) - 1) ^ (field.mask << field.shift)
    src.namespace["_SHORT"] = f"message {message.name} needs {length} data bytes, got "
    src.emit(0, "")
    src.emit(0, f"def insert_{fname}(payload, raw):")
    src.emit(1, f"if len(payload) != {length}:")
    src.emit(2, f"if len(payload) < {length}:")
    src.emit(3, "raise ValueError(_SHORT + str(len(payload)))")
    src.emit(2, f"return insert_{fname}(payload[:{length}], raw) + payload[{length}:]")
    src.emit(1, f"x = _from_bytes(payload, '{field.order}') & {clear:#x}")
    src.emit(1, f"x |= (raw & {field.mask:#x}) << {field.shift}")
    src.emit(1, f"return x.to_bytes({length}, '{field.order}')")

    to_raw = src.compile(f"<canbridge encoder {message.name}.{signal.name}>", f"to_raw_{fname}")
    return SignalEncoder(signal.name, to_raw, src.namespace[f"insert_{fname}"])


def _refusing_encoder(name: str, why: str) -> SignalEncoder:
    def to_raw(value: Value) -> int:
        raise ValueError(why)

    def insert(payload: bytes, raw: int) -> bytes:
        raise ValueError(why)

    return SignalEncoder(name, to_raw, insert)


def _initial_key(signal: Signal, ids: Sequence[int]) -> tuple[int, float]:
    """A multiplexer's initial branch and raw value: its initial value if that has a branch, else
    its lowest id."""
    raw: float = 0 if signal.raw_initial is None else signal.raw_initial
    scaled = signal.conversion.raw_to_scaled(raw, False)
    if isinstance(scaled, (int, float)) and math.isfinite(scaled) and int(scaled) in ids:
        return int(scaled), raw
    key = ids[0] if ids else 0
    return key, signal.conversion.numeric_scaled_to_raw(key)


def compile_message_encoder(message: Message) -> MessageEncoder:
    """Generate ``encode(values) -> bytes`` for a whole frame; ``initial_payload`` uses it with no values."""
    src = _Source()
    length = message.length
    signals = {s.name: s for s in message.signals}
    src.namespace["_MISSING"] = _MISSING

    def emit_tree(tree: Sequence[Any], indent: int) -> None:
        for node in tree:
            if not isinstance(node, dict):
                emit_signal(signals[node], indent, None)
                continue
            for mux_name, branches in node.items():
                mux = signals[mux_name]
                ids = sorted(branches)
                emit_signal(mux, indent, ids)
                keyword = "if"
                for mux_id in ids:
                    src.emit(indent, f"{keyword} k == {mux_id}:")
                    src.emit(indent + 1, "pass")
                    emit_tree(branches[mux_id], indent + 1)
                    keyword = "elif"
                msg = src.bind(
                    f"multiplexer {mux_name} of message {message.name}: {{!r}} is not one of its ids "
                    f"({', '.join(str(i) for i in ids)})"
                )
                src.emit(indent, "else:" if ids else "if True:")
                src.emit(indent + 1, f"raise ValueError({msg}.format(k))")

    def emit_signal(signal: Signal, indent: int, ids: list[int] | None) -> None:
        emit = src.emit
        inside = fits(signal, length)
        if ids is not None:
            key, initial_raw = _initial_key(signal, ids)
        else:
            key, initial_raw = 0, (0 if signal.raw_initial is None else signal.raw_initial)
        field = bit_field(signal, length) if inside else None
        acc = "lo" if field is not None and field.order == "little" else "hi"
        emit(indent, f"v = values.get({signal.name!r}, _MISSING)")
        emit(indent, "if v is _MISSING:")
        if field is not None:
            initial = raw_to_bits(message, signal, initial_raw) << field.shift
            if initial:
                emit(indent + 1, f"{acc} |= {initial:#x}")
        if ids is not None:
            emit(indent + 1, f"k = {key}")
        emit(indent + 1, "pass")
        emit(indent, "else:")
        if field is not None:
            _emit_to_bits(src, message, signal, "v", indent + 1)
            emit(indent + 1, f"{acc} |= bits << {field.shift}" if field.shift else f"{acc} |= bits")
        if ids is not None:
            # cantools selects the branch by int() of the physical multiplexer value
            emit(indent + 1, "try:")
            emit(indent + 2, "k = int(v)")
            emit(indent + 1, "except (TypeError, ValueError, OverflowError):")
            emit(indent + 2, "k = v")
        emit(indent + 1, "pass")

    name = _IDENT.sub("_", message.name)
    src.emit(0, f"def encode_{name}(values):")
    src.emit(1, "lo = 0")
    src.emit(1, "hi = 0")
    emit_tree(message.signal_tree, 1)
    orders = {bit_field(s, length).order for s in message.signals if fits(s, length)}
    if orders == {"little"}:
        src.emit(1, f"return lo.to_bytes({length}, 'little')")
    elif orders == {"big"}:
        src.emit(1, f"return hi.to_bytes({length}, 'big')")
    else:
        # Overlapping signals (lenient files) are OR-ed, as cantools does.
        src.emit(
            1, f"return (_from_bytes(lo.to_bytes({length}, 'little'), 'big') | hi).to_bytes({length}, 'big')"
        )
    return src.compile(f"<canbridge message encoder {message.name}>", f"encode_{name}")  # type: ignore[no-any-return]


_MISSING = object()
_ENCODERS: weakref.WeakKeyDictionary[Message, MessageEncoder] = weakref.WeakKeyDictionary()


def _message_encoder(message: Message) -> MessageEncoder:
    encoder = _ENCODERS.get(message)
    if encoder is None:
        encoder = _ENCODERS[message] = compile_message_encoder(message)
    return encoder


def initial_payload(message: Message) -> bytes:
    """The frame with every signal at its DBC initial value (GenSigStartValue), 0 where none.

    A multiplexer takes its initial value when that is one of its ids, else its lowest id, and
    only the signals of that branch are set.
    """
    return _message_encoder(message)({})
