"""Prometheus metrics: a collector that reads the bridge's counters at scrape time.

Nothing is counted twice: the bridge already keeps the counters, so the collector only reports them
(no per-frame work on the receive path). Each service has its own registry, so several services in one
process (tests) do not collide.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import canbridge

if TYPE_CHECKING:
    from canbridge_rest.state import RestState

_BUS_COUNTERS = (
    ("rx_frames", "canbridge_bus_frames_received", "Frames received on the bus that reached the bridge"),
    ("tx_frames", "canbridge_bus_frames_sent", "Frames the bridge sent on the bus"),
    ("error_frames", "canbridge_bus_error_frames", "Error frames seen on the bus"),
    ("decode_errors", "canbridge_bus_decode_errors", "Frames whose signals could not be decoded"),
    ("unmapped_frames", "canbridge_bus_unmapped_frames", "Frames with no mapping that reached user space"),
    ("dropped_frames", "canbridge_bus_dropped_frames", "Frames the kernel dropped (receive queue full)"),
    ("bus_off_count", "canbridge_bus_off", "Times the controller went bus-off"),
    ("restarts", "canbridge_bus_restarts", "Controller restarts after bus-off"),
    ("reconnects", "canbridge_bus_reconnects", "Times the bridge reopened the interface"),
)


class BridgeCollector(Collector):
    """Reads ``bridge.bus_status``, ``bridge.stats()``, signal qualities and the REST service's own state."""

    def __init__(self, state: RestState) -> None:
        self.state = state

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def _families(self) -> Iterable[Metric]:
        for _, name, doc in _BUS_COUNTERS:
            yield CounterMetricFamily(name, doc, labels=["bus"])
        yield from self._collect(empty=True)

    def _collect(self, empty: bool = False) -> list[Metric]:
        state = self.state
        bridge = state.bridge
        out: list[Metric] = []
        statuses = [] if empty else [bridge.bus_status(n) for n in bridge.buses]
        if not empty:
            for attr, name, doc in _BUS_COUNTERS:
                c = CounterMetricFamily(name, doc, labels=["bus"])
                for st in statuses:
                    c.add_metric([st.name], float(getattr(st, attr)))
                out.append(c)
        load = GaugeMetricFamily(
            "canbridge_bus_load_percent", "Bus load over the last second", labels=["bus"]
        )
        state_g = GaugeMetricFamily(
            "canbridge_bus_state", "1 for the bus's current state, 0 for the others", labels=["bus", "state"]
        )
        code_g = GaugeMetricFamily(
            "canbridge_bus_state_code",
            "Bus state as a number: active 0, warning 1, passive 2, bus_off 3, down 4, stopped 5, starting 6",
            labels=["bus"],
        )
        rec = GaugeMetricFamily(
            "canbridge_bus_rx_error_counter", "Controller receive error counter", labels=["bus"]
        )
        tec = GaugeMetricFamily(
            "canbridge_bus_tx_error_counter", "Controller transmit error counter", labels=["bus"]
        )
        for st in statuses:
            load.add_metric([st.name], st.bus_load)
            code_g.add_metric([st.name], st.state.code)
            for s in canbridge.BusState:
                state_g.add_metric([st.name, s.value], 1.0 if s is st.state else 0.0)
            if st.rx_error_counter is not None:
                rec.add_metric([st.name], st.rx_error_counter)
            if st.tx_error_counter is not None:
                tec.add_metric([st.name], st.tx_error_counter)
        out += [load, state_g, code_g, rec, tec]

        accepted = CounterMetricFamily("canbridge_writes_accepted", "Writes the write path accepted")
        refused = CounterMetricFamily(
            "canbridge_writes_refused", "Writes refused, by reason", labels=["reason"]
        )
        batches = CounterMetricFamily("canbridge_store_batches", "Receive batches applied to the store")
        upd = CounterMetricFamily(
            "canbridge_store_update_seconds", "Time spent applying batches to the store"
        )
        subs = GaugeMetricFamily("canbridge_subscribers", "Open signal subscriptions (all plugins)")
        lag = GaugeMetricFamily("canbridge_subscriber_lag_max_seconds", "Oldest change not yet delivered")
        quality = GaugeMetricFamily("canbridge_signals", "Signals by quality", labels=["quality"])
        audit_ok = GaugeMetricFamily(
            "canbridge_audit_available",
            "1 while the audit log can be written; 0: every write is refused (audit_unavailable) - alarm",
        )
        audit_fail = CounterMetricFamily(
            "canbridge_audit_failures", "Audit records that could not be written (each write refused)"
        )
        if not empty:
            bs = bridge.stats()
            audit_ok.add_metric([], 1.0 if bs.audit_available else 0.0)
            audit_fail.add_metric([], bs.audit_failures)
            accepted.add_metric([], bs.writes_accepted)
            for reason in canbridge.RefusalReason:
                refused.add_metric([reason.value], bs.writes_refused.get(reason.value, 0))
            batches.add_metric([], bs.store_batches)
            upd.add_metric([], bs.store_update_seconds_total)
            subs.add_metric([], bs.subscribers)
            lag.add_metric([], bs.max_subscriber_lag_s)
            counts = Counter(v.quality.value for v in bridge.read_many())
            for q in canbridge.Quality:
                quality.add_metric([q.value], counts.get(q.value, 0))
        out += [accepted, refused, batches, upd, subs, lag, quality, audit_ok, audit_fail]

        out += _operating(bridge, empty)

        hub = state.hub
        clients = GaugeMetricFamily("canbridge_rest_stream_clients", "SSE and WebSocket clients connected")
        dropped = CounterMetricFamily(
            "canbridge_rest_stream_dropped", "Stream clients dropped for not reading"
        )
        busy = CounterMetricFamily("canbridge_rest_stream_refused", "Stream clients refused: too many")
        events = CounterMetricFamily("canbridge_rest_stream_events", "Events sent to stream clients")
        reqs = CounterMetricFamily(
            "canbridge_rest_requests",
            "HTTP requests by route and status",
            labels=["method", "route", "status"],
        )
        auth_failed = CounterMetricFamily(
            "canbridge_rest_auth_failures", "Requests with an unknown or malformed token"
        )
        auth_limited = CounterMetricFamily(
            "canbridge_rest_auth_limited", "Requests refused (429) after too many failed authentications"
        )
        limited_peers = GaugeMetricFamily(
            "canbridge_rest_auth_limited_peers", "Addresses refused now for failed authentications"
        )
        if not empty:
            lim = state.limiter
            auth_failed.add_metric([], lim.failures)
            auth_limited.add_metric([], lim.refused)
            limited_peers.add_metric([], lim.limited_peers)
            clients.add_metric([], hub.clients)
            dropped.add_metric([], hub.dropped_slow)
            busy.add_metric([], hub.refused_busy)
            events.add_metric([], hub.events_sent)
            for (method, route, status), n in sorted(state.requests.items()):
                reqs.add_metric([method, route, str(status)], n)
        out += [clients, dropped, busy, events, reqs, auth_failed, auth_limited, limited_peers]
        return out


