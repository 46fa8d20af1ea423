"""Test helpers for canbridge and for plugin authors: a running bridge on an in-process virtual bus.

    async with BridgeHarness(plugins={"rest": {"host": "127.0.0.1", "port": 0}}) as h:
        h.inject("100#E803000000000000")           # a peer node sends a frame
        await h.until(lambda: h.bridge.read("demo.MotorStatus.MotorSpeed").value == 1000)
        await h.bridge.write("demo.MotorCommand.SpeedSetpoint", 1500, Caller("test"))
        frame = await h.next_sent(0x300)           # what the bridge put on the bus
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import can

from canbridge._bridge import Bridge, FrameSubscription, Subscription
from canbridge._errors import FrameFormatError, RefusalReason, UnknownBus, UnknownSignal, WriteRefused
from canbridge._frames import parse_frame
from canbridge._model import (
    BridgeStats,
    BusInfo,
    BusState,
    BusStatus,
    Caller,
    Frame,
    MessageInfo,
    MessageStatus,
    Permission,
    Quality,
    SignalInfo,
    SignalValue,
    Value,
    WriteReceipt,
    physical_range,
)
from canbridge._plugin import Service
from canbridge.core.app import demo_config, runtime_from_data, simulators, unique_channel
from canbridge.core.can.pycan import frame_to_message, message_to_raw
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.runtime import Runtime
from canbridge.core.writepath import check_limits, check_type

T = TypeVar("T")


class _Seen:
    """Frames a peer node saw, bounded (a cyclic frame every 100 ms must not grow a long test without end)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.frames: deque[Frame] = deque(maxlen=maxlen)
        self.event = asyncio.Event()

    def add(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.event.set()

    def take(self, can_id: int | None) -> Frame | None:
        for i, frame in enumerate(self.frames):
            if can_id is None or frame.can_id == can_id:
                del self.frames[i]
                return frame
        return None


class BridgeHarness:
    """Start a bridge (default: the demo mapping on a fresh virtual channel) for a test."""

    def __init__(self, config: Mapping[str, Any] | None = None, plugins: Mapping[str, Any] | None = None,
                 simulate: bool = False, state_dir: Path | None = None, base_dir: Path | None = None,
                 extra_plugins: Sequence[object] = ()) -> None:
        if config is None:
            data = demo_config(unique_channel("test"), dict(plugins or {}), state_dir)
            if not simulate:
                data["simulators"] = []
        else:
            data = copy.deepcopy(dict(config))
            if plugins is not None:
                data["plugins"] = dict(plugins)
            if state_dir is not None:
                data.setdefault("state_dir", str(state_dir))
            if not simulate:
                data["simulators"] = []
        if state_dir is None and "state_dir" not in data:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="canbridge-test-")
            data["state_dir"] = self._tmp.name
        self.data = data
        self._base_dir = base_dir
        self._extra_plugins = list(extra_plugins)
        self.runtime: Runtime | None = None
        self._peers: dict[str, can.BusABC] = {}
        self._sent: dict[str, _Seen] = {}
        self._notifiers: list[can.Notifier] = []
        self._stack = contextlib.AsyncExitStack()

    @property
    def bridge(self) -> Runtime:
        assert self.runtime is not None, "the harness is not running"
        return self.runtime

    def service(self, name: str) -> Service:
        return self.bridge.services[name]

    async def __aenter__(self) -> BridgeHarness:
        registry = None
        if self._extra_plugins:  # plugins under test, registered as if installed
            pm = make_plugin_manager()
            for plugin in self._extra_plugins:
                pm.register(plugin)
            registry = collect(pm)
        self.runtime = runtime_from_data(self.data, registry, base_dir=self._base_dir)
        loop = asyncio.get_running_loop()
        for b in self.runtime.config.buses:
            if b.interface != "virtual":
                continue
            peer = can.Bus(interface="virtual", channel=b.channel, receive_own_messages=False)
            self._peers[b.name] = peer
            seen = self._sent[b.name] = _Seen()

            def on_msg(msg: can.Message, seen: _Seen = seen, bus: str = b.name) -> None:
                can_id, _flags, data, ts = message_to_raw(msg)
                seen.add(Frame(can_id, data, extended=msg.is_extended_id, rtr=msg.is_remote_frame,
                               fd=msg.is_fd, timestamp_ns=ts, bus=bus))

            self._notifiers.append(can.Notifier(peer, [on_msg], loop=loop))
        try:
            await self.runtime.start()
            await self._stack.enter_async_context(simulators(self.runtime))
        except BaseException:
            await self.__aexit__(None, None, None)  # a failed start leaves no peers or threads behind
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        if self.runtime is not None:
            await self.runtime.stop()
        for n in self._notifiers:
            n.stop(timeout=1)
        for p in self._peers.values():
            p.shutdown()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()

    def _bus(self, bus: str | None) -> str:
        if bus is None:
            if len(self._peers) != 1:
                raise ValueError("name the bus: the harness has several")
            return next(iter(self._peers))
        return bus

    def inject(self, frame: Frame | str | Mapping[str, object], bus: str | None = None) -> None:
        """A peer node sends a frame to the bridge."""
        f = parse_frame(frame)
        self._peers[self._bus(bus)].send(frame_to_message(f))

    async def next_sent(self, can_id: int | None = None, timeout: float = 2.0, bus: str | None = None) -> Frame:
        """The oldest frame not yet taken that the bridge sent (with this id), as a peer node saw it; waits for
        one up to ``timeout`` seconds (TimeoutError). Frames with other ids stay for later calls."""
        seen = self._sent[self._bus(bus)]
        deadline = time.monotonic() + timeout
        while True:
            frame = seen.take(can_id)
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame{'' if can_id is None else f' 0x{can_id:X}'} sent within {timeout} s")
            seen.event.clear()
            try:
                await asyncio.wait_for(seen.event.wait(), remaining)
            except TimeoutError:
                pass

    def clear_sent(self, bus: str | None = None) -> None:
        """Forget the frames seen so far (e.g. before a write whose frame a test waits for)."""
        self._sent[self._bus(bus)].frames.clear()

    async def until(self, predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01, *,
                    what: str = "condition", detail: Callable[[], object] | None = None) -> None:
        """Wait until ``predicate()`` is true; AssertionError after ``timeout`` seconds (see :func:`until`)."""
        await until(predicate, timeout, interval, what=what, detail=detail)


