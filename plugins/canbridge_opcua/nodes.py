"""The address space generated from the mapping table: node ids, data types, AddNodesItems.

``Objects/CANBridge/<bus>/<message>/<signal>``, string node ids ``ns=<urn:canbridge>;s=<bus>.<message>.<signal>``.
Nodes are built as one list of AddNodesItems and added in one call: through the Node API a
10,000-signal table would take many seconds of single-node round trips.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from canbridge import BusInfo, MessageInfo, Quality, SignalInfo
from canbridge_opcua.units import UNECE_NAMESPACE, unece_unit


def status(code: int) -> ua.StatusCode:
    """A StatusCode from one of ``StatusCodes``' ints (asyncua types them as its UInt32 class)."""
    return ua.StatusCode(cast(ua.UInt32, code))


def nodeid(identifier: int | str, namespace: int = 0) -> ua.NodeId:
    """A numeric or string NodeId (asyncua types the arguments as its Int32/String/UInt16 classes)."""
    return ua.NodeId(cast(Any, identifier), cast(Any, namespace))


ROOT_NAME = "CANBridge"
DIAG_NAME = "_Diagnostics"

QUALITY_STATUS: dict[Quality, ua.StatusCode] = {
    Quality.GOOD: status(StatusCodes.Good),
    Quality.STALE: status(StatusCodes.UncertainLastUsableValue),
    Quality.BAD: status(StatusCodes.BadNoCommunication),
    Quality.WAITING: status(StatusCodes.BadWaitingForInitialData),
}

_NULL = ua.Variant(None, ua.VariantType.Null)

# (variant type, low, high), smallest first
_UNSIGNED = [
    (ua.VariantType.Byte, 0, 2**8 - 1),
    (ua.VariantType.UInt16, 0, 2**16 - 1),
    (ua.VariantType.UInt32, 0, 2**32 - 1),
    (ua.VariantType.UInt64, 0, 2**64 - 1),
]
_SIGNED = [
    (ua.VariantType.SByte, -(2**7), 2**7 - 1),
    (ua.VariantType.Int16, -(2**15), 2**15 - 1),
    (ua.VariantType.Int32, -(2**31), 2**31 - 1),
    (ua.VariantType.Int64, -(2**63), 2**63 - 1),
]


def _raw_range(info: SignalInfo) -> tuple[int, int]:
    bits = max(1, info.bit_length)
    if info.signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def variant_type(info: SignalInfo) -> ua.VariantType:
    """The OPC UA type of a signal: Boolean, the smallest integer type that holds every value the
    raw bits can carry after scaling (so ``bit_length``/``signed`` for unscaled signals), or Double."""
    if info.value_type is bool:
        return ua.VariantType.Boolean
    if info.value_type is not int:
        return ua.VariantType.Double
    # The raw bits bound every value the signal can take (DBC limits may be wider than the bits);
    # integer arithmetic, so a 64-bit signal does not round up past Int64 through a float.
    rlo, rhi = _raw_range(info)
    scale = int(info.scale) if float(info.scale).is_integer() else info.scale
    offset = int(info.offset) if float(info.offset).is_integer() else info.offset
    ends = [rlo * scale + offset, rhi * scale + offset]
    lo, hi = math.floor(min(ends)), math.ceil(max(ends))
    for vt, tlo, thi in _UNSIGNED if lo >= 0 else _SIGNED:
        if tlo <= lo and hi <= thi:
            return vt
    return ua.VariantType.Double  # wider than 64 bits: cannot happen with CAN, but never overflow


def _is_unsigned(vt: ua.VariantType) -> bool:
    return vt in (ua.VariantType.Byte, ua.VariantType.UInt16, ua.VariantType.UInt32, ua.VariantType.UInt64)


@dataclass(slots=True)
class SignalNode:
    """What the update and write paths need about one signal's variable, looked up once."""

    info: SignalInfo
    nodeid: ua.NodeId
    vtype: ua.VariantType
    choice_text_nodeid: ua.NodeId | None = None  # ValueAsText of a MultiStateValueDiscrete variable
    attval: Any = None  # the Value AttributeValue inside asyncua's address space
    text_attval: Any = None


@dataclass
class Plan:
    """The AddNodesItems of the whole tree and what each signal's variable is."""

    items: list[ua.AddNodesItem] = field(default_factory=list)
    signals: dict[str, SignalNode] = field(default_factory=dict)
    diag: dict[tuple[str, str], tuple[ua.NodeId, ua.VariantType]] = field(default_factory=dict)
    root: ua.NodeId | None = None

    # the variables whose Value the service writes (every other value is fixed once built), filled
    # as the items are generated: a node is in it before its item is handed out
    mutable: set[ua.NodeId] = field(default_factory=set)


