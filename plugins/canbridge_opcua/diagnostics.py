"""J1939 trouble codes (DM1) in the address space: per bus, per source address heard, a DTC count, the
four lamps and the codes as parallel arrays, in nodes created when the source is first heard.

NodeIds are strings derived from the bus and the source address, never from the order of arrival, so a
SCADA tag stays valid across restarts (``<bus>._J1939.0x03.DM1.Spn``). The values refresh with the
bus diagnostics (``diagnostics_interval``); each source's values carry one status: Good while its DM1
comes, UncertainLastUsableValue when none came for ``dm1_stale_after_s``, BadNoCommunication (no
value) while the bus is down or bus-off. Nodes are bounded by the source addresses: at most 254
sources per bus, as the core keeps DM1 of at most that many.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from canbridge import Bridge, BusStatus, Dm1, Quality, dm1_quality, io_turn
from canbridge_opcua.bulk import BulkAdder
from canbridge_opcua.nodes import QUALITY_STATUS, _object, _variable, nodeid

FOLDER = "_J1939"
_LAMP_CODES = {"off": 0, "on": 1, "reserved": 2, "not_available": 3}
_LAMPS = (("Mil", "mil", "malfunction indicator lamp"), ("RedStop", "red_stop", "red stop lamp"),
          ("AmberWarning", "amber_warning", "amber warning lamp"), ("Protect", "protect", "protect lamp"))
_LAMP_TEXT = ": 0 off, 1 on, 2 reserved, 3 not available"
_B, _U16, _U32 = ua.VariantType.Byte, ua.VariantType.UInt16, ua.VariantType.UInt32

# (browse name, variant type, array, description) of the variables of one source's DM1
DM1_VARS: tuple[tuple[str, ua.VariantType, bool, str], ...] = (
    ("DtcCount", _U16, False, "active trouble codes"),
    *((name, _B, False, text + _LAMP_TEXT) for name, _, text in _LAMPS),
    ("Spn", _U32, True, "suspect parameter number of each active code (index i of every array: code i)"),
    ("Fmi", _B, True, "failure mode identifier of each code"),
    ("Occurrences", _B, True, "occurrence count of each code (127: not available)"),
    ("ConversionMethod", _B, True, "SPN conversion method bit of each code"),
    ("Messages", _U32, False, "DM1 messages received from this source"),
)

Notify = Callable[[Any, ua.DataValue], Awaitable[None]]


def dm1_values(d: Dm1) -> dict[str, Any]:
    """The variables' values of one DM1, by browse name."""
    out: dict[str, Any] = {"DtcCount": len(d.dtcs), "Messages": d.messages & 0xFFFF_FFFF}
    for name, attr, _ in _LAMPS:
        out[name] = _LAMP_CODES[getattr(d, attr)]
    out["Spn"] = [c.spn for c in d.dtcs]
    out["Fmi"] = [c.fmi for c in d.dtcs]
    out["Occurrences"] = [c.occurrences for c in d.dtcs]
    out["ConversionMethod"] = [c.conversion_method for c in d.dtcs]
    return out


def _dv(var: ua.Variant, code: ua.StatusCode, source: Any, server: Any) -> ua.DataValue:
    # timestamps are datetimes; asyncua annotates them with its DateTime class, hence Any
    return ua.DataValue(var, code, SourceTimestamp=source, ServerTimestamp=server)


def source_key(bus: str, source: int) -> str:
    """The string NodeId of a source's object: ``<bus>._J1939.0x<SA>``."""
    return f"{bus}.{FOLDER}.0x{source:02X}"


class _Source:
    __slots__ = ("attvals", "dm1", "quality")

    def __init__(self, attvals: dict[str, tuple[Any, ua.VariantType, bool]]) -> None:
        self.attvals = attvals
        self.dm1: Dm1 | None = None
        self.quality: Quality | None = None


