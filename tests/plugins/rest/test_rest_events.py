"""Diagnostic events on the REST stream: a replayed DM1 sequence gives exactly its DTC events."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.plugins.rest.conftest import running
from tests.plugins.rest.test_rest_streams import next_event

DBC = Path(__file__).resolve().parents[2] / "data" / "dbc" / "j1939_test.dbc"


async def test_a_replayed_dm1_sequence_gives_exactly_its_events_on_the_sse_stream() -> None:
    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"ev-{uuid.uuid4().hex[:8]}"}],
              "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["ET1"]}]}
    async with running(config=config) as api:
        resp = await api.session.get(api.u("/api/v1/stream?signals=0&events=1"))
        assert resp.status == 200
        await api.h.until(lambda: api.h.bridge.events.subscribers)
        api.h.inject("18FECA00#0000FFFFFFFFFFFF")  # no DTC
        api.h.inject("18FECA00#0400BE000205FFFF")  # SPN 190 FMI 2 appears, amber on
        api.h.inject("18FECA00#1000BE000205FFFF")  # lamps change only (red stop on, amber off)
        api.h.inject("18FECA00#0000FFFFFFFFFFFF")  # cleared
        got: list[dict[str, Any]] = []
        while len(got) < 3:
            _, data = await next_event(resp, "events")
            got += data["events"]
        assert [(e["kind"], e.get("spn"), e["source"]) for e in got] == [
            ("dtc_appeared", 190, 0), ("lamps_changed", None, 0), ("dtc_cleared", 190, 0)]
        assert got[0]["lamps"]["amber_warning"] == "on" and got[1]["lamps"]["red_stop"] == "on"
        resp.close()