def _qn(name: str, idx: int) -> ua.QualifiedName:
    return ua.QualifiedName(name, idx)


def _object(
    node_id: ua.NodeId, name: str, idx: int, parent: ua.NodeId, folder: bool, ref: int, description: str | None
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = _qn(name, idx)
    item.ParentNodeId = parent
    item.ReferenceTypeId = nodeid(ref)
    item.NodeClass = ua.NodeClass.Object
    item.TypeDefinition = nodeid(ObjectIds.FolderType if folder else ObjectIds.BaseObjectType)
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description or name)
    attrs.EventNotifier = 0
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _variable(
    node_id: ua.NodeId,
    name: str,
    idx: int,
    parent: ua.NodeId,
    value: ua.Variant,
    datatype: ua.NodeId,
    typedef: int,
    *,
    is_property: bool = False,
    writable: bool = False,
    description: str | None = None,
    value_rank: int = ua.ValueRank.Scalar,
    status: ua.StatusCode | None = None,
    sampling_ms: float | None = None,
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = node_id
    item.BrowseName = _qn(name, 0 if is_property else idx)
    item.ParentNodeId = parent
    item.ReferenceTypeId = nodeid(ObjectIds.HasProperty if is_property else ObjectIds.HasComponent)
    item.NodeClass = ua.NodeClass.Variable
    item.TypeDefinition = nodeid(typedef)
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description or name)
    attrs.DataType = datatype
    attrs.Value = value
    attrs.ValueRank = value_rank
    if value_rank == ua.ValueRank.OneDimension:
        attrs.ArrayDimensions = [0]
    attrs.WriteMask = 0
    attrs.UserWriteMask = 0
    attrs.Historizing = False
    level = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
    attrs.AccessLevel = level
    attrs.UserAccessLevel = level
    if sampling_ms is not None:
        attrs.MinimumSamplingInterval = sampling_ms
    item.NodeAttributes = attrs
    return item


def _eu_information(unit: str) -> ua.EUInformation:
    eu = ua.EUInformation()
    known = unece_unit(unit)
    if known is not None:
        eu.NamespaceUri = UNECE_NAMESPACE
        eu.UnitId = known.unit_id
        eu.DisplayName = ua.LocalizedText(known.display, "en")
        eu.Description = ua.LocalizedText(known.description, "en")
    else:  # Part 8: UnitId -1 when the unit has no code; the DBC text still names it
        eu.NamespaceUri = ""
        eu.UnitId = -1
        eu.DisplayName = ua.LocalizedText(unit, "en")
        eu.Description = ua.LocalizedText(unit, "en")
    return eu


DIAG_BUS_VARS: list[tuple[str, ua.VariantType, str]] = [
    ("State", ua.VariantType.String, "bus state: active, warning, passive, bus_off, down, stopped, starting"),
    ("StateCode", ua.VariantType.UInt32, "bus state as a number: 0 active ... 6 starting"),
    ("RxFrames", ua.VariantType.UInt64, "frames received"),
    ("TxFrames", ua.VariantType.UInt64, "frames sent"),
    ("ErrorFrames", ua.VariantType.UInt64, "error frames received"),
    ("DecodeErrors", ua.VariantType.UInt64, "frames that could not be decoded"),
    ("DroppedFrames", ua.VariantType.UInt64, "frames the kernel dropped"),
    ("RxErrorCounter", ua.VariantType.UInt32, "controller receive error counter (REC)"),
    ("TxErrorCounter", ua.VariantType.UInt32, "controller transmit error counter (TEC)"),
    ("BusOffCount", ua.VariantType.UInt32, "times the controller went bus-off"),
    ("Restarts", ua.VariantType.UInt32, "controller restarts after bus-off"),
    ("Reconnects", ua.VariantType.UInt32, "times the bridge reopened the interface"),
    ("BusLoad", ua.VariantType.Double, "percent of the bitrate used over the last second"),
    ("LastError", ua.VariantType.String, "the last error the bus reported"),
]
# Bridge-wide alarm points, in CANBridge/_Diagnostics (per-bus ones are in CANBridge/<bus>/_Diagnostics).
DIAG_BRIDGE_VARS: list[tuple[str, ua.VariantType, str]] = [
    ("AuditAvailable", ua.VariantType.Boolean,
     "false while the audit log cannot be written: every write and raw frame is then refused"),
    ("AuditError", ua.VariantType.String, "why the last audit write failed; empty while the log is available"),
    ("AuditFailures", ua.VariantType.UInt64, "audit writes that failed since start"),
]


