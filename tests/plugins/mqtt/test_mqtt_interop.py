"""Interoperability: the Sparkplug edge node against Mosquitto and an independent primary host (Eclipse
Tahu's JavaScript codec, npm sparkplug-payload, with npm mqtt). Tests are named after the Sparkplug 3.0
conformance statements (tck-id-*) they check.

Tier ``mqtt-interop`` (tools/tiers/mqtt-interop.sh installs Mosquitto and the npm packages)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from canbridge.core.app import demo_config, unique_channel
from canbridge.testing import BridgeHarness, until
from tests.plugins.mqtt.broker import Mosquitto, running_broker
from tests.tiers import NODE_MODULES, ROOT

pytestmark = pytest.mark.tier("mqtt-interop")
broker = running_broker  # the fixture, under the name the tests use

SCRIPT = Path(__file__).parent / "js" / "sparkplug_host.js"
GROUP, NODE, HOST = "plant1", "gw7", "scada"
Msg = dict[str, Any]


class Host:
    """The Tahu host process: decoded messages as they arrive, commands on stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[Msg] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            text = raw.decode().strip()
            if text.startswith("{"):
                self.lines.append(json.loads(text))

    def messages(self, kind: str | None = None) -> list[Msg]:
        return [m for m in self.lines if "topic" in m and (kind is None or m["topic"].split("/")[2] == kind)]

    async def wait(self, pred: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        await until(pred, timeout, what=what, detail=lambda: [m.get("topic") for m in self.lines][-20:])

    async def send(self, cmd: Msg) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def state(self, online: bool) -> None:
        await self.send({"cmd": "state", "online": online})
        await self.wait(lambda: {"published": "state", "online": online} in self.lines, "STATE published")

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@contextlib.asynccontextmanager
async def tahu_host(url: str) -> AsyncIterator[Host]:
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    proc = await asyncio.create_subprocess_exec(
        "node", str(SCRIPT), json.dumps({"url": url, "host_id": HOST}), cwd=str(ROOT), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    host = Host(proc)
    try:
        await host.wait(lambda: {"connected": True} in host.lines, "the Tahu host connected")
        yield host
    finally:
        await host.close()


def mqtt_config(url: str, protocol: str = "3.1.1", **sparkplug: Any) -> dict[str, Any]:
    return {
        "broker": {"urls": [url], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "protocol": protocol},
        "sparkplug": {"group_id": GROUP, "edge_node_id": NODE, "primary_host_id": HOST, "data_qos": 1,
                      **sparkplug},
        "report": {"interval_ms": 50},
    }


def metrics(msg: Msg) -> list[Msg]:
    return list(msg["payload"].get("metrics", []))


def by_name(msg: Msg) -> dict[str, Msg]:
    return {m["name"]: m for m in metrics(msg) if m.get("name")}


def bdseq(msg: Msg) -> int:
    return int(by_name(msg)["bdSeq"]["value"])


async def test_tck_id_topics_nbirth_then_dbirth_decoded_by_tahu_after_host_online(broker: Mosquitto,
                                                                                 tmp_path: Path) -> None:
    async with tahu_host(broker.url) as host, BridgeHarness(plugins={"mqtt": mqtt_config(broker.url)},
                                                             state_dir=tmp_path / "s") as h:
        h.inject("100#E803000000000000")
        # tck-id-operational-behavior-edge-node-birth-sequence-wait: no birth before the host is online
        await until(lambda: h.bridge.read("demo.MotorStatus.MotorSpeed").value == 1000, what="frame decoded")
        assert host.messages("NBIRTH") == []
        await host.state(True)
        await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
        order = [m["topic"] for m in host.messages()]
        assert order[:2] == [f"spBv1.0/{GROUP}/NBIRTH/{NODE}", f"spBv1.0/{GROUP}/DBIRTH/{NODE}/demo"]
        nbirth, dbirth = host.messages("NBIRTH")[0], host.messages("DBIRTH")[0]
        assert nbirth["payload"]["seq"] == 0 and bdseq(nbirth) == 0  # tck-id-payloads-nbirth-seq, -bdseq
        assert by_name(nbirth)["Node Control/Rebirth"]["value"] is False  # tck-id-payloads-nbirth-rebirth-req
        assert dbirth["payload"]["seq"] == 1
        speed = by_name(dbirth)["MotorStatus/MotorSpeed"]
        assert speed["type"] == "Int16" and speed["value"] == 1000 and isinstance(speed["alias"], int)
        assert speed["properties"]["engUnit"]["value"] == "rpm" and speed["properties"]["Quality"]["value"] == 192
        assert by_name(dbirth)["MotorStatus/MotorEnabled"]["type"] == "Boolean"
        assert by_name(dbirth)["MotorStatus/MotorCurrent"]["type"] == "Double"
        # tck-id-payloads-alias-uniqueness over node and device metrics
        aliases = [m["alias"] for m in metrics(nbirth) + metrics(dbirth) if "alias" in m]
        assert len(aliases) == len(set(aliases))

        # DDATA: only what changed, by alias only, seq going on (tck-id-payloads-alias-data-cmd-requirement)
        h.inject("100#D007000000000000")
        await host.wait(lambda: any(m.get("value") == 2000 for d in host.messages("DDATA") for m in metrics(d)),
                        "DDATA with 2000")
        ddata = next(d for d in host.messages("DDATA") if any(m.get("value") == 2000 for m in metrics(d)))
        assert all("name" not in m or not m["name"] for m in metrics(ddata))
        assert [m["alias"] for m in metrics(ddata) if m.get("value") == 2000] == [speed["alias"]]
        seqs = [m["payload"]["seq"] for m in host.messages() if m["topic"].split("/")[2] != "NDEATH"]
        assert seqs == list(range(len(seqs)))  # tck-id-payloads-sequence-num-incrementing


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_tck_id_operational_behavior_edge_node_rebirth_same_bdseq_no_reconnect(broker: Mosquitto,
                                                                                    tmp_path: Path,
                                                                                    protocol: str) -> None:
    cfg = mqtt_config(broker.url, protocol)
    async with tahu_host(broker.url) as host, BridgeHarness(plugins={"mqtt": cfg}, state_dir=tmp_path / "s"):
        await host.state(True)
        await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
        first = host.messages("NBIRTH")[0]
        await host.send({"cmd": "publish", "topic": f"spBv1.0/{GROUP}/NCMD/{NODE}", "payload": {
            "timestamp": 1, "metrics": [{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]}})
        await host.wait(lambda: len(host.messages("DBIRTH")) == 2, "a second DBIRTH")
        second = host.messages("NBIRTH")[1]
        assert bdseq(second) == bdseq(first) and second["payload"]["seq"] == 0
        assert host.messages("NDEATH") == []


async def test_tck_id_receive_command_dcmd_write_goes_through_the_write_path(broker: Mosquitto,
                                                                             tmp_path: Path) -> None:
    cfg = mqtt_config(broker.url, writes=True)
    async with tahu_host(broker.url) as host, BridgeHarness(plugins={"mqtt": cfg}, state_dir=tmp_path / "s") as h:
        await host.state(True)
        await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
        alias = by_name(host.messages("DBIRTH")[0])["MotorCommand/SpeedSetpoint"]["alias"]
        dcmd = f"spBv1.0/{GROUP}/DCMD/{NODE}/demo"
        await host.send({"cmd": "publish", "topic": dcmd, "payload": {
            "timestamp": 1, "metrics": [{"alias": alias, "type": "UInt16", "value": 1500}]}})
        await until(lambda: h.bridge.read("demo.MotorCommand.SpeedSetpoint").value == 1500, 10, what="written")
        frames = [await h.next_sent(0x300, timeout=10) for _ in range(50)]  # MotorCommand is cyclic
        assert any(int.from_bytes(f.data[0:2], "little") == 1500 for f in frames)
        # out of the signal's limits: refused by the write path, nothing sent, shown as a node metric
        await host.send({"cmd": "publish", "topic": dcmd, "payload": {
            "timestamp": 2, "metrics": [{"alias": alias, "type": "UInt16", "value": 9999}]}})
        await host.wait(lambda: any(m.get("value", "").startswith("out_of_range")
                                    for d in host.messages("NDATA") for m in metrics(d)
                                    if isinstance(m.get("value"), str)), "NDATA with the refusal")
        assert h.bridge.read("demo.MotorCommand.SpeedSetpoint").value == 1500
        assert h.bridge.stats().writes_refused.get("out_of_range") == 1


async def test_tck_id_primary_host_offline_buffers_then_historical_replay_with_new_bdseq(broker: Mosquitto,
                                                                                       tmp_path: Path) -> None:
    async with tahu_host(broker.url) as host, BridgeHarness(plugins={"mqtt": mqtt_config(broker.url)},
                                                             state_dir=tmp_path / "s") as h:
        await host.state(True)
        await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
        await host.state(False)
        # tck-id-operational-behavior-edge-node-terminate-pre-existing: NDEATH, then reconnect and wait
        await host.wait(lambda: host.messages("NDEATH"), "NDEATH after host offline")
        for speed in range(3000, 3010):
            h.inject(f"100#{speed.to_bytes(2, 'little').hex()}000000000000")
            await until(lambda s=speed: h.bridge.read("demo.MotorStatus.MotorSpeed").value == s,  # type: ignore[misc]
                        what="decoded")
        await host.state(True)
        await host.wait(lambda: len(host.messages("NBIRTH")) == 2, "a new NBIRTH")
        assert bdseq(host.messages("NBIRTH")[1]) == bdseq(host.messages("NBIRTH")[0]) + 1
        assert bdseq(host.messages("NDEATH")[0]) == bdseq(host.messages("NBIRTH")[0])

        def historical() -> list[int]:
            return [m["value"] for d in host.messages("DDATA") for m in metrics(d)
                    if m.get("isHistorical") and isinstance(m.get("value"), int) and 3000 <= m["value"] < 3010]

        # the subscription coalesces within one report interval: each batch's newest value is queued
        await host.wait(lambda: 3009 in historical(), "historical DDATA up to the last change")
        values = historical()
        assert values == sorted(values)  # in order
        keys = [(m["alias"], m["value"], m["timestamp"], m.get("properties", {}).get("Quality", {}).get("value"))
                for d in host.messages("DDATA") for m in metrics(d) if m.get("isHistorical")]
        assert len(keys) == len(set(keys))  # none twice


async def test_broker_outage_new_bdseq_births_again_and_store_and_forward_replay(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        async with BridgeHarness(plugins={"mqtt": mqtt_config(broker.url)}, state_dir=tmp_path / "s") as h:
            async with tahu_host(broker.url) as host:
                await host.state(True)
                await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
            broker.stop()
            service: Any = h.service("mqtt")
            await until(lambda: not service.sparkplug.online, what="the edge node saw the outage")
            sent = list(range(4000, 4050))
            for speed in sent:
                h.inject(f"100#{speed.to_bytes(2, 'little').hex()}000000000000")
                await until(lambda s=speed: h.bridge.read("demo.MotorStatus.MotorSpeed").value == s,  # type: ignore[misc]
                        what="decoded")
            await until(lambda: service.sparkplug.backlog() > 0, what="changes queued on disk")
            broker.start()  # the same port: the edge node reconnects by itself
            async with tahu_host(broker.url) as host:
                await host.state(True)
                await host.wait(lambda: host.messages("NBIRTH"), "NBIRTH after the outage", timeout=30)
                assert bdseq(host.messages("NBIRTH")[0]) >= 1  # a new connect: a new bdSeq

                def replayed() -> list[int]:
                    return [m["value"] for d in host.messages("DDATA") for m in metrics(d)
                            if m.get("isHistorical") and isinstance(m.get("value"), int) and 4000 <= m["value"] < 4050]

                await host.wait(lambda: service.sparkplug.backlog() == 0 and 4049 in replayed(), "the backlog replayed")
                got = replayed()
                assert got == sorted(got)  # oldest first
                # none twice: counted by value, timestamp and quality (a stale turn repeats value and time)
                alias = by_name(host.messages("DBIRTH")[0])["MotorStatus/MotorSpeed"]["alias"]
                keys = [(m["value"], m["timestamp"], m.get("properties", {}).get("Quality", {}).get("value"))
                        for d in host.messages("DDATA") for m in metrics(d)
                        if m.get("isHistorical") and m.get("alias") == alias]
                assert len(keys) == len(set(keys)) and len(keys) >= len(set(got))
    finally:
        broker.stop()


async def test_broker_stopped_10_s_under_sustained_load_every_change_once_in_order(tmp_path: Path) -> None:
    """Frames flow at a bounded rate the whole time; Mosquitto stops for 10 s and comes back on the same
    port. The Tahu host sees every change the plugin reported exactly once (counted by signal and
    timestamp), in order, the outage's as historical metrics between live ones, under a new bdSeq after
    new births."""
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        async with BridgeHarness(plugins={"mqtt": mqtt_config(broker.url)}, state_dir=tmp_path / "s") as h, \
                tahu_host(broker.url) as host:  # the host stays: its client reconnects by itself
            await host.state(True)
            await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH")
            service: Any = h.service("mqtt")
            out = service.sparkplug
            alias = by_name(host.messages("DBIRTH")[0])["MotorStatus/MotorSpeed"]["alias"]
            reported: list[int] = []  # what the plugin reported (live or queued), recorded on the way in
            offer = out.offer

            async def recording_offer(changes: Any) -> None:
                reported.extend(c[1] for c in changes if c[0] == "demo.MotorStatus.MotorSpeed")
                await offer(changes)

            out.offer = recording_offer
            stop = asyncio.Event()

            async def drive() -> None:  # bounded: 6,000 frames at most, one per 10 ms
                for speed in range(5000, 11000):
                    if stop.is_set():
                        return
                    h.inject(f"100#{speed.to_bytes(2, 'little').hex()}000000000000")
                    await asyncio.sleep(0.01)  # pacing the load, not a synchronisation

            def seen() -> list[tuple[int, bool]]:
                return [(m["value"], bool(m.get("isHistorical"))) for d in host.messages("DDATA")
                        for m in metrics(d) if m.get("alias") == alias and isinstance(m.get("value"), int)
                        and m["value"] >= 5000]

            def stamped() -> list[tuple[int, int]]:  # (timestamp, value) of the signal as the host decoded
                return [(int(m["timestamp"]), m["value"]) for d in host.messages("DDATA") for m in metrics(d)
                        if m.get("alias") == alias and isinstance(m.get("value"), int) and m["value"] >= 5000]

            driver = asyncio.create_task(drive())
            try:
                await host.wait(lambda: len(seen()) >= 10, "live DDATA under load")
                broker.stop()
                await until(lambda: not out.online, what="the edge node saw the outage")
                at_stop = len(reported)
                await asyncio.sleep(10)  # the outage under test lasts 10 s of wall clock, load going on
                assert len(reported) > at_stop + 100  # the load went on: changes were reported meanwhile
                await until(lambda: out.backlog() >= 100, 20, what="changes queued during the outage")
                broker.start()  # the same port
                await host.wait(lambda: host.lines.count({"connected": True}) == 2, "the host reconnected")
                await host.state(True)  # the broker kept nothing (no persistence): the host says it again
                await host.wait(lambda: len(host.messages("NBIRTH")) == 2, "NBIRTH after the outage", timeout=30)
                await until(lambda: out.backlog() == 0 and out.replayed > 0, 30, what="the backlog replayed")
                at_replay = len(reported)
                await until(lambda: len(reported) >= at_replay + 10, 20, what="live data after the replay")
            finally:
                stop.set()
                await driver
            await until(lambda: out.backlog() == 0, 20, what="nothing left queued")
            await host.wait(lambda: [v for v, _ in seen()] == reported, "every reported change at the host")
            got = seen()
            values = [v for v, _ in got]
            assert values == sorted(set(values))  # once each, in order
            stamps = stamped()
            assert len(stamps) == len(set(stamps)) == len(reported)  # by signal and timestamp: none twice
            assert [t for t, _ in stamps] == sorted(t for t, _ in stamps)  # the original times, in order
            flags = [hist for _, hist in got]
            first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
            assert not any(flags[:first]) and all(flags[first:last + 1]) and not any(flags[last + 1:])
            assert last + 1 < len(flags)  # live again after the history
            births = host.messages("NBIRTH")
            assert bdseq(births[1]) > bdseq(births[0])  # a new bdSeq (each connect attempt takes one)
            topics = [m["topic"] for m in host.messages()]
            second = topics.index(f"spBv1.0/{GROUP}/NBIRTH/{NODE}", topics.index(f"spBv1.0/{GROUP}/NBIRTH/{NODE}") + 1)
            assert topics[second + 1] == f"spBv1.0/{GROUP}/DBIRTH/{NODE}/demo"
    finally:
        broker.stop()


# --- a bridge process: kill -9, restarts --------------------------------------------------------------


def write_config(tmp_path: Path, url: str) -> Path:
    cfg = demo_config(unique_channel("mqttproc"), {"mqtt": mqtt_config(url)}, tmp_path / "state")
    path = tmp_path / "bridge.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@contextlib.asynccontextmanager
async def bridge_process(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("canbridge")), "run", str(config), "--log-level", "WARNING",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def queued(state: Path) -> int:
    path = state / "mqtt" / "buffer.sqlite"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM queue WHERE sink = 'sparkplug'").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def test_tck_id_ndeath_bdseq_after_kill_9_matches_nbirth_and_goes_on_after_restart(
        broker: Mosquitto, tmp_path: Path) -> None:
    config = write_config(tmp_path, broker.url)
    async with tahu_host(broker.url) as host:
        await host.state(True)
        async with bridge_process(config) as proc:
            await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH from the bridge process", timeout=60)
            proc.kill()  # kill -9: no DISCONNECT, the broker publishes the Will
            await proc.wait()
        await host.wait(lambda: host.messages("NDEATH"), "the Will (NDEATH) published by the broker")
        first = bdseq(host.messages("NBIRTH")[0])
        assert bdseq(host.messages("NDEATH")[0]) == first
        async with bridge_process(config):
            await host.wait(lambda: len(host.messages("NBIRTH")) == 2, "NBIRTH after the restart", timeout=60)
        assert bdseq(host.messages("NBIRTH")[1]) == (first + 1) % 256


async def test_restart_during_an_outage_keeps_the_queue(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    config = write_config(tmp_path, broker.url)
    state = tmp_path / "state"
    try:
        async with tahu_host(broker.url) as host:
            await host.state(True)
            async with bridge_process(config) as proc:
                await host.wait(lambda: host.messages("DBIRTH"), "DBIRTH", timeout=60)
                broker.stop()
                await until(lambda: queued(state) > 20, 30, what="the simulator's changes queued on disk")
                proc.terminate()  # the bridge stops during the outage
                await proc.wait()
        before = queued(state)
        assert before > 20
        stopped_ms = int(time.time() * 1000)
        broker.start()
        async with tahu_host(broker.url) as host:
            await host.state(True)
            async with bridge_process(config):
                def historical() -> list[Msg]:
                    return [m for d in host.messages("DDATA") for m in metrics(d) if m.get("isHistorical")]

                await host.wait(lambda: len(historical()) >= before, "the queue from before the restart", timeout=60)
                await until(lambda: queued(state) == 0, 30, what="the queue drained")
                stamps = [m["timestamp"] for m in historical()]
                assert sum(1 for t in stamps if t < stopped_ms) >= before
    finally:
        broker.stop()


async def test_multiple_brokers_failover_to_the_next_url(broker: Mosquitto, tmp_path: Path) -> None:
    from tests.plugins.mqtt.broker import free_port

    dead = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = mqtt_config(broker.url)
    cfg["broker"]["urls"] = [dead, broker.url]
    async with tahu_host(broker.url) as host, BridgeHarness(plugins={"mqtt": cfg}, state_dir=tmp_path / "s") as h:
        await host.state(True)
        await host.wait(lambda: host.messages("NBIRTH"), "NBIRTH through the second broker")
        out: Any = h.service("mqtt")
        assert out.sparkplug.link.url == broker.url and out.sparkplug.link.failures >= 1
        # the failed CONNECT used a bdSeq too: the birth carries the next one
        assert bdseq(host.messages("NBIRTH")[0]) == 1
