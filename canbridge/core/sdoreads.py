"""Reads of the CANopen objects served by SDO (objects in no TPDO): an SDO upload on demand
(``Bridge.refresh``) or polled at a configured interval, the answer decoded into the store by the
object's generated decoder. A read that fails (the node's abort, no answer within the node's SDO
timeout, the bus down) makes the value ``bad`` with the reason; the last value stays readable.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Mapping

from canbridge._errors import BusError
from canbridge._model import Quality
from canbridge.core.busrunner import BusRunner
from canbridge.core.can.sdo import SdoBusy, SdoError
from canbridge.core.mapping.table import MappingTable, MessageEntry
from canbridge.core.store import SignalStore

log = logging.getLogger("canbridge.canopen")


class SdoReads:
    """Every SDO-served object of the table: read on demand, and the polls the nodes configure."""

    def __init__(self, table: MappingTable, store: SignalStore, runners: Mapping[str, BusRunner]) -> None:
        self.table = table
        self.store = store
        self.runners = runners
        self.reads = 0
        self.failed = 0
        # (entry, interval s) of every polled object, from each node's poll_ms globs (the first that matches)
        self.polls: list[tuple[MessageEntry, float]] = []
        for bus, nodes in table.canopen.items():
            for cfg, _desc in nodes:
                for e in table.message_list:
                    obj = e.sdo
                    if obj is None or e.info.bus != bus or obj.node != cfg.name or not obj.readable:
                        continue
                    name = e.info.signals[0][len(bus) + len(cfg.name) + 2:]
                    ms = next((v for p, v in cfg.poll_ms.items() if fnmatch.fnmatchcase(name, p)), None)
                    if ms:
                        self.polls.append((e, ms / 1000))

    async def read(self, entry: MessageEntry) -> None:
        """Upload the object now and store its value, or make it bad with why it could not be read."""
        obj = entry.sdo
        assert obj is not None
        client = self.runners[entry.info.bus].sdo
        assert client is not None
        if not obj.readable:
            return  # a write-only object: nothing to read, its value is what was written
        why = f"CANopen node {obj.node}: {obj.where()} not read: "
        try:
            data = await client.upload(obj.node_id, obj.index, obj.subindex)
        except SdoBusy:
            return  # the queue is full: the value keeps its age (and turns stale past max_age_ms)
        except (SdoError, BusError) as e:
            self._bad(entry, why + str(e))
            return
        if len(data) < obj.size:
            self._bad(entry, why + f"the node answered {len(data)} bytes for a {obj.size}-byte object")
            return
        self.reads += 1
        if entry.index in self.store.held:  # a lost node's values stay bad until its heartbeat
            return
        self.store.transmitted(entry.index, entry.decoder, data[:obj.size], entry.signal_indices)

    def _bad(self, entry: MessageEntry, reason: str) -> None:
        self.failed += 1
        if entry.index not in self.store.held:
            self.store.set_message_quality(entry.index, Quality.BAD, reason)

    async def poll(self) -> None:
        """Read each polled object at its interval (each node's queue keeps one transfer in flight)."""
        if not self.polls:
            return
        loop = asyncio.get_running_loop()
        due = {id(e): loop.time() for e, _ in self.polls}
        while True:
            now = loop.time()
            ready = [(e, s) for e, s in self.polls if due[id(e)] <= now]
            for e, s in ready:
                due[id(e)] = now + s
            if ready:
                await asyncio.gather(*(self._read_quietly(e) for e, _ in ready))
            await asyncio.sleep(max(0.0, min(due.values()) - loop.time()))

    async def _read_quietly(self, entry: MessageEntry) -> None:
        try:
            await self.read(entry)
        except Exception as e:  # one object's failure must not end the polling of the others
            log.warning("%s: SDO poll failed: %s: %s", entry.info.name, type(e).__name__, e)
