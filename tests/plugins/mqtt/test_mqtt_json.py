"""Plain JSON topics against Mosquitto, observed and driven with mosquitto_sub/mosquitto_pub (an
independent client): value topics, availability, writes on .../set, raw frames, replay after an outage.

Tier ``mqtt-interop``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from canbridge.core.app import DEMO_DBC, demo_config, unique_channel
from canbridge.testing import BridgeHarness, until
from tests.plugins.mqtt.broker import Mosquitto, running_broker

pytestmark = pytest.mark.tier("mqtt-interop")
broker = running_broker  # the fixture, under the name the tests use

SPEED = "cb/demo/MotorStatus/MotorSpeed"
REPLAY_LOG = Path(__file__).resolve().parents[2] / "data" / "replay" / "demo.log"


class Sub:
    """mosquitto_sub -v: (topic, payload text) pairs as they arrive."""

    def __init__(self, proc: asyncio.subprocess.Process, probe: str) -> None:
        self.proc = proc
        self.probe = probe  # the topic that shows the subscription is in place; not in ``seen``
        self.probed = False
        self.seen: list[tuple[str, str]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            topic, _, payload = raw.decode().rstrip("\n").partition(" ")
            if topic == self.probe:
                self.probed = True
            else:
                self.seen.append((topic, payload))

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p in self.seen if t == topic]


@contextlib.asynccontextmanager
async def sub(port: int, topic: str = "cb/#") -> AsyncIterator[Sub]:
    """A subscriber that is listening when this yields: it also subscribes to a probe topic and sees a probe
    arrive first (without that, what is published right after the start can go unseen: a flaky test)."""
    probe = f"probe/{id(asyncio.current_task())}"
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-v", "-q", "1", "-t", topic, "-t", probe,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    s = Sub(proc, probe)
    try:
        for _ in range(100):  # a probe until one arrives: the subscription is in place
            await pub(port, probe, "probe")
            with contextlib.suppress(AssertionError):
                await until(lambda: s.probed, 0.2, what="the probe")
                break
        else:
            raise AssertionError(f"mosquitto_sub on port {port} never received a probe")
        yield s
    finally:
        proc.kill()
        await proc.wait()
        s._task.cancel()


async def pub(port: int, topic: str, payload: str) -> None:
    proc = await asyncio.create_subprocess_exec("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                                "-t", topic, "-m", payload)
    assert await proc.wait() == 0


def config(url: str, **json_cfg: Any) -> dict[str, Any]:
    cfg = demo_config(unique_channel("mqttjson"))
    cfg["mappings"][0].pop("transmit")
    cfg["plugins"] = {"mqtt": {"broker": {"urls": [url], "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                               "json": {"prefix": "cb", "qos": 1, **json_cfg}, "report": {"interval_ms": 50}}}
    return cfg


async def test_values_status_and_retained_current_state(broker: Mosquitto, tmp_path: Path) -> None:
    async with sub(broker.port) as s:
        async with BridgeHarness(config=config(broker.url, retain=True), state_dir=tmp_path) as h:
            await until(lambda: ("cb/status", "online") in s.seen, 10, what="online")
            h.inject("100#E803000000000000")
            await until(lambda: any(v["value"] == 1000 for v in s.values(SPEED)), 10, what="MotorSpeed 1000")
            v = next(v for v in s.values(SPEED) if v["value"] == 1000)
            assert v["quality"] == "good"
            assert v["ts"] == h.bridge.read("demo.MotorStatus.MotorSpeed").timestamp_ns // 1_000_000  # type: ignore[operator]
            async with sub(broker.port, SPEED) as late:  # retained: a late subscriber gets the current value
                await until(lambda: late.values(SPEED), 10, what="the retained value")
                assert late.values(SPEED)[-1]["value"] == 1000
        # a clean stop says offline (retained), as the Will would after a crash
        await until(lambda: s.seen[-1] == ("cb/status", "offline"), 10, what="offline on stop")


async def test_set_writes_through_the_write_path_and_answers(broker: Mosquitto, tmp_path: Path) -> None:
    async with sub(broker.port) as s, BridgeHarness(config=config(broker.url, writes=True), state_dir=tmp_path) as h:
        await until(lambda: ("cb/status", "online") in s.seen, 10, what="online")
        svc: Any = h.service("mqtt")
        await until(lambda: svc.json.online, 10, what="subscribed")
        await pub(broker.port, "cb/demo/MotorCommand/SpeedSetpoint/set", "1500")
        frame = await h.next_sent(0x300, timeout=10)
        assert int.from_bytes(frame.data[:2], "little") == 1500
        result = "cb/demo/MotorCommand/SpeedSetpoint/set/result"
        await until(lambda: s.values(result), 10, what="result")
        assert s.values(result)[-1] == {"ok": True}
        await pub(broker.port, "cb/demo/MotorCommand/SpeedSetpoint/set", '{"value": 9999}')
        await until(lambda: len(s.values(result)) == 2, 10, what="second result")
        assert s.values(result)[-1]["reason"] == "out_of_range"
        await pub(broker.port, "cb/demo/MotorCommand/Mode/set", "banana")  # text that is not a choice
        await until(lambda: any(t.endswith("Mode/set/result") for t, _ in s.seen), 10, what="Mode result")
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, timeout=0.3)


async def test_raw_frames_in_node_red_shape(broker: Mosquitto, tmp_path: Path) -> None:
    async with sub(broker.port) as s, BridgeHarness(config=config(broker.url, frames=True), state_dir=tmp_path) as h:
        await until(lambda: ("cb/status", "online") in s.seen, 10, what="online")
        svc: Any = h.service("mqtt")
        await until(lambda: svc.json.online, 10, what="online")
        # the frame subscription starts with the session: send until one is seen (every 0.2 s, bounded)
        def sent_and_seen() -> bool:
            h.inject("100#E803000000000000")
            return bool(s.values("cb/demo/frames"))

        await until(sent_and_seen, 10, interval=0.2, what="a frame")
        f = s.values("cb/demo/frames")[-1]
        assert (f["canid"], f["dlc"], f["data"][:2], f["ext"]) == (0x100, 8, [0xE8, 0x03], False)


def queued_speeds(svc: Any) -> list[object]:
    """The speeds queued on disk, read with a connection of the test's own (the plugin's is its writer's)."""
    with contextlib.closing(sqlite3.connect(svc.buffer.path)) as db:
        rows = db.execute("SELECT value FROM queue WHERE sink = 'json' AND name = 'demo.MotorStatus.MotorSpeed'"
                          " ORDER BY id").fetchall()
    return [json.loads(v) for (v,) in rows]


