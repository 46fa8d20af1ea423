"""Signals added to the table at run time: J1939 senders heard but not configured (docs/j1939.md).

The bus's J1939 receiver decides *whether* a heard source gets signals (its bound per bus); this module
makes them: the table gains the message and its signals (``table.add_heard_source``), the store its
slots, the listeners (the bus runner's revival list, the runtime's message infos) the entry, and every
:class:`SignalsAddedSubscription` a wake-up. Subscribers read the table's new tail themselves, so nothing
is queued per subscriber and nothing can be dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from canbridge._bridge import SignalsAddedSubscription
from canbridge._model import SignalInfo
from canbridge.core.mapping.table import MappingTable, MessageEntry, add_heard_source, heard_source_name
from canbridge.core.store import SignalStore

log = logging.getLogger("canbridge.bus")


class HeardSources:
    """Grows the table and the store for heard sources and tells subscribers."""

    def __init__(self, table: MappingTable, store: SignalStore) -> None:
        self.table = table
        self.store = store
        self.listeners: list[Callable[[MessageEntry], None]] = []
        self._subs: list[_AddedSubscription] = []

    def add(self, bus: str, template: MessageEntry, address: int) -> MessageEntry | None:
        """Map ``template``'s message for ``address`` on ``bus``; None when its name is taken."""
        entry = add_heard_source(self.table, bus, template, address)
        if entry is None:
            log.warning("bus %s: J1939 source 0x%02X sends %s, but the name %s.%s.%s is taken by the "
                        "configuration: its frames are only counted", bus, address, template.db_message.name,
                        bus, heard_source_name(address), template.db_message.name)
            return None
        self.store.grow()
        for listener in self.listeners:
            listener(entry)
        for sub in self._subs:
            sub.wake()
        log.info("bus %s: J1939 source 0x%02X heard sending %s: %d signals %s.*", bus, address,
                 template.db_message.name, len(entry.signal_indices), entry.info.name)
        return entry

    def subscribe(self) -> SignalsAddedSubscription:
        sub = _AddedSubscription(self)
        self._subs.append(sub)
        return sub

    def _drop(self, sub: _AddedSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()


class _AddedSubscription(SignalsAddedSubscription):
    def __init__(self, owner: HeardSources) -> None:
        self._owner = owner
        self._cursor = len(owner.table.signal_list)  # the table only grows: its tail is what is new
        self._event = asyncio.Event()
        self._closed = False

    def wake(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()
        self._owner._drop(self)

    def __aiter__(self) -> AsyncIterator[list[SignalInfo]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[SignalInfo]]:
        signals = self._owner.table.signal_list
        while not self._closed:
            await self._event.wait()
            self._event.clear()
            if self._closed:
                return
            new = signals[self._cursor:]
            self._cursor += len(new)
            if new:
                yield new
