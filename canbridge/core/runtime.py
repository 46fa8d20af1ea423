"""The running bridge: buses, store, write path and plugins inside one TaskGroup.

``Runtime`` implements the public :class:`canbridge.Bridge` facade. ``run(shutdown_trigger)`` serves
until the trigger completes (hypercorn's pattern: tests pass an event and stop it deterministically),
then stops plugins in reverse order and closes the buses, each step bounded in time.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from canbridge._bridge import Bridge, FrameSubscription, SignalsAddedSubscription, Subscription
from canbridge._errors import (
    ConfigError,
    PluginError,
    Problem,
    RefusalReason,
    UnknownBus,
    UnknownSignal,
    WriteRefused,
)
from canbridge._model import (
    BridgeStats,
    BusInfo,
    BusLoad,
    BusState,
    BusStatus,
    Caller,
    Frame,
    FrameSubscriptionLoad,
    MessageInfo,
    MessageStatus,
    OperatingStats,
    PluginLoad,
    Quality,
    SignalInfo,
    SignalValue,
    SubscriptionLoad,
    Value,
    WriteReceipt,
)
from canbridge._plugin import NorthboundPlugin, Service
from canbridge.config import Config, LineMap, problems_from_validation
from canbridge.core import cpuaccount
from canbridge.core.audit import AuditLog
from canbridge.core.busrunner import BusRunner
from canbridge.core.cpuaccount import CpuMeter
from canbridge.core.events import EventHub, EventSubscription
from canbridge.core.gcpause import gc_paused
from canbridge.core.heard import HeardSources
from canbridge.core.host import Registry
from canbridge.core.looplag import LoopLagSampler
from canbridge.core.mapping.table import MappingTable, MessageEntry, build_table
from canbridge.core.sdoreads import SdoReads
from canbridge.core.store import SignalStore
from canbridge.core.writepath import WritePath

log = logging.getLogger("canbridge")

STOP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 30.0


def validate_plugins(config: Config, registry: Registry, file: str | None = None,
                     lines: LineMap | None = None) -> dict[str, tuple[NorthboundPlugin, Any]]:
    """Validate each enabled plugin's section with its config model; ConfigError lists every problem."""
    problems: list[Problem] = []
    out: dict[str, tuple[NorthboundPlugin, Any]] = {}
    for name, section in config.plugins.items():
        spec = registry.northbound.get(name)
        line = (lines or {}).get(("plugins", name))
        if spec is None:
            installed = ", ".join(sorted(registry.northbound)) or "none"
            problems.append(Problem(f"no plugin named {name!r} is installed (installed: {installed})", file, line,
                                    f"plugins.{name}"))
            continue
        try:
            out[name] = (spec, spec.config_model.model_validate(section or {}))
        except ValidationError as e:
            problems.extend(problems_from_validation(e, file, lines or {}, ("plugins", name)))
    if problems:
        raise ConfigError(problems)
    return out


def check_bus_kinds(config: Config, registry: Registry, file: str | None = None,
                    lines: LineMap | None = None) -> list[Problem]:
    """Each bus names a known kind, and its ``options:`` pass that kind's options model."""
    problems = []
    for i, b in enumerate(config.buses):
        kind = registry.bus_kind(b.interface)
        if kind is None:
            known = ", ".join(sorted(registry.bus_kinds))
            problems.append(Problem(
                f"unknown interface {b.interface!r}: not a canbridge bus kind ({known}) nor a python-can interface",
                file, (lines or {}).get(("buses", i, "interface")), f"buses[{i}].interface"))
        elif kind.options_model is not None:
            try:
                kind.options_model.model_validate(b.options)
            except ValidationError as e:
                problems.extend(problems_from_validation(e, file, lines or {}, ("buses", i, "options")))
    return problems


