"""The signal mapping table: every mapped message and signal of every bus, built once from the
configuration and the mapping files, with a decoder per message and an encoder per writable signal."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from canbridge._errors import ConfigError, MappingError, Problem
from canbridge._model import MessageInfo, SignalInfo, physical_range
from canbridge._plugin import MappingFormat
from canbridge.config import CanopenNodeConfig, Config, MappingConfig, TransmitConfig
from canbridge.core.gcpause import gc_paused
from canbridge.core.mapping.canopen import NodeDescription, SdoObject, canopen_jobs, describe, reserved_ids
from canbridge.core.mapping.codec import Decoder, SignalEncoder, compile_decoder, compile_encoder, initial_payload
from canbridge.core.mapping.j1939 import (
    NULL_ADDRESS,
    destination_of,
    make_id,
    match_key,
    pgn_of,
    priority_of,
    source_of,
    with_source,
)
from canbridge.core.mapping.j1939rules import destination_problem, message_problems, source_name_problems

log = logging.getLogger("canbridge.mapping")

EXT_KEY = 0x80000000  # added to a 29-bit id to form the lookup key


def frame_key(can_id: int, extended: bool) -> int:
    """The key under which a frame id is looked up (standard and extended ids never collide)."""
    return can_id | EXT_KEY if extended else can_id


@dataclass
class MessageEntry:
    """A mapped message with everything the receive and write paths need."""

    info: MessageInfo
    index: int  # position in MappingTable.message_list
    key: int
    db_message: Any  # cantools Message
    signal_indices: list[int]
    decoder: Decoder
    timeout_s: float | None
    transmit: TransmitConfig | None
    encoders: dict[str, SignalEncoder] = field(default_factory=dict)
    initial: bytes = b""
    sdo: SdoObject | None = None  # a CANopen object by SDO: no frame of its own, in no frame lookup
    j1939_tx: bool = False  # a J1939 message the bridge sends: its source address is the claimed one


@dataclass
class MappingTable:
    signals: dict[str, SignalInfo]
    signal_list: list[SignalInfo]
    messages: dict[str, MessageEntry]
    message_list: list[MessageEntry]
    signal_message: list[int]  # signal index -> message index
    by_bus: dict[str, dict[int, MessageEntry]]  # bus -> frame key -> entry
    # bus -> j1939.match_key (PGN, source address) -> entry, for the messages matched by PGN
    j1939: dict[str, dict[int, MessageEntry]] = field(default_factory=dict)
    # bus -> its CANopen nodes and what their files say (heartbeat supervision: core/canopennode.py)
    canopen: dict[str, list[tuple[CanopenNodeConfig, NodeDescription]]] = field(default_factory=dict)

    def messages_of(self, bus: str) -> list[MessageEntry]:
        return [m for m in self.message_list if m.info.bus == bus]


def _value_type(sig: Any) -> type:
    if sig.is_float:
        return float
    if sig.choices:
        return int
    if sig.length == 1 and sig.scale == 1 and sig.offset == 0:
        return bool
    if isinstance(sig.scale, int) and isinstance(sig.offset, int):
        return int
    return float


def _limits(sig: Any) -> tuple[float, float]:
    lo, hi = physical_range(sig.length, sig.is_signed, sig.is_float, sig.scale, sig.offset)
    mn, mx = sig.minimum, sig.maximum
    if (mn is None and mx is None) or (mn == 0 and mx == 0):  # DBC [0|0] means "not given"
        return lo, hi
    return (max(lo, mn) if mn is not None else lo, min(hi, mx) if mx is not None else hi)


def _comment(obj: Any) -> str | None:
    c = getattr(obj, "comment", None)
    if isinstance(c, dict):  # cantools keeps per-language comments in some formats
        c = next(iter(c.values()), None)
    return str(c) if c else None


def _match(patterns: Sequence[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def load_mapping_file(
    mc: MappingConfig, base_dir: Path, formats: Mapping[str, MappingFormat]
) -> Sequence[Any]:
    """Load one mapping file through its format; MappingError/ConfigError on failure."""
    path = mc.file if mc.file.is_absolute() else base_dir / mc.file
    fmt_name = mc.format
    if fmt_name is None:
        if mc.signals is not None:
            fmt_name = "yaml"
        else:
            suffix = path.suffix.lower()
            fmt_name = next((f.name for f in formats.values() if suffix in f.suffixes), None)
            if fmt_name is None:
                known = ", ".join(sorted(s for f in formats.values() for s in f.suffixes))
                raise MappingError(f"unknown mapping file type {suffix!r}; known: {known}", file=str(path))
    fmt = formats.get(fmt_name)
    if fmt is None:
        raise MappingError(f"unknown mapping format {fmt_name!r}; installed: {', '.join(sorted(formats))}",
                           file=str(path))
    if not path.exists():
        raise MappingError("file not found", file=str(path))
    return fmt.load(path, mc.strict)


def build_table(
    config: Config,
    base_dir: Path,
    formats: Mapping[str, MappingFormat],
    file: str | None = None,
    lines: Mapping[tuple[str | int, ...], int] | None = None,
) -> MappingTable:
    """Build the mapping table; raise ConfigError listing every problem found."""
    with gc_paused():
        return _build_table(config, base_dir, formats, file, lines)


def _build_table(
    config: Config,
    base_dir: Path,
    formats: Mapping[str, MappingFormat],
    file: str | None,
    lines: Mapping[tuple[str | int, ...], int] | None,
) -> MappingTable:
    lines = lines or {}
    problems: list[Problem] = []
    signals: dict[str, SignalInfo] = {}
    signal_list: list[SignalInfo] = []
    message_list: list[MessageEntry] = []
    messages: dict[str, MessageEntry] = {}
    by_bus: dict[str, dict[int, MessageEntry]] = {b.name: {} for b in config.buses}
    claiming = {b.name: b.j1939 is not None for b in config.buses}
    signal_message: list[int] = []
    j1939: dict[str, dict[int, MessageEntry]] = {}
    canopen: dict[str, list[tuple[CanopenNodeConfig, NodeDescription]]] = {}
    source_names: dict[str, tuple[dict[int, str], dict[str, int]]] = {}  # bus -> J1939 names by address, by name

    jobs: list[tuple[int, MappingConfig, CanopenNodeConfig | None]] = [
        (mi, mc, None) for mi, mc in enumerate(config.mappings)]
    node_locs = canopen_jobs(config, jobs)  # job index -> ("buses", b, "nodes", n) of a CANopen node
    reserved = {b.name: reserved_ids(b.nodes) for b in config.buses}  # CANopen ids no DBC message may take

    def where(i: int, *key: str | int) -> tuple[int | None, str]:
        base = node_locs.get(i, ("mappings", i))
        loc: tuple[str | int, ...] = (*base, *key)
        path = "".join(f".{k}" if isinstance(k, str) else f"[{k}]" for k in loc).lstrip(".")
        return lines.get(loc, lines.get(base)), path

    for mi, mc, node in jobs:
        sdo_objects: Mapping[str, SdoObject] = {}
        nmt: str | None = None
        rpdo: Mapping[str, frozenset[str]] = {}
        try:
            if node is None:
                db_messages = load_mapping_file(mc, base_dir, formats)
            else:
                described = describe(node, base_dir)
                db_messages = described.messages
                sdo_objects = described.sdo
                nmt = described.nmt
                rpdo = described.rpdo
                canopen.setdefault(mc.bus, []).append((node, described))
        except MappingError as e:
            if node is not None:  # a CANopen node's file: name the bus, node and file; point at the node entry
                for sub in getattr(e, "errors", [e]):
                    at = f"{sub.file}:{sub.line}" if sub.line is not None else sub.file
                    problems.append(Problem(f"bus {mc.bus}, node {node.name} (id {node.id}): {sub.detail}: {at}",
                                            file, *where(mi, "eds")))
            elif e.line is None:  # about the file as a whole (missing, unknown type): point at the config entry
                ln, p = where(mi, "dbc" if mc.dbc is not None else "signals")
                problems.append(Problem(f"{e.detail}: {e.file}", file, ln, p))
            else:  # inside the mapping file: its own file and line say more
                problems.append(Problem(e.detail, e.file, e.line))
            continue
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        selected = [m for m in db_messages if mc.messages is None or _match(mc.messages, m.name)]
        if mc.messages is not None:
            for pat in mc.messages:
                if not any(fnmatch.fnmatchcase(m.name, pat) for m in db_messages):
                    ln, p = where(mi, "messages")
                    problems.append(Problem(f"message pattern {pat!r} matches no message", file, ln, p))
        for pat in mc.writable:
            if not any(_match([pat], f"{m.name}.{s.name}") for m in selected for s in m.signals):
                ln, p = where(mi, "writable")
                problems.append(Problem(f"writable pattern {pat!r} matches no signal", file, ln, p))
        names = {m.name for m in selected}
        for tname in mc.transmit:
            if tname not in names:
                ln, p = where(mi, "transmit", tname)
                problems.append(Problem(f"transmit names message {tname!r}, which is not mapped", file, ln, p))
        for pat in mc.stale_after_ms:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                ln, p = where(mi, "stale_after_ms", pat)
                problems.append(Problem(f"stale_after_ms pattern {pat!r} matches no message", file, ln, p))
        instances, why = _instances(mc, selected, claiming.get(mc.bus, False))
        if why:
            problems.append(Problem(why, file, *where(mi, "protocol")))
        fname = mc.file.name
        file_key = "dbc" if mc.dbc is not None else "signals"
        problems += [Problem(p, file, *where(mi, file_key)) for p in message_problems(fname, selected, mc.protocol,
                                                                                   mc.strict)]
        sent = [m for m, _, _, k in instances if k is None and _is_j1939(mc, m)]
        if (dp := destination_problem(fname, mc.destination, sent)) is not None:
            problems.append(Problem(dp, file, *where(mi, "destination")))
        seen, by_name = source_names.setdefault(mc.bus, ({}, {}))
        problems += [Problem(p, file, *where(mi, "sources"))
                     for p in source_name_problems(mc.bus, seen, by_name, fname, mc.sources)]
        for m, mname, frame_id, pgn_key in instances:
            j1939_tx = pgn_key is None and _is_j1939(mc, m)
            key = frame_key(frame_id, m.is_extended_frame)
            label = mname[len(mc.bus) + 1:]  # as plugins show it: "<source>.<message>" with several sources
            sdo = sdo_objects.get(m.name)
            shared = sdo is not None or m.name == nmt  # no frame of its own (SDO) or one id for all nodes (NMT)
            if mname in messages:
                problems.append(Problem(f"message {mname} is mapped twice", file, where(mi)[0], where(mi)[1]))
                continue
            if not shared and key in by_bus[mc.bus]:
                other = by_bus[mc.bus][key].info.name
                problems.append(Problem(
                    f"{_origin(mc.bus, node, m.name)}frame id 0x{frame_id:X} of {m.name} is already mapped by {other}",
                    file, where(mi)[0], where(mi)[1]))
                continue
            if node is None and not m.is_extended_frame and (use := reserved[mc.bus].get(frame_id)):
                problems.append(Problem(f"frame id 0x{frame_id:X} of {m.name} is the {use} on bus {mc.bus}",
                                        file, *where(mi)))
                continue
            if pgn_key is not None and pgn_key in j1939.get(mc.bus, {}):
                other = j1939[mc.bus][pgn_key].info.name
                problems.append(Problem(f"{mc.file.name}: PGN 0x{pgn_key >> 8:X} from source 0x{pgn_key & 0xFF:02X} "
                                        f"of {m.name} (id 0x{m.frame_id:X}) is already mapped by {other}: one "
                                        "(PGN, source) decodes into one message", file, *where(mi)))
                continue
            writable_sigs = {s.name for s in m.signals if _match(mc.writable, f"{m.name}.{s.name}")}
            if sdo is not None:
                writable_sigs = {s.name for s in m.signals} if sdo.writable else set()
            elif m.name == nmt:
                writable_sigs = {m.signals[0].name}
            elif m.name in rpdo:  # a receive PDO: the objects the node's writable list names
                writable_sigs = set(rpdo[m.name])
            tx = m.name in mc.transmit or bool(writable_sigs)
            direction: Literal["rx", "tx"] = "tx" if tx else "rx"
            cycle = m.cycle_time if m.cycle_time else None
            timeout: float | None = None
            if not tx:
                hand = next((v for p, v in mc.stale_after_ms.items() if fnmatch.fnmatchcase(m.name, p)), None)
                if hand is not None:
                    timeout = hand / 1000
                elif cycle:
                    timeout = cycle * mc.stale_factor / 1000
            if sdo is not None and node is not None:  # a value read by SDO: stale past the node's max_age_ms
                timeout = node.max_age_ms / 1000 if node.max_age_ms else None
            tcfg = mc.transmit.get(m.name) if tx else None
            if tx and tcfg is None:
                tcfg = TransmitConfig()
            idx = len(message_list)
            sig_indices = []
            sig_names = []
            bools = set()
            for s in m.signals:
                vt = _value_type(s)
                if vt is bool:
                    bools.add(s.name)
                lo, hi = _limits(s)
                sname = f"{mname}.{s.name}" if node is None else f"{mc.bus}.{node.name}.{s.name}"
                info = SignalInfo(
                    name=sname, bus=mc.bus, message=label, signal=s.name, index=len(signal_list),
                    frame_id=frame_id, extended=m.is_extended_frame, direction=direction, value_type=vt,
                    bit_length=s.length, signed=s.is_signed, is_float=s.is_float, scale=s.scale,
                    offset=s.offset, minimum=lo, maximum=hi, unit=s.unit or None,
                    initial=(bool(s.initial) if vt is bool and s.initial is not None else s.initial),
                    choices={int(k): str(v) for k, v in s.choices.items()} if s.choices else None,
                    comment=_comment(s), writable=s.name in writable_sigs, timeout_s=timeout,
                    cycle_time_ms=cycle, multiplexer=_mux_of(m, s),
                    multiplexer_ids=tuple(s.multiplexer_ids) if s.multiplexer_ids else None,
                    is_multiplexer=bool(s.is_multiplexer),
                    max_write_rate=mc.write_rate if s.name in writable_sigs else None,
                    on_demand=sdo is not None and sdo.readable,
                )
                signals[sname] = info
                signal_list.append(info)
                signal_message.append(idx)
                sig_indices.append(info.index)
                sig_names.append(sname)
            try:
                decoder = compile_decoder(m, {s.name: i for s, i in zip(m.signals, sig_indices, strict=True)},
                                          bools, j1939=pgn_key is not None)
                encoders = {s.name: compile_encoder(m, s) for s in m.signals} if tx else {}
                init = initial_payload(m) if tx else b""
            except Exception as e:  # a codec that cannot be built is a mapping problem, not a crash
                problems.append(Problem(f"message {m.name}: cannot build codec: {e}", str(mc.file)))
                continue
            info_m = MessageInfo(
                name=mname, bus=mc.bus, message=label, frame_id=frame_id, extended=m.is_extended_frame,
                fd=bool(getattr(m, "is_fd", False)), length=m.length, direction=direction,
                signals=tuple(sig_names), cycle_time_ms=cycle,
                period_ms=tcfg.period_ms if tcfg else None, comment=_comment(m),
            )
            entry = MessageEntry(info_m, idx, key, m, sig_indices, decoder, timeout, tcfg, encoders, init, sdo,
                                 j1939_tx)
            message_list.append(entry)
            messages[mname] = entry
            if not shared:  # SDO answers go to the bus's SDO client; NMT commands are only sent
                by_bus[mc.bus][key] = entry
            if pgn_key is not None:
                j1939.setdefault(mc.bus, {})[pgn_key] = entry
    if problems:
        raise ConfigError(problems)
    return MappingTable(signals, signal_list, messages, message_list, signal_message, by_bus, j1939, canopen)


def heard_source_name(address: int) -> str:
    """The name of a J1939 source heard but not configured, in its signals' names: ``sa0x21``."""
    return f"sa0x{address:02X}"


