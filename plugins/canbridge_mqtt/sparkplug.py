"""Sparkplug B payloads: datatypes, metric definitions from the mapping table, encoding and decoding.

Pure functions over the generated protobuf classes (sparkplug_b_pb2, from sparkplug_b.proto); the session
rules (seq, bdSeq, births) are in session.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from canbridge import Quality, SignalInfo
from canbridge_mqtt.sparkplug_b_pb2 import Payload

NAMESPACE = "spBv1.0"


class DataType(IntEnum):
    """Sparkplug B datatype codes (specification, "Datatypes")."""

    INT8 = 1
    INT16 = 2
    INT32 = 3
    INT64 = 4
    UINT8 = 5
    UINT16 = 6
    UINT32 = 7
    UINT64 = 8
    FLOAT = 9
    DOUBLE = 10
    BOOLEAN = 11
    STRING = 12
    DATETIME = 13
    TEXT = 14


_INT_RANGES = {
    DataType.INT8: (-(1 << 7), (1 << 7) - 1),
    DataType.INT16: (-(1 << 15), (1 << 15) - 1),
    DataType.INT32: (-(1 << 31), (1 << 31) - 1),
    DataType.INT64: (-(1 << 63), (1 << 63) - 1),
    DataType.UINT8: (0, (1 << 8) - 1),
    DataType.UINT16: (0, (1 << 16) - 1),
    DataType.UINT32: (0, (1 << 32) - 1),
    DataType.UINT64: (0, (1 << 64) - 1),
}
_INT_VALUE_TYPES = (DataType.INT8, DataType.INT16, DataType.INT32, DataType.UINT8, DataType.UINT16, DataType.UINT32)
_LONG_VALUE_TYPES = (DataType.INT64, DataType.UINT64, DataType.DATETIME)
_STRING_TYPES = (DataType.STRING, DataType.TEXT)


class SparkplugQuality(IntEnum):
    """Values of the ``Quality`` metric property."""

    BAD = 0
    GOOD = 192
    STALE = 500


def quality_code(q: Quality) -> SparkplugQuality:
    """The bridge's quality as Sparkplug's: waiting (nothing received yet) is BAD with a null value."""
    if q is Quality.GOOD:
        return SparkplugQuality.GOOD
    if q is Quality.STALE:
        return SparkplugQuality.STALE
    return SparkplugQuality.BAD


def datatype_for(info: SignalInfo, choices_as_text: bool = False) -> DataType:
    """The metric datatype of a signal: Boolean for one-bit flags, the narrowest integer type that holds the
    signal's physical range, Float/Double for scaled or IEEE values, String for choice text when asked."""
    if choices_as_text and info.choices:
        return DataType.STRING
    if info.value_type is bool:
        return DataType.BOOLEAN
    if info.value_type is float:
        return DataType.FLOAT if info.is_float and info.bit_length == 32 else DataType.DOUBLE
    lo, hi = info.physical_range
    if float(info.scale).is_integer() and float(info.offset).is_integer():  # exact, 64-bit safe
        ends = [r * int(info.scale) + int(info.offset) for r in info.raw_range]
        lo, hi = min(ends), max(ends)
    order = (DataType.UINT8, DataType.UINT16, DataType.UINT32, DataType.UINT64) if lo >= 0 else (
        DataType.INT8, DataType.INT16, DataType.INT32, DataType.INT64)
    for dt in order:
        a, b = _INT_RANGES[dt]
        if a <= lo and hi <= b:
            return dt
    return DataType.DOUBLE  # wider than 64 bits cannot happen for CAN signals; keep the value anyway


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric of a device: the signal it shows, its Sparkplug name, alias and datatype."""

    signal: str  # the bridge's signal name
    name: str  # "<message>/<signal>"
    alias: int
    datatype: DataType
    info: SignalInfo


def metric_defs(signals: Iterable[SignalInfo], first_alias: int, choices_as_text: bool) -> list[MetricDef]:
    """Metric definitions with aliases from ``first_alias`` on, in table order (stable for one mapping)."""
    return [
        MetricDef(s.name, f"{s.message}/{s.signal}", first_alias + i, datatype_for(s, choices_as_text), s)
        for i, s in enumerate(signals)
    ]


def set_value(metric: Payload.Metric, datatype: DataType, value: object) -> None:
    """Put ``value`` into the oneof field the datatype uses; None (or NaN for an integer) is ``is_null``."""
    if value is None:
        metric.is_null = True
        return
    if datatype is DataType.BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype in _STRING_TYPES:
        metric.string_value = str(value)
    elif datatype is DataType.FLOAT:
        metric.float_value = float(value)  # type: ignore[arg-type]
    elif datatype is DataType.DOUBLE:
        metric.double_value = float(value)  # type: ignore[arg-type]
    else:
        if isinstance(value, float) and not math.isfinite(value):
            metric.is_null = True
            return
        n = int(value)  # type: ignore[call-overload]
        # signed integers travel as their two's complement in the unsigned field (specification 3.0)
        if datatype in _INT_VALUE_TYPES:
            metric.int_value = n & 0xFFFFFFFF
        else:
            metric.long_value = n & 0xFFFFFFFFFFFFFFFF


def get_value(metric: Payload.Metric, datatype: int | None = None) -> object:
    """The value a received metric carries, signed integers restored; None for ``is_null`` or no value."""
    dt = datatype if datatype is not None else metric.datatype
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return None
    raw = getattr(metric, field)
    if field in ("int_value", "long_value") and dt in _INT_RANGES:
        lo, _ = _INT_RANGES[DataType(dt)]
        bits = {DataType.INT8: 8, DataType.INT16: 16, DataType.INT32: 32, DataType.INT64: 64}.get(DataType(dt))
        if lo < 0 and bits is not None:
            raw &= (1 << bits) - 1
            if raw >= 1 << (bits - 1):
                raw -= 1 << bits
        return int(raw)
    return raw


def add_property(props: Payload.PropertySet, key: str, datatype: DataType, value: object) -> None:
    """Append one property (``Quality``, ``engUnit``, ``engLow``, ...) to a metric's property set."""
    props.keys.append(key)
    pv = props.values.add()
    pv.type = int(datatype)
    if datatype is DataType.STRING:
        pv.string_value = str(value)
    elif datatype is DataType.DOUBLE:
        pv.double_value = float(value)  # type: ignore[arg-type]
    elif datatype is DataType.BOOLEAN:
        pv.boolean_value = bool(value)
    else:
        pv.int_value = int(value) & 0xFFFFFFFF  # type: ignore[call-overload]


