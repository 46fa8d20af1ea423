"""MQTT attack classes: every refused command audited and sending nothing, incoming payloads bounded before
they are decoded, credentials and TLS to the broker.

Tier ``mqtt-interop`` (Mosquitto started by the tests on a loopback port); the attacker is an aiomqtt client.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from canbridge_mqtt import sparkplug as sp
from canbridge_mqtt.connection import DropOldestQueue, _queue_type
from canbridge_mqtt.service import MqttService
from canbridge_mqtt.sparkplug import DataType
from canbridge_mqtt.sparkplug_b_pb2 import Payload
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canbridge import PluginError
from canbridge.core.app import demo_config, unique_channel
from canbridge.testing import BridgeHarness, until
from tests.plugins.mqtt.broker import Mosquitto, running_broker

pytestmark = pytest.mark.tier("mqtt-interop")
broker = running_broker  # the fixture, under the name the tests use

GROUP, NODE = "g", "n"
SETPOINT = "demo.MotorCommand.SpeedSetpoint"
DCMD = f"spBv1.0/{GROUP}/DCMD/{NODE}/demo"


def audit(state: Path) -> list[dict[str, Any]]:
    path = state / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextlib.asynccontextmanager
async def edge(state: Path, url: str, **mqtt: Any) -> AsyncIterator[tuple[BridgeHarness, MqttService]]:
    """The demo mapping, MotorCommand sent only when written (so every frame is a write's)."""
    cfg = demo_config(unique_channel("mqttsec"))
    cfg["mappings"][0].pop("transmit")
    cfg["plugins"] = {"mqtt": {"broker": {"urls": [url], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                               "sparkplug": {"group_id": GROUP, "edge_node_id": NODE, "writes": True},
                               **mqtt}}
    async with BridgeHarness(config=cfg, state_dir=state) as h:
        svc = h.service("mqtt")
        assert isinstance(svc, MqttService)
        yield h, svc


def dcmd(*metrics: tuple[int, DataType, object]) -> bytes:
    p = Payload(timestamp=1)
    for alias, dt, value in metrics:
        m = p.metrics.add()
        m.alias = alias
        m.datatype = int(dt)
        sp.set_value(m, dt, value)
    return sp.encode(p)


async def test_refused_commands_are_audited_send_nothing_and_show_as_node_metric(broker: Mosquitto,
                                                                                tmp_path: Path) -> None:
    state = tmp_path / "s"
    async with edge(state, broker.url) as (h, svc), aiomqtt.Client("127.0.0.1", broker.port) as attacker:
        out = svc.sparkplug
        assert out is not None
        await until(lambda: out.online, 10, what="born")
        alias = out.node.by_signal[SETPOINT].alias
        cases: list[tuple[bytes, str, str]] = [
            (b"\x00" * 70_000, DCMD, "unsupported_request"),  # larger than max_command_bytes
            (b"\xff\xff\xff", DCMD, "unsupported_request"),  # not a Sparkplug payload
            (dcmd(*[(alias, DataType.UINT16, 1)] * 101), DCMD, "unsupported_request"),  # > max_command_metrics
            (dcmd((99999, DataType.UINT16, 1)), DCMD, "unknown_signal"),  # no such alias
            (dcmd((alias, DataType.UINT16, 9999)), DCMD, "out_of_range"),  # the write path's limits
            (dcmd((out.node.node_metrics[0].alias, DataType.STRING, "x")), f"spBv1.0/{GROUP}/NCMD/{NODE}",
             "not_writable"),  # a node metric other than Rebirth
        ]
        for payload, topic, result in cases:
            before = len(audit(state))
            refused = out.writes_refused
            await attacker.publish(topic, payload, qos=1)
            await until(lambda r=refused: out.writes_refused > r, 10, what=f"refusal {result}")  # type: ignore[misc]
            new = audit(state)[before:]
            assert [r["result"] for r in new] == [result], new
            assert all(r["plugin"] == "mqtt" for r in new)
            assert out.last_refused[1].startswith(result)
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)
        # and an accepted one does go out (the refusals above were not a dead path)
        await attacker.publish(DCMD, dcmd((alias, DataType.UINT16, 1200)), qos=1)
        frame = await h.next_sent(0x300, timeout=10)
        assert int.from_bytes(frame.data[:2], "little") == 1200


async def test_writes_off_by_default_are_refused_not_allowed(broker: Mosquitto, tmp_path: Path) -> None:
    state = tmp_path / "s"
    mqtt = {"sparkplug": {"group_id": GROUP, "edge_node_id": NODE}, "json": {"prefix": "cb"}}
    async with edge(state, broker.url, **mqtt) as (h, svc), aiomqtt.Client("127.0.0.1", broker.port) as attacker:
        out, js = svc.sparkplug, svc.json
        assert out is not None and js is not None
        await until(lambda: out.online and js.online, 10, what="online")
        await attacker.publish(DCMD, dcmd((out.node.by_signal[SETPOINT].alias, DataType.UINT16, 100)), qos=1)
        # JSON without writes does not even subscribe to .../set: nothing to judge, nothing sent
        await attacker.publish("cb/demo/MotorCommand/SpeedSetpoint/set", b"100", qos=1)
        await until(lambda: out.writes_refused == 1, 10, what="DCMD refused")
        assert [r["result"] for r in audit(state)] == ["not_allowed"]
        assert js.writes_refused == 0 and js.writes_accepted == 0
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)


