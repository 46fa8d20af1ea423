"""Plain MQTT topics: ``<prefix>/<bus>/<message>/<signal>`` with ``{"value", "ts", "quality"}``, writes on
``.../set``, availability on ``<prefix>/status`` (the Will says ``offline``), raw frames on
``<prefix>/<bus>/frames``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import aiomqtt

from canbridge import Bridge, Caller, Frame, Permission, RefusalReason, SignalInfo, WriteRefused
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import MqttConfig
from canbridge_mqtt.connection import Link, message_origin
from canbridge_mqtt.output import Output
from canbridge_mqtt.rbe import Change, ReportFilter

log = logging.getLogger("canbridge.mqtt")


def value_topic(prefix: str, name: str) -> str:
    """``<prefix>/<bus>/<message>/<signal>`` of a signal ``<bus>.<message>.<signal>``."""
    return f"{prefix}/{name.replace('.', '/')}"


def value_payload(value: object, quality: str, ts_ms: int | None) -> bytes:
    return json.dumps({"value": value, "ts": ts_ms, "quality": quality}, separators=(",", ":")).encode()


def set_target(prefix: str, topic: str) -> str | None:
    """The signal name a ``.../set`` topic writes, or None."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.endswith("/set"):
        return None
    parts = topic[len(head):-len("/set")].split("/")
    return ".".join(parts) if len(parts) == 3 and all(parts) else None


def set_value(payload: bytes) -> object:
    """The value of a set message: JSON (``1500``, ``true``, ``"On"``, ``{"value": 1500}``) or, when the
    payload is not JSON, its text (Home Assistant sends ``ON``)."""
    text = payload.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict) and set(data) == {"value"}:
        return data["value"]
    return data


def frame_payload(frame: Frame) -> bytes:
    return json.dumps(frame.to_nodered(), separators=(",", ":")).encode()