def properties(metric: Payload.Metric) -> dict[str, object]:
    """A received metric's properties as ``{key: value}``."""
    out: dict[str, object] = {}
    for key, pv in zip(metric.properties.keys, metric.properties.values, strict=False):
        field = pv.WhichOneof("value")
        out[key] = None if pv.is_null or field is None else getattr(pv, field)
    return out


def birth_metric(payload: Payload, d: MetricDef, value: object, quality: Quality, ts_ms: int | None) -> None:
    """A metric as a birth certificate carries it: name, alias, datatype, value, quality, unit and limits."""
    m = payload.metrics.add()
    m.name = d.name
    m.alias = d.alias
    m.datatype = int(d.datatype)
    if ts_ms is not None:
        m.timestamp = ts_ms
    set_value(m, d.datatype, value)
    add_property(m.properties, "Quality", DataType.INT32, quality_code(quality))
    info = d.info
    if info.unit:
        add_property(m.properties, "engUnit", DataType.STRING, info.unit)
    if d.datatype not in (DataType.BOOLEAN, DataType.STRING):
        add_property(m.properties, "engLow", DataType.DOUBLE, info.minimum)
        add_property(m.properties, "engHigh", DataType.DOUBLE, info.maximum)
    add_property(m.properties, "readOnly", DataType.BOOLEAN, not info.writable)
    if info.comment:
        add_property(m.properties, "Documentation", DataType.STRING, info.comment)


def data_metric(payload: Payload, d: MetricDef, value: object, quality: Quality | None, ts_ms: int | None,
                historical: bool = False) -> None:
    """A metric as DATA carries it: by alias only; the quality property when it is given (changed)."""
    m = payload.metrics.add()
    m.alias = d.alias
    m.datatype = int(d.datatype)  # optional in DATA, but decoders that do not keep the birth need it
    if ts_ms is not None:
        m.timestamp = ts_ms
    if historical:
        m.is_historical = True
    set_value(m, d.datatype, value)
    if quality is not None:
        add_property(m.properties, "Quality", DataType.INT32, quality_code(quality))


