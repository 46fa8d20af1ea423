"""Diagnostic events: DM1 diffs, EMCY classes and resets, the per-source flood bound, the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import canbridge
from canbridge._j1939 import Dm1, Dtc
from canbridge.core.audit import AuditLog
from canbridge.core.canopennode import decode_emcy
from canbridge.core.events import EventHub


def _dm1(dtcs: tuple[Dtc, ...], amber: str = "off", n: int = 1) -> Dm1:
    return Dm1(0x00, "off", "off", amber, "off", "none", "none", "none", "none", dtcs, n * 1000, n)


def test_a_replayed_dm1_sequence_gives_exactly_its_events_in_the_subscription_and_the_log(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    hub = EventHub(audit)
    sub = hub.subscribe()
    a, b = Dtc(190, 3, 1, 0), Dtc(110, 16, 2, 0)
    seq = [_dm1(()), _dm1((a,), "on", 2), _dm1((a, b), "on", 3), _dm1((b,), "on", 4), _dm1((b,), "off", 5)]
    old = None
    for d in seq:
        hub.on_dm1("truck", old, d)
        old = d
    got = [(e.kind, e.detail.get("spn"), e.bus, e.source) for e in sub.queue]
    assert got == [("dtc_appeared", 190, "truck", 0), ("dtc_appeared", 110, "truck", 0),
                   ("dtc_cleared", 190, "truck", 0), ("lamps_changed", None, "truck", 0)]
    assert sub.queue[0].detail["lamps"] == {"mil": "off", "red_stop": "off", "amber_warning": "on",
                                                   "protect": "off"}
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(x["event"], x.get("spn"), x["bus"]) for x in lines] == [k[:3] for k in got]


def test_emcy_of_each_class_and_a_reset() -> None:
    hub = EventHub(None, burst=100)
    sub = hub.subscribe()
    codes = {0x1000: "generic", 0x2310: "current / device output side", 0x3210: "voltage / inside the device",
             0x4210: "temperature / device", 0x5000: "device hardware", 0x6100: "device software / internal",
             0x7000: "additional modules", 0x8130: "monitoring / communication", 0x9000: "external error",
             0xFF01: "device specific", 0x0000: "error reset / no error"}
    for code in codes:
        hub.on_emcy("line", 5, decode_emcy(bytes([code & 0xFF, code >> 8, 0x09, 1, 2, 3, 4, 5]), 7))
    evs = list(sub.queue)
    assert [e.detail["error_class"] for e in evs] == list(codes.values())
    assert [e.kind for e in evs] == ["emcy"] * 10 + ["emcy_reset"]
    assert evs[0].detail["register_bits"] == ["generic", "temperature"]
    assert evs[0].detail["manufacturer"] == "0102030405"


def test_an_emcy_flood_is_bounded_per_source_and_counted() -> None:
    hub = EventHub(None, rate=0.001, burst=10)
    sub = hub.subscribe(maxlen=100)
    e = decode_emcy(bytes([0x10, 0x42, 0x08, 0, 0, 0, 0, 0]), 1)
    for _ in range(100_000):
        hub.on_emcy("line", 5, e)
    hub.on_emcy("line", 6, e)  # another node is not suppressed by the first one's flood
    assert len(sub.queue) == 11
    assert hub.suppressed == 100_000 - 10
    hub._buckets[("line", 5)].tokens = 1.0  # the bucket refilled: the count goes out before the next event
    hub.on_emcy("line", 5, e)
    tail = list(sub.queue)[-2:]
    assert (tail[0].kind, tail[0].detail["count"]) == ("suppressed", 100_000 - 10)
    assert tail[1].kind == "emcy"


def test_a_slow_subscriber_loses_its_oldest_events_not_memory() -> None:
    hub = EventHub(None, burst=10_000)
    sub = hub.subscribe(maxlen=50)
    e = decode_emcy(bytes(8), 1)
    for node in range(1, 128):
        for _ in range(20):
            hub.on_emcy("line", node, e)
    assert len(sub.queue) == 50
    assert sub.dropped == 127 * 20 - 50


DATA = Path(__file__).resolve().parents[1] / "data"


async def test_dm1_and_emcy_frames_on_the_bus_become_events_in_the_bridge_and_its_audit_log(tmp_path: Path) -> None:
    from canbridge.testing import BridgeHarness

    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"ev-{tmp_path.name}"},
                        {"name": "line", "interface": "virtual", "channel": f"ev2-{tmp_path.name}",
                         "nodes": [{"id": 5, "name": "drive1", "eds": str(DATA / "eds" / "drive.eds")}]}],
              "mappings": [{"bus": "truck", "dbc": str(DATA / "dbc" / "j1939_test.dbc"), "messages": ["ET1"]}]}
    async with BridgeHarness(config, state_dir=tmp_path) as h:
        sub = h.bridge.events.subscribe()
        public = h.bridge.subscribe_events()  # the plugins' view of the same events
        h.inject("18FECA00#0400BE000205FFFF", bus="truck")  # SPN 190 FMI 2 appears, amber on
        h.inject("18FECA00#0000FFFFFFFFFFFF", bus="truck")  # no DTC: it clears
        h.inject("085#104209AABBCCDDEE", bus="line")  # EMCY: device temperature
        h.inject("085#0000000000000000", bus="line")  # error reset
        await h.until(lambda: len(sub.queue) == 4)
        by_bus = {b: [(e.source, e.kind) for e in sub.queue if e.bus == b] for b in ("truck", "line")}
        assert by_bus == {"truck": [(0, "dtc_appeared"), (0, "dtc_cleared")], "line": [(5, "emcy"), (5, "emcy_reset")]}
        assert next(e for e in sub.queue if e.kind == "emcy").detail["error_class"] == "temperature / device"
        async with public:
            seen: list[canbridge.DiagnosticEvent] = []
            async for batch in public:
                seen += batch
                if len(seen) == 4:
                    break
        assert sorted(e.kind for e in seen) == ["dtc_appeared", "dtc_cleared", "emcy", "emcy_reset"]
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert sorted(x["event"] for x in lines if "bus" in x) == ["dtc_appeared", "dtc_cleared", "emcy", "emcy_reset"]
