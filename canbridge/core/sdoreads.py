"""Reads of the CANopen objects served by SDO (objects in no TPDO): an SDO upload on demand
(``Bridge.refresh``) or polled at a configured interval, the answer decoded into the store by the
object's generated decoder. A read that fails (the node's abort, no answer within the node's SDO
timeout, the bus down) makes the value ``bad`` with the reason; the last value stays readable.

A client's read (:meth:`SdoReads.refresh`, what the plugins call through ``Bridge.refresh``) answers from
the cache while the last upload is younger than the node's ``max_age_ms`` and good; otherwise it uploads,
and readers that ask while that upload is in flight share it rather than queue one each.
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
        self.answered_from_cache = 0
        self.last_read: dict[int, float] = {}  # message index -> loop time of its last good upload
        self._inflight: dict[int, asyncio.Task[None]] = {}  # message index -> the upload readers share
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
        self.last_read[entry.index] = asyncio.get_running_loop().time()
        if entry.index in self.store.held:  # a lost node's values stay bad until its heartbeat
            return
        self.store.transmitted(entry.index, entry.decoder, data[:obj.size], entry.signal_indices)

    async def refresh(self, entry: MessageEntry) -> None:
        """A client's read: nothing to do while the cached value is fresh (good, and uploaded less than
        ``max_age_ms`` ago; without ``max_age_ms`` every read uploads), else the upload in flight for the
        object or a new one. Shielded: a reader that gives up does not cancel the others' upload."""
        obj = entry.sdo
        assert obj is not None
        if not obj.readable:
            return
        index = entry.index
        loop = asyncio.get_running_loop()
        done = self.last_read.get(index)
        if (entry.timeout_s is not None and done is not None and loop.time() - done <= entry.timeout_s
                and self.store.msg_quality[index] is Quality.GOOD):
            self.answered_from_cache += 1
            return
        task = self._inflight.get(index)
        if task is None:
            task = loop.create_task(self.read(entry), name=f"sdo-read {entry.info.name}")
            self._inflight[index] = task
            task.add_done_callback(lambda _t: self._inflight.pop(index, None))
        await asyncio.shield(task)

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
