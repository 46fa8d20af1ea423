"""``broker.max_inflight`` against a broker that stops reading: the plugin's outgoing queue stays within the
bound, the changes beyond it go to the store-and-forward queue on disk (counted, none lost), and after the
reconnect every reported change arrives, in order; what was in flight on the lost link may arrive twice
(docs/mqtt.md, "What a subscriber sees"), right after itself and at most ``max_inflight`` per lost link.

The broker is a minimal MQTT 3.1.1 server written here (loopback): it acknowledges CONNECT, SUBSCRIBE,
PINGREQ and QoS 1 PUBLISH until told to stall; then it reads nothing more on that connection (for good, or
for a while), so TCP backpressure reaches the client exactly as with a hung (or slow) broker. A PUBLISH
counts as received only once acknowledged, which is what the client can know.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from canbridge_mqtt.config import MqttConfig
from canbridge_mqtt.output import Output
from canbridge_mqtt.rbe import Change
from canbridge_mqtt.service import MqttService

from canbridge import Quality
from canbridge.testing import FakeBridge, signal_info, until

INFLIGHT = 8
SIGNALS = 200


class StallingBroker:
    def __init__(self) -> None:
        # acknowledged PUBLISHes of values: (signal, value, part of the snapshot sent right after "online")
        self.received: list[tuple[str, object, bool]] = []
        self.connections = 0
        self.stalled = asyncio.Event()
        self._stall_next = False
        self.resume_after: float | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def stall(self, resume_after: float | None = None) -> None:
        """The current connection stops reading (and acknowledging) at its next packet: for good, or for
        ``resume_after`` seconds (a broker paused, then going on)."""
        self.resume_after = resume_after
        self._stall_next = True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        snapshot_left = 0
        try:
            while True:
                kind, body = await self._packet(reader)
                if self._stall_next:
                    self._stall_next = False
                    self.stalled.set()
                    if self.resume_after is None:
                        await asyncio.Event().wait()  # read nothing more: the client's writes back up
                    else:
                        await asyncio.sleep(self.resume_after)  # the broker's pause, not a synchronisation
                if kind == 1:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 8:  # SUBSCRIBE: grant QoS 1 per topic
                    writer.write(bytes([0x90, 3]) + body[:2] + b"\x01")
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind >> 4 == 3:  # PUBLISH (flags in the low bits)
                    n = int.from_bytes(body[:2], "big")
                    topic, rest = body[2:2 + n].decode(), body[2 + n:]
                    if (kind >> 1) & 3:  # QoS 1: the packet id, then the payload
                        writer.write(b"\x40\x02" + rest[:2])
                        rest = rest[2:]
                    if topic == "t/status" and rest == b"online":
                        snapshot_left = SIGNALS  # the plugin publishes every current value first
                    elif topic.count("/") == 3:
                        self.received.append((topic[2:].replace("/", "."), json.loads(rest)["value"],
                                              snapshot_left > 0))
                        snapshot_left = max(0, snapshot_left - 1)
                elif kind == 14:  # DISCONNECT
                    return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        body = await reader.readexactly(length)
        kind = first >> 4
        return (first if kind == 3 else kind), body


def record(out: Output) -> dict[str, list[object]]:
    """What ``out`` is offered from now on, per signal (recorded on the way in)."""
    reported: dict[str, list[object]] = {}
    offer = out.offer

    async def recording_offer(changes: Sequence[Change]) -> None:
        for name, value, _, _ in changes:
            reported.setdefault(name, []).append(value)
        await offer(changes)

    out.offer = recording_offer  # type: ignore[method-assign]
    return reported


SIGS = [signal_info(f"b.M{i // 8}.S{i % 8}", index=i, frame_id=0x100 + i // 8) for i in range(SIGNALS)]


def json_service(port: int, state: Path, keepalive_s: int = 5) -> tuple[FakeBridge, MqttService]:
    fake = FakeBridge(SIGS, state_dir=state)
    cfg = MqttConfig.model_validate({
        "broker": {"urls": [f"mqtt://127.0.0.1:{port}"], "max_inflight": INFLIGHT, "connect_timeout_s": 1.0,
                   "keepalive_s": keepalive_s, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
        "json": {"prefix": "t", "qos": 1},
        "report": {"interval_ms": 50},
        "buffer": {"path": str(state / "q.sqlite")},
    })
    return fake, MqttService(fake, cfg)


async def test_a_broker_that_stops_reading_bounds_the_outgoing_queue_and_loses_nothing() -> None:
    broker = StallingBroker()
    await broker.start()
    sigs = SIGS
    fake, svc = json_service(broker.port, Path(tempfile.mkdtemp()))
    await svc.start()
    out = svc.json
    assert out is not None
    reported = record(out)
    peak = {"pending": 0, "packets": 0, "backlog": 0}

    async def sample() -> None:  # the plugin's outgoing queue (aiomqtt's pending publishes, paho's packets)
        while True:
            client: Any = out.client
            if client is not None:
                peak["pending"] = max(peak["pending"], len(client._pending_publishes))
                peak["packets"] = max(peak["packets"], len(client._client._out_packet))
            peak["backlog"] = max(peak["backlog"], out.backlog())
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        await until(lambda: out.online, 10, what="connected")
        for r in range(1, 61):  # bounded: 60 rounds of 200 changes, one round per 20 ms
            if r == 5:
                broker.stall()
            for s in sigs:
                fake.set(s.name, r, Quality.GOOD)
            await asyncio.sleep(0.02)  # pacing the load, not a synchronisation
        await until(lambda: broker.stalled.is_set() and broker.connections >= 2, 20, what="stalled, reconnected")
        await until(lambda: out.online and out.backlog() == 0, 30, what="the backlog drained")

        # every reported change, in order (the snapshots a connect publishes first are not changes); a lost
        # link may repeat what was in flight on it (documented: the broker acknowledged, the PUBACK was lost
        # with the link), each repeat right after its original
        await until(lambda: collapsed(delivered(broker)) == reported, 30, what="every reported change at the broker",
                    detail=lambda: sum(map(len, reported.values())) - sum(map(len, delivered(broker).values())))
        repeats = sum(map(len, delivered(broker).values())) - sum(map(len, reported.values()))
        assert repeats <= INFLIGHT * (broker.connections - 1), (repeats, broker.connections)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await svc.stop()
        await broker.close()
    assert peak["pending"] <= INFLIGHT  # the bound: never more publishes awaiting their PUBACK
    assert peak["packets"] <= INFLIGHT + 4  # nor more packets held in memory (a PINGREQ, the status)
    assert peak["backlog"] > 0  # the changes beyond it went to disk ...
    assert out.lost == 0 and svc.buffer is not None and svc.buffer.dropped == 0  # ... none lost
    assert sum(map(len, reported.values())) > 5 * SIGNALS  # the load went on during the stall


def collapsed(got: dict[str, list[object]]) -> dict[str, list[object]]:
    """Per signal, a value repeated right after itself once: what is left once a lost link's repeats go
    (a value a signal really reports twice in a row is reported by ``fake.set`` rounds that differ)."""
    return {name: [v for i, v in enumerate(vs) if i == 0 or v != vs[i - 1]] for name, vs in got.items()}


def delivered(broker: StallingBroker) -> dict[str, list[object]]:
    """The changes the broker acknowledged, per signal (the snapshots a connect publishes are not changes)."""
    got: dict[str, list[object]] = {}
    for name, value, snapshot in broker.received:
        if not snapshot:
            got.setdefault(name, []).append(value)
    return got


async def test_a_slow_broker_that_times_a_publish_out_gets_every_change_exactly_once() -> None:
    """A broker that pauses longer than connect_timeout_s and then goes on (slow, not hung): the publishes
    it has not acknowledged stay in flight instead of being given up and sent again, the changes after
    them go to disk, and once the PUBACKs arrive the queue drains. No reconnect, and every reported change
    reaches the broker exactly once, in order (at-least-once would repeat the timed-out chunk)."""
    broker = StallingBroker()
    await broker.start()
    fake, svc = json_service(broker.port, Path(tempfile.mkdtemp()), keepalive_s=60)  # the link stays up
    await svc.start()
    out = svc.json
    assert out is not None
    reported = record(out)
    peak_inflight = 0

    async def sample() -> None:
        nonlocal peak_inflight
        while True:
            peak_inflight = max(peak_inflight, out.inflight)
            await asyncio.sleep(0.002)

    sampler = asyncio.create_task(sample())
    try:
        await until(lambda: out.online and len(broker.received) >= SIGNALS, 10, what="connected, current values sent")
        broker.stall(resume_after=2.5)  # longer than the 1 s publish timeout, far shorter than keep-alive
        for r in range(1, 11):
            for s in SIGS:
                fake.set(s.name, r, Quality.GOOD)
            await asyncio.sleep(0.05)  # pacing the load, not a synchronisation
        await until(lambda: broker.stalled.is_set() and out.backlog() > 0, 10, what="stalled, changes on disk")
        await until(lambda: out.inflight == 0 and out.backlog() == 0 and out.replayed > 0, 20,
                    what="acknowledged, drained")
        await until(lambda: delivered(broker) == reported, 10, what="every reported change once, in order",
                    detail=lambda: sum(map(len, reported.values())) - sum(map(len, delivered(broker).values())))
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await svc.stop()
        await broker.close()
    assert peak_inflight > 0  # a publish was kept in flight past the timeout ...
    assert broker.connections == 1 and out.lost == 0  # ... on the same connection, nothing lost
    assert svc.buffer is not None and svc.buffer.dropped == 0