class Dm1Nodes:
    """The DM1 nodes of every bus, created as sources are heard and refreshed from the bus status."""

    def __init__(self, bridge: Bridge, aspace: AddressSpace, ns: int, stale_after_s: float, notify: Notify) -> None:
        self.bridge = bridge
        self.aspace = aspace
        self._mutable: set[ua.NodeId] = set()
        self._adder = BulkAdder(aspace, self._mutable)  # asyncua's add_nodes: 3 s for 254 sources
        self.ns = ns
        self.stale_after_s = stale_after_s
        self.notify = notify
        self.sources: dict[tuple[str, int], _Source] = {}
        self._folders: dict[str, tuple[Any, Any]] = {}  # bus -> (Sources, SourceAddresses) value holders

    def _nid(self, s: str) -> ua.NodeId:
        return nodeid(s, self.ns)

    def _add(self, items: list[ua.AddNodesItem]) -> None:
        self._mutable.update(i.RequestedNewNodeId for i in items if i.NodeClass == ua.NodeClass.Variable)
        self._adder.add(items)

    def _folder(self, bus: str) -> tuple[Any, Any]:
        f = self._folders.get(bus)
        if f is None:
            fid = self._nid(f"{bus}.{FOLDER}")
            items = [_object(fid, FOLDER, self.ns, self._nid(bus), True, ObjectIds.Organizes,
                             f"J1939 diagnostics of bus {bus}: one object per source address heard")]
            for name, vt, rank, text in (
                ("Sources", _U16, ua.ValueRank.Scalar, "source addresses with a DM1 object below"),
                ("SourceAddresses", _B, ua.ValueRank.OneDimension,
                 "the source addresses with a DM1 object, ascending (grows as sources are heard)"),
            ):
                items.append(_variable(self._nid(f"{bus}.{FOLDER}.{name}"), name, self.ns, fid,
                                       ua.Variant(None, ua.VariantType.Null), nodeid(vt.value),
                                       ObjectIds.BaseDataVariableType, description=text, value_rank=rank))
            self._add(items)
            f = self._folders[bus] = tuple(  # type: ignore[assignment]
                self.aspace[self._nid(f"{bus}.{FOLDER}.{n}")].attributes[AttributeIds.Value]
                for n in ("Sources", "SourceAddresses"))
        assert f is not None
        return f

    def _create(self, bus: str, source: int) -> _Source:
        parent = self._nid(f"{bus}.{FOLDER}")
        key = source_key(bus, source)
        sid, did = self._nid(key), self._nid(f"{key}.DM1")
        items = [
            _object(sid, f"0x{source:02X}", self.ns, parent, False, ObjectIds.Organizes,
                    f"J1939 source address 0x{source:02X} ({source}) on bus {bus}"),
            _object(did, "DM1", self.ns, sid, False, ObjectIds.Organizes, "active diagnostic trouble codes (DM1)"),
        ]
        for name, vt, array, text in DM1_VARS:
            items.append(_variable(self._nid(f"{key}.DM1.{name}"), name, self.ns, did,
                                   ua.Variant(None, ua.VariantType.Null), nodeid(vt.value),
                                   ObjectIds.BaseDataVariableType, description=text,
                                   value_rank=ua.ValueRank.OneDimension if array else ua.ValueRank.Scalar))
        self._add(items)
        attvals = {name: (self.aspace[self._nid(f"{key}.DM1.{name}")].attributes[AttributeIds.Value], vt, array)
                   for name, vt, array, _ in DM1_VARS}
        src = self.sources[(bus, source)] = _Source(attvals)
        return src

    async def update(self, bus: str, status: BusStatus, now: datetime) -> None:
        """New sources get their nodes; a changed DM1 or quality is written (nothing else is)."""
        if not status.dm1:
            return
        now_ns = int(now.timestamp() * 1e9)
        sources, addresses = self._folder(bus)
        added = False
        for sa, dm1 in sorted(status.dm1.items()):
            src = self.sources.get((bus, sa))
            if src is None:
                src = self._create(bus, sa)
                added = True
                await io_turn()  # 254 new sources at once must not hold up client requests
            q = dm1_quality(dm1, status, now_ns, self.stale_after_s)
            if src.dm1 is dm1 and src.quality is q:
                continue
            src.dm1, src.quality = dm1, q
            code = QUALITY_STATUS[q]
            ts = datetime.fromtimestamp(dm1.timestamp_ns / 1e9, UTC)
            values = dm1_values(dm1)
            for name, (attval, vt, array) in src.attvals.items():
                # Part 4 7.7.1: no value with a Bad status
                var = ua.Variant(None, ua.VariantType.Null) if code.is_bad() else ua.Variant(
                    values[name], vt, is_array=array)
                await self.notify(attval, _dv(var, code, ts, now))
        if added:
            heard = sorted(sa for b, sa in self.sources if b == bus)
            good = QUALITY_STATUS[Quality.GOOD]
            await self.notify(sources, _dv(ua.Variant(len(heard), _U16), good, None, now))
            await self.notify(addresses, _dv(ua.Variant(heard, _B, is_array=True), good, None, now))
