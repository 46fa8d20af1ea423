"""MQTT for J1939 senders heard but not configured (signals added at run time). Sparkplug: the device gets
DDEATH and a new DBIRTH with the new metrics (new aliases, the others unchanged) before any DDATA of
them, decoded by an independent host (Eclipse Tahu's JavaScript codec). JSON: the new topics appear.

Tier ``mqtt-interop`` (Mosquitto, npm sparkplug-payload), except the unit test of the aliases."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from canbridge_mqtt.session import EdgeNode
from canbridge_mqtt.sparkplug import DataType

from canbridge import SignalInfo
from canbridge.testing import BridgeHarness, signal_info, until
from tests.plugins.mqtt.broker import Mosquitto, running_broker
from tests.plugins.mqtt.test_mqtt_interop import GROUP, NODE, by_name, metrics, mqtt_config, tahu_host
from tests.plugins.mqtt.test_mqtt_json import sub

broker = running_broker  # the fixture, under the name the tests use
DBC = Path(__file__).resolve().parents[2] / "data" / "dbc" / "j1939_test.dbc"
FUEL = "sa0x21.ET1/FuelTemperature"


def truck(plugins: dict[str, Any]) -> dict[str, Any]:
    return {"buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939-{uuid.uuid4().hex[:8]}"}],
            "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["ET1"]}], "plugins": plugins}


def heard() -> SignalInfo:
    return dataclasses.replace(signal_info("truck.x.A", message="sa0x21.ET1"), name="truck.sa0x21.ET1.A")


def test_added_metrics_get_new_aliases_and_the_old_ones_keep_theirs() -> None:
    node = EdgeNode("g", "n", [signal_info("truck.ET1.A"), signal_info("truck.ET1.B"), signal_info("other.M.C")],
                    [("Node/X", DataType.STRING)])
    before = {d.signal: d.alias for d in node.by_signal.values()}
    assert node.add_signals([heard(), signal_info("truck.ET1.A")]) == ["truck"]
    assert {s: node.by_signal[s].alias for s in before} == before
    new = node.by_signal["truck.sa0x21.ET1.A"]
    assert new.alias == max(before.values()) + 1 and new.alias not in {1}  # after the node metric's alias too
    assert [d.signal for d in node.devices["truck"]] == ["truck.ET1.A", "truck.ET1.B", "truck.sa0x21.ET1.A"]
    assert node.add_signals([heard()]) == []  # already a metric


@pytest.mark.tier("mqtt-interop")
async def test_sparkplug_rebirths_the_device_with_the_heard_source_before_its_ddata(broker: Mosquitto,
                                                                                   tmp_path: Path) -> None:
    async with tahu_host(broker.url) as host, BridgeHarness(config=truck({"mqtt": mqtt_config(broker.url)}),
                                                             state_dir=tmp_path / "s") as h:
        await host.state(True)
        await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
        first = by_name(host.messages("DBIRTH")[0])
        assert FUEL not in first
        h.inject("18FEEE21#5050FFFFFFFFFFFF")  # ET1 from 0x21, which no mapping configures
        await host.wait(lambda: len(host.messages("DBIRTH")) == 2, "the second DBIRTH")
        order = [m["topic"].split("/")[2] for m in host.messages() if m["topic"].split("/")[2] != "NDATA"]
        assert order[-2:] == ["DDEATH", "DBIRTH"], order
        again = by_name(host.messages("DBIRTH")[1])
        assert {k: v["alias"] for k, v in again.items() if k in first} == {k: v["alias"] for k, v in first.items()}
        fuel = again[FUEL]
        assert fuel["value"] == 40 and fuel["type"] == "Int16" and fuel["alias"] not in {
            v["alias"] for v in first.values()}
        assert fuel["properties"]["engUnit"]["value"] == "degC"
        aliases = [m["alias"] for m in metrics(host.messages("DBIRTH")[1])]
        assert len(aliases) == len(set(aliases))
        h.inject("18FEEE21#5064FFFFFFFFFFFF")  # 60 degC
        await host.wait(lambda: any(m.get("alias") == fuel["alias"] and m.get("value") == 60
                                    for d in host.messages("DDATA") for m in metrics(d)), "DDATA of the new metric")
        births = [i for i, m in enumerate(host.messages()) if m["topic"].endswith("DBIRTH/" + NODE + "/truck")]
        uses = [i for i, m in enumerate(host.messages()) if m["topic"].split("/")[2] == "DDATA"
                and any(x.get("alias") == fuel["alias"] for x in metrics(m))]
        assert uses and min(uses) > births[1]
        assert all(m["topic"].startswith(f"spBv1.0/{GROUP}/") for m in host.messages())


@pytest.mark.tier("mqtt-interop")
async def test_json_topics_of_a_heard_source_appear(broker: Mosquitto, tmp_path: Path) -> None:
    plugins = {"mqtt": {"broker": {"urls": [broker.url], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                        "json": {"prefix": "cb", "qos": 1}, "report": {"interval_ms": 50}}}
    async with sub(broker.port) as s, BridgeHarness(config=truck(plugins), state_dir=tmp_path) as h:
        await until(lambda: ("cb/status", "online") in s.seen, 10, what="online")
        h.inject("18FEEE21#5050FFFFFFFFFFFF")
        topic = "cb/truck/sa0x21/ET1/FuelTemperature"
        await until(lambda: s.values(topic), 10, what="the new topic")
        assert s.values(topic)[-1]["value"] == 40 and s.values(topic)[-1]["quality"] == "good"
        h.inject("18FEEE21#5064FFFFFFFFFFFF")
        await until(lambda: any(v["value"] == 60 for v in s.values(topic)), 10, what="its change")
