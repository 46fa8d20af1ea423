"""The running MQTT service: one subscription to the bridge feeding the Sparkplug and JSON outputs, the
store-and-forward queue, the maximum-age refresh. Start-up never waits for a broker: the outputs connect
and reconnect in the background."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging

from canbridge import Bridge, PluginError, SignalInfo, Subscription
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import MqttConfig, check_topic_level
from canbridge_mqtt.json_topics import JsonOutput
from canbridge_mqtt.output import Output
from canbridge_mqtt.rbe import ReportFilter, deadbands
from canbridge_mqtt.sparkplug_output import SparkplugOutput

log = logging.getLogger("canbridge.mqtt")


def published_signals(bridge: Bridge, config: MqttConfig) -> list[SignalInfo]:
    """The signals to publish (include/exclude globs), each name usable as MQTT topic levels."""
    out: list[SignalInfo] = []
    for info in bridge.signals.values():
        if not any(fnmatch.fnmatchcase(info.name, g) for g in config.include):
            continue
        if any(fnmatch.fnmatchcase(info.name, g) for g in config.exclude):
            continue
        try:
            for level in (info.bus, info.message, info.signal):
                check_topic_level(level, "name")
        except ValueError as e:
            log.warning("mqtt: %s is not published: %s", info.name, e)
            continue
        out.append(info)
    return out


class MqttService:
    """Sparkplug B edge node and/or plain JSON topics for the mapping table."""

    def __init__(self, bridge: Bridge, config: MqttConfig) -> None:
        self.bridge = bridge
        self.config = config
        self.signals: list[SignalInfo] = []
        self.buffer: Buffer | None = None
        self.outputs: list[Output] = []
        self.sparkplug: SparkplugOutput | None = None
        self.json: JsonOutput | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        cfg = self.config
        self.signals = published_signals(self.bridge, cfg)
        if cfg.json_topics is not None and len(self.signals) > cfg.json_topics.max_topics:
            raise PluginError(f"mqtt: {len(self.signals)} signals would be published, more than "
                              f"plugins.mqtt.json.max_topics ({cfg.json_topics.max_topics}); narrow include/exclude")
        if cfg.buffer.enabled:
            path = cfg.buffer.path or self.bridge.state_dir / "mqtt" / "buffer.sqlite"
            self.buffer = Buffer(path, cfg.buffer.max_mb, cfg.buffer.max_age_h, cfg.buffer.max_pending)
            await self.buffer.ready()  # on the writer thread: counting the queue of a restart
            if self.buffer.total():
                log.info("mqtt: %d change(s) queued from before the restart will be sent after birth",
                         self.buffer.total())
        bands = deadbands(self.signals, cfg.report.deadband)
        if cfg.sparkplug is not None:
            self.sparkplug = SparkplugOutput(self.bridge, cfg, self.signals,
                                             ReportFilter(bands, cfg.report.max_age_s), self.buffer)
            self.outputs.append(self.sparkplug)
        if cfg.json_topics is not None:
            self.json = JsonOutput(self.bridge, cfg, self.signals, ReportFilter(bands, cfg.report.max_age_s),
                                   self.buffer)
            self.outputs.append(self.json)
        sub = self.bridge.subscribe([s.name for s in self.signals], interval=cfg.report.interval_ms / 1000)
        self._tasks.append(asyncio.create_task(self._feed(sub), name="mqtt-feed"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="mqtt-housekeeping"))
        if self.sparkplug is not None:
            self._tasks.append(asyncio.create_task(self.sparkplug.run(), name="mqtt-sparkplug"))
        if self.json is not None:
            self._tasks.append(asyncio.create_task(self.json.run(), name="mqtt-json"))
        log.info("mqtt: publishing %d signals to %s (connecting in the background)", len(self.signals),
                 ", ".join(cfg.broker.urls))

    async def _feed(self, sub: Subscription) -> None:
        first = True
        async with sub:
            async for batch in sub:
                if first:  # the initial state: births (and the JSON connect) carry it
                    first = False
                    for out in self.outputs:
                        out.rbe.mark(batch)
                    continue
                for out in self.outputs:
                    try:
                        await out.offer(out.rbe.select(batch))
                    except Exception:  # one bad batch must not end the feed
                        log.exception("mqtt: %s: publishing a batch failed", out.sink)

    async def _housekeeping(self) -> None:
        """Maximum age (unchanged values sent again) once a second; the queue's age bound once a minute."""
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            for out in self.outputs:
                names = out.rbe.expired()
                if names:
                    with contextlib.suppress(Exception):
                        await out.offer(out.rbe.refresh(self.bridge.read_many(names)))
            if self.buffer is not None and ticks % 60 == 0:
                await self.buffer.expire()

    async def stop(self) -> None:
        for t in reversed(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=4.0)
            for t in self._tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.error("mqtt: %s ended with %r", t.get_name(), t.exception())
        self._tasks.clear()
        if self.buffer is not None:
            await self.buffer.close()

    def endpoints(self) -> list[str]:
        out: list[str] = []
        if self.sparkplug is not None:
            sp = self.config.sparkplug
            assert sp is not None
            out.append(f"{self.config.broker.urls[0]} spBv1.0/{sp.group_id}/+/{sp.edge_node_id}")
        if self.json is not None:
            out.append(f"{self.config.broker.urls[0]} {self.json.prefix}/#")
        return out