def add_heard_source(table: MappingTable, bus: str, template: MessageEntry, address: int) -> MessageEntry | None:
    """Map a J1939 message received from a source address no mapping of the bus decodes, at run time:
    ``<bus>.sa0x<SA>.<message>`` with the signals of ``template`` (an entry of the same PGN), appended to
    the table (indices after every existing one, nothing moves). None when that name is taken (a
    configured source of that name)."""
    m = template.db_message
    label = f"{heard_source_name(address)}.{m.name}"
    mname = f"{bus}.{label}"
    if mname in table.messages:
        return None
    fid = with_source(template.info.frame_id, address)
    base = len(table.signal_list)
    infos = [replace(table.signal_list[i], name=f"{mname}.{table.signal_list[i].signal}", message=label,
                     index=base + k, frame_id=fid, direction="rx", writable=False, max_write_rate=None)
             for k, i in enumerate(template.signal_indices)]
    if any(i.name in table.signals for i in infos):
        return None
    decoder = compile_decoder(m, {i.signal: i.index for i in infos},
                              {i.signal for i in infos if i.value_type is bool}, j1939=True)
    idx = len(table.message_list)
    info_m = replace(template.info, name=mname, message=label, frame_id=fid, direction="rx",
                     signals=tuple(i.name for i in infos), period_ms=None)
    entry = MessageEntry(info_m, idx, frame_key(fid, True), m, [i.index for i in infos], decoder,
                         template.timeout_s, None)
    for i in infos:
        table.signals[i.name] = i
        table.signal_list.append(i)
        table.signal_message.append(idx)
    table.message_list.append(entry)
    table.messages[mname] = entry
    table.by_bus.setdefault(bus, {})[entry.key] = entry
    table.j1939.setdefault(bus, {})[match_key(fid)] = entry
    return entry


