"""CANopen nodes from their description file (EDS or DCF): each transmit PDO becomes a cantools
``Message`` the mapping table compiles like a DBC message, so TPDOs are decoded on the receive path by
the generated decoders (no per-frame library call).

The ``canopen`` package parses the file (INI dialect, ``$NODEID`` arithmetic, data types, limits); the
PDO layout (communication parameter 0x1800+n sub 1 COB-ID, mapping parameter 0x1A00+n) is read here
from its object dictionary model. Signal names (docs/canopen.md, "Names"): ``<bus>.<node>.<object>``
for a variable, ``<bus>.<node>.<object>.<subobject>`` for a sub-index of a record or array, each part
the ParameterName with every run of characters other than letters and digits replaced by ``_``.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion

from canbridge._errors import MappingError
from canbridge.config import CanopenNodeConfig, Config, MappingConfig, TransmitConfig

TPDO_COMM = 0x1800
TPDO_MAP = 0x1A00
RPDO_COMM = 0x1400
RPDO_MAP = 0x1600
PDO_COUNT = 512  # 0x1400..0x15FF, 0x1800..0x19FF
PRODUCER_HEARTBEAT = 0x1017
COB_INVALID = 1 << 31  # the PDO does not exist / is not valid
COB_EXTENDED = 1 << 29
HEARTBEAT_BASE = 0x700
EMCY_BASE = 0x080
_EMCY_FIELDS = ("error_code", "error_register", "manufacturer")
NMT_STATE = "NMT_state"
BOOT_UP = 0
NMT_STATES = {0: "boot_up", 4: "stopped", 5: "operational", 127: "pre_operational"}
NMT_COMMAND = "NMT_command"
# CiA 301 NMT command specifiers (frame 0x000: command, node id)
NMT_COMMANDS = {1: "start", 2: "stop", 128: "pre_operational", 129: "reset_node", 130: "reset_communication"}

# CiA 301 data types the PDO decoder can carry: code -> (bits, signed, float)
_NUMERIC: dict[int, tuple[int, bool, bool]] = {
    0x01: (1, False, False),  # BOOLEAN
    0x02: (8, True, False), 0x03: (16, True, False), 0x10: (24, True, False), 0x04: (32, True, False),
    0x12: (40, True, False), 0x13: (48, True, False), 0x14: (56, True, False), 0x15: (64, True, False),
    0x05: (8, False, False), 0x06: (16, False, False), 0x16: (24, False, False), 0x07: (32, False, False),
    0x18: (40, False, False), 0x19: (48, False, False), 0x1A: (56, False, False), 0x1B: (64, False, False),
    0x08: (32, True, True), 0x11: (64, True, True),  # REAL32, REAL64
}
_DUMMY = range(0x0001, 0x0008)  # dummy mapping entries (data type indices): gaps in the PDO
SDO_REQUEST = 0x600  # client -> server COB-ID base: the "frame id" shown for an object served by SDO
WRITABLE_ACCESS = ("rw", "wo", "rww", "rwr")
READABLE_ACCESS = ("ro", "rw", "rww", "rwr", "const")
# CiA 301's restricted CAN-IDs (7.3.5) plus SYNC and the default EMCY range: no PDO may use them
_RESTRICTED: tuple[tuple[int, int, str], ...] = (
    (0x000, 0x000, "NMT"), (0x001, 0x07F, "reserved"), (0x080, 0x080, "SYNC"), (0x081, 0x0FF, "EMCY"),
    (0x101, 0x180, "reserved"), (0x581, 0x5FF, "SDO server to client"), (0x601, 0x67F, "SDO client to server"),
    (0x6E0, 0x6FF, "reserved"), (0x701, 0x77F, "heartbeat / boot-up"), (0x780, 0x7FF, "reserved (LSS)"),
)


def restricted_use(cob_id: int) -> str | None:
    """What CiA 301 reserves a standard CAN-ID for, when a PDO may not use it (None: free for PDOs)."""
    return next((what for lo, hi, what in _RESTRICTED if lo <= cob_id <= hi), None)


def reserved_ids(nodes: Sequence[CanopenNodeConfig]) -> dict[int, str]:
    """The standard ids a bus with CANopen nodes keeps for them beyond their mapped messages (heartbeat and
    EMCY are mapped messages already): NMT, SYNC and each node's two SDO channels."""
    if not nodes:
        return {}
    out = {0x000: "CANopen NMT id", 0x080: "CANopen SYNC id"}
    for n in nodes:
        out[0x580 + n.id] = f"SDO answer id of CANopen node {n.name}"
        out[0x600 + n.id] = f"SDO request id of CANopen node {n.name}"
    return out


