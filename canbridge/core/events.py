"""Diagnostic events: DM1 diffs and EMCY turned into typed events, rate-bounded per (bus, source),
recorded in the audit log and fanned out to bounded subscriber queues.

A flapping DM1 or an EMCY flood cannot grow memory: each (bus, source) has a token bucket
(``rate`` events/s, ``burst``); what exceeds it is counted, and one ``suppressed`` event with the count
goes out before the source's next admitted event. Subscriber queues are deques of ``maxlen``: a slow
subscriber loses its oldest events (counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator

from canbridge._bridge import EventSubscription as PublicEventSubscription
from canbridge._canopen import Emcy
from canbridge._events import DiagnosticEvent
from canbridge._j1939 import Dm1, Dtc
from canbridge.core.audit import AuditLog

MAX_KEYS = 4096  # (bus, source) rate buckets kept; the least recently used is forgotten first
_LAMPS = ("mil", "red_stop", "amber_warning", "protect")


def lamps(d: Dm1) -> dict[str, str]:
    return {name: getattr(d, name) for name in _LAMPS}


def _dtc(d: Dtc) -> dict[str, object]:
    return {"spn": d.spn, "fmi": d.fmi, "occurrences": d.occurrences, "conversion_method": d.conversion_method}


def dm1_events(bus: str, old: Dm1 | None, new: Dm1) -> list[DiagnosticEvent]:
    """The events between two consecutive DM1 of one source: DTCs by (SPN, FMI) that appeared or
    cleared, and a lamp change when no DTC event carries it."""
    before = {(d.spn, d.fmi): d for d in (old.dtcs if old else ())}
    after = {(d.spn, d.fmi): d for d in new.dtcs}
    lamp = lamps(new)
    out = [DiagnosticEvent(new.timestamp_ns, bus, new.source, "dtc_appeared", {**_dtc(d), "lamps": lamp})
           for k, d in after.items() if k not in before]
    out += [DiagnosticEvent(new.timestamp_ns, bus, new.source, "dtc_cleared", {**_dtc(d), "lamps": lamp})
            for k, d in before.items() if k not in after]
    if not out and old is not None and lamps(old) != lamp:
        out.append(DiagnosticEvent(new.timestamp_ns, bus, new.source, "lamps_changed",
                                   {"lamps": lamp, "before": lamps(old)}))
    return out


def emcy_event(bus: str, node_id: int, e: Emcy) -> DiagnosticEvent:
    return DiagnosticEvent(e.timestamp_ns, bus, node_id, "emcy_reset" if e.code == 0 else "emcy", {
        "code": e.code, "error_class": e.error_class, "error_register": e.error_register,
        "register_bits": list(e.register_bits), "manufacturer": e.manufacturer.hex()})


class _Bucket:
    __slots__ = ("stamp", "suppressed", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = burst
        self.stamp = now
        self.suppressed = 0


class EventSubscription(PublicEventSubscription):
    """Events as they come, in batches, from a bounded queue (oldest dropped, counted)."""

    def __init__(self, hub: EventHub, maxlen: int) -> None:
        self._hub = hub
        self.queue: collections.deque[DiagnosticEvent] = collections.deque(maxlen=maxlen)
        self.dropped = 0
        self._wake = asyncio.Event()
        self._closed = False

    def put(self, ev: DiagnosticEvent) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(ev)
        self._wake.set()

    def __aiter__(self) -> AsyncIterator[list[DiagnosticEvent]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[DiagnosticEvent]]:
        while not self._closed:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self.queue)
            self.queue.clear()
            yield batch

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._hub.subscribers.discard(self)


class EventHub:
    """Every diagnostic event of the bridge: bounded per source, audited, delivered to subscribers."""

    def __init__(self, audit: AuditLog | None, *, rate: float = 10.0, burst: float = 50.0) -> None:
        self.audit = audit
        self.rate = rate
        self.burst = burst
        self._buckets: collections.OrderedDict[tuple[str, int], _Bucket] = collections.OrderedDict()
        self.subscribers: set[EventSubscription] = set()
        self.published = 0
        self.suppressed = 0

    def subscribe(self, maxlen: int = 1000) -> EventSubscription:
        sub = EventSubscription(self, maxlen)
        self.subscribers.add(sub)
        return sub

    def on_dm1(self, bus: str, old: Dm1 | None, new: Dm1) -> None:
        for ev in dm1_events(bus, old, new):
            self.publish(ev)

    def on_emcy(self, bus: str, node_id: int, e: Emcy) -> None:
        self.publish(emcy_event(bus, node_id, e))

    def publish(self, ev: DiagnosticEvent) -> None:
        now = time.monotonic()
        key = (ev.bus, ev.source)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        if b.tokens < 1.0:
            b.suppressed += 1
            self.suppressed += 1
            return
        b.tokens -= 1.0
        if b.suppressed:
            self._deliver(DiagnosticEvent(ev.timestamp_ns, ev.bus, ev.source, "suppressed", {"count": b.suppressed}))
            b.suppressed = 0
        self._deliver(ev)

    def _deliver(self, ev: DiagnosticEvent) -> None:
        self.published += 1
        if self.audit is not None:
            self.audit.record_event(event=ev.kind, bus=ev.bus, source=ev.source, event_time_ns=ev.timestamp_ns,
                                    **ev.detail)
        for sub in list(self.subscribers):
            sub.put(ev)