def _instances(mc: MappingConfig, selected: Sequence[Any],
               claiming: bool) -> tuple[list[tuple[Any, str, int, int | None]], str]:
    """(message, mapped name, frame id, J1939 match key or None) of each mapped message, and a problem.

    A received J1939 message is mapped once per source address (``sources``, default: the DBC id's own);
    its name carries the source's name only when the mapping has several (docs/j1939.md, "Names"). One
    the bridge sends (writable signals, ``transmit``) is mapped once, ``<bus>.<message>``, with source
    address 254 in its id until the bus's address claim puts the claimed one there, and needs the bus to
    claim an address (``j1939`` on the bus).
    """
    out: list[tuple[Any, str, int, int | None]] = []
    plain = [m for m in selected if not _is_j1939(mc, m)]
    out.extend((m, f"{mc.bus}.{m.name}", m.frame_id, None) for m in plain)
    pgn_messages = [m for m in selected if _is_j1939(mc, m)]
    if mc.protocol == "j1939" and any(not m.is_extended_frame for m in selected):
        names = ", ".join(m.name for m in selected if not m.is_extended_frame)
        return out, f"protocol j1939 needs 29-bit frame ids; standard: {names}"
    if mc.sources and not pgn_messages:
        return out, "sources are given but no message of the mapping is J1939 (protocol: j1939, or " \
                    "VFrameFormat J1939PG in the DBC)"
    sent = [m for m in pgn_messages
            if m.name in mc.transmit or any(_match(mc.writable, f"{m.name}.{s.name}") for s in m.signals)]
    if sent and not claiming:
        return out, f"J1939 messages the bridge sends ({', '.join(m.name for m in sent)}) need address " \
                    f"claiming on bus {mc.bus}: give the bus 'j1939: {{name: ..., address: ...}}'"
    cyclic = [m.name for m in sent if m.name in mc.transmit and mc.transmit[m.name].period_ms]
    if cyclic:
        return out, f"cyclic transmission of J1939 messages is not supported ({', '.join(cyclic)}): they are " \
                    "sent on each write"
    for m in sent:
        fid = m.frame_id
        dest = mc.destination if mc.destination is not None else destination_of(fid)
        out.append((m, f"{mc.bus}.{m.name}", make_id(priority_of(fid), pgn_of(fid), NULL_ADDRESS, dest), None))
    for m in pgn_messages:
        if m in sent:
            continue
        sources = mc.sources or {source_of(m.frame_id): ""}
        for address, source in sorted(sources.items()):
            fid = with_source(m.frame_id, address)
            name = f"{mc.bus}.{m.name}" if len(sources) == 1 else f"{mc.bus}.{source}.{m.name}"
            out.append((m, name, fid, match_key(fid)))
    return out, ""


def _origin(bus: str, node: CanopenNodeConfig | None, message: str) -> str:
    """For a CANopen node's message, the bus, node, file and object that a problem is about."""
    if node is None:
        return ""
    pdo = message.rsplit(".", 1)[-1]
    comm = {"TPDO": 0x1800, "RPDO": 0x1400}.get(pdo[:4])
    obj = f", COB-ID in 0x{comm + int(pdo[4:]) - 1:04X}sub1" if comm is not None and pdo[4:].isdigit() else ""
    return f"bus {bus}, node {node.name} (id {node.id}, {node.eds}{obj}): "


def _is_j1939(mc: MappingConfig, message: Any) -> bool:
    if mc.protocol is not None:
        return mc.protocol == "j1939"
    return getattr(message, "protocol", None) == "j1939" and bool(message.is_extended_frame)


def _mux_of(message: Any, signal: Any) -> str | None:
    if not signal.multiplexer_ids:
        return None
    name = getattr(signal, "multiplexer_signal", None)
    if name:
        return str(name)
    mux = next((s.name for s in message.signals if s.is_multiplexer), None)
    return str(mux) if mux else None

