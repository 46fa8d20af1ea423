"""The simulator's CANopen nodes: each node of a bus played from its own EDS/DCF by the ``canopen`` package's
``LocalNode`` on the simulator's python-can bus (docs/canopen.md, "Simulated nodes").

A played node boots (boot-up message, then pre-operational and operational, as a node with NMT start-up
does), produces its heartbeat at the file's producer heartbeat time (0x1017), sends its TPDOs at their
event timer (100 ms without one) with changing values while operational, answers SDO uploads and
downloads from its object dictionary, keeps what an RPDO writes, and boots again on an NMT reset. The
package is imported only when a bus has nodes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import can

from canbridge.core.mapping.table import MappingTable, MessageEntry

log = logging.getLogger("canbridge.simulator")

DEFAULT_TPDO_S = 0.1  # a TPDO without an event timer is still sent, so that the demo moves
_RESET_COMMANDS = (129, 130)  # NMT reset node, reset communication
_NMT_START, _NMT_PRE_OPERATIONAL = 1, 128


def value_at(var: Any, t: float, i: int) -> int | float | bool:
    """A plausible, slowly changing value of one dictionary variable at time ``t`` (its limits, else its
    type's range; booleans toggle, floats and integers follow a sine of their own period)."""
    import canopen

    dt = var.data_type
    if dt == canopen.objectdictionary.BOOLEAN:
        return int(t / 2 + i) % 2 == 1
    lo = var.min if var.min is not None else None
    hi = var.max if var.max is not None else None
    if lo is None or hi is None:
        if dt in canopen.objectdictionary.FLOAT_TYPES:
            lo, hi = 0.0, 100.0
        else:
            bits = len(var)
            signed = dt in canopen.objectdictionary.SIGNED_TYPES
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
            hi = min(hi, lo + 1000)  # a readable swing, not the whole 32-bit range
    level = (math.sin(2 * math.pi * t / (15 + 4 * i) + i) + 1) / 2
    value = lo + (hi - lo) * level
    return value if dt in canopen.objectdictionary.FLOAT_TYPES else round(value)


class PlayedNode:
    """One node from its file: a ``LocalNode`` on a ``canopen.Network`` that shares the simulator's bus."""

    def __init__(self, network: Any, node_id: int, file: Path) -> None:
        import canopen

        self.node: Any = cast(Any, canopen.LocalNode(node_id, str(file)))  # partly typed library: Any here
        network.add_node(self.node)
        self.node.tpdo.read(from_od=True)  # the layout of the file (a DCF's values where it gives them)
        self.node.rpdo.read(from_od=True)
        self.tpdos = [m for m in self.node.tpdo.map.values() if m.enabled and m.map and m.cob_id is not None]
        self._due = [0.0] * len(self.tpdos)
        for rpdo in self.node.rpdo.map.values():
            if rpdo.enabled and rpdo.map:
                rpdo.add_callback(self._keep)
        self.node.rpdo.subscribe()
        network.subscribe(0, self._on_nmt)  # after the node's own NMT handler: it has set the state

    def boot(self) -> None:
        """Boot-up message, pre-operational (the heartbeat starts), operational."""
        nmt = self.node.nmt
        nmt.send_command(_RESET_COMMANDS[0])  # state 0: the boot-up message
        nmt.send_command(_NMT_PRE_OPERATIONAL)  # from 0: starts the producer heartbeat (0x1017)
        nmt.send_command(_NMT_START)

    def _on_nmt(self, can_id: int, data: bytes, timestamp: float) -> None:
        if len(data) >= 2 and data[1] in (0, self.node.id) and data[0] in _RESET_COMMANDS:
            self.node.nmt.stop_heartbeat()
            self.boot()

    def _keep(self, pdo: Any) -> None:
        """What an RPDO carried is the object's value, as on a real node (an SDO upload returns it)."""
        for var in pdo.map:
            self.node.data_store.setdefault(var.od.index, {})[var.od.subindex] = bytes(var.data)

    def tick(self, t: float) -> int:
        """New values into every TPDO (and the dictionary, so SDO uploads agree); send those that are due.
        Returns the frames sent."""
        if self.node.nmt.state != "OPERATIONAL":
            return 0
        sent = 0
        for k, pdo in enumerate(self.tpdos):
            period = (pdo.event_timer or 0) / 1000 or DEFAULT_TPDO_S
            if t < self._due[k]:
                continue
            self._due[k] = t + period
            for i, var in enumerate(pdo.map):
                if var.od.index < 0x1000:  # a dummy entry: a gap in the frame
                    continue
                var.raw = value_at(var.od, t, i + 3 * k)
                self.node.data_store.setdefault(var.od.index, {})[var.od.subindex] = bytes(var.data)
            pdo.transmit()
            sent += 1
        return sent


class CanopenNodes:
    """The CANopen nodes of one bus for the :class:`~canbridge.core.simulator.Simulator` (its hook)."""

    def __init__(self, table: MappingTable, bus_name: str, bus: can.BusABC) -> None:
        described = table.canopen.get(bus_name, [])
        self.owned = {m.name for _, d in described for m in d.messages}  # "<node>.TPDO1", as entries name them
        self.listeners: list[Callable[[can.Message], None]] = []
        self.nodes: list[PlayedNode] = []
        self.frames_sent = 0
        if not described:
            return
        import canopen

        self.network = canopen.Network(bus)  # the simulator's bus; its notifier feeds self.listeners
        self.listeners = list(self.network.listeners)
        for cfg, d in described:
            if d.file is None:
                log.info("simulator: node %s has no file to play", cfg.name)
                continue
            self.nodes.append(PlayedNode(self.network, cfg.id, d.file))

    def owns(self, entry: MessageEntry) -> bool:
        """A message of a played node (TPDO, heartbeat, EMCY, SDO object, RPDO, NMT): not the DBC simulator's."""
        return entry.info.message in self.owned

    async def run(self, stop: asyncio.Event) -> None:
        if not self.nodes:
            return
        for n in self.nodes:
            n.boot()
        t0 = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic() - t0
                for n in self.nodes:
                    try:
                        self.frames_sent += n.tick(now)
                    except Exception as e:  # a bus hiccup must not end the simulation
                        log.debug("simulator: CANopen node %d: %s", n.node.id, e)
                try:
                    await asyncio.wait_for(stop.wait(), 0.02)
                except TimeoutError:
                    pass
        finally:
            for n in self.nodes:
                n.node.nmt.stop_heartbeat()