class JsonOutput(Output):
    sink = "json"

    def __init__(self, bridge: Bridge, config: MqttConfig, signals: Sequence[SignalInfo], rbe: ReportFilter,
                 buffer: Buffer | None) -> None:
        super().__init__(rbe, buffer, config.buffer)
        assert config.json_topics is not None
        self.bridge = bridge
        self.config = config
        self.cfg = config.json_topics
        self.signals = {s.name: s for s in signals}
        self.prefix = self.cfg.prefix
        self.status_topic = f"{self.prefix}/status"
        client_id = self.cfg.client_id or "canbridge-" + self.prefix.replace("/", "-")
        self.link = Link(config.broker, client_id, "json")
        self.client: aiomqtt.Client | None = None
        self.writes_accepted = 0
        self.writes_refused = 0
        self.frames_dropped = 0
        self._send_lock = asyncio.Lock()
        self._link_lost = asyncio.Event()  # set when a session ends: what is still in flight is undecided
        self._settling: asyncio.Task[None] | None = None

    async def add_signals(self, signals: Sequence[SignalInfo]) -> None:
        """New topics: they appear with their first value (the service keeps to ``max_topics``)."""
        self.signals.update((s.name, s) for s in signals)

    def will(self) -> aiomqtt.Will:
        return aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)

    async def run(self) -> None:
        await self.link.run(self.will, self.session)

    async def session(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._link_lost = asyncio.Event()
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._read(client), name="mqtt-json-read")]
        try:
            if self.cfg.writes:
                await client.subscribe(f"{self.prefix}/+/+/+/set", qos=1)
            await client.publish(self.status_topic, b"online", qos=1, retain=True)
            if self.cfg.frames:
                for bus in {s.bus for s in self.signals.values()}:
                    tasks.append(asyncio.create_task(self._frames(client, bus), name=f"mqtt-json-frames-{bus}"))
            # the current state first (what a retained topic should hold), then the backlog, then live
            current = self.bridge.read_many(list(self.signals))
            self.online = True
            self.rbe.reset()
            self.keep(await self.send_live(self.rbe.refresh(current)))  # ahead of the backlog: it is current
            while True:
                if not self.online:  # a publish failed or timed out (a broker that stopped reading): anew
                    raise aiomqtt.MqttError("a publish failed or was not acknowledged in time")
                await self.drain()
                done, _ = await asyncio.wait(tasks, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
                    raise aiomqtt.MqttError("the message stream ended")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.publish(self.status_topic, b"offline", qos=1, retain=True), 2.0)
            raise
        finally:
            self.online = False
            self.client = None
            self._link_lost.set()
            if self._settling is not None:  # before the queue closes: what was in flight goes back to it
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._settling)
                self._settling = None
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send_live(self, changes: Sequence[Change]) -> Sequence[Change]:
        client = self.client
        if client is None or not self.online:
            return changes
        async with self._send_lock:  # the snapshot, the drain and live data: max_inflight in all, in order
            if not self.online or self.client is not client or self.inflight:
                return changes  # the send before this one found the link broken, or is still in flight
            delivered, unsent = await self._publish(client, changes, None)
        self.published += len(delivered)
        return [changes[i] for i in unsent]

    async def replay(self, buf: Buffer, limit: int) -> tuple[int, int]:
        rows = await buf.peek(self.sink, limit)
        client = self.client
        if not rows or client is None or not self.online:
            return len(rows), 0
        async with self._send_lock:
            if not self.online or self.client is not client or self.inflight:
                return len(rows), 0
            delivered, _ = await self._publish(client, [c for _, c in rows], [rid for rid, _ in rows])
        await buf.delete_ids(self.sink, [rows[i][0] for i in delivered])
        return len(rows), len(delivered)

    async def _publish(self, client: aiomqtt.Client, changes: Sequence[Change],
                       ids: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """Publish ``changes`` (``ids``: their queue rows, for a replay) ``max_inflight`` at a time; returns
        the indices delivered and those not sent. A publish that is not acknowledged within
        ``connect_timeout_s`` stays in flight instead of being given up (the broker may be slow, not gone):
        its change is neither delivered nor to be queued again yet, ``_settle`` decides when the PUBACK
        arrives or the link is lost. That is what keeps a slow broker from seeing a change twice."""
        step = self.config.broker.max_inflight
        historical = ids is not None
        retain = self.cfg.retain and not historical  # an old value must not replace the retained current one
        qos = 1 if historical else self.cfg.qos
        delivered: list[int] = []
        for i in range(0, len(changes), step):
            chunk = range(i, min(i + step, len(changes)))
            tasks = [asyncio.ensure_future(client.publish(
                value_topic(self.prefix, changes[k][0]),
                value_payload(changes[k][1], str(changes[k][2]), changes[k][3]),
                qos=qos, retain=retain, timeout=math.inf)) for k in chunk]
            _, pending = await asyncio.wait(tasks, timeout=self.config.broker.connect_timeout_s)
            failed = False
            waiting: list[tuple[asyncio.Future[None], Change, int | None]] = []
            for k, t in zip(chunk, tasks, strict=True):
                if t in pending:
                    waiting.append((t, changes[k], None if ids is None else ids[k]))
                elif t.exception() is None:
                    delivered.append(k)
                elif isinstance(t.exception(), aiomqtt.MqttError):
                    failed = True  # not handed to the socket: certainly not delivered
                else:
                    raise t.exception()  # type: ignore[misc]
            if waiting:
                self.inflight += len(waiting)
                self._settling = asyncio.create_task(self._settle(waiting), name="mqtt-json-settle")
            if failed:
                self.online = False
            if waiting or failed:
                done = set(delivered) | {k for k in chunk if tasks[k - i] in pending}
                return delivered, [k for k in range(i, len(changes)) if k not in done]
        return delivered, []

    async def _settle(self, waiting: list[tuple[asyncio.Future[None], Change, int | None]]) -> None:
        """Wait for the PUBACKs of publishes kept in flight, or for the link to be lost: delivered ones are
        counted (a replayed row deleted); the others go back to the front of the queue (a replayed row
        stays). Only these, lost with the link before their PUBACK, may reach a subscriber twice."""
        lost: asyncio.Future[Any] = asyncio.ensure_future(self._link_lost.wait())
        try:
            left: set[asyncio.Future[Any]] = {t for t, _, _ in waiting}
            while left and not lost.done():
                _, still = await asyncio.wait([*left, lost], return_when=asyncio.FIRST_COMPLETED)
                left = {t for t in still if t is not lost}
        finally:
            lost.cancel()
            acked = [t.done() and not t.cancelled() and t.exception() is None for t, _, _ in waiting]
            for t, _, _ in waiting:
                t.cancel()  # what is still waiting: the link is gone
            self.inflight -= len(waiting)
        ok = [(c, rid) for (_, c, rid), a in zip(waiting, acked, strict=True) if a]
        not_ok = [(c, rid) for (_, c, rid), a in zip(waiting, acked, strict=True) if not a]
        self.published += sum(1 for _, rid in ok if rid is None)
        self.replayed += sum(1 for _, rid in ok if rid is not None)
        if self.buffer is not None:
            await self.buffer.delete_ids(self.sink, [rid for _, rid in ok if rid is not None])
        self.keep([c for c, rid in not_ok if rid is None], front=True)
        if not_ok:
            self.online = False

    async def _frames(self, client: aiomqtt.Client, bus: str) -> None:
        topic = f"{self.prefix}/{bus}/frames"
        async with self.bridge.subscribe_frames(bus, maxlen=self.cfg.frames_queue) as sub:
            async for batch in sub:
                for frame in batch:
                    await client.publish(topic, frame_payload(frame), qos=0)
                self.frames_dropped = sub.dropped

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                try:
                    await self._set(str(message.topic), message.payload if isinstance(message.payload, bytes)
                                    else str(message.payload).encode(), message.properties)
                except aiomqtt.MqttError:
                    raise
                except Exception:
                    log.exception("mqtt: handling %s failed", message.topic)
        finally:
            self._link_lost.set()  # what is in flight is decided now, not after the publish timeout

    async def _set(self, topic: str, payload: bytes, properties: object = None) -> None:
        # MQTT 3.1.1 does not say who published the set: the broker, our client, the topic (MQTT 5 adds more)
        caller = Caller("mqtt", user=f"json; {message_origin(topic, properties, self.link.client_id)}",
                        address=self.link.url,
                        permissions=frozenset({Permission.WRITE}) if self.cfg.writes else frozenset())
        name = set_target(self.prefix, topic)
        result: dict[str, object]
        if name is None:
            return
        try:
            if len(payload) > self.config.max_command_bytes:
                raise self.bridge.refuse(name, f"{len(payload)} bytes", caller, RefusalReason.UNSUPPORTED,
                                         f"payload larger than max_command_bytes ({self.config.max_command_bytes})")
            if name not in self.signals:
                raise self.bridge.refuse(name, None, caller, RefusalReason.UNKNOWN_SIGNAL,
                                         "no such signal published here")
            await self.bridge.write(name, set_value(payload), caller)  # type: ignore[arg-type]
            self.writes_accepted += 1
            result = {"ok": True}
        except WriteRefused as e:
            self.writes_refused += 1
            log.warning("mqtt: refused %s: %s (%s)", topic, e.reason.value, e.detail)
            result = {"ok": False, "reason": e.reason.value, "detail": e.detail}
        client = self.client
        if client is not None:
            await client.publish(topic + "/result", json.dumps(result).encode(), qos=0)