def varint(n: int) -> bytes:
    """``n`` (non-negative) as a protobuf base-128 varint."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Protobuf field keys (field number << 3 | wire type) of what the queued-metric path writes by hand.
_METRICS_KEY = b"\x12"  # Payload.metrics = 2, length-delimited
_ALIAS_KEY = b"\x10"  # Metric.alias = 2, varint
_DATATYPE_KEY = b"\x20"  # Metric.datatype = 4, varint


def datatype_field(datatype: DataType) -> bytes:
    """The encoded ``datatype`` field a queued metric starts with (checked again when it is sent)."""
    return _DATATYPE_KEY + varint(int(datatype))


def alias_field(alias: int) -> bytes:
    return _ALIAS_KEY + varint(alias)


def queued_metric(datatype: DataType, value: object, quality: Quality, ts_ms: int | None) -> bytes:
    """A historical DATA metric, encoded once when it is queued: every field but the alias (which belongs
    to the mapping the bridge runs when it is sent), starting with ``datatype_field(datatype)``."""
    m = Payload.Metric()
    if ts_ms is not None:
        m.timestamp = ts_ms
    m.is_historical = True
    set_value(m, datatype, value)
    return datatype_field(datatype) + bytes(m.SerializeToString()) + _quality_field(quality)


_QUALITY_FIELDS: dict[Quality, bytes] = {}


def _quality_field(quality: Quality) -> bytes:
    """The encoded ``properties`` field holding only ``Quality`` (a handful of constants, built once)."""
    field = _QUALITY_FIELDS.get(quality)
    if field is None:
        m = Payload.Metric()
        add_property(m.properties, "Quality", DataType.INT32, quality_code(quality))
        field = _QUALITY_FIELDS[quality] = bytes(m.SerializeToString())
    return field


def frame_metric(body: bytes) -> bytes:
    """One element of the payload's repeated ``metrics`` field: key, length, the encoded ``Metric``."""
    return _METRICS_KEY + varint(len(body)) + body


def framed_payload(timestamp: int, seq: int, framed: Iterable[bytes]) -> bytes:
    """A payload from ``frame_metric`` records (or runs of them, concatenated)."""
    return bytes(Payload(timestamp=timestamp, seq=seq).SerializeToString()) + b"".join(framed)


def unframe_metrics(blob: bytes) -> list[bytes]:
    """The ``Metric`` bodies of concatenated ``frame_metric`` records, each without its leading ``alias``
    field (as ``queued_metric`` made them); raises ValueError for bytes that are not such records."""
    out: list[bytes] = []
    i, end = 0, len(blob)
    while i < end:
        if blob[i] != _METRICS_KEY[0]:
            raise ValueError(f"not a metrics record at byte {i}")
        size, i = _read_varint(blob, i + 1)
        body = blob[i:i + size]
        if len(body) != size:
            raise ValueError("a metrics record runs past the end")
        i += size
        if body[:1] == _ALIAS_KEY:
            _, start = _read_varint(body, 1)
            body = body[start:]
        out.append(body)
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("a truncated varint")
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def node_metric(payload: Payload, name: str, datatype: DataType, value: object, alias: int | None,
                ts_ms: int | None, with_name: bool = True) -> None:
    """A node-level metric (``bdSeq``, ``Node Control/Rebirth``, counters)."""
    m = payload.metrics.add()
    if with_name:
        m.name = name
    if alias is not None:
        m.alias = alias
    m.datatype = int(datatype)
    if ts_ms is not None:
        m.timestamp = ts_ms
    set_value(m, datatype, value)


def encode(payload: Payload) -> bytes:
    return bytes(payload.SerializeToString())


def decode(data: bytes) -> Payload:
    """A received payload; raises ValueError for bytes that are not a Sparkplug B payload."""
    p = Payload()
    try:
        p.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError (or a RuntimeWarning-free error of the C backend)
        raise ValueError(f"not a Sparkplug B payload: {e}") from e
    return p


def topic(group: str, kind: str, node: str, device: str | None = None) -> str:
    """``spBv1.0/<group>/<kind>/<node>[/<device>]``."""
    return f"{NAMESPACE}/{group}/{kind}/{node}" + (f"/{device}" if device is not None else "")