def bridge_diag_key(name: str) -> tuple[str, str]:
    """The Plan.diag key of a bridge-wide diagnostics variable (no bus is named '')."""
    return ("", name)


DIAG_MSG_VARS: list[tuple[str, ua.VariantType, str]] = [
    ("Age", ua.VariantType.Double, "seconds since the last frame"),
    ("Frames", ua.VariantType.UInt64, "frames received"),
    ("Quality", ua.VariantType.String, "good, stale, bad or waiting"),
]


def build_plan(
    idx: int,
    buses: dict[str, BusInfo],
    messages: dict[str, MessageInfo],
    signals: dict[str, SignalInfo],
    sampling_ms: float,
) -> Plan:
    """The whole plan with every item in a list (what tests compare; the service streams them)."""
    plan = Plan()
    plan.items = list(generate(plan, idx, buses, messages, signals, sampling_ms))
    return plan


def generate(
    plan: Plan,
    idx: int,
    buses: dict[str, BusInfo],
    messages: dict[str, MessageInfo],
    signals: dict[str, SignalInfo],
    sampling_ms: float,
) -> Iterator[ua.AddNodesItem]:
    """The AddNodesItems of the tree, parents first, filling ``plan`` (signals, diagnostics, mutable)
    as it goes: added while generated, the items of 10,000 signals never all exist at once."""

    def nid(s: str) -> ua.NodeId:
        return nodeid(s, idx)

    objects = nodeid(ObjectIds.ObjectsFolder)
    root = nid(ROOT_NAME)
    plan.root = root
    yield _object(root, ROOT_NAME, idx, objects, True, ObjectIds.Organizes, "canbridge: CAN signals")
    waiting = QUALITY_STATUS[Quality.WAITING]
    bdiag = nid(DIAG_NAME)
    yield _object(bdiag, DIAG_NAME, idx, root, True, ObjectIds.Organizes, "health of the bridge")
    for name, vt, text in DIAG_BRIDGE_VARS:
        vid = nid(f"{DIAG_NAME}.{name}")
        plan.mutable.add(vid)
        yield (
            _variable(vid, name, idx, bdiag, _NULL, nodeid(vt.value), ObjectIds.BaseDataVariableType, description=text)
        )
        plan.diag[bridge_diag_key(name)] = (vid, vt)

    bus_names = list(buses) or sorted({s.bus for s in signals.values()})
    for bus in bus_names:
        bus_id = nid(bus)
        b = buses.get(bus)
        desc = f"CAN bus {bus} ({b.interface} {b.channel})" if b else f"CAN bus {bus}"
        yield _object(bus_id, bus, idx, root, True, ObjectIds.Organizes, desc)
        diag_id = nid(f"{bus}.{DIAG_NAME}")
        yield _object(diag_id, DIAG_NAME, idx, bus_id, True, ObjectIds.Organizes, f"health of bus {bus}")
        for name, vt, text in DIAG_BUS_VARS:
            vid = nid(f"{bus}.{DIAG_NAME}.{name}")
            plan.mutable.add(vid)
            yield (
                _variable(
                    vid,
                    name,
                    idx,
                    diag_id,
                    _NULL,
                    nodeid(vt.value),
                    ObjectIds.BaseDataVariableType,
                    description=text,
                )
            )
            plan.diag[(bus, name)] = (vid, vt)
        msgs_id = nid(f"{bus}.{DIAG_NAME}.Messages")
        yield _object(msgs_id, "Messages", idx, diag_id, True, ObjectIds.Organizes, "per-message reception")
        for mname, m in messages.items():
            if m.bus != bus:
                continue
            mid = nid(f"{bus}.{DIAG_NAME}.Messages.{m.message}")
            yield _object(mid, m.message, idx, msgs_id, False, ObjectIds.Organizes, m.comment)
            for name, vt, text in DIAG_MSG_VARS:
                vid = nid(f"{bus}.{DIAG_NAME}.Messages.{m.message}.{name}")
                plan.mutable.add(vid)
                yield (
                    _variable(
                        vid,
                        name,
                        idx,
                        mid,
                        _NULL,
                        nodeid(vt.value),
                        ObjectIds.BaseDataVariableType,
                        description=text,
                    )
                )
                plan.diag[(mname, name)] = (vid, vt)

    seen_msgs: set[str] = set()
    for info in signals.values():
        mkey = f"{info.bus}.{info.message}"
        if mkey not in seen_msgs:
            seen_msgs.add(mkey)
            minfo = messages.get(mkey)
            fid = info.frame_id
            desc = (minfo.comment if minfo and minfo.comment else None) or f"CAN frame 0x{fid:X}"
            yield _object(nid(mkey), info.message, idx, nid(info.bus), False, ObjectIds.Organizes, desc)
        yield from _signal_items(plan, info, idx, nid(mkey), waiting, sampling_ms)