async def until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01, *,
                what: str = "condition", detail: Callable[[], object] | None = None) -> None:
    """Wait until ``predicate()`` is true, checking every ``interval`` s; AssertionError naming ``what``
    (and ``detail()``, e.g. what was seen instead) after ``timeout`` s. The one polling helper of the
    test suites: a test waits for a condition, never for a fixed time."""

    async def met() -> bool:
        return bool(predicate())

    await _poll(met, timeout, interval, what, detail)


async def eventually(probe: Callable[[], Awaitable[T]], check: Callable[[T], object], timeout: float = 5.0,
                     interval: float = 0.02, *, what: str = "condition") -> T:
    """:func:`until` for a condition that takes a request to observe (a Modbus or OPC UA read):
    ``await probe()`` until ``check`` accepts its result, and return that result; AssertionError naming
    ``what`` and the last result after ``timeout`` s."""
    last: list[T] = []

    async def met() -> bool:
        last[:] = [await probe()]
        return bool(check(last[0]))

    await _poll(met, timeout, interval, what, lambda: f"last result: {last[0]!r}")
    return last[0]


async def _poll(met: Callable[[], Awaitable[bool]], timeout: float, interval: float, what: str,
                detail: Callable[[], object] | None) -> None:
    deadline = time.monotonic() + timeout
    while not await met():
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"{what} not met within {timeout} s{extra}")
        await asyncio.sleep(interval)


# --- unit tests without a core ---------------------------------------------------------------------