class NodeFileError(MappingError):
    """Every problem found in one node's file (each a MappingError), so that ``check`` lists them all."""

    def __init__(self, errors: list[MappingError]) -> None:
        first = errors[0]
        super().__init__(first.detail, first.file, first.line)
        self.errors = errors


def part_name(text: str) -> str:
    """One part of a CANopen signal name: the ParameterName with non-alphanumeric runs as ``_``."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    return name or "unnamed"


@dataclass(frozen=True)
class CanopenObject:
    """Where a TPDO-mapped signal comes from in the node's dictionary."""

    index: int
    subindex: int
    access: str
    data_type: int
    pdo: str = ""  # TPDO<n> or RPDO<n>


@dataclass(frozen=True)
class SdoObject:
    """An object in no TPDO, read by SDO upload and (when writable) written by SDO download."""

    node_id: int
    node: str
    index: int
    subindex: int
    access: str
    size: int  # bytes on the wire
    writable: bool

    @property
    def readable(self) -> bool:
        return self.access in READABLE_ACCESS

    def where(self) -> str:
        return f"0x{self.index:04X}sub{self.subindex}"


@dataclass(frozen=True)
class NodeDescription:
    """What the mapping table and the heartbeat consumer need from one node's file."""

    messages: list[Message]
    objects: dict[str, CanopenObject]  # cantools signal name -> object
    heartbeat_ms: int | None  # producer heartbeat time (0x1017); None or 0: none
    sdo: dict[str, SdoObject] = field(default_factory=dict)  # message name (<node>.SDO.<object>) -> object
    nmt: str | None = None  # the message name of the node's NMT commands (<node>.NMT), when enabled
    rpdo: dict[str, frozenset[str]] = field(default_factory=dict)  # RPDO message name -> its writable signals
    file: Path | None = None  # the EDS/DCF it was read from (the simulator plays the node from it)


def _value(var: Any) -> Any:
    """A DCF's ParameterValue where given, else the EDS DefaultValue."""
    return var.value if getattr(var, "value", None) is not None else var.default


def _sub(od: Any, index: int, sub: int) -> Any | None:
    if index not in od:
        return None
    obj = od[index]
    if not hasattr(obj, "subindices"):
        return obj if sub == 0 else None
    return obj.subindices.get(sub)


def load_od(path: Path, node_id: int) -> Any:
    """The object dictionary of ``path`` for ``node_id``; MappingError naming the file on failure."""
    import canopen  # imported here: only configurations with CANopen nodes pay for it

    if not path.exists():
        raise MappingError("EDS/DCF file not found", file=str(path))
    try:
        return canopen.objectdictionary.import_od(str(path), node_id)
    except Exception as e:  # configparser, ValueError, KeyError: a broken file, not a crash
        line = _error_line(e)
        text = str(e).splitlines()[0] if line is not None and str(e) else str(e)
        raise MappingError(f"cannot read EDS/DCF: {type(e).__name__}: {text}", file=str(path), line=line) from e


def _error_line(e: Exception) -> int | None:
    """The line the INI parser names (configparser's errors carry it), None where it gives none."""
    lineno = getattr(e, "lineno", None)
    if isinstance(lineno, int):
        return lineno
    errors = getattr(e, "errors", None)  # configparser.ParsingError: [(lineno, line), ...]
    if errors and isinstance(errors[0], tuple) and isinstance(errors[0][0], int):
        return int(errors[0][0])
    return None