async def test_replay_after_an_outage_with_original_ts_not_retained(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        async with BridgeHarness(config=config(broker.url, retain=True), state_dir=tmp_path / "s") as h:
            svc: Any = h.service("mqtt")
            await until(lambda: svc.json.online, 10, what="online")
            broker.stop()
            await until(lambda: not svc.json.online, 10, what="outage seen")
            stamps = []
            for speed in (2001, 2002, 2003):
                h.inject(f"100#{speed.to_bytes(2, 'little').hex()}000000000000")
                await until(lambda s=speed: h.bridge.read("demo.MotorStatus.MotorSpeed").value == s,  # type: ignore[misc]
                            what="decoded")
                stamps.append(h.bridge.read("demo.MotorStatus.MotorSpeed").timestamp_ns // 1_000_000)  # type: ignore[operator]
                await until(lambda s=speed: s in queued_speeds(svc), 10, what="queued")  # type: ignore[misc]
            # the plugin reconnects only once the subscriber listens: else it may publish before the subscription
            link, gate = svc.json.link, asyncio.Event()
            connect = link.client

            def held(url: str, will: Any) -> Any:
                if not gate.is_set():
                    raise aiomqtt.MqttError("held by the test until the subscriber listens")
                return connect(url, will)

            link.client = held
            broker.start()
            async with sub(broker.port, SPEED) as s:
                gate.set()
                await until(lambda: svc.json.backlog() == 0 and any(v["value"] == 2003 for v in s.values(SPEED)),
                            30, what="replayed")
                # the current value first (what a connect publishes), then the backlog oldest first
                got = [(v["value"], v["ts"]) for v in s.values(SPEED)]
                assert got[0][0] == 2003, got
                assert got[1:4] == list(zip((2001, 2002, 2003), stamps, strict=True)), (got, stamps)
    finally:
        broker.stop()


async def test_values_equal_what_rest_shows_for_the_same_replayed_log(broker: Mosquitto, tmp_path: Path) -> None:
    cfg = {
        "buses": [{"name": "demo", "interface": "replay", "replay": {"file": str(REPLAY_LOG), "speed": "fast"}}],
        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC)}],
        "plugins": {"rest": {"host": "127.0.0.1", "port": 0, "anonymous_read": True},
                    "mqtt": config(broker.url, retain=True)["plugins"]["mqtt"]},
    }
    async with sub(broker.port) as s, BridgeHarness(config=cfg, state_dir=tmp_path) as h:
        # 24 of its 25 frames are mapped (tests/core/can/test_replay.py)
        await until(lambda: h.bridge.bus_status("demo").rx_frames >= 24, 20, what="the log replayed")
        svc: Any = h.service("mqtt")
        await until(lambda: svc.json.online and svc.json.backlog() == 0, 20, what="published")
        url = h.service("rest").endpoints()[0].rstrip("/")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/v1/signals") as r:
                listing = await r.json()
            rest = {x["name"]: x for x in listing["signals"]}

            def last(name: str) -> Any:
                vals = s.values("cb/" + name.replace(".", "/"))
                return vals[-1] if vals else None

            def same() -> bool:
                return all((m := last(n)) is not None and m["value"] == x["value"] and m["quality"] == x["quality"]
                           for n, x in rest.items())

            await until(same, 20, what="every JSON value equal to REST's",
                        detail=lambda: {n: (last(n), x["value"]) for n, x in rest.items() if not same()})
        assert any(x["value"] is not None for x in rest.values())
