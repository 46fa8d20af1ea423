"""The audit log's caller of an MQTT write names all that is known of the sender: MQTT 3.1.1 carries no
publisher identity, so the broker's URL, our client id and the topic; MQTT 5 user properties and
correlation data when the sender set them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from canbridge_mqtt.config import MqttConfig
from canbridge_mqtt.connection import message_origin
from canbridge_mqtt.json_topics import JsonOutput
from canbridge_mqtt.rbe import ReportFilter
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from canbridge.testing import FakeBridge, signal_info

URL = "mqtt://127.0.0.1:1883"


def v5_properties() -> Properties:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.UserProperty = [("operator", "alice"), ("station", "hmi-3")]
    p.CorrelationData = b"\x01\x02req-7"
    return p


def json_output() -> tuple[FakeBridge, JsonOutput]:
    sigs = [signal_info("b.M.S", index=0, frame_id=0x100)]
    fake = FakeBridge(sigs, state_dir=Path(tempfile.mkdtemp()))
    cfg = MqttConfig.model_validate({"broker": {"urls": [URL]}, "json": {"prefix": "t", "writes": True,
                                                                          "client_id": "gw-7"}})
    out = JsonOutput(fake, cfg, sigs, ReportFilter({}, None), None)
    out.link.url = URL  # as while connected
    return fake, out


async def test_a_set_over_mqtt_3_names_broker_client_and_topic() -> None:
    fake, out = json_output()
    await out._set("t/b/M/S/set", b"5")
    caller = fake.writes[-1].caller
    assert caller.plugin == "mqtt" and caller.address == URL
    assert caller.user == "json; client gw-7; topic t/b/M/S/set"


async def test_a_set_over_mqtt_5_adds_user_properties_and_correlation_data() -> None:
    fake, out = json_output()
    await out._set("t/b/M/S/set", b"5", v5_properties())
    user = fake.writes[-1].caller.user or ""
    assert "user-property operator=alice" in user and "user-property station=hmi-3" in user
    assert "correlation 0102" + b"req-7".hex() in user and "client gw-7" in user


def test_the_origin_is_one_bounded_line() -> None:
    p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    p.UserProperty = [("k\nforged: entry", "v" * 1000)]
    text = message_origin("a/b", p, "c")
    assert "\n" not in text and len(text) <= 300
    assert message_origin("a/b", None, "c") == "client c; topic a/b"