def describe_node(path: Path, node_id: int, node: str, sdo: list[str] | None = None,
                  writable: list[str] | None = None, nmt: bool = False) -> NodeDescription:
    """The TPDO messages of a node (names ``<node>.TPDO<n>``), their objects and its heartbeat time; with
    ``sdo`` (object-name globs) the objects in no TPDO as one message each (``<node>.SDO.<object>``),
    ``writable`` (globs) the ones of those written by SDO download."""
    od = load_od(path, node_id)
    messages: list[Message] = []
    objects: dict[str, CanopenObject] = {}
    owner: dict[str, str] = {NMT_STATE: "the heartbeat", NMT_COMMAND: "the NMT commands",
                             **{f"EMCY.{n}": "the EMCY message" for n in _EMCY_FIELDS}}
    rpdo: dict[str, frozenset[str]] = {}
    wanted = writable or []
    errors: list[MappingError] = []  # every PDO's problems, not only the first one's
    for label, comm_base, map_base in (("TPDO", TPDO_COMM, TPDO_MAP), ("RPDO", RPDO_COMM, RPDO_MAP)):
        for n in range(PDO_COUNT):
            try:
                layout = _pdo(od, path, comm_base + n, map_base + n, f"{label}{n + 1}", owner, objects,
                              label == "RPDO")
            except MappingError as e:
                errors.append(e)
                continue
            if layout is None:
                continue
            cob, signals, bits = layout
            pdo = f"{label}{n + 1}"
            if label == "RPDO":  # a receive PDO is the bridge's to send: only where an object of it is writable
                names = frozenset(sg.name for sg in signals if any(fnmatch.fnmatchcase(sg.name, p) for p in wanted))
                if not names:  # not sent: its objects stay reachable by SDO
                    for sg in signals:
                        del owner[sg.name], objects[sg.name]
                    continue
                rpdo[f"{node}.{pdo}"] = names
                cycle = 0
            else:
                timer = _sub(od, comm_base + n, 5)  # event timer (ms): the staleness cycle where given
                cycle = int(_value(timer) or 0) if timer is not None else 0
            messages.append(Message(
                frame_id=cob & (0x1FFFFFFF if cob & COB_EXTENDED else 0x7FF), name=f"{node}.{pdo}",
                length=(bits + 7) // 8, signals=signals, is_extended_frame=bool(cob & COB_EXTENDED),
                cycle_time=cycle or None, comment=f"CANopen {pdo} of node {node_id}", strict=True,
            ))
    if errors:
        raise NodeFileError(errors)
    messages.append(heartbeat_message(node_id, node))
    messages.append(emcy_message(node_id, node))
    sdo_objects = _sdo_messages(od, path, node_id, node, sdo or [], writable or [], objects, owner, messages)
    if nmt:
        messages.append(nmt_message(node_id, node))
    hb = _sub(od, PRODUCER_HEARTBEAT, 0)
    heartbeat = int(_value(hb) or 0) if hb is not None else None
    return NodeDescription(messages, objects, heartbeat or None, sdo_objects, f"{node}.NMT" if nmt else None, rpdo,
                           path)


def _pdo(od: Any, path: Path, comm: int, mapping: int, pdo: str, owner: dict[str, str],
         objects: dict[str, CanopenObject], receive: bool) -> tuple[int, list[Signal], int] | None:
    """One PDO's COB-ID, signals (little-endian at their bit offsets) and length in bits; None when the
    PDO is absent, not valid (COB-ID bit 31) or maps nothing. A receive PDO's signals start from the
    objects' DefaultValue (the DCF's ParameterValue), so writing one object never sends garbage in the others."""
    comm_var = _sub(od, comm, 1)
    if comm_var is None or mapping not in od:
        return None
    cob = int(_value(comm_var) or 0)
    count_var = _sub(od, mapping, 0)
    count = int(_value(count_var) or 0) if count_var is not None else 0
    if cob & COB_INVALID or count == 0:
        return None
    where = f"{pdo} (0x{mapping:04X})"
    if not cob & COB_EXTENDED and (use := restricted_use(cob & 0x7FF)) is not None:
        raise MappingError(f"{pdo} COB-ID 0x{cob & 0x7FF:03X} (0x{comm:04X}sub1) is reserved by CiA 301 for {use}",
                           file=str(path))
    signals: list[Signal] = []
    start = 0
    for k in range(1, count + 1):
        entry = _sub(od, mapping, k)
        if entry is None:
            raise MappingError(f"{where}: sub-index {k} of {count} mapped objects is missing", file=str(path))
        raw = int(_value(entry) or 0)
        index, sub, bits = raw >> 16, (raw >> 8) & 0xFF, raw & 0xFF
        if index in _DUMMY:
            start += bits
            continue
        var = _sub(od, index, sub)
        if var is None:
            raise MappingError(f"{where}: maps 0x{index:04X}sub{sub}, which is not in the dictionary", file=str(path))
        if not var.pdo_mappable:
            raise MappingError(f"{where}: maps 0x{index:04X}sub{sub} ({var.name}), which the dictionary does not "
                               "allow in a PDO (PDOMapping=0)", file=str(path))
        kind = _NUMERIC.get(var.data_type)
        if kind is None:
            raise MappingError(f"{where}: 0x{index:04X}sub{sub} has data type 0x{var.data_type:04X}, which "
                               "canbridge cannot decode from a PDO yet (numbers and BOOLEAN only)", file=str(path))
        size, signed, is_float = kind
        if bits != size:
            raise MappingError(f"{where}: 0x{index:04X}sub{sub} is mapped with {bits} bits, its data type has "
                               f"{size}", file=str(path))
        parent = od[index]
        name = part_name(var.name) if parent is var else f"{part_name(parent.name)}.{part_name(var.name)}"
        if name in owner:
            raise MappingError(f"{where}: object {name} (0x{index:04X}sub{sub}) is already mapped by "
                               f"{owner[name]}", file=str(path))
        owner[name] = pdo
        access = str(var.access_type)
        objects[name] = CanopenObject(index, sub, access, var.data_type, pdo)
        desc = f": {var.description}" if getattr(var, "description", "") else ""
        initial = _value(var) if receive else None
        signals.append(Signal(
            name=name, start=start, length=bits, byte_order="little_endian", is_signed=signed,
            conversion=BaseConversion.factory(scale=1, offset=0, is_float=is_float),
            minimum=var.min, maximum=var.max, unit=var.unit or None, raw_initial=initial,
            comment=f"CANopen 0x{index:04X}sub{sub} ({access}){desc}",
        ))
        start += bits
    if start > 64:
        raise MappingError(f"{where}: maps {start} bits, more than the 64 of a PDO", file=str(path))
    return cob, signals, start


