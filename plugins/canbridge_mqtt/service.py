"""The running MQTT service: one subscription to the bridge feeding the Sparkplug and JSON outputs, the
store-and-forward queue, the maximum-age refresh. Start-up never waits for a broker: the outputs connect
and reconnect in the background."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Iterable

from canbridge import Bridge, PluginError, SignalInfo, SignalsAddedSubscription, Subscription
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import MqttConfig, check_topic_level
from canbridge_mqtt.json_topics import JsonOutput
from canbridge_mqtt.output import Output
from canbridge_mqtt.rbe import ReportFilter, deadbands
from canbridge_mqtt.sparkplug_output import SparkplugOutput

log = logging.getLogger("canbridge.mqtt")


def published_signals(bridge: Bridge, config: MqttConfig) -> list[SignalInfo]:
    """The signals to publish (include/exclude globs), each name usable as MQTT topic levels."""
    return selected(bridge.signals.values(), config)


def selected(signals: Iterable[SignalInfo], config: MqttConfig) -> list[SignalInfo]:
    """Those of ``signals`` that the include/exclude globs publish and whose names are usable topic levels."""
    out: list[SignalInfo] = []
    for info in signals:
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
        added = self.bridge.subscribe_signals_added()  # before the table is read: nothing added is missed
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
        self._tasks.append(asyncio.create_task(self._follow_added(added), name="mqtt-added"))
        if self.sparkplug is not None:
            self._tasks.append(asyncio.create_task(self.sparkplug.run(), name="mqtt-sparkplug"))
        if self.json is not None:
            self._tasks.append(asyncio.create_task(self.json.run(), name="mqtt-json"))
        log.info("mqtt: publishing %d signals to %s (connecting in the background)", len(self.signals),
                 ", ".join(cfg.broker.urls))

    async def _feed(self, sub: Subscription, births_carry_initial: bool = True) -> None:
        first = births_carry_initial
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

    async def _follow_added(self, added: SignalsAddedSubscription) -> None:
        """Signals the bridge adds at run time (J1939 senders heard): each output takes them (Sparkplug: a
        new DBIRTH of the device first), then one more feed covers every added signal. Its initial state
        goes through report by exception, so what the DBIRTH carried is not sent again and what changed
        since is."""
        extra: list[str] = []
        feed: Subscription | None = None
        async with added:
            async for batch in added:
                known = {s.name for s in self.signals}
                new = [s for s in selected(batch, self.config) if s.name not in known]
                jt = self.config.json_topics
                if jt is not None and len(self.signals) + len(new) > jt.max_topics:
                    room = max(0, jt.max_topics - len(self.signals))
                    log.warning("mqtt: %d new signals are not published (%s, ...): plugins.mqtt.json.max_topics "
                                "(%d) reached", len(new) - room, new[room].name, jt.max_topics)
                    new = new[:room]
                if not new:
                    continue
                self.signals += new
                bands = deadbands(new, self.config.report.deadband)
                for out in self.outputs:
                    out.rbe.bands.update(bands)
                    try:
                        await out.add_signals(new)
                    except Exception:
                        log.exception("mqtt: %s: adding %d signals failed", out.sink, len(new))
                extra += [s.name for s in new]
                if feed is not None:
                    feed.close()  # its feed ends after the batch in hand; the next one covers all added
                feed = self.bridge.subscribe(extra, interval=self.config.report.interval_ms / 1000)
                self._tasks = [t for t in self._tasks if not t.done()]
                self._tasks.append(asyncio.create_task(self._feed(feed, births_carry_initial=False),
                                                       name="mqtt-feed-added"))
                log.info("mqtt: publishing %d more signals (%s, ...)", len(new), new[0].name)

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
