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

from dataclasses import dataclass, field

from canbridge._model import FrameFlags, Quality, RawFrame
from canbridge.core.mapping.canopen import BOOT_UP, HEARTBEAT_BASE
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
        for cfg, desc in table.canopen.get(bus, []):
            produced = desc.heartbeat_ms
            ms = cfg.heartbeat_timeout_ms if cfg.heartbeat_timeout_ms is not None else (
                produced * CONSUMER_FACTOR if produced else 0)
            hb = table.messages[f"{bus}.{cfg.name}.Heartbeat"].index
            tpdos = [table.messages[f"{bus}.{m.name}"].index for m in desc.messages
                     if table.messages[f"{bus}.{m.name}"].index != hb]
            self.nodes[HEARTBEAT_BASE + cfg.id] = WatchedNode(cfg.id, cfg.name, ms / 1000 if ms else None, hb, tpdos)

    def on_batch(self, batch: list[RawFrame], mono: float) -> None:
        """Heartbeats of this batch: count them and boot-ups (every frame: a repeated boot-up counts too)."""
        nodes = self.nodes
        for can_id, flags, data, _ts in batch:
            node = nodes.get(can_id)
            if node is None or flags & _NOT_DATA or not data:
                continue
            state = data[0] & 0x7F
            node.heartbeats += 1
            node.last_mono = mono
            node.state = state
            if node.lost:
                self._found(node)
            if state == BOOT_UP:
                node.boot_ups += 1
                self._restarted(node)

    def _restarted(self, node: WatchedNode) -> None:
        reason = f"CANopen node {node.name} restarted (boot-up): waiting for its PDO"
        node.restarted = {mi: self.store.msg_count[mi] for mi in node.tpdos}
        for mi in node.tpdos:
            if self.store.msg_count[mi] > 0:
                self.store.held.add(mi)
                self.store.set_message_quality(mi, Quality.BAD, reason)

    def _found(self, node: WatchedNode) -> None:
        """A heartbeat after a loss: a TPDO received while lost is good again, the others wait for theirs."""
        node.lost = False
        self.store.held.discard(node.heartbeat)
        self.store.set_message_quality(node.heartbeat, Quality.GOOD)
        for mi in node.tpdos:
            if mi in node.restarted:
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
                    if not node.lost:
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
            for mi in (node.heartbeat, *node.tpdos):
                store.held.add(mi)
                store.set_message_quality(mi, Quality.BAD, reason)

    def summary(self) -> dict[str, dict[str, object]]:
        """Per node: NMT state, heartbeats, boot-ups, lost (for the bus status)."""
        return {n.name: {"id": n.node_id, "state": n.state, "heartbeats": n.heartbeats, "boot_ups": n.boot_ups,
                         "lost": n.lost} for n in self.nodes.values()}