def nmt_message(node_id: int, node: str) -> Message:
    """The node's NMT commands (frame 0x000: command specifier, node id): the writable signal
    ``<bus>.<node>.NMT_command`` with the commands as choices; the node id is the frame's fixed second byte."""
    command = Signal(name=NMT_COMMAND, start=0, length=8, byte_order="little_endian", is_signed=False,
                     conversion=BaseConversion.factory(scale=1, offset=0, choices=OrderedDict(NMT_COMMANDS.items()),
                                                       is_float=False),
                     comment="CANopen NMT command to the node (frame 0x000); needs the write permission")
    target = Signal(name="NMT_node", start=8, length=8, byte_order="little_endian", is_signed=False,
                    raw_initial=node_id, minimum=node_id, maximum=node_id,
                    comment="the node id the NMT command addresses (fixed)")
    return Message(frame_id=0x000, name=f"{node}.NMT", length=2, signals=[command, target],
                   comment=f"CANopen NMT commands to node {node_id}", strict=True)


def _variables(od: Any) -> list[tuple[Any, str]]:
    """Every variable of the dictionary with its name part (``Object`` or ``Object.Subobject``)."""
    out: list[tuple[Any, str]] = []
    for obj in od.values():
        if hasattr(obj, "subindices"):
            out.extend((var, f"{part_name(obj.name)}.{part_name(var.name)}") for var in obj.values())
        else:
            out.append((obj, part_name(obj.name)))
    return out


