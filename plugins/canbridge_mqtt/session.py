"""The Sparkplug B edge node's session rules, without I/O: bdSeq (kept on disk), seq, the Will, births,
data, deaths and the parsing of commands. ``sparkplug_output.py`` puts these on the wire.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from canbridge import Quality, SignalInfo, SignalValue
from canbridge_mqtt import sparkplug as sp
from canbridge_mqtt.buffer import Chunk, QueuedRow
from canbridge_mqtt.rbe import Change
from canbridge_mqtt.sparkplug import DataType, MetricDef
from canbridge_mqtt.sparkplug_b_pb2 import Payload

log = logging.getLogger("canbridge.mqtt")

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class BdSeqStore:
    """The birth/death sequence number, 0..255, kept in a file so that it goes on across restarts."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def next(self) -> int:
        """The bdSeq for the next connect; the file then holds the one after it (written before use)."""
        value = 0
        try:
            value = int(json.loads(self.path.read_text(encoding="utf-8"))["next"]) % 256
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("mqtt: %s unreadable (%s): bdSeq starts again at 0", self.path, e)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"next": (value + 1) % 256}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        return value


@dataclass(frozen=True, slots=True)
class NodeMetric:
    """A metric of the edge node itself (bus state, counters, the last refused write)."""

    name: str
    datatype: DataType
    alias: int


@dataclass(frozen=True, slots=True)
class Command:
    """One metric of a received NCMD/DCMD, resolved: the device metric (or None for a node metric)."""

    metric: MetricDef | None
    name: str  # as received (name or "alias N")
    value: object