def _operating(bridge: canbridge.Bridge, empty: bool) -> list[Metric]:
    """Loop lag, CPU per plugin, subscription queues and coalescing (Bridge.operating_stats)."""
    st = None if empty else bridge.operating_stats()
    decoded = CounterMetricFamily(
        "canbridge_bus_frames_decoded", "Frames with a new payload that went through the decoder", labels=["bus"]
    )
    lag_max = GaugeMetricFamily("canbridge_event_loop_lag_max_seconds", "Largest event-loop lag since start")
    stalls = CounterMetricFamily(
        "canbridge_event_loop_stalls", "Event-loop lag samples over 20 ms (a callback held the loop): alarm"
    )
    cpu = CounterMetricFamily(
        "canbridge_plugin_cpu_seconds", "CPU of every callback and task step run for a plugin", labels=["plugin"]
    )
    core = CounterMetricFamily("canbridge_core_cpu_seconds", "CPU of the event loop's thread not charged to plugins")
    pending = GaugeMetricFamily(
        "canbridge_subscription_pending", "Changed signals waiting for the next batch, by plugin", labels=["plugin"]
    )
    coalesced = CounterMetricFamily(
        "canbridge_coalesced_updates",
        "Signal changes overwritten before the subscribing plugin saw them, by plugin",
        labels=["plugin"],
    )
    fdropped = CounterMetricFamily(
        "canbridge_frame_subscription_dropped", "Raw frames dropped for slow frame subscribers"
    )
    if st is None:
        hist = HistogramMetricFamily(
            "canbridge_event_loop_lag_seconds", "How late the event loop ran a timer due every 10 ms"
        )
        return [hist, lag_max, stalls, cpu, core, pending, coalesced, fdropped, decoded]
    lag = st.loop_lag
    hist = HistogramMetricFamily(
        "canbridge_event_loop_lag_seconds",
        "How late the event loop ran a timer due every 10 ms",
        buckets=[(_le(b), float(n)) for b, n in lag.buckets] + [("+Inf", float(lag.samples))],
        sum_value=lag.sum_s,
    )
    lag_max.add_metric([], lag.max_s)
    stalls.add_metric([], lag.stalls)
    for name, p in st.plugins.items():
        cpu.add_metric([name], p.cpu_seconds)
    core.add_metric([], st.core_cpu_seconds)
    by_plugin: dict[str, int] = {}
    for sub in st.subscriptions:
        key = sub.plugin or "-"
        by_plugin[key] = by_plugin.get(key, 0) + sub.pending
    for name, n in sorted(by_plugin.items()):
        pending.add_metric([name], n)
    for name, n in sorted(st.coalesced_by_plugin.items()):
        coalesced.add_metric([name], n)
    fdropped.add_metric([], st.frames_dropped_total)
    for name, b in st.buses.items():
        decoded.add_metric([name], b.decoded)
    return [hist, lag_max, stalls, cpu, core, pending, coalesced, fdropped, decoded]


def _le(bound: float) -> str:
    return repr(float(bound))  # Prometheus "le" labels: 0.001, 1.0, 10.0


def make_registry(state: RestState) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(BridgeCollector(state))
    ProcessCollector(registry=registry)  # resident memory and CPU time of the bridge process
    return registry