def _signal_items(
    plan: Plan, info: SignalInfo, idx: int, parent: ua.NodeId, waiting: ua.StatusCode, sampling_ms: float
) -> list[ua.AddNodesItem]:
    vt = variant_type(info)
    sid = nodeid(info.name, idx)
    node = SignalNode(info, sid, vt)
    plan.signals[info.name] = node
    plan.mutable.add(sid)
    out: list[ua.AddNodesItem] = []
    choices = dict(info.choices) if info.choices else None
    datatype = nodeid(vt.value)
    desc = info.comment or info.name

    def prop(name: str, value: ua.Variant, dtype: int, rank: int = ua.ValueRank.Scalar) -> ua.AddNodesItem:
        return _variable(
            nodeid(f"{info.name}.{name}", idx),
            name,
            idx,
            sid,
            value,
            nodeid(dtype),
            ObjectIds.PropertyType,
            is_property=True,
            value_rank=rank,
        )

    if choices and vt == ua.VariantType.Boolean:
        typedef = ObjectIds.TwoStateDiscreteType
        props = [
            prop("TrueState", ua.Variant(ua.LocalizedText(choices.get(1, "true"))), ObjectIds.LocalizedText),
            prop("FalseState", ua.Variant(ua.LocalizedText(choices.get(0, "false"))), ObjectIds.LocalizedText),
        ]
    elif choices and _is_unsigned(vt) and sorted(choices) == list(range(len(choices))):
        # contiguous 0..n-1: the simple MultiStateDiscrete with EnumStrings indexed by value
        typedef = ObjectIds.MultiStateDiscreteType
        texts = [ua.LocalizedText(choices[i]) for i in range(len(choices))]
        props = [
            prop(
                "EnumStrings",
                ua.Variant(texts, ua.VariantType.LocalizedText),
                ObjectIds.LocalizedText,
                ua.ValueRank.OneDimension,
            )
        ]
    elif choices:
        typedef = ObjectIds.MultiStateValueDiscreteType
        evs = []
        for k, text in sorted(choices.items()):
            ev = ua.EnumValueType()
            ev.Value = int(k)
            ev.DisplayName = ua.LocalizedText(text)
            ev.Description = ua.LocalizedText(text)
            evs.append(ev)
        node.choice_text_nodeid = nodeid(f"{info.name}.ValueAsText", idx)
        plan.mutable.add(node.choice_text_nodeid)
        props = [
            prop(
                "EnumValues",
                ua.Variant(evs, ua.VariantType.ExtensionObject),
                ObjectIds.EnumValueType,
                ua.ValueRank.OneDimension,
            ),
            prop(
                "ValueAsText",
                ua.Variant(ua.LocalizedText(""), ua.VariantType.LocalizedText),
                ObjectIds.LocalizedText,
            ),
        ]
    elif vt == ua.VariantType.Boolean:
        typedef = ObjectIds.BaseDataVariableType
        props = []
    else:
        typedef = ObjectIds.AnalogItemType
        rng = ua.Range()
        rng.Low = float(info.minimum)
        rng.High = float(info.maximum)
        props = [prop("EURange", ua.Variant(rng, ua.VariantType.ExtensionObject), ObjectIds.Range)]
        if info.unit and info.unit.strip():
            props.append(
                prop(
                    "EngineeringUnits",
                    ua.Variant(_eu_information(info.unit), ua.VariantType.ExtensionObject),
                    ObjectIds.EUInformation,
                )
            )
    out.append(
        _variable(
            sid,
            info.signal,
            idx,
            parent,
            _NULL,
            datatype,
            typedef,
            writable=info.writable,
            description=desc,
            sampling_ms=sampling_ms,
        )
    )
    out.extend(props)
    return out