class EdgeNode:
    """Sequence numbers, aliases and payloads of one edge node."""

    def __init__(self, group: str, node: str, signals: Sequence[SignalInfo],
                 node_metrics: Sequence[tuple[str, DataType]], choices_as_text: bool = False) -> None:
        self.group = group
        self.node = node
        # aliases are unique per node: node metrics first, then every device metric in table order
        self.node_metrics = [NodeMetric(n, dt, i + 1) for i, (n, dt) in enumerate(node_metrics)]
        self._node_by_name = {m.name: m for m in self.node_metrics}
        self.choices_as_text = choices_as_text
        self.devices: dict[str, list[MetricDef]] = {}
        self.by_signal: dict[str, MetricDef] = {}
        self.by_alias: dict[int, MetricDef] = {}
        self._by_device_name: dict[tuple[str, str], MetricDef] = {}
        self._next_alias = len(self.node_metrics) + 1
        self.add_signals(signals)
        self.bdseq = 0
        self._seq = 0
        self._queued_prefixes: dict[str, tuple[bytes, bytes]] = {}  # signal -> (alias, datatype) fields
        self._alias_fields: dict[int, bytes] = {}  # alias -> its encoded field
        self._epoch = ""
        self._epoch_of = -1  # how many metrics ``_epoch`` was computed for

    @property
    def epoch(self) -> str:
        """What queued chunks depend on: every metric's signal, alias and datatype. The same mapping, after a
        restart too, sends its chunks as they are; metrics added at run time make a new epoch."""
        if self._epoch_of != len(self.by_signal):
            key = sorted((d.signal, d.alias, int(d.datatype)) for d in self.by_signal.values())
            self._epoch = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
            self._epoch_of = len(self.by_signal)
        return self._epoch

    def add_signals(self, signals: Sequence[SignalInfo]) -> list[str]:
        """Device metrics for ``signals`` (those not yet metrics), with aliases after every alias given so
        far: the aliases of existing metrics never change. Returns the devices that gained metrics (a device's
        metrics are fixed by its DBIRTH: each needs a new one before DATA of them)."""
        new = [s for s in signals if s.name not in self.by_signal]
        defs = sp.metric_defs(new, self._next_alias, self.choices_as_text)
        self._next_alias += len(defs)
        for d in defs:
            self.devices.setdefault(d.info.bus, []).append(d)
            self.by_signal[d.signal] = d
            self.by_alias[d.alias] = d
            self._by_device_name[(d.info.bus, d.name)] = d
        return list(dict.fromkeys(d.info.bus for d in defs))

    # --- sequence numbers ------------------------------------------------------------------------------
    def next_seq(self) -> int:
        """The seq of the next message: 0..255, wrapping; NBIRTH resets it to 0."""
        s = self._seq
        self._seq = (s + 1) % 256
        return s

    # --- topics ----------------------------------------------------------------------------------------
    def topic(self, kind: str, device: str | None = None) -> str:
        return sp.topic(self.group, kind, self.node, device)

    # --- payloads --------------------------------------------------------------------------------------
    def death(self, bdseq: int) -> bytes:
        """The NDEATH (the Will): only ``bdSeq``, no seq."""
        p = Payload(timestamp=now_ms())
        sp.node_metric(p, BDSEQ, DataType.INT64, bdseq, None, None)
        return sp.encode(p)

    def nbirth(self, values: Mapping[str, object]) -> bytes:
        """NBIRTH: seq 0, the connection's bdSeq, ``Node Control/Rebirth`` false and every node metric."""
        self._seq = 0
        ts = now_ms()
        p = Payload(timestamp=ts, seq=self.next_seq())
        sp.node_metric(p, BDSEQ, DataType.INT64, self.bdseq, None, ts)
        sp.node_metric(p, REBIRTH, DataType.BOOLEAN, False, None, ts)
        for m in self.node_metrics:
            sp.node_metric(p, m.name, m.datatype, values.get(m.name), m.alias, ts)
        return sp.encode(p)

    def ndata(self, values: Mapping[str, object]) -> bytes:
        """NDATA of changed node metrics, by alias."""
        ts = now_ms()
        p = Payload(timestamp=ts, seq=self.next_seq())
        for name, value in values.items():
            m = self._node_by_name[name]
            sp.node_metric(p, m.name, m.datatype, value, m.alias, ts, with_name=False)
        return sp.encode(p)

    def dbirth(self, device: str, values: Mapping[str, SignalValue]) -> bytes:
        """DBIRTH: every metric of the device with name, alias, datatype, value and properties."""
        p = Payload(timestamp=now_ms(), seq=self.next_seq())
        for d in self.devices.get(device, []):
            v = values.get(d.signal)
            value, quality, ts = (None, Quality.WAITING, None) if v is None else (
                v.value, v.quality, None if v.timestamp_ns is None else v.timestamp_ns // 1_000_000)
            sp.birth_metric(p, d, self.shown(d, value), quality, ts)
        return sp.encode(p)

    def ddata(self, device: str, changes: Iterable[Change], historical: bool = False,
              qualities: dict[str, Quality] | None = None) -> bytes:
        """DDATA of ``changes`` by alias only; the quality property where it changed from the last one sent
        (``qualities`` is updated) or is not good."""
        p = Payload(timestamp=now_ms(), seq=self.next_seq())
        for name, value, quality, ts in changes:
            d = self.by_signal[name]
            q: Quality | None = quality
            if qualities is not None:
                if quality is Quality.GOOD and qualities.get(name, Quality.GOOD) is Quality.GOOD:
                    q = None
                qualities[name] = quality
            sp.data_metric(p, d, self.shown(d, value), q, ts, historical)
        return sp.encode(p)

    def queued_metric(self, change: Change) -> bytes:
        """A change as the queue keeps it for a later historical DDATA: its metric encoded, except the alias
        (``b""`` for a signal this mapping does not publish)."""
        name, value, quality, ts = change
        d = self.by_signal.get(name)
        if d is None:
            return b""
        return sp.queued_metric(d.datatype, self.shown(d, value), quality, ts)

    def _reframe(self, device: str, name: str, body: bytes) -> bytes | None:
        """A queued metric body framed with this mapping's alias; None if the signal is not published on
        ``device`` any more or its datatype changed since it was queued."""
        pre = self._queued_prefixes.get(name)
        if pre is None:
            d = self.by_signal.get(name)
            if d is None or d.info.bus != device:
                return None
            pre = self._queued_prefixes[name] = (sp.alias_field(d.alias), sp.datatype_field(d.datatype))
        if not body.startswith(pre[1]):
            return None
        return sp.frame_metric(pre[0] + body)

    def queued_chunks(self, changes: Sequence[Change], batch: int) -> tuple[list[Chunk], int]:
        """Changes as the queue keeps them for later historical DDATA: runs of one device, at most ``batch``
        changes each, every metric encoded and framed with its alias, so the replay only concatenates
        (``ddata_chunks``). Returns the chunks and how many changes were left out (signals not published)."""
        chunks: list[Chunk] = []
        skipped = 0
        names: list[str] = []
        parts: list[bytes] = []
        device = ""
        by_signal = self.by_signal
        alias_fields = self._alias_fields
        epoch = self.epoch
        for change in changes:
            name = change[0]
            d = by_signal.get(name)
            if d is None:
                skipped += 1
                continue
            if names and (d.info.bus != device or len(names) >= batch):
                chunks.append(Chunk(names, b"".join(parts), epoch))
                names, parts = [], []
            device = d.info.bus
            body = sp.queued_metric(d.datatype, self.shown(d, change[1]), change[2], change[3])
            af = alias_fields.get(d.alias)
            if af is None:
                af = alias_fields[d.alias] = sp.alias_field(d.alias)
            names.append(name)
            parts.append(sp.frame_metric(af + body))
        if names:
            chunks.append(Chunk(names, b"".join(parts), epoch))
        return chunks, skipped

    def ddata_chunks(self, device: str, rows: Iterable[QueuedRow]) -> tuple[bytes | None, int]:
        """Historical DDATA from queued rows of ``device``: a chunk of this mapping's epoch as it is, a chunk of
        another epoch (queued before a restart with another mapping) and a single queued change re-framed
        with the running aliases. Returns the payload (None when nothing is left) and the changes skipped
        (no longer published, datatype changed, or bytes that cannot be read)."""
        framed: list[bytes] = []
        skipped = 0
        for row in rows:
            if row.epoch == self.epoch:
                framed.append(row.blob)
                continue
            if row.epoch is None:  # one change, its metric without an alias
                pairs: Iterable[tuple[str, bytes]] = ((row.names, row.blob),)
            else:
                names = row.names.split("\n")
                try:
                    bodies = sp.unframe_metrics(row.blob)
                except ValueError:
                    bodies = []
                if len(bodies) != len(names):
                    skipped += row.n
                    continue
                pairs = zip(names, bodies, strict=True)
            for name, body in pairs:
                f = self._reframe(device, name, body)
                if f is None:
                    skipped += 1
                else:
                    framed.append(f)
        if not framed:
            return None, skipped
        return sp.framed_payload(now_ms(), self.next_seq(), framed), skipped

    def ddeath(self) -> bytes:
        """DDEATH: seq and timestamp, no metrics."""
        return sp.encode(Payload(timestamp=now_ms(), seq=self.next_seq()))

    @staticmethod
    def shown(d: MetricDef, value: object) -> object:
        """The metric value of a signal value: its choice text for a String metric of a choice signal."""
        if d.datatype is DataType.STRING and d.info.choices and isinstance(value, int) and not isinstance(value, bool):
            return d.info.choices.get(value, str(value))
        return value

    # --- commands --------------------------------------------------------------------------------------
    def parse_command(self, payload: Payload, device: str | None) -> list[Command]:
        """The metrics of an NCMD (device None) or DCMD, each resolved by alias or name."""
        out: list[Command] = []
        for m in payload.metrics:
            if device is None:
                name = m.name or f"alias {m.alias}"
                dt = m.datatype or (DataType.BOOLEAN if m.name == REBIRTH else 0)
                out.append(Command(None, name, sp.get_value(m, dt)))
                continue
            d = self.by_alias.get(m.alias) if m.HasField("alias") else self._by_device_name.get((device, m.name))
            if d is not None and d.info.bus != device:
                d = None  # an alias of another device
            name = m.name or f"alias {m.alias}"
            out.append(Command(d, name, None if d is None else sp.get_value(m, d.datatype)))
        return out
