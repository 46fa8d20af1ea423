"""A simulator that plays the ECUs of a mapping on a bus: every received message at its cycle time
with plausible changing values, reacting to the commands the bridge writes (``follow``: a status
signal shows a command signal's value; ``ramp``: it moves towards it)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import can

from canbridge.core.mapping.table import MappingTable, MessageEntry, frame_key
from canbridge.core.simulator_canopen import CanopenNodes
from canbridge.core.simulator_j1939 import J1939Ecus

log = logging.getLogger("canbridge.simulator")

DEFAULT_PERIOD_S = 0.1
RAMP_PER_S = 2000.0  # how fast a ramped signal moves towards its target, in its units per second


class Simulator:
    """Plays one bus's received messages on a python-can bus, and listens to the transmitted ones."""

    def __init__(self, table: MappingTable, bus_name: str, bus: can.BusABC,
                 follow: Mapping[str, str] | None = None, ramp: Mapping[str, str] | None = None,
                 waves: Mapping[str, Any] | None = None, constants: Mapping[str, float] | None = None,
                 counters: Mapping[str, float] | None = None) -> None:
        self.table = table
        self.bus_name = bus_name
        self.bus = bus
        self.follow = dict(follow or {})
        self.ramp = dict(ramp or {})
        self.waves = dict(waves or {})
        self.constants = dict(constants or {})
        self.counters = dict(counters or {})
        self.canopen = CanopenNodes(table, bus_name, bus)  # the bus's CANopen nodes play themselves
        entries = [e for e in table.messages_of(bus_name) if not self.canopen.owns(e)]
        self.played = [e for e in entries if e.info.direction == "rx"]
        self.heard = {frame_key(e.info.frame_id, e.info.extended): e for e in entries if e.info.direction == "tx"}
        self.commands: dict[str, Any] = {}  # "Message.Signal" -> last value the bridge sent
        self.state: dict[str, float] = {}
        self.frames_sent = 0
        self._stop = asyncio.Event()
        self._mux_page: dict[str, int] = {}
        self._t0 = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.j1939 = J1939Ecus.for_bus(table, bus_name, bus, self._payload)  # None: no J1939 groups received
        for target in [*self.follow, *self.ramp, *self.waves, *self.constants, *self.counters]:
            if "." not in target:
                raise ValueError(f"simulator rule {target!r}: use Message.Signal")

    def _wave(self, e: MessageEntry, sig: Any, t: float, i: int) -> Any:
        key = f"{e.info.message}.{sig.name}"
        src = self.follow.get(key)
        if src is not None and src in self.commands:
            return self.commands[src]
        src = self.ramp.get(key)
        if src is not None:
            target = float(self.commands.get(src, 0))
            cur = self.state.get(key, 0.0)
            step = RAMP_PER_S * DEFAULT_PERIOD_S
            cur = min(target, cur + step) if cur < target else max(target, cur - step)
            self.state[key] = cur
            return cur
        if key in self.constants:
            return self.constants[key]
        if key in self.counters:
            return self.counters[key] * t
        wave = self.waves.get(key)
        if wave is not None:
            mid, amp = (wave.low + wave.high) / 2, (wave.high - wave.low) / 2
            return mid + amp * math.sin(2 * math.pi * t / wave.period_s + i)
        info = self.table.signals[f"{self.bus_name}.{key}"]
        if sig.choices:
            keys = sorted(sig.choices)
            return keys[int(t / 5 + i) % len(keys)]
        if info.value_type is bool:
            return int(int(t / 3 + i) % 2)
        lo, hi = info.minimum, info.maximum
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo > 1e9:
            lo, hi = 0.0, 1000.0
        mid, amp = (lo + hi) / 2, (hi - lo) * 0.4
        period = 20 + 7 * i
        return mid + amp * math.sin(2 * math.pi * t / period + i)

    def _payload(self, e: MessageEntry, t: float) -> bytes:
        m = e.db_message
        values: dict[str, Any] = {}
        page = None
        mux = next((s for s in m.signals if s.is_multiplexer), None)
        if mux is not None:
            ids = sorted({i for s in m.signals for i in (s.multiplexer_ids or [])})
            n = self._mux_page.get(e.info.name, -1) + 1
            self._mux_page[e.info.name] = n
            page = ids[n % len(ids)] if ids else 0
            values[mux.name] = page
        for i, s in enumerate(m.signals):
            if s.is_multiplexer:
                continue
            if s.multiplexer_ids and page not in s.multiplexer_ids:
                continue
            v = self._wave(e, s, t, i)
            values[s.name] = v
        data: bytes = m.encode(values, strict=False, scaling=True, padding=False)
        return data

    def _on_message(self, msg: can.Message) -> None:
        if self.j1939 is not None and self._loop is not None:  # the notifier's thread: hand over to the loop
            self._loop.call_soon_threadsafe(self.j1939.on_message, msg, time.monotonic() - self._t0)
        e = self.heard.get(frame_key(msg.arbitration_id, msg.is_extended_id))
        if e is None:
            return
        try:
            decoded = e.db_message.decode(bytes(msg.data), decode_choices=False)
        except Exception:
            return
        for k, v in decoded.items():
            self.commands[f"{e.info.message}.{k}"] = v

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        notifier = can.Notifier(self.bus, [self._on_message, *self.canopen.listeners], loop=loop)
        nodes = asyncio.create_task(self.canopen.run(self._stop), name=f"simulator-{self.bus_name}-canopen")
        t0 = self._t0 = time.monotonic()
        next_due = {e.info.name: 0.0 for e in self.played}
        j1939 = self.j1939
        ecus = asyncio.create_task(j1939.run(lambda: time.monotonic() - t0)) if j1939 is not None else None
        try:
            while not self._stop.is_set():
                now = time.monotonic() - t0
                for e in self.played:
                    if now >= next_due[e.info.name]:
                        period = (e.info.cycle_time_ms or DEFAULT_PERIOD_S * 1000) / 1000
                        next_due[e.info.name] = now + period
                        cyclic = j1939.cyclic(e) if j1939 is not None else None
                        if cyclic is False:  # a J1939 group sent on request only
                            next_due[e.info.name] = math.inf
                            continue
                        try:
                            data = self._payload(e, now)
                            if j1939 is not None and cyclic:
                                j1939.send(e, data)
                            else:
                                self.bus.send(can.Message(arbitration_id=e.info.frame_id, data=data,
                                                          is_extended_id=e.info.extended, is_fd=e.info.fd))
                            self.frames_sent += 1
                        except Exception as ex:  # a bus hiccup must not end the simulation
                            log.debug("simulator: %s: %s", e.info.name, ex)
                wake = min(next_due.values(), default=now + 1) - (time.monotonic() - t0)
                try:
                    await asyncio.wait_for(self._stop.wait(), min(1.0, max(0.005, wake)))
                except TimeoutError:
                    pass
        finally:
            self._stop.set()
            if j1939 is not None and ecus is not None:
                j1939.stop()
                await asyncio.gather(ecus, return_exceptions=True)
            await nodes
            notifier.stop(timeout=1)

    def stop(self) -> None:
        self._stop.set()