def signal_info(name: str = "bus.Msg.Sig", **overrides: Any) -> SignalInfo:
    """A :class:`SignalInfo` for unit tests: give only what the test is about.

    Defaults: an unsigned 16-bit integer received in frame 0x100, scale 1, offset 0, index 0. Derived
    unless given: ``bus``, ``message`` and ``signal`` from ``name``; ``direction`` "tx" when
    ``writable``; ``bit_length`` 1 for ``bool``, 32 when ``is_float``; ``signed`` when ``minimum`` < 0;
    ``minimum``/``maximum`` what the raw bits carry after scale and offset (as the real table does
    when the DBC gives no limits); ``extended`` when ``frame_id`` > 0x7FF.
    """
    parts = name.split(".")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"signal name {name!r} is not <bus>.<message>.<signal>")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SignalInfo)}
    if unknown:
        raise TypeError(f"SignalInfo has no field {', '.join(sorted(unknown))}")
    value_type = overrides.get("value_type", int)
    if value_type not in (bool, int, float):
        raise ValueError(f"value_type must be bool, int or float, not {value_type!r}")
    is_float = bool(overrides.get("is_float", False))
    bits = int(overrides.get("bit_length", 1 if value_type is bool else 32 if is_float else 16))
    scale = float(overrides.get("scale", 1.0))
    offset = float(overrides.get("offset", 0.0))
    lo_given, hi_given = overrides.get("minimum"), overrides.get("maximum")
    signed = bool(overrides.get("signed", lo_given is not None and lo_given < 0))
    lo, hi = physical_range(bits, signed, is_float, scale, offset)
    frame_id = int(overrides.get("frame_id", 0x100))
    writable = bool(overrides.get("writable", False))
    fields: dict[str, Any] = {
        "name": name, "bus": parts[0], "message": parts[1], "signal": parts[2], "index": 0,
        "frame_id": frame_id, "extended": frame_id > 0x7FF, "direction": "tx" if writable else "rx",
        "value_type": value_type, "bit_length": bits, "signed": signed, "is_float": is_float,
        "scale": scale, "offset": offset,
        "minimum": float(lo if lo_given is None else lo_given), "maximum": float(hi if hi_given is None else hi_given),
    }
    return SignalInfo(**{**fields, **{k: v for k, v in overrides.items() if k not in ("minimum", "maximum")}})


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One call of :meth:`FakeBridge.write`: what the plugin asked for and what the fake answered."""

    name: str
    value: Value | str  # as the plugin passed it
    caller: Caller
    receipt: WriteReceipt | None = None  # set when accepted
    refused: WriteRefused | None = None  # set when refused

    @property
    def accepted(self) -> bool:
        return self.receipt is not None


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """A raw frame :meth:`FakeBridge.send_frame` accepted (``frame.bus`` is its bus), and who sent it."""

    frame: Frame
    caller: Caller


WriteHook = Callable[[SignalInfo, Value, Caller], RefusalReason | None]
"""Called for each write that passed the static checks, with the checked value: return a reason to refuse
it (or raise :class:`WriteRefused` for a detail of your own), None to accept it."""


class _FakeSubscription(Subscription):
    """Coalescing like the real store: a pending set of names, one batch per interval at most."""

    def __init__(self, owner: FakeBridge, names: frozenset[str] | None, interval: float) -> None:
        self._owner = owner
        self._names = names
        self._interval = max(0.0, interval)
        self._pending: set[str] = set()
        self._since = 0.0
        self._wake = asyncio.Event()
        self._closed = False
        self._first = True
        self._last = 0.0

    def changed(self, names: Iterable[str]) -> None:
        fresh = [n for n in names if (self._names is None or n in self._names) and n not in self._pending]
        if fresh:
            if not self._pending:
                self._since = time.monotonic()
            self._pending.update(fresh)
            self._wake.set()

    @property
    def lag_s(self) -> float:
        return time.monotonic() - self._since if self._pending else 0.0

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._owner._drop(self)

    def __aiter__(self) -> AsyncIterator[list[SignalValue]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[SignalValue]]:
        owner = self._owner
        if self._first:  # once per subscription, however often it is iterated
            self._first = False
            self._pending.clear()
            self._last = time.monotonic()
            yield [v for v in owner.read_many() if self._names is None or v.name in self._names]
        while not self._closed:
            await self._wake.wait()
            wait = self._last + self._interval - time.monotonic()
            if wait > 0 and not self._closed:
                await asyncio.sleep(wait)
            if self._closed:
                return
            self._wake.clear()
            if self._pending:
                due, self._pending = self._pending, set()
                self._last = time.monotonic()
                yield [v for v in owner.read_many() if v.name in due]


class _FakeFrameSubscription(FrameSubscription):
    def __init__(self, owner: FakeBridge, bus: str | None, maxlen: int) -> None:
        self._owner = owner
        self.bus = bus
        self._buf: deque[Frame] = deque(maxlen=max(1, maxlen))
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def push(self, frames: Sequence[Frame]) -> None:
        mine = [f for f in frames if self.bus is None or f.bus == self.bus]
        if mine:
            self.dropped += max(0, len(self._buf) + len(mine) - (self._buf.maxlen or 0))
            self._buf.extend(mine)
            self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._owner._drop(self)

    def __aiter__(self) -> AsyncIterator[list[Frame]]:
        return self._batches()

    async def _batches(self) -> AsyncIterator[list[Frame]]:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._buf and not self._closed:
                batch = list(self._buf)
                self._buf.clear()
                yield batch


class FakeBridge(Bridge):
    """An in-memory :class:`canbridge.Bridge` for unit tests of a plugin: no buses, no core.

    The test sets values (:meth:`set`, :meth:`publish`) and bus states (:meth:`set_bus_state`), and reads
    what the plugin did from :attr:`writes` and :attr:`frames`. Writes are checked like the real write
    path checks them from the signal's static facts (unknown signal, not writable, the caller's WRITE
    permission, type, limits, choices, what the raw bits carry) and refused as BUS_DOWN while the bus is
    not usable; the dynamic refusals (rate limit, waiting for initial data, ...) are scripted with
    :meth:`refuse_next` or :attr:`on_write`. An accepted write shows at once in :meth:`read` and reaches
    subscribers, as the real bridge's store does; its receipt's frame carries no encoded payload.
    """

    def __init__(self, signals: Iterable[SignalInfo], *, state_dir: Path,
                 buses: Iterable[str | BusInfo] | None = None, config_path: Path | None = None) -> None:
        table: dict[str, SignalInfo] = {}
        for info in signals:
            if info.name in table:
                raise ValueError(f"signal {info.name!r} is in the table twice")
            # as in the real table, index is the position in the table
            table[info.name] = info if info.index == len(table) else dataclasses.replace(info, index=len(table))
        self._signals = table
        grouped: dict[str, list[SignalInfo]] = {}
        for info in table.values():
            grouped.setdefault(f"{info.bus}.{info.message}", []).append(info)
        self._messages = {key: _message_info(key, infos) for key, infos in grouped.items()}
        self._message_of = {info.name: f"{info.bus}.{info.message}" for info in table.values()}
        bus_infos = {b: BusInfo(b, "virtual", b, False, 500_000) for b in dict.fromkeys(s.bus for s in table.values())}
        for b in buses or ():
            info_b = b if isinstance(b, BusInfo) else BusInfo(b, "virtual", b, False, 500_000)
            bus_infos[info_b.name] = info_b
        self._buses = bus_infos
        state_dir.mkdir(parents=True, exist_ok=True)  # the Bridge contract: it exists
        self._state_dir = state_dir
        self._config_path = config_path
        self._values = {n: SignalValue(n, None, Quality.WAITING, None) for n in table}
        now = time.time_ns()
        self._status = {b: BusStatus(b, BusState.ACTIVE, since_ns=now) for b in bus_infos}
        self._msg_count = dict.fromkeys(self._messages, 0)
        self._msg_mono: dict[str, float] = {}
        self._subs: list[_FakeSubscription] = []
        self._frame_subs: list[_FakeFrameSubscription] = []
        self._scripted: list[tuple[str | None, RefusalReason, str]] = []
        self._ready = True
        self._batches = 0
        self._refused = {r.value: 0 for r in RefusalReason}
        self.writes: list[WriteRecord] = []
        """Every call of :meth:`write`, accepted or refused, in order."""
        self.frames: list[FrameRecord] = []
        """Every raw frame :meth:`send_frame` accepted, in order."""
        self.on_write: WriteHook | None = None

    # --- test controls ---
    def set(self, name: str, value: Value | None, quality: Quality = Quality.GOOD,
            timestamp_ns: int | None = None) -> SignalValue:
        """Give one signal a new value (timestamp: now) and tell subscribers."""
        sv = SignalValue(name, value, quality, time.time_ns() if timestamp_ns is None else timestamp_ns)
        self.publish(sv)
        return sv

    def publish(self, *values: SignalValue) -> None:
        """Store these values, count a frame for each message they belong to, and tell subscribers."""
        for v in values:
            if v.name not in self._signals:
                raise UnknownSignal(f"no signal named {v.name!r}")
        now = time.monotonic()
        for v in values:
            self._values[v.name] = v
        for key in dict.fromkeys(self._message_of[v.name] for v in values):
            self._msg_count[key] += 1
            self._msg_mono[key] = now
        self._batches += 1
        names = [v.name for v in values]
        for sub in self._subs:
            sub.changed(names)

    def set_bus_state(self, bus: str, state: BusState, **fields: Any) -> BusStatus:
        """Set a bus's state (and any other :class:`BusStatus` field). Signal qualities stay as they are:
        set them too if the test needs what the real bridge does (BAD while the bus is not usable)."""
        status = dataclasses.replace(self.bus_status(bus), state=state, **{"since_ns": time.time_ns(), **fields})
        self._status[bus] = status
        return status

    def receive(self, *frames: Frame | str | Mapping[str, object], bus: str | None = None) -> None:
        """Frames the bridge received: delivered to :meth:`subscribe_frames` subscribers."""
        if bus is None and len(self._buses) == 1:
            bus = next(iter(self._buses))
        parsed = []
        for f in frames:
            frame = parse_frame(f)
            if frame.bus is None:
                frame = dataclasses.replace(frame, bus=bus)
            if frame.bus not in self._buses:
                raise UnknownBus(f"no bus named {frame.bus!r}")
            parsed.append(frame)
        for sub in self._frame_subs:
            sub.push(parsed)

    def refuse_next(self, name: str | None, reason: RefusalReason, detail: str = "refused by the test") -> None:
        """Refuse the next write of ``name`` (any signal when None) that passes the static checks.
        Several calls queue up, one refusal each."""
        self._scripted.append((name, reason, detail))

    @property
    def ready(self) -> bool:
        return self._ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    def _drop(self, sub: _FakeSubscription | _FakeFrameSubscription) -> None:
        if isinstance(sub, _FakeSubscription):
            if sub in self._subs:
                self._subs.remove(sub)
        elif sub in self._frame_subs:
            self._frame_subs.remove(sub)

    # --- the Bridge ---
    @property
    def signals(self) -> Mapping[str, SignalInfo]:
        return self._signals

    @property
    def messages(self) -> Mapping[str, MessageInfo]:
        return self._messages

    @property
    def buses(self) -> Mapping[str, BusInfo]:
        return self._buses

    @property
    def state_dir(self) -> Path:
        return self._state_dir

    @property
    def config_path(self) -> Path | None:
        return self._config_path

    def read(self, name: str) -> SignalValue:
        value = self._values.get(name)
        if value is None:
            raise UnknownSignal(f"no signal named {name!r}")
        return value

    def read_many(self, names: Iterable[str] | None = None) -> list[SignalValue]:
        return list(self._values.values()) if names is None else [self.read(n) for n in names]

    def subscribe(self, names: Iterable[str] | None = None, interval: float = 0.05) -> Subscription:
        wanted = None if names is None else frozenset(names)
        for n in wanted or ():
            self.read(n)  # unknown names fail here, as with the real bridge
        sub = _FakeSubscription(self, wanted, interval)
        self._subs.append(sub)
        return sub

    def subscribe_frames(self, bus: str | None = None, maxlen: int = 1000) -> FrameSubscription:
        if bus is not None and bus not in self._buses:
            raise UnknownBus(f"no bus named {bus!r}")
        sub = _FakeFrameSubscription(self, bus, maxlen)
        self._frame_subs.append(sub)
        return sub

    def bus_status(self, name: str) -> BusStatus:
        status = self._status.get(name)
        if status is None:
            raise UnknownBus(f"no bus named {name!r}")
        return status

    def message_status(self, bus: str | None = None) -> list[MessageStatus]:
        now = time.monotonic()
        out = []
        for key, m in self._messages.items():
            if bus is None or m.bus == bus:
                mono = self._msg_mono.get(key)
                newest = max((self._values[s] for s in m.signals), key=lambda v: v.timestamp_ns or 0)
                out.append(MessageStatus(key, self._msg_count[key], None if mono is None else now - mono,
                                         newest.quality))
        return out

    async def write(self, name: str, value: Value | str, caller: Caller) -> WriteReceipt:
        try:
            phys, raw = self._judge(name, value, caller)
        except WriteRefused as e:
            self._refused[e.reason.value] += 1
            self.writes.append(WriteRecord(name, value, caller, refused=e))
            raise
        receipt = self._apply(name, phys, raw)
        self.writes.append(WriteRecord(name, value, caller, receipt=receipt))
        return receipt

    async def write_many(self, items: Sequence[tuple[str, object]], caller: Caller) -> list[WriteReceipt]:
        """All or nothing, as the real write path: every item judged, one refusal refuses them all."""
        judged: list[tuple[str, Value, int]] = []
        first: WriteRefused | None = None
        for i, (name, value) in enumerate(items):
            try:
                phys, raw = self._judge(name, value, caller)  # type: ignore[arg-type]
                judged.append((name, phys, raw))
            except WriteRefused as e:
                e.index = i
                self._refused[e.reason.value] += 1
                self.writes.append(WriteRecord(name, value, caller, refused=e))  # type: ignore[arg-type]
                first = first or e
        if first is not None:
            for name, phys, _ in judged:
                self._refused[first.reason.value] += 1
                self.writes.append(WriteRecord(name, phys, caller, refused=WriteRefused(
                    first.reason, f"not sent: item {first.index} of this request was refused", name, first.index)))
            raise first
        out = []
        for name, phys, raw in judged:
            receipt = self._apply(name, phys, raw)
            self.writes.append(WriteRecord(name, phys, caller, receipt=receipt))
            out.append(receipt)
        return out

    def refuse(self, target: str, value: object, caller: Caller, reason: RefusalReason,
               detail: str) -> WriteRefused:
        """Recorded in :attr:`writes` (as refused) and counted, as the real bridge audits it."""
        e = WriteRefused(reason, detail, target)
        self._refused[reason.value] += 1
        self.writes.append(WriteRecord(target, value, caller, refused=e))  # type: ignore[arg-type]
        return e

    def _judge(self, name: str, value: Value | str, caller: Caller) -> tuple[Value, int]:
        info = self._signals.get(name)
        if info is None:
            raise WriteRefused(RefusalReason.UNKNOWN_SIGNAL, "no such signal in the mapping table", name)
        if not info.writable:
            raise WriteRefused(RefusalReason.NOT_WRITABLE, "the signal is not writable", name)
        if Permission.WRITE not in caller.permissions:
            raise WriteRefused(RefusalReason.NOT_ALLOWED, f"{caller} may not write signals", name)
        try:
            phys = check_type(info, value)
        except TypeError as e:
            raise WriteRefused(RefusalReason.WRONG_TYPE, str(e), name) from None
        try:
            raw = _raw_bits(info, phys)
        except ValueError as e:
            raise WriteRefused(RefusalReason.OUT_OF_RANGE, str(e), name) from None
        status = self._status[info.bus]
        if not status.state.usable:
            raise WriteRefused(RefusalReason.BUS_DOWN, f"bus {info.bus} is {status.state.value}", name)
        for i, (target, reason, detail) in enumerate(self._scripted):
            if target is None or target == name:
                del self._scripted[i]
                raise WriteRefused(reason, detail, name)
        if self.on_write is not None:
            hooked = self.on_write(info, phys, caller)
            if hooked is not None:
                raise WriteRefused(hooked, "refused by the test", name)
        return phys, raw

    def _apply(self, name: str, phys: Value, raw: int) -> WriteReceipt:
        info = self._signals[name]
        status = self._status[info.bus]
        msg = self._messages[self._message_of[name]]
        frame = Frame(msg.frame_id, bytes(msg.length), extended=msg.extended, fd=msg.fd, bus=info.bus)
        self._status[info.bus] = dataclasses.replace(status, tx_frames=status.tx_frames + 1)
        self.set(name, phys)  # what the bridge transmits reads back as good, as with the real store
        return WriteReceipt(name, phys, raw, frame, cyclic=msg.period_ms is not None)

    async def send_frame(self, bus: str, frame: Frame | str | Mapping[str, object], caller: Caller) -> Frame:
        try:
            sent = self._send_frame(bus, frame, caller)
        except WriteRefused as e:
            self._refused[e.reason.value] += 1
            raise
        self.frames.append(FrameRecord(sent, caller))
        return sent

    def _send_frame(self, bus: str, frame: Frame | str | Mapping[str, object], caller: Caller) -> Frame:
        target = f"{bus} (raw frame)"
        if Permission.RAW not in caller.permissions:
            raise WriteRefused(RefusalReason.NOT_ALLOWED, f"{caller} may not send raw frames", target)
        if bus not in self._buses:
            raise WriteRefused(RefusalReason.UNKNOWN_BUS, f"no bus named {bus!r}", target)
        try:
            parsed = parse_frame(frame)
        except FrameFormatError:  # raised as is, counted as a refusal: as the real bridge does
            self._refused[RefusalReason.INVALID_FRAME.value] += 1
            raise
        if parsed.fd and not self._buses[bus].fd:
            raise WriteRefused(RefusalReason.INVALID_FRAME, f"bus {bus} is not configured for CAN FD", target)
        status = self._status[bus]
        if not status.state.usable:
            raise WriteRefused(RefusalReason.BUS_DOWN, f"bus {bus} is {status.state.value}", target)
        sent = dataclasses.replace(parsed, timestamp_ns=None, bus=bus)
        self._status[bus] = dataclasses.replace(status, tx_frames=status.tx_frames + 1)
        return sent

    def stats(self) -> BridgeStats:
        return BridgeStats(
            writes_accepted=sum(w.accepted for w in self.writes) + len(self.frames),
            writes_refused=dict(self._refused),
            store_batches=self._batches,
            store_update_seconds_total=0.0,
            subscribers=len(self._subs) + len(self._frame_subs),
            max_subscriber_lag_s=max((s.lag_s for s in self._subs), default=0.0),
        )


def _message_info(key: str, infos: list[SignalInfo]) -> MessageInfo:
    first = infos[0]
    return MessageInfo(
        name=key, bus=first.bus, message=first.message, frame_id=first.frame_id, extended=first.extended,
        fd=False, length=8, direction="tx" if any(s.direction == "tx" for s in infos) else "rx",
        signals=tuple(s.name for s in infos), cycle_time_ms=first.cycle_time_ms,
    )


def _raw_bits(info: SignalInfo, phys: Value) -> int:
    """The signal's bits for a checked value; ValueError when it is outside the limits, not one of the
    choices, or more than the bits carry."""
    check_limits(info, phys)
    if info.is_float:
        fmt = {32: ">f", 64: ">d"}.get(info.bit_length)
        if fmt is None:
            raise ValueError(f"IEEE float of {info.bit_length} bits is not supported")
        try:
            return int.from_bytes(struct.pack(fmt, (phys - info.offset) / info.scale), "big")
        except (OverflowError, struct.error) as e:
            raise ValueError(f"{phys!r} does not fit a float{info.bit_length}: {e}") from None
    raw = round((phys - info.offset) / info.scale)
    low, high = info.raw_range
    if not low <= raw <= high:
        raise ValueError(f"raw value {raw} is outside {low}..{high} ({info.bit_length} bits)")
    return raw & ((1 << info.bit_length) - 1)