def _sdo_messages(od: Any, path: Path, node_id: int, node: str, sdo: list[str], writable: list[str],
                  in_pdo: dict[str, CanopenObject], owner: dict[str, str], messages: list[Message]
                  ) -> dict[str, SdoObject]:
    """One message per numeric object in no TPDO whose name matches ``sdo``; a second object with a name
    already taken gets ``_x<index>`` (and ``sub<n>``) appended, so that both stay reachable."""
    pdo_objects = {(o.index, o.subindex): name for name, o in in_pdo.items()}
    matched: set[str] = set()
    for pat in writable:
        hit = [n for n, o in in_pdo.items() if o.pdo.startswith("TPDO") and fnmatch.fnmatchcase(n, pat)]
        if hit:
            raise MappingError(f"writable pattern {pat!r} matches {', '.join(sorted(hit))}, mapped in a TPDO: "
                               "objects the node transmits are not written", file=str(path))
        for n, o in in_pdo.items():
            if o.pdo.startswith("RPDO") and fnmatch.fnmatchcase(n, pat):
                matched.add(pat)
                if o.access not in WRITABLE_ACCESS:
                    raise MappingError(f"writable pattern {pat!r} matches {n} (0x{o.index:04X}sub{o.subindex}, "
                                       f"in {o.pdo}), which the dictionary marks {o.access}", file=str(path))
    out: dict[str, SdoObject] = {}
    for var, name in _variables(od):
        sub = var.subindex  # 0 for a plain variable
        if (var.index, sub) in pdo_objects or not any(fnmatch.fnmatchcase(name, p) for p in sdo):
            continue
        kind = _NUMERIC.get(var.data_type)
        if kind is None:  # strings and domains: not served yet (docs/canopen.md)
            continue
        if name in owner:
            name = f"{name}_x{var.index:04X}" + (f"sub{sub}" if sub else "")
        owner[name] = "SDO"
        access = str(var.access_type)
        wants = [p for p in writable if fnmatch.fnmatchcase(name, p)]
        if wants:
            matched.update(wants)
            if access not in WRITABLE_ACCESS:
                raise MappingError(f"writable pattern {wants[0]!r} matches {name} (0x{var.index:04X}sub{sub}), "
                                   f"which the dictionary marks {access}", file=str(path))
        bits, signed, is_float = kind
        obj = SdoObject(node_id, node, var.index, sub, access, (bits + 7) // 8, bool(wants))
        desc = f": {var.description}" if getattr(var, "description", "") else ""
        mname = f"{node}.SDO.{name}"
        out[mname] = obj
        messages.append(Message(
            frame_id=SDO_REQUEST + node_id, name=mname, length=obj.size, strict=True,
            comment=f"CANopen object 0x{var.index:04X}sub{sub} of node {node_id}, by SDO",
            signals=[Signal(name=name, start=0, length=bits, byte_order="little_endian", is_signed=signed,
                            conversion=BaseConversion.factory(scale=1, offset=0, is_float=is_float),
                            minimum=var.min, maximum=var.max, unit=var.unit or None,
                            comment=f"CANopen 0x{var.index:04X}sub{sub} ({access}, SDO){desc}")]))
    for pat in writable:
        if pat not in matched:
            raise MappingError(f"writable pattern {pat!r} matches no object in an RPDO or served by SDO",
                               file=str(path))
    return out


def heartbeat_message(node_id: int, node: str) -> Message:
    """The heartbeat / boot-up frame (0x700 + node id): its NMT state is the signal ``<bus>.<node>.NMT_state``
    (bit 7, the node-guarding toggle, is not part of it)."""
    state = Signal(name=NMT_STATE, start=0, length=7, byte_order="little_endian", is_signed=False,
                   conversion=BaseConversion.factory(scale=1, offset=0, choices=OrderedDict(NMT_STATES.items()),
                                                             is_float=False),
                   comment="CANopen NMT state from the heartbeat (0x700 + node id)")
    return Message(frame_id=HEARTBEAT_BASE + node_id, name=f"{node}.Heartbeat", length=1, signals=[state],
                   comment=f"CANopen heartbeat of node {node_id}", strict=True)


def canopen_jobs(
    config: Config, jobs: list[tuple[int, MappingConfig, CanopenNodeConfig | None]]
) -> dict[int, tuple[str | int, ...]]:
    """Append one mapping job per CANopen node to ``jobs`` (its TPDOs, and its objects by SDO: the node's
    ``writable`` list decides, not the job's); return each such job's configuration location."""
    locs: dict[int, tuple[str | int, ...]] = {}
    for bi, bus in enumerate(config.buses):
        for ni, node in enumerate(bus.nodes):
            locs[len(jobs)] = ("buses", bi, "nodes", ni)
            transmit = {f"{node.name}.{pdo}": TransmitConfig(period_ms=ms) for pdo, ms in node.rpdo_period_ms.items()}
            mc = MappingConfig.model_construct(bus=bus.name, dbc=node.eds, signals=None, write_rate=node.write_rate,
                                               transmit=transmit)
            jobs.append((len(jobs), mc, node))
    return locs


def describe(node: CanopenNodeConfig, base_dir: Path) -> NodeDescription:
    """A configured CANopen node's messages (its TPDOs, heartbeat, EMCY, objects by SDO) and heartbeat time."""
    path = node.eds if node.eds.is_absolute() else base_dir / node.eds
    return describe_node(path, node.id, node.name, node.sdo, node.writable, node.nmt)


def emcy_message(node_id: int, node: str) -> Message:
    """The emergency frame (0x80 + node id): the last EMCY of the node as the points
    ``<bus>.<node>.EMCY.error_code``, ``.error_register`` and ``.manufacturer`` (5 bytes, little-endian)."""
    sigs = [Signal(name=f"EMCY.{n}", start=start, length=bits, byte_order="little_endian", is_signed=False,
                   comment=f"CANopen emergency (0x80 + node id): {what}")
            for n, start, bits, what in zip(_EMCY_FIELDS, (0, 16, 24), (16, 8, 40),
                                            ("error code", "error register (0x1001)", "manufacturer bytes"),
                                            strict=True)]
    return Message(frame_id=EMCY_BASE + node_id, name=f"{node}.EMCY", length=8, signals=sigs,
                   comment=f"CANopen emergency of node {node_id}", strict=True)
