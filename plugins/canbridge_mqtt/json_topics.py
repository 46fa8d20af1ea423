"""Plain MQTT topics: ``<prefix>/<bus>/<message>/<signal>`` with ``{"value", "ts", "quality"}``, writes on
``.../set``, availability on ``<prefix>/status`` (the Will says ``offline``), raw frames on
``<prefix>/<bus>/frames``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence

import aiomqtt

from canbridge import Bridge, Caller, Frame, Permission, RefusalReason, SignalInfo, WriteRefused
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import MqttConfig
from canbridge_mqtt.connection import Link
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

    def will(self) -> aiomqtt.Will:
        return aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)

    async def run(self) -> None:
        await self.link.run(self.will, self.session)

    async def session(self, client: aiomqtt.Client) -> None:
        self.client = client
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
            if await self.send(self.rbe.refresh(current), False) < len(current):
                raise aiomqtt.MqttError("the connection broke while publishing the current values")
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
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def send(self, changes: Sequence[Change], historical: bool) -> int:
        client = self.client
        if client is None or not self.online:
            return 0
        async with self._send_lock:  # the snapshot, the drain and live data: max_inflight in all, in order
            if not self.online or self.client is not client:
                return 0  # the send before this one found the link broken
            return await self._send(client, changes, historical)

    async def _send(self, client: aiomqtt.Client, changes: Sequence[Change], historical: bool) -> int:
        step = self.config.broker.max_inflight
        retain = self.cfg.retain and not historical  # an old value must not replace the retained current one
        sent = 0
        for i in range(0, len(changes), step):
            chunk = changes[i:i + step]
            results = await asyncio.gather(
                *(client.publish(value_topic(self.prefix, name), value_payload(value, str(q), ts),
                                 qos=1 if historical else self.cfg.qos, retain=retain)
                  for name, value, q, ts in chunk),
                return_exceptions=True,
            )
            for r in results:
                if isinstance(r, BaseException):
                    if not isinstance(r, aiomqtt.MqttError):
                        raise r
                    self.online = False
                    return sent
                sent += 1
        return sent

    async def _frames(self, client: aiomqtt.Client, bus: str) -> None:
        topic = f"{self.prefix}/{bus}/frames"
        async with self.bridge.subscribe_frames(bus, maxlen=self.cfg.frames_queue) as sub:
            async for batch in sub:
                for frame in batch:
                    await client.publish(topic, frame_payload(frame), qos=0)
                self.frames_dropped = sub.dropped

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            try:
                await self._set(str(message.topic), message.payload if isinstance(message.payload, bytes)
                                else str(message.payload).encode())
            except aiomqtt.MqttError:
                raise
            except Exception:
                log.exception("mqtt: handling %s failed", message.topic)

    async def _set(self, topic: str, payload: bytes) -> None:
        caller = Caller("mqtt", user="json", address=self.link.url,
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
