"""The Sparkplug B edge node on the wire: Will, primary host STATE, births, DDATA, DDEATH/DBIRTH per bus,
NCMD Rebirth and DCMD writes through the bridge's write path."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Sequence

import aiomqtt

import canbridge
from canbridge import Bridge, BusState, Caller, Permission, Quality, RefusalReason, SignalInfo, WriteRefused
from canbridge_mqtt import sparkplug as sp
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import MqttConfig, SparkplugConfig
from canbridge_mqtt.connection import Link, message_origin
from canbridge_mqtt.output import Output
from canbridge_mqtt.rbe import Change, ReportFilter
from canbridge_mqtt.session import REBIRTH, BdSeqStore, EdgeNode
from canbridge_mqtt.sparkplug import DataType

log = logging.getLogger("canbridge.mqtt")

_DEAD = (BusState.DOWN, BusState.BUS_OFF, BusState.STOPPED)
_TICK_S = 0.25
_COUNTERS_EVERY_S = 5.0
LAST_REFUSED = "Writes/Last Refused"
LAST_REFUSED_REASON = "Writes/Last Refused Reason"


def node_metric_list(buses: Sequence[str]) -> list[tuple[str, DataType]]:
    out = [("Properties/Software", DataType.STRING), ("Properties/Version", DataType.STRING)]
    for bus in buses:
        out += [(f"Buses/{bus}/State", DataType.STRING), (f"Buses/{bus}/RX Frames", DataType.UINT64),
                (f"Buses/{bus}/TX Frames", DataType.UINT64), (f"Buses/{bus}/Error Frames", DataType.UINT64),
                (f"Buses/{bus}/Bus Off Count", DataType.UINT64)]
    out += [("Writes/Accepted", DataType.UINT64), ("Writes/Refused", DataType.UINT64),
            (LAST_REFUSED, DataType.STRING), (LAST_REFUSED_REASON, DataType.STRING),
            ("Store and Forward/Queued", DataType.UINT64), ("Store and Forward/Dropped", DataType.UINT64)]
    return out


class SparkplugOutput(Output):
    sink = "sparkplug"

    def __init__(self, bridge: Bridge, config: MqttConfig, signals: Sequence[SignalInfo], rbe: ReportFilter,
                 buffer: Buffer | None) -> None:
        super().__init__(rbe, buffer, config.buffer)
        assert config.sparkplug is not None
        self.bridge = bridge
        self.config = config
        self.sp: SparkplugConfig = config.sparkplug
        self.buses = [b for b in bridge.buses if any(s.bus == b for s in signals)]
        self.node = EdgeNode(self.sp.group_id, self.sp.edge_node_id, signals, node_metric_list(self.buses),
                             self.sp.choices_as_text)
        self.bdseq = BdSeqStore(bridge.state_dir / "mqtt" / f"{self.sp.group_id}.{self.sp.edge_node_id}.bdseq.json")
        self.link = Link(config.broker, self.sp.edge_node_id, "sparkplug")
        self.client: aiomqtt.Client | None = None
        self.dead: set[str] = set()  # devices whose DDEATH was sent (or never born)
        self.qualities: dict[str, Quality] = {}
        self.host_online: bool = self.sp.primary_host_id is None
        self._host_ts = -1
        self._host_changed = asyncio.Event()
        self._rebirth = asyncio.Event()
        self._lock = asyncio.Lock()  # one message sequence at a time: births never interleave with DATA
        self._link_lost = asyncio.Event()  # set by the reader when the connection ends
        self.writes_accepted = 0
        self.writes_refused = 0
        self.last_refused = ("", "")
        self.rebirths = 0
        self._legacy_warned = False
        self._origin = ""  # who sent the command being handled, as far as MQTT tells
        self._sent_node: dict[str, object] = {}
        self._counters_at = 0.0

    def interrupted(self) -> bool:
        return self._rebirth.is_set() or not self.host_online

    # --- the connection --------------------------------------------------------------------------------
    def will(self) -> aiomqtt.Will:
        self.node.bdseq = self.bdseq.next()  # incremented per connect, written before the connect
        return aiomqtt.Will(self.node.topic("NDEATH"), self.node.death(self.node.bdseq), qos=1, retain=False)

    async def run(self) -> None:
        await self.link.run(self.will, self.session)

    async def session(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._link_lost = asyncio.Event()
        self.host_online = self.sp.primary_host_id is None
        self._host_changed.clear()
        reader = asyncio.create_task(self._read(client), name="mqtt-sparkplug-read")
        try:
            topics = [(self.node.topic("NCMD"), 1), (self.node.topic("DCMD") + "/+", 1)]
            if self.sp.primary_host_id is not None:
                topics += [(f"{sp.NAMESPACE}/STATE/{self.sp.primary_host_id}", 1),
                           (f"STATE/{self.sp.primary_host_id}", 1)]  # the pre-3.0 form
            await client.subscribe(topics)
            while not self.host_online:  # tck-id-operational-behavior-edge-node-birth-sequence-wait
                await self._wait(reader, self._host_changed)
                self._host_changed.clear()
            await self._birth(client)
            self.online = True
            while True:
                if not self.host_online:
                    # tck-id-operational-behavior-primary-application-state-with-online-false: NDEATH, disconnect
                    log.warning("mqtt: primary host %s went offline: NDEATH, reconnecting; changes are buffered",
                                self.sp.primary_host_id)
                    self.online = False
                    async with self._lock:
                        await client.publish(self.node.topic("NDEATH"), self.node.death(self.node.bdseq), qos=1)
                    return
                if not self.online:
                    # a publish failed or timed out (a broker that stopped reading): the seq stream has a
                    # gap, so a new connection, a new bdSeq and births; what was not sent is on disk
                    raise aiomqtt.MqttError("a publish failed or was not acknowledged in time")
                if self._rebirth.is_set():
                    self._rebirth.clear()
                    await self._birth(client)
                await self._devices(client)
                await self._node_data(client)
                await self.drain()
                await self._wait(reader, self._rebirth, self._host_changed, timeout=_TICK_S)
                self._host_changed.clear()
        except asyncio.CancelledError:
            # an intentional disconnect: the NDEATH ourselves (MQTT 3.1.1 drops the Will on DISCONNECT)
            if self.online:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        client.publish(self.node.topic("NDEATH"), self.node.death(self.node.bdseq), qos=1), 2.0)
            raise
        finally:
            self.online = False
            self.client = None
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def _wait(self, reader: asyncio.Task[None], *events: asyncio.Event, timeout: float | None = None) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            done, _ = await asyncio.wait([reader, *waits], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if reader in done:
            reader.result()  # the connection broke: raise its MqttError
            raise aiomqtt.MqttError("the message stream ended")

    # --- births and deaths ------------------------------------------------------------------------------
    def _alive(self, bus: str) -> bool:
        try:
            return self.bridge.bus_status(bus).state not in _DEAD
        except KeyError:
            return False

    async def _birth(self, client: aiomqtt.Client) -> None:
        """NBIRTH then a DBIRTH per living bus, with the current values (tck-id-topics-nbirth-seq-num)."""
        async with self._lock:
            values = self._node_values()
            await client.publish(self.node.topic("NBIRTH"), self.node.nbirth(values), qos=0)
            self._sent_node = values
            self._counters_at = time.monotonic()
            self.rbe.reset()
            self.qualities.clear()
            self.dead = set(self.buses)
            for bus in self.buses:
                if self._alive(bus):
                    await self._dbirth(client, bus)
            self.rebirths += 1

    async def _dbirth(self, client: aiomqtt.Client, bus: str) -> None:
        names = [d.signal for d in self.node.devices.get(bus, [])]
        current = self.bridge.read_many(names)
        await client.publish(self.node.topic("DBIRTH", bus), self.node.dbirth(bus, {v.name: v for v in current}), qos=0)
        self.rbe.mark(current)
        for v in current:
            self.qualities[v.name] = v.quality
        self.dead.discard(bus)

    async def _devices(self, client: aiomqtt.Client) -> None:
        """DDEATH for a bus that went down, DBIRTH for one that came back."""
        for bus in self.buses:
            alive = self._alive(bus)
            if alive and bus in self.dead:
                async with self._lock:
                    await self._dbirth(client, bus)
            elif not alive and bus not in self.dead:
                async with self._lock:
                    await client.publish(self.node.topic("DDEATH", bus), self.node.ddeath(), qos=0)
                    self.dead.add(bus)

    async def add_signals(self, signals: Sequence[SignalInfo]) -> None:
        """New device metrics (new aliases, the others unchanged): a device's metrics are fixed by its birth,
        so a living device gets DDEATH and a new DBIRTH with them before any DDATA uses them (the only way to
        add metrics to a device, eclipse-sparkplug/sparkplug#540). Offline, the next births carry them."""
        ours = [s for s in signals if s.bus in self.buses]  # a new device would need an NBIRTH: not yet
        for s in signals:
            if s.bus not in self.buses:
                log.warning("mqtt: %s is not published: bus %s was not a Sparkplug device at birth", s.name, s.bus)
        for bus in self.node.add_signals(ours):
            client = self.client
            if client is None or not self.online:
                continue
            try:
                async with self._lock:
                    if bus in self.dead:  # its next DBIRTH (the bus coming back) carries them
                        continue
                    await client.publish(self.node.topic("DDEATH", bus), self.node.ddeath(), qos=0)
                    await self._dbirth(client, bus)
            except aiomqtt.MqttError:
                self.online = False  # the session reconnects and births everything anew
                return
            log.info("mqtt: DBIRTH of %s again with %d new metrics", bus, sum(s.bus == bus for s in ours))

    def _node_values(self) -> dict[str, object]:
        out: dict[str, object] = {"Properties/Software": "canbridge", "Properties/Version": canbridge.__version__}
        for bus in self.buses:
            try:
                st = self.bridge.bus_status(bus)
            except KeyError:
                continue
            out.update({f"Buses/{bus}/State": str(st.state), f"Buses/{bus}/RX Frames": st.rx_frames,
                        f"Buses/{bus}/TX Frames": st.tx_frames, f"Buses/{bus}/Error Frames": st.error_frames,
                        f"Buses/{bus}/Bus Off Count": st.bus_off_count})
        out.update({"Writes/Accepted": self.writes_accepted, "Writes/Refused": self.writes_refused,
                    LAST_REFUSED: self.last_refused[0], LAST_REFUSED_REASON: self.last_refused[1],
                    "Store and Forward/Queued": self.backlog(),
                    "Store and Forward/Dropped": 0 if self.buffer is None else self.buffer.dropped})
        return out

    async def _node_data(self, client: aiomqtt.Client) -> None:
        """NDATA of changed node metrics: states and refusals at once, counters every few seconds."""
        values = self._node_values()
        counters = time.monotonic() - self._counters_at >= _COUNTERS_EVERY_S
        changed = {k: v for k, v in values.items() if self._sent_node.get(k) != v
                   and (counters or isinstance(v, str))}
        if counters:
            self._counters_at = time.monotonic()
        if changed:
            async with self._lock:
                await client.publish(self.node.topic("NDATA"), self.node.ndata(changed), qos=0)
            self._sent_node.update(changed)

    # --- data ---------------------------------------------------------------------------------------------
    async def send_live(self, changes: Sequence[Change]) -> Sequence[Change]:
        sent = await self.send(changes, False)
        self.published += sent
        return changes[sent:]

    async def send(self, changes: Sequence[Change], historical: bool) -> int:
        """DDATA per bus in order; how many changes (from the start) went out."""
        client = self.client
        if client is None or not self.online:
            return 0
        sent = 0
        qos = 1 if historical else self.sp.data_qos  # history at QoS 1: it is what the outage was about
        for bus, run in itertools.groupby(changes, key=lambda c: c[0].split(".", 1)[0]):
            group = list(run)
            if bus in self.dead or bus not in self.node.devices:
                # no DDATA for a dead device (its DDEATH said so); its history is dropped, counted
                if historical and self.buffer is not None:
                    self.buffer.note_dropped(len(group), f"history of {bus}, which is down")
                sent += len(group)
                continue
            group = [c for c in group if c[0] in self.node.by_signal]
            try:
                async with self._lock:
                    payload = self.node.ddata(bus, group, historical, None if historical else self.qualities)
                    await self._confirmed(client.publish(self.node.topic("DDATA", bus), payload, qos=qos))
            except aiomqtt.MqttError:
                self.online = False
                return sent
            sent += len(group)
        return sent

    def store(self, buf: Buffer, changes: Sequence[Change], front: bool) -> None:
        chunks, skipped = self.node.queued_chunks(changes, self.buffer_cfg.batch)
        buf.note_dropped(skipped, "not published")
        buf.append_chunks(self.sink, chunks, front)

    async def replay(self, buf: Buffer, limit: int) -> tuple[int, int]:
        """Historical DDATA straight from the queued bytes: one SELECT per page of about ``limit`` changes,
        no decoding. A chunk (``EdgeNode.queued_chunks``: a run of one device's metrics, framed with their
        aliases) goes out as it is; consecutive rows of one device are joined up to ``buffer.batch`` changes
        a message; the page's messages are published together (their PUBACKs awaited at once, not one round
        trip each) and one DELETE forgets what went out. Counts are in changes."""
        rows = await buf.peek_rows(self.sink, limit, self.node.queued_metric)
        read = sum(r.n for r in rows)
        client = self.client
        if not rows or client is None or not self.online:
            return read, 0
        step = self.buffer_cfg.batch
        # (rows up to and including this message, changes in them, its publish or None for rows not sent)
        parts: list[tuple[int, int, asyncio.Future[None] | None]] = []
        dropped = skipped_all = 0
        async with self._lock:  # births never interleave with the page's DDATA; seq in publish order
            end = changes = 0
            for bus, run in itertools.groupby(rows, key=lambda r: r.names.split(".", 1)[0]):
                group = list(run)
                if bus in self.dead or bus not in self.node.devices:
                    end += len(group)  # no DDATA for a dead device (its DDEATH said so): dropped, counted
                    k = sum(r.n for r in group)
                    changes += k
                    dropped += k
                    parts.append((end, changes, None))
                    continue
                topic = self.node.topic("DDATA", bus)
                i = 0
                while i < len(group):
                    j, held = i + 1, group[i].n  # a message: at least one row, more while they fit
                    while j < len(group) and held + group[j].n <= step:
                        held += group[j].n
                        j += 1
                    payload, skipped = self.node.ddata_chunks(bus, group[i:j])
                    end += j - i
                    changes += held
                    skipped_all += skipped  # no longer published, or its datatype changed: not sent wrong
                    parts.append((end, changes, None if payload is None else
                                  asyncio.ensure_future(self._confirmed(client.publish(topic, payload, qos=1)))))
                    i = j
            await asyncio.gather(*(f for _, _, f in parts if f is not None), return_exceptions=True)
        sent_rows = sent = 0
        for end, changes, f in parts:  # what went out: the prefix up to the first publish that failed
            if f is not None and f.exception() is not None:
                self.online = False
                break
            sent_rows, sent = end, changes
        buf.note_dropped(dropped, "history of a bus that is down")
        buf.note_dropped(skipped_all, "no longer published with that datatype")
        if sent_rows:
            await buf.delete(self.sink, rows[sent_rows - 1].id)
        return read, sent

    async def _confirmed(self, publish: Awaitable[None]) -> None:
        """``publish``, failing as soon as the connection is lost: aiomqtt would wait for a PUBACK that
        cannot come until its timeout, holding up the feed and the lock."""
        fut = asyncio.ensure_future(publish)
        lost = asyncio.ensure_future(self._link_lost.wait())
        try:
            await asyncio.wait([fut, lost], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            fut.cancel()
            raise
        finally:
            lost.cancel()
        if not fut.done():
            fut.cancel()
            raise aiomqtt.MqttError("the connection was lost before the PUBACK")
        fut.result()

    # --- commands and host state ------------------------------------------------------------------------
    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                try:
                    await self._handle(message)
                except aiomqtt.MqttError:
                    raise
                except Exception:
                    log.exception("mqtt: handling %s failed", message.topic)
        finally:
            self._link_lost.set()

    def _caller(self) -> Caller:
        """The caller of the command being handled: the broker's URL and all that is known of the sender
        (``message_origin``: MQTT 3.1.1 does not say who published it)."""
        perms = frozenset({Permission.WRITE}) if self.sp.writes else frozenset()
        return Caller("mqtt", user=f"sparkplug {self.sp.primary_host_id or 'host'}; {self._origin}",
                      address=self.link.url, permissions=perms)

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        self._origin = message_origin(topic, message.properties, self.link.client_id)
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
        if topic.endswith(f"STATE/{self.sp.primary_host_id}"):
            self._host_state(payload, legacy_topic=not topic.startswith(sp.NAMESPACE))
            return
        if len(payload) > self.config.max_command_bytes:
            self._refused(topic, f"{len(payload)} bytes", self.bridge.refuse(
                topic, f"{len(payload)} bytes", self._caller(), RefusalReason.UNSUPPORTED,
                f"command larger than max_command_bytes ({self.config.max_command_bytes})"))
            return
        parts = topic.split("/")
        device = parts[4] if len(parts) == 5 and parts[2] == "DCMD" else None
        try:
            decoded = sp.decode(payload)
        except ValueError as e:
            self._refused(topic, "?", self.bridge.refuse(topic, "?", self._caller(), RefusalReason.UNSUPPORTED, str(e)))
            return
        if len(decoded.metrics) > self.sp.max_command_metrics:
            self._refused(topic, f"{len(decoded.metrics)} metrics", self.bridge.refuse(
                topic, f"{len(decoded.metrics)} metrics", self._caller(), RefusalReason.UNSUPPORTED,
                f"more than max_command_metrics ({self.sp.max_command_metrics}) metrics"))
            return
        commands = self.node.parse_command(decoded, device)
        if device is None:
            for c in commands:
                if c.name == REBIRTH and c.value is True:
                    log.info("mqtt: NCMD Rebirth")
                    self._rebirth.set()
                else:
                    self._refused(c.name, c.value, self.bridge.refuse(
                        c.name, c.value, self._caller(), RefusalReason.NOT_WRITABLE,
                        "node metrics are read-only; only Node Control/Rebirth is a command"))
            return
        items: list[tuple[str, object]] = []
        for c in commands:
            if c.metric is None:
                self._refused(f"{device}/{c.name}", c.value, self.bridge.refuse(
                    f"{device}/{c.name}", c.value, self._caller(), RefusalReason.UNKNOWN_SIGNAL,
                    f"device {device} has no metric {c.name}"))
                return
            items.append((c.metric.signal, c.value))
        if not items:
            return
        try:
            await self.bridge.write_many(items, self._caller())
            self.writes_accepted += len(items)
        except WriteRefused as e:
            name = e.target or (items[e.index][0] if e.index is not None else items[0][0])
            value = items[e.index][1] if e.index is not None else items[0][1]
            self._refused(name, value, e)

    def _refused(self, target: str, value: object, e: WriteRefused) -> None:
        """A refused command: already audited (by the write path or bridge.refuse); shown as node metrics."""
        self.writes_refused += 1
        self.last_refused = (f"{target}={value!r}"[:200], f"{e.reason.value}: {e.detail}"[:200])
        log.warning("mqtt: refused command %s=%r: %s (%s)", target, value, e.reason.value, e.detail)

    def _host_state(self, payload: bytes, legacy_topic: bool) -> None:
        text = payload.decode("utf-8", "replace").strip()
        online: bool | None = None
        ts = -1
        if text in ("ONLINE", "OFFLINE"):
            if not self._legacy_warned:
                log.warning("mqtt: primary host %s sends the pre-3.0 STATE form (%r); accepted, please upgrade it",
                            self.sp.primary_host_id, text)
                self._legacy_warned = True
            online = text == "ONLINE"
        elif not legacy_topic:
            try:
                data = json.loads(text)
                online = bool(data["online"]) if isinstance(data.get("online"), bool) else None
                ts = int(data.get("timestamp", -1))
            except (ValueError, TypeError, AttributeError, KeyError):
                online = None
        if online is None:
            log.warning("mqtt: ignored a STATE message of %s that is neither 3.0 JSON nor ONLINE/OFFLINE: %r",
                        self.sp.primary_host_id, text[:80])
            return
        if 0 <= ts < self._host_ts:
            return  # an older STATE than one already seen (tck-id-host-topic-phid-birth-payload-timestamp)
        self._host_ts = max(self._host_ts, ts)
        if online != self.host_online:
            log.info("mqtt: primary host %s is %s", self.sp.primary_host_id, "online" if online else "offline")
        self.host_online = online
        if not online:
            self.online = False  # from now on changes are buffered (the session sends the NDEATH)
        self._host_changed.set()