def test_the_incoming_queue_drops_the_oldest() -> None:
    queue_type = _queue_type(3)
    q = queue_type()
    for i in range(10):
        q.put_nowait(i)  # type: ignore[arg-type]
    assert q.qsize() == 3 and queue_type.dropped == 7 and q.get_nowait() == 7  # type: ignore[comparison-overlap]
    assert DropOldestQueue.dropped == 0  # counted per link, not globally


async def test_too_many_topics_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="max_topics"):
        async with edge(tmp_path, "mqtt://127.0.0.1:1", json={"prefix": "cb", "max_topics": 3}):
            pass


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "gw7", "s3cret"], check=True)
    return path


async def test_username_and_password(tmp_path: Path, pwfile: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
                           + f"password_file {pwfile}\n")
    broker.start()
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        async with edge(tmp_path / "a", broker.url, broker={"urls": [broker.url], "username": "gw7",
                                                           "password_file": str(tmp_path / "pw")}) as (_, svc):
            assert svc.sparkplug is not None
            await until(lambda: svc.sparkplug is not None and svc.sparkplug.online, 10, what="born with credentials")
        async with edge(tmp_path / "b", broker.url, broker={"urls": [broker.url], "username": "gw7",
                                                           "password": "wrong", "reconnect_min_s": 0.1}) as (_, svc):
            out = svc.sparkplug
            assert out is not None
            await until(lambda: out.link.failures >= 2, 10, what="refused and retried")
            assert not out.online and "127.0.0.1" in (out.link.last_error or "")
    finally:
        broker.stop()


def _cert(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (files: ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    paths = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def test_mqtts_verifies_the_broker_certificate(tmp_path: Path) -> None:
    ca, cert, key = _cert(tmp_path)
    broker = Mosquitto(tmp_path)
    broker.conf.write_text(broker.conf.read_text() + f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    url = f"mqtts://127.0.0.1:{broker.port}"
    try:
        async with edge(tmp_path / "a", url, broker={"urls": [url], "ca_file": str(ca)}) as (_, svc):
            await until(lambda: svc.sparkplug is not None and svc.sparkplug.online, 10, what="born over TLS")
        # without the CA the broker's certificate is not trusted: no connection, retried in the background
        async with edge(tmp_path / "b", url, broker={"urls": [url], "reconnect_min_s": 0.1}) as (_, svc):
            out = svc.sparkplug
            assert out is not None
            await until(lambda: out.link.failures >= 1, 10, what="certificate refused")
            assert not out.online and out.link.connects == 0
    finally:
        broker.stop()


async def test_no_broker_does_not_stop_the_bridge(tmp_path: Path) -> None:
    async with edge(tmp_path, "mqtt://127.0.0.1:1", broker={"urls": ["mqtt://127.0.0.1:1"],
                                                            "reconnect_min_s": 0.1}) as (h, svc):
        out = svc.sparkplug
        assert out is not None
        await until(lambda: out.link.failures >= 2, 10, what="retrying")
        h.inject("100#E803000000000000")
        await until(lambda: out.backlog() > 0, 10, what="changes queued while no broker is reachable")
        assert h.bridge.ready
        await asyncio.sleep(0)
