"""CANopen node supervision on one bus: the heartbeat consumer of each node and its boot-ups.

The heartbeat frame itself is a mapped message (``<node>.Heartbeat``, its NMT state the signal
``<bus>.<node>.NMT_state``), decoded by the receive path like any frame; this module watches it:

* a node whose heartbeat is missing for longer than its consumer time is *lost*: every message of the
  node becomes ``bad`` with the reason, and stays so (its TPDOs are still decoded, they do not make it
  good) until a heartbeat comes again;
* a boot-up (NMT state 0) is counted, and the node's TPDOs are ``bad`` ("restarted") until each
  arrives again: values from before a restart are not the node's current ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from canbridge._canopen import CanopenNodeStatus, Emcy
from canbridge._model import FrameFlags, Quality, RawFrame
from canbridge.core.can.sdo import SdoCounters
from canbridge.core.mapping.canopen import BOOT_UP, EMCY_BASE, HEARTBEAT_BASE, NMT_STATES
from canbridge.core.mapping.table import MappingTable
from canbridge.core.store import SignalStore

_NOT_DATA = int(FrameFlags.EXTENDED | FrameFlags.ERROR | FrameFlags.RTR)
CONSUMER_FACTOR = 1.5  # default consumer time: 1.5 x the producer time of the file


@dataclass
class WatchedNode:
    node_id: int
    name: str
    timeout_s: float | None  # heartbeat consumer time; None: not supervised
    heartbeat: int  # message index of the heartbeat
    tpdos: list[int]  # message indices of the TPDOs
    emcy: int  # message index of the EMCY message
    emcy_count: int = 0
    last_emcy: Emcy | None = None
    boot_ups: int = 0
    heartbeats: int = 0
    state: int | None = None  # the last NMT state
    last_mono: float | None = None  # monotonic time of the last heartbeat
    lost: bool = False
    counts_at_loss: dict[int, int] = field(default_factory=dict)  # TPDO -> frames received when it was lost
    restarted: dict[int, int] = field(default_factory=dict)  # TPDO not seen since the boot-up -> frames before it


class NodeMonitor:
    """The CANopen nodes of one bus."""

    def __init__(self, bus: str, table: MappingTable, store: SignalStore, started: float) -> None:
        self.store = store
        self.started = started
        self.nodes: dict[int, WatchedNode] = {}  # heartbeat COB-ID -> node
        self.emcy_ids: dict[int, WatchedNode] = {}  # EMCY COB-ID -> node
        self.on_emcy: Callable[[int, Emcy], None] | None = None  # the diagnostic events' hook: node id, EMCY
        self.on_boot_up: Callable[[int], None] | None = None  # pdo: from_node reads the layouts again: node id
        self.on_heartbeat_of: Callable[[int], None] | None = None  # called for the heartbeats of ``unread`` nodes
        self.unread: set[int] = set()  # node ids whose PDO layouts could not be read (pdo: from_node)
        # TPDOs whose layout the node has not told yet (pdo: from_node): bad until then, whatever the heartbeat
        self.pending: set[int] = set()
        for cfg, desc in table.canopen.get(bus, []):
            produced = desc.heartbeat_ms
            ms = cfg.heartbeat_timeout_ms if cfg.heartbeat_timeout_ms is not None else (
                produced * CONSUMER_FACTOR if produced else 0)
            hb = table.messages[f"{bus}.{cfg.name}.Heartbeat"].index
            emcy = table.messages[f"{bus}.{cfg.name}.EMCY"].index
            tpdos = [table.messages[f"{bus}.{m.name}"].index for m in desc.messages  # and the objects by SDO
                     if table.messages[f"{bus}.{m.name}"].index not in (hb, emcy) and m.name != desc.nmt
                     and m.name not in desc.rpdo]
            node = WatchedNode(cfg.id, cfg.name, ms / 1000 if ms else None, hb, tpdos, emcy)
            self.nodes[HEARTBEAT_BASE + cfg.id] = node
            self.emcy_ids[EMCY_BASE + cfg.id] = node

    def on_batch(self, batch: list[RawFrame], mono: float) -> None:
        """Heartbeats of this batch: count them and boot-ups (every frame: a repeated boot-up counts too)."""
        nodes = self.nodes
        emcy_ids = self.emcy_ids
        for pos, (can_id, flags, data, ts) in enumerate(batch):
            node = nodes.get(can_id)
            if node is None or flags & _NOT_DATA or not data:
                node = emcy_ids.get(can_id)
                if node is not None and not flags & _NOT_DATA and len(data) == 8:
                    node.emcy_count += 1
                    node.last_emcy = decode_emcy(data, ts)
                    if self.on_emcy is not None:
                        self.on_emcy(node.node_id, node.last_emcy)
                continue
            state = data[0] & 0x7F
            node.heartbeats += 1
            node.last_mono = mono
            node.state = state
            if node.lost:
                self._found(node)
            if state == BOOT_UP:
                node.boot_ups += 1
                self._restarted(node, batch[pos + 1:])
                if self.on_boot_up is not None:
                    self.on_boot_up(node.node_id)
            elif node.node_id in self.unread and self.on_heartbeat_of is not None:
                self.on_heartbeat_of(node.node_id)

    def _restarted(self, node: WatchedNode, after: list[RawFrame]) -> None:
        """TPDOs received before the boot-up are bad until their next frame; ``after``: the rest of the batch
        (the store has counted those frames already: they are the node's values after its restart)."""
        reason = f"CANopen node {node.name} restarted (boot-up): waiting for its PDO"
        store = self.store
        node.restarted = {}
        for mi in node.tpdos:
            key = store.table.message_list[mi].key
            if any(f[0] == key and not f[1] & _NOT_DATA for f in after):
                continue
            node.restarted[mi] = store.msg_count[mi]
            if store.msg_count[mi] > 0:
                store.held.add(mi)
                store.set_message_quality(mi, Quality.BAD, reason)

    def _found(self, node: WatchedNode) -> None:
        """A heartbeat after a loss: a TPDO received while lost is good again, the others wait for theirs."""
        node.lost = False
        self.store.held.discard(node.heartbeat)
        self.store.set_message_quality(node.heartbeat, Quality.GOOD)
        self.store.held.discard(node.emcy)  # the last EMCY is an event record: good once there is one
        self.store.set_message_quality(node.emcy, Quality.GOOD if self.store.msg_count[node.emcy] else Quality.WAITING)
        for mi in node.tpdos:
            if mi in node.restarted or mi in self.pending:
                continue
            self.store.held.discard(mi)
            if self.store.msg_count[mi] > node.counts_at_loss.get(mi, 0):
                self.store.set_message_quality(mi, Quality.GOOD)
            else:
                self.store.set_message_quality(mi, Quality.STALE)

    def expire(self, now: float) -> None:
        """Run by the store's supervisor tick: heartbeats past their consumer time make the node lost."""
        store = self.store
        for node in self.nodes.values():
            for mi, before in list(node.restarted.items()):  # a TPDO seen since the boot-up is current
                if store.msg_count[mi] > before:
                    del node.restarted[mi]
                    if not node.lost and mi not in self.pending:
                        store.held.discard(mi)
                        store.set_message_quality(mi, Quality.GOOD)
            if node.timeout_s is None:
                continue
            since = node.last_mono if node.last_mono is not None else self.started
            if now - since <= node.timeout_s:
                continue
            reason = f"CANopen node {node.name}: no heartbeat for {round(node.timeout_s * 1000)} ms"
            if not node.lost:
                node.lost = True
                node.counts_at_loss = {mi: store.msg_count[mi] for mi in node.tpdos}
            for mi in (node.heartbeat, node.emcy, *node.tpdos):
                store.held.add(mi)
                store.set_message_quality(mi, Quality.BAD, reason)

    def summary(self, sdo: Callable[[int], SdoCounters] | None = None) -> dict[str, CanopenNodeStatus]:
        """Per node: NMT state, heartbeats, boot-ups, lost, last EMCY, and with ``sdo`` (the bus's SDO
        client's counters by node id) its SDO transfers, aborts and timeouts (the bus status)."""
        out = {}
        for n in self.nodes.values():
            c = sdo(n.node_id) if sdo is not None else None
            out[n.name] = CanopenNodeStatus(
                n.node_id, None if n.state is None else NMT_STATES.get(n.state, f"0x{n.state:02X}"), n.heartbeats,
                n.boot_ups, n.lost, n.emcy_count, n.last_emcy, *((c.transfers, c.aborts, c.timeouts) if c else ()))
        return out


# CiA 301 emergency error code classes: (mask, value) -> name, the most specific first
_CLASSES: tuple[tuple[int, int, str], ...] = (
    (0xFF00, 0x0000, "error reset / no error"), (0xFF00, 0x1000, "generic"),
    (0xFF00, 0x2100, "current / device input side"), (0xFF00, 0x2200, "current / inside the device"),
    (0xFF00, 0x2300, "current / device output side"), (0xF000, 0x2000, "current"),
    (0xFF00, 0x3100, "voltage / mains"), (0xFF00, 0x3200, "voltage / inside the device"),
    (0xFF00, 0x3300, "voltage / output"), (0xF000, 0x3000, "voltage"),
    (0xFF00, 0x4100, "temperature / ambient"), (0xFF00, 0x4200, "temperature / device"),
    (0xF000, 0x4000, "temperature"), (0xF000, 0x5000, "device hardware"),
    (0xFF00, 0x6100, "device software / internal"), (0xFF00, 0x6200, "device software / user"),
    (0xFF00, 0x6300, "device software / data set"), (0xF000, 0x6000, "device software"),
    (0xF000, 0x7000, "additional modules"), (0xFF00, 0x8100, "monitoring / communication"),
    (0xFF00, 0x8200, "monitoring / protocol error"), (0xF000, 0x8000, "monitoring"),
    (0xF000, 0x9000, "external error"), (0xFF00, 0xFF00, "device specific"),
    (0xF000, 0xF000, "additional functions"),
)
_REGISTER_BITS = ("generic", "current", "voltage", "temperature", "communication", "device_profile",
                  "reserved", "manufacturer")


def error_class(code: int) -> str:
    """The CiA 301 class of an emergency error code ("unknown" for a reserved range)."""
    return next((name for mask, value, name in _CLASSES if code & mask == value), "unknown")


def decode_emcy(data: bytes, ts: int) -> Emcy:
    """An 8-byte EMCY payload: error code (16 bits, little-endian), error register, 5 manufacturer bytes."""
    code = data[0] | data[1] << 8
    register = data[2]
    bits = tuple(name for i, name in enumerate(_REGISTER_BITS) if register >> i & 1)
    return Emcy(code, error_class(code), register, bits, bytes(data[3:8]), ts)
