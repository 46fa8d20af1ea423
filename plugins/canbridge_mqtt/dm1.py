"""J1939 trouble codes on plain topics: the DM1 of each source heard, retained, on
``<prefix>/<bus>/dm1/0x<SA>``, published when it changes or its quality does (stale, bad).

The bus status is polled (every ``dm1_interval_s``): a DM1 is at most one message per source per second,
and a retained topic holds what the source says now, so nothing is queued while the broker is away; the
next session publishes every source's current DM1 again."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiomqtt

from canbridge import Bridge, Dm1, Quality, dm1_quality

_LAMPS = ("mil", "red_stop", "amber_warning", "protect")


def dm1_topic(prefix: str, bus: str, source: int) -> str:
    return f"{prefix}/{bus}/dm1/0x{source:02X}"


def dm1_payload(d: Dm1, quality: Quality) -> bytes:
    """The DM1 as on REST (lamps, flash, codes, messages), with ``ts`` in ms and the quality."""
    body: dict[str, Any] = {
        "source": d.source,
        "lamps": {n: getattr(d, n) for n in _LAMPS},
        "flash": {n: getattr(d, n + "_flash") for n in _LAMPS},
        "dtcs": [{"spn": c.spn, "fmi": c.fmi, "occurrences": c.occurrences,
                  "conversion_method": c.conversion_method} for c in d.dtcs],
        "ts": d.timestamp_ns // 1_000_000,
        "messages": d.messages,
        "quality": quality.value,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class Dm1Topics:
    """What each source's retained DM1 topic holds, and what is due to be published."""

    def __init__(self, bridge: Bridge, prefix: str, stale_after_s: float) -> None:
        self.bridge = bridge
        self.prefix = prefix
        self.stale_after_s = stale_after_s
        self._sent: dict[tuple[str, int], tuple[Dm1, Quality]] = {}
        self.published = 0

    def due(self, now_ns: int) -> list[tuple[str, bytes, tuple[str, int], tuple[Dm1, Quality]]]:
        out = []
        for bus in self.bridge.buses:
            try:
                st = self.bridge.bus_status(bus)
            except KeyError:
                continue
            for sa, d in sorted(st.dm1.items()):
                state = (d, dm1_quality(d, st, now_ns, self.stale_after_s))
                old = self._sent.get((bus, sa))
                if old is not None and old[0] is d and old[1] is state[1]:
                    continue
                out.append((dm1_topic(self.prefix, bus, sa), dm1_payload(*state), (bus, sa), state))
        return out

    async def run(self, client: aiomqtt.Client, interval: float) -> None:
        """Publish every source's DM1 once (a new session), then what changes."""
        self._sent.clear()
        while True:
            for topic, payload, key, state in self.due(time.time_ns()):
                await client.publish(topic, payload, qos=1, retain=True)
                self._sent[key] = state
                self.published += 1
            await asyncio.sleep(interval)
