"""``pdo: from_node``: the TPDO layouts of a CANopen node read from the node itself by SDO, at start and
after every boot-up, instead of the file's mapping parameters.

The signals stay those of the file's TPDOs (their names, data types and limits, docs/canopen.md "Names");
what the node says decides where each sits: the COB-ID (0x1800+n sub 1) and the mapping (0x1A00+n sub 0,
then one 32-bit entry per object). Each TPDO gets a decoder generated from that layout by the same code
generator as every message, swapped into the bus's frame lookup. Until the layout is read the TPDO is not
in the lookup and its values are ``bad`` ("pdo mapping unknown"); an object of the file's TPDO that the
node does not map is ``bad`` on its own, and an object the node maps that the file has in no place of
that TPDO is skipped (logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cantools.database.can import Message, Signal

from canbridge._errors import BusError
from canbridge._model import Quality
from canbridge.core.can.sdo import SdoBusy, SdoClient, SdoError
from canbridge.core.mapping.canopen import COB_EXTENDED, COB_INVALID, TPDO_COMM, TPDO_MAP, CanopenObject
from canbridge.core.mapping.codec import compile_decoder
from canbridge.core.mapping.j1939 import Unavailable
from canbridge.core.mapping.table import EXT_KEY, MappingTable, MessageEntry
from canbridge.core.store import SignalStore

log = logging.getLogger("canbridge.canopen")
_DUMMY = range(0x0001, 0x0008)


@dataclass
class _Tpdo:
    number: int  # n of TPDOn (0x1800 + n - 1)
    entry: MessageEntry
    objects: dict[tuple[int, int], Signal]  # (index, sub-index) -> the file's signal of that object
    key: int | None = None  # the frame key now in the lookup; None: not in it
    filtered: tuple[int, bool] = (0, False)  # the (id, extended) the kernel filter lets through for it


@dataclass
class _Node:
    node_id: int
    name: str
    tpdos: list[_Tpdo]
    reads: int = 0  # layouts read completely
    failures: int = 0
    task: asyncio.Task[None] | None = None
    again: bool = False  # a boot-up during the read: read once more when it ends
    unserved: list[str] = field(default_factory=list)  # node-mapped objects the file's TPDO lacks


class PdoFromNode:
    """The nodes of one bus whose TPDO layouts come from the node."""

    def __init__(self, bus: str, table: MappingTable, store: SignalStore, sdo: SdoClient,
                 lookup: dict[int, tuple[int, Any]],
                 move_filter: Callable[[tuple[int, bool], tuple[int, bool]], None]) -> None:
        self.store = store
        self.table = table
        self.sdo = sdo
        self.lookup = lookup
        self.move_filter = move_filter  # the bus's kernel filters follow a COB-ID the node moved
        self.nodes: dict[int, _Node] = {}
        # message indices of TPDOs whose layout is unknown: the heartbeat consumer leaves their quality alone
        self.pending: set[int] = set()
        self.unread: set[int] = set()  # node ids whose last read failed: read again at their next heartbeat
        self.is_lost: Callable[[int], bool] = lambda _node_id: False  # the heartbeat consumer's verdict
        for cfg, desc in table.canopen.get(bus, []):
            if cfg.pdo != "from_node":
                continue
            tpdos = []
            for m in desc.messages:
                pdo = m.name.rsplit(".", 1)[-1]
                if not pdo.startswith("TPDO") or m.name in desc.rpdo:
                    continue
                entry = table.messages[f"{bus}.{m.name}"]
                objs: dict[tuple[int, int], Signal] = {}
                for s in m.signals:
                    o: CanopenObject = desc.objects[s.name]
                    objs[(o.index, o.subindex)] = s
                tpdos.append(_Tpdo(int(pdo[4:]), entry, objs, entry.key, (entry.info.frame_id, entry.info.extended)))
            self.nodes[cfg.id] = _Node(cfg.id, cfg.name, tpdos)

    def start(self) -> None:
        """At start: every such TPDO is unknown until the node says its layout."""
        for node in self.nodes.values():
            self.read_again(node.node_id)

    def read_again(self, node_id: int) -> None:
        """Forget the node's layouts and read them (at start and on every boot-up of the node)."""
        node = self.nodes.get(node_id)
        if node is None:
            return
        for t in node.tpdos:
            self._unknown(t, f"CANopen node {node.name}: pdo mapping unknown (reading it from the node)")
        if node.task is not None and not node.task.done():
            # not cancelled: an answer to a cancelled request would meet the next one; read once more after it
            node.again = True
            return
        node.task = asyncio.get_running_loop().create_task(self._read_logged(node), name=f"pdo-from-node {node.name}")

    async def _read_logged(self, node: _Node) -> None:
        try:
            node.again = True
            while node.again:
                node.again = False
                await self._read(node)
        except Exception:  # said, never swallowed: the TPDOs stay bad ("pdo mapping unknown")
            log.exception("CANopen node %s: reading its PDO mapping failed", node.name)

    def retry(self, node_id: int) -> None:
        """A heartbeat of a node whose last read failed (it did not answer at start, say): read again,
        one read at a time."""
        node = self.nodes.get(node_id)
        if node is not None and (node.task is None or node.task.done()):
            self.read_again(node_id)

    def _unknown(self, t: _Tpdo, reason: str) -> None:
        if t.key is not None:
            self.lookup.pop(t.key, None)
            t.key = None
        self.pending.add(t.entry.index)
        self.store.held.add(t.entry.index)
        self.store.set_message_quality(t.entry.index, Quality.BAD, reason)

    async def _u32(self, node: _Node, index: int, sub: int) -> int:
        data = await self.sdo.upload(node.node_id, index, sub)
        return int.from_bytes(data[:4].ljust(4, b"\0"), "little")

    async def _read(self, node: _Node) -> None:
        self.unread.discard(node.node_id)
        for t in node.tpdos:
            why = f"CANopen node {node.name}: pdo mapping unknown: TPDO{t.number} "
            try:
                cob = await self._u32(node, TPDO_COMM + t.number - 1, 1)
                count = await self._u32(node, TPDO_MAP + t.number - 1, 0) & 0xFF
                entries = [await self._u32(node, TPDO_MAP + t.number - 1, k) for k in range(1, count + 1)]
            except (SdoError, SdoBusy, BusError) as e:
                node.failures += 1
                self.unread.add(node.node_id)
                self._unknown(t, why + f"not read: {e}")
                continue
            if cob & COB_INVALID:
                self._unknown(t, why + f"is not valid on the node (COB-ID 0x{cob:08X})")
                continue
            try:
                message, missing = self._layout(node, t, cob, entries)
            except ValueError as e:
                node.failures += 1
                self._unknown(t, why + str(e))
                continue
            indices = {s.name: self.table.signals[f"{t.entry.info.bus}.{node.name}.{s.name}"].index
                       for s in message.signals}
            decoder = compile_decoder(message, indices)
            key = (cob & 0x1FFFFFFF) | EXT_KEY if cob & COB_EXTENDED else cob & 0x7FF
            for name in missing:  # the file maps it in this TPDO, the node does not: bad on its own
                sig = self.table.signals[f"{t.entry.info.bus}.{node.name}.{name}"]
                self.store.values[sig.index] = Unavailable(f"CANopen node {node.name}: {name} is not in the "
                                                           f"node's TPDO{t.number} mapping")
            ident = (cob & (0x1FFFFFFF if cob & COB_EXTENDED else 0x7FF), bool(cob & COB_EXTENDED))
            if ident != t.filtered:
                self.move_filter(t.filtered, ident)
                t.filtered = ident
            t.key = key
            self.lookup[key] = (t.entry.index, decoder)
            self.pending.discard(t.entry.index)
            if not self.is_lost(node.node_id):  # else bad for the heartbeat until it returns
                self.store.held.discard(t.entry.index)
                self.store.set_message_quality(t.entry.index, Quality.WAITING)  # good with its next frame
        node.reads += 1

    def _layout(self, node: _Node, t: _Tpdo, cob: int, entries: list[int]) -> tuple[Message, list[str]]:
        """The TPDO as the node maps it: the file's signals at the node's bit offsets; and the file's
        objects of this TPDO the node does not map."""
        signals: list[Signal] = []
        start = 0
        for raw in entries:
            index, sub, bits = raw >> 16, (raw >> 8) & 0xFF, raw & 0xFF
            s = t.objects.get((index, sub))
            if s is None:
                if index not in _DUMMY:
                    node.unserved.append(f"TPDO{t.number} 0x{index:04X}sub{sub}")
                    log.warning("CANopen node %s maps 0x%04Xsub%d in TPDO%d, which the file does not map "
                                "there: not decoded", node.name, index, sub, t.number)
                start += bits
                continue
            if bits != s.length:
                raise ValueError(f"maps 0x{index:04X}sub{sub} with {bits} bits, its data type has {s.length}")
            signals.append(Signal(
                name=s.name, start=start, length=s.length, byte_order="little_endian", is_signed=s.is_signed,
                conversion=s.conversion, minimum=s.minimum, maximum=s.maximum, unit=s.unit, comment=s.comment))
            start += bits
        if start > 64:
            raise ValueError(f"maps {start} bits, more than the 64 of a PDO")
        missing = [s.name for s in t.objects.values() if s.name not in {x.name for x in signals}]
        message = Message(frame_id=cob & (0x1FFFFFFF if cob & COB_EXTENDED else 0x7FF), name=t.entry.db_message.name,
                          length=max(1, (start + 7) // 8), signals=signals, is_extended_frame=bool(cob & COB_EXTENDED),
                          strict=True)
        return message, missing

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.task is not None:
                node.task.cancel()