class Runtime(Bridge):
    """The bridge at run time."""

    def __init__(self, config: Config, registry: Registry, base_dir: Path, *, config_path: Path | None = None,
                 table: MappingTable | None = None, lines: LineMap | None = None) -> None:
        file = str(config_path) if config_path else None
        problems = check_bus_kinds(config, registry, file, lines)
        if problems:
            raise ConfigError(problems)
        self.config = config
        self.registry = registry
        self.base_dir = base_dir
        self._config_path = config_path
        self.table = table or build_table(config, base_dir, registry.formats, file, lines)
        self._plugins = validate_plugins(config, registry, file, lines)
        state = config.state_dir or Path(".canbridge-state")
        self._state_dir = state if state.is_absolute() else base_dir / state
        self.store = SignalStore(self.table)
        self.runners: dict[str, BusRunner] = {}
        for b in config.buses:
            kind = registry.bus_kind(b.interface)
            assert kind is not None
            self.runners[b.name] = BusRunner(b, kind, self.table, self.store, self._bus_state_changed)
        # J1939 senders heard but not configured: the table grows at run time (core/heard.py)
        self.heard = HeardSources(self.table, self.store)
        self.heard.listeners.append(self._message_added)
        for r in self.runners.values():
            if r.j1939 is not None:
                r.j1939.grow = functools.partial(self.heard.add, r.cfg.name)
        self._bus_info = {b.name: BusInfo(b.name, b.interface, b.channel, b.fd, b.bitrate) for b in config.buses}
        self._msg_infos = {name: e.info for name, e in self.table.messages.items()}
        self.audit: AuditLog | None = None
        self.events = EventHub(None)  # the audit log is attached at start
        self.writes: WritePath | None = None
        self.sdo_reads = SdoReads(self.table, self.store, self.runners)
        self.services: dict[str, Service] = {}
        self._started: list[tuple[str, Service]] = []
        self._ready = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.supervisor_errors = 0
        self._duty_logged: dict[str, float] = {}
        self._fatal: asyncio.Event | None = None
        self._stopping = False
        self.failure: BaseException | None = None  # why a task the bridge cannot run without ended
        # operating statistics: CPU per plugin, loop lag, measured from start()
        self._meters: dict[str, CpuMeter] = {}
        self._lag = LoopLagSampler()
        self._lag_meter = CpuMeter("loop-lag")
        self._accounting = False
        self._t0 = time.monotonic()
        self._cpu0 = time.process_time()
        self._thread0 = time.thread_time()

    # --- Bridge facade ---
    @property
    def signals(self) -> Mapping[str, SignalInfo]:
        return self.table.signals

    @property
    def messages(self) -> Mapping[str, MessageInfo]:
        return self._msg_infos

    @property
    def buses(self) -> Mapping[str, BusInfo]:
        return self._bus_info

    @property
    def state_dir(self) -> Path:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        return self._state_dir

    @property
    def config_path(self) -> Path | None:
        return self._config_path

    @property
    def ready(self) -> bool:
        return self._ready

    def read(self, name: str) -> SignalValue:
        info = self.table.signals.get(name)
        if info is None:
            raise UnknownSignal(f"no signal named {name!r}")
        return self.store.value(info.index)

    async def refresh(self, name: str) -> SignalValue:
        info = self.table.signals.get(name)
        if info is None:
            raise UnknownSignal(f"no signal named {name!r}")
        entry = self.table.message_list[self.table.signal_message[info.index]]
        if entry.sdo is not None and self.writes is not None:  # running: the bus is there to ask
            await self.sdo_reads.refresh(entry)
        return self.store.value(info.index)

    def read_many(self, names: Iterable[str] | None = None) -> list[SignalValue]:
        if names is None:
            return [self.store.value(i) for i in range(len(self.table.signal_list))]
        return [self.read(n) for n in names]

    def _indices(self, names: Iterable[str] | None) -> list[int] | None:
        if names is None:
            return None
        out = []
        for n in names:
            info = self.table.signals.get(n)
            if info is None:
                raise UnknownSignal(f"no signal named {n!r}")
            out.append(info.index)
        return out

    def subscribe(self, names: Iterable[str] | None = None, interval: float = 0.05) -> Subscription:
        return self.store.subscribe(self._indices(names), interval, cpuaccount.current_name())

    def subscribe_frames(self, bus: str | None = None, maxlen: int = 1000) -> FrameSubscription:
        if bus is not None and bus not in self.runners:
            raise UnknownBus(f"no bus named {bus!r}; buses: {', '.join(self.runners)}")
        return self.store.subscribe_frames(bus, maxlen, cpuaccount.current_name())

    def subscribe_events(self, maxlen: int = 1000) -> EventSubscription:
        return self.events.subscribe(maxlen)

    def subscribe_signals_added(self) -> SignalsAddedSubscription:
        return self.heard.subscribe()

    def _message_added(self, entry: MessageEntry) -> None:
        self._msg_infos[entry.info.name] = entry.info
        self.runners[entry.info.bus].message_added(entry)

    def bus_status(self, name: str) -> BusStatus:
        runner = self.runners.get(name)
        if runner is None:
            raise UnknownBus(f"no bus named {name!r}; buses: {', '.join(self.runners)}")
        return runner.status()

    def message_status(self, bus: str | None = None) -> list[MessageStatus]:
        now = time.monotonic()
        out = []
        for e in self.table.message_list:
            if bus is not None and e.info.bus != bus:
                continue
            count = self.store.msg_count[e.index]
            mono = self.store.msg_mono[e.index]
            age = (now - mono) if mono else None
            out.append(MessageStatus(e.info.name, count, age, self.store.msg_quality[e.index]))
        return out

    async def write(self, name: str, value: Value | str, caller: Caller) -> WriteReceipt:
        if self.writes is None:
            raise PluginError("the bridge is not running")
        return await self.writes.write(name, value, caller)

    async def write_many(self, items: Sequence[tuple[str, object]], caller: Caller) -> list[WriteReceipt]:
        if self.writes is None:
            raise PluginError("the bridge is not running")
        return await self.writes.write_many(items, caller)

    def refuse(self, target: str, value: object, caller: Caller, reason: RefusalReason,
               detail: str) -> WriteRefused:
        if self.writes is None:
            return WriteRefused(reason, detail, target)
        return self.writes.refuse(reason, detail, target, caller, value)

    async def send_frame(self, bus: str, frame: Frame | str | Mapping[str, object], caller: Caller) -> Frame:
        if self.writes is None:
            raise PluginError("the bridge is not running")
        return await self.writes.send_frame(bus, frame, caller)

    async def request_pgn(self, bus: str, pgn: int, caller: Caller, destination: int = 255) -> Frame:
        if self.writes is None:
            raise PluginError("the bridge is not running")
        return await self.writes.request_pgn(bus, pgn, destination, caller)

    def stats(self) -> BridgeStats:
        w = self.writes
        a = self.audit
        return BridgeStats(
            writes_accepted=w.accepted if w else 0,
            writes_refused=dict(w.refused) if w else {},
            store_batches=self.store.batches,
            store_update_seconds_total=self.store.update_seconds,
            subscribers=self.store.subscriber_count,
            max_subscriber_lag_s=self.store.max_lag(),
            audit_available=a.available if a else True,
            audit_error=a.error if a else None,
            audit_failures=a.failures if a else 0,
        )

    def operating_stats(self) -> OperatingStats:
        # call from the loop's thread: the core's share is that thread's CPU minus the plugins'
        cpu = time.process_time() - self._cpu0
        loop_cpu = time.thread_time() - self._thread0
        plugins = {n: PluginLoad(n, m.cpu_s, m.cpu_s / cpu if cpu > 0 else 0.0) for n, m in self._meters.items()}
        charged = sum(m.cpu_s for m in self._meters.values()) + self._lag_meter.cpu_s
        subs = tuple(
            SubscriptionLoad(s.owner, s.size, s.interval_s, s.pending, s.lag_s, s.coalesced)
            for s in self.store.subscriptions
        )
        fsubs = tuple(
            FrameSubscriptionLoad(f.owner, f.bus, f.buffered, f.capacity, f.dropped)
            for f in self.store.frame_subscriptions
        )
        by_plugin: dict[str, int] = {}
        for owner, n in self.store.coalesced_closed.items():
            by_plugin[owner or "-"] = by_plugin.get(owner or "-", 0) + n
        for sub in subs:
            by_plugin[sub.plugin or "-"] = by_plugin.get(sub.plugin or "-", 0) + sub.coalesced
        buses = {}
        for name, r in self.runners.items():
            st = r.status()
            buses[name] = BusLoad(name, st.rx_frames, self.store.decoded.get(name, 0), st.dropped_frames,
                                  st.decode_errors, st.error_frames)
        return OperatingStats(
            uptime_s=time.monotonic() - self._t0,
            cpu_seconds=cpu,
            core_cpu_seconds=max(0.0, loop_cpu - charged),
            loop_lag=self._lag.snapshot(self._lag_meter.cpu_s),
            plugins=plugins,
            subscriptions=subs,
            frame_subscriptions=fsubs,
            coalesced_total=sum(by_plugin.values()),
            coalesced_by_plugin=by_plugin,
            frames_dropped_total=self.store.frames_dropped_closed + sum(f.dropped for f in fsubs),
            buses=buses,
        )

    # --- state changes ---
    def _bus_state_changed(self, runner: BusRunner, state: BusState) -> None:
        msgs = self.table.messages_of(runner.cfg.name)
        if not state.usable:
            for e in msgs:
                self.store.set_message_quality(e.index, Quality.BAD)
        elif self.writes is not None:
            for e in msgs:
                if e.transmit is not None and (e.index in self.writes.written or e.index in runner.cyclic):
                    # what the bridge transmits is good again once the bus carries it
                    self.store.set_message_quality(e.index, Quality.GOOD)
                elif self.store.msg_quality[e.index] is Quality.BAD:
                    # the bus is back but nothing arrived since: "bad" would blame a bus that works
                    # (and, for a message without a timeout, stay so until its next frame)
                    seen = self.store.msg_count[e.index] > 0
                    self.store.set_message_quality(e.index, Quality.STALE if seen else Quality.WAITING)

    async def _supervise(self) -> None:
        """Staleness, writer timeouts, bus polling and the audit probe, a few times a second.

        Each duty runs on its own: one that raises is logged (once a minute at most) and counted in
        ``supervisor_errors``, and the others and the next tick go on. Supervision never ends silently.
        """
        tick = 0
        while True:
            await asyncio.sleep(0.1)
            tick += 1
            now = time.monotonic()
            self._duty("staleness", self.store.expire, now)
            if self.writes is not None:
                self._duty("writer timeouts", self.writes.expire_writers, now)
            if tick % 10 == 0:
                self._duty("bus polling", self._poll_buses, now)
                self._duty("audit probe", self._probe_audit, now)

    def _duty(self, what: str, fn: Callable[[float], object], now: float) -> None:
        try:
            fn(now)
        except Exception as e:
            self.supervisor_errors += 1
            last = self._duty_logged.get(what, 0.0)
            if now - last >= 60.0:
                self._duty_logged[what] = now
                log.error("supervisor: %s failed (%d failures so far; it runs again next tick): %s: %s", what,
                          self.supervisor_errors, type(e).__name__, e, exc_info=e)

    def _poll_buses(self, now: float) -> None:
        for r in self.runners.values():
            r.poll()

    def _probe_audit(self, now: float) -> None:
        if self.audit is not None:
            self.audit.probe()

    # --- lifecycle ---
    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """A task the bridge cannot run without: if it ends on its own, the bridge stops, loudly."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_ended)
        self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        why = f"{type(exc).__name__}: {exc}" if exc else "it returned"
        log.critical("task %s ended (%s): the bridge stops", task.get_name(), why, exc_info=exc)
        if self.failure is None:
            self.failure = exc or RuntimeError(f"task {task.get_name()} ended")
        if self._fatal is not None:
            self._fatal.set()

    async def start(self) -> None:
        """Open buses, start cyclic frames and supervision, then start plugins in order.

        A failure at any step stops what was started (buses, tasks, plugins) before it is raised.
        """
        self._stopping = False
        self._fatal = asyncio.Event()
        if not self._accounting:
            cpuaccount.install()
            self._accounting = True
        self._t0 = time.monotonic()
        self._cpu0 = time.process_time()
        self._thread0 = time.thread_time()
        try:
            await self._start()
        except BaseException as e:
            if not isinstance(e, PluginError):
                log.error("the bridge failed to start: %s: %s", type(e).__name__, e)
            await self.stop()
            raise

    async def _start(self) -> None:
        audit_path = None
        a = self.config.audit
        if a.enabled:
            audit_path = a.file or (self.state_dir / "audit.jsonl")
            if not audit_path.is_absolute():
                audit_path = self.base_dir / audit_path
        self.audit = AuditLog(audit_path, max_bytes=int(a.max_mb * 2**20), backups=a.backups, fsync=a.fsync,
                              refusal_rate=a.refusal_rate, refusal_burst=a.refusal_burst)
        self.writes = WritePath(self.table, self.store, self.runners, self.audit)
        self.events.audit = self.audit
        for r in self.runners.values():
            if r.j1939 is not None:
                r.j1939.on_dm1 = functools.partial(self.events.on_dm1, r.cfg.name)
            if r.canopen is not None:
                r.canopen.on_emcy = functools.partial(self.events.on_emcy, r.cfg.name)
        for r in self.runners.values():
            self._spawn(r.run(), f"bus-{r.cfg.name}")
        await asyncio.gather(*(r.wait_opened(5.0) for r in self.runners.values()))
        for e in self.table.message_list:  # transmitted messages start from their shadow
            t = e.transmit
            if t is None or e.sdo is not None:  # an object by SDO has no frame: it waits for its first read
                continue
            if t.seed == "initial":
                self.writes.publish_payload(e, e.initial)
                if not t.period_ms:
                    self.store.set_message_quality(e.index, Quality.WAITING)
            if t.period_ms and t.start == "immediately" and t.seed == "initial":
                self.runners[e.info.bus].set_cyclic(e.index, _frame(e, e.initial), t.period_ms / 1000)
                if not self.runners[e.info.bus].usable:
                    self.store.set_message_quality(e.index, Quality.BAD)
        for r in self.runners.values():
            self.writes.start_sync(r)
            if r.pdo_from_node is not None:
                r.pdo_from_node.start()
        self._spawn(self._supervise(), "supervisor")
        if self.sdo_reads.polls:
            self._spawn(self.sdo_reads.poll(), "sdo-poll")
        # the sampler's own cost is charged to its meter: loop_lag.sampler_cpu_s
        self._lag.start(cpuaccount.context_for(self._lag_meter))
        ordered = sorted(self._plugins.items(), key=lambda kv: (kv[1][0].order, kv[0]))
        for name, (spec, cfg) in ordered:
            # everything the plugin starts (tasks, servers, their callbacks) inherits its meter
            token = cpuaccount.CURRENT.set(self._meters.setdefault(name, CpuMeter(name)))
            try:
                service = spec.factory(self, cfg)
                await asyncio.wait_for(service.start(), START_TIMEOUT_S)
            except BaseException as e:
                log.error("plugin %s failed to start: %s", name, e)
                if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                    raise
                raise PluginError(f"plugin {name!r} failed to start: {type(e).__name__}: {e}") from e
            finally:
                cpuaccount.CURRENT.reset(token)
            self.services[name] = service
            self._started.append((name, service))
        self._ready = True

    async def stop(self) -> None:
        """Stop plugins in reverse order, then cyclic frames and buses; every step bounded."""
        self._ready = False
        self._stopping = True
        for name, service in reversed(self._started):
            token = cpuaccount.CURRENT.set(self._meters.get(name))
            try:
                await asyncio.wait_for(service.stop(), STOP_TIMEOUT_S)
            except Exception as e:  # one plugin failing to stop must not keep the others running
                log.error("plugin %s did not stop cleanly: %s", name, e)
            finally:
                cpuaccount.CURRENT.reset(token)
        self._started.clear()
        self._lag.stop()
        self.store.close()
        self.heard.close()
        for r in self.runners.values():
            if self.writes is not None:
                self.writes.stop_sync(r)
            r.stop()
            if r.pdo_from_node is not None:
                r.pdo_from_node.stop()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            if t.get_name() in ("supervisor", "sdo-poll"):
                t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S + 1)
            for t in pending:
                log.error("task %s did not stop within %.0f s: cancelled", t.get_name(), STOP_TIMEOUT_S + 1)
                t.cancel()
            for t, result in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True):
                if isinstance(result, Exception):  # said, never swallowed
                    log.error("task %s ended with %s: %s", t.get_name(), type(result).__name__, result)
        if self.audit is not None:
            self.audit.close()
        if self._accounting:
            cpuaccount.uninstall()
            self._accounting = False

    async def run(self, shutdown_trigger: Callable[[], Awaitable[Any]]) -> None:
        """Serve until ``shutdown_trigger()`` completes, then stop.

        Serving runs in a TaskGroup (hypercorn's pattern): the trigger and the watch on the bridge's own
        tasks race, and whichever ends first stops the bridge. When a task the bridge needs died, ``run``
        raises :class:`PluginError` after a clean stop, so a service manager restarts it.
        """
        with gc_paused():  # start-up's objects all live: collecting them while they pile up is wasted
            await self.start()
        if self.config.gc_freeze:
            gc.collect()
            gc.freeze()  # start-up objects never need collecting: shorter GC pauses on the receive path
        assert self._fatal is not None
        fatal = self._fatal
        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    trigger = tg.create_task(_await(shutdown_trigger), name="shutdown-trigger")
                    watch = tg.create_task(fatal.wait(), name="task-watch")
                    await asyncio.wait({trigger, watch}, return_when=asyncio.FIRST_COMPLETED)
                    trigger.cancel()
                    watch.cancel()
            except BaseExceptionGroup as group:  # a failing trigger raises its own error, not a group
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
        finally:
            await self.stop()
        if self.failure is not None:
            raise PluginError(f"the bridge stopped because a task it needs ended: {self.failure}") from self.failure

    def endpoints(self) -> dict[str, list[str]]:
        return {name: list(s.endpoints()) for name, s in self.services.items()}


async def _await(trigger: Callable[[], Awaitable[Any]]) -> None:
    await trigger()


def _frame(e: Any, payload: bytes) -> Frame:
    return Frame(e.info.frame_id, payload, extended=e.info.extended, fd=e.info.fd, bus=e.info.bus)
