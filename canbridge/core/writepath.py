"""The write path: the one way from any plugin to the bus.

Order of checks (the first that fails refuses the write, and nothing is sent): the signal exists, it
is writable, the caller holds the write permission, the value has the right type, it is inside the
signal's limits, the bus is usable, the frame has its initial data, the rate is within its bound.
Then read-modify-write of the frame's shadow, send once or update the cyclic transmission, and only
after the bus took it, commit the shadow and the store. Every outcome goes to the audit log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from canbridge._errors import BusError, FrameFormatError, RefusalReason, WriteRefused
from canbridge._frames import parse_frame
from canbridge._model import Caller, Frame, Permission, Quality, SignalInfo, Value, WriteReceipt
from canbridge.core.audit import AuditLog
from canbridge.core.busrunner import BusRunner
from canbridge.core.store import SignalStore
from canbridge.core.table import MappingTable, MessageEntry


def check_type(info: SignalInfo, value: object) -> Value:
    """The physical value a write means (a choice text becomes its number); TypeError for a wrong type."""
    if isinstance(value, str):
        if info.choices:
            raw = info.choice_value(value)
            if raw is None:
                raise TypeError(f"{value!r} is not one of the choices {sorted(info.choices.values())}")
            phys = raw * info.scale + info.offset
            return int(phys) if info.value_type is int and float(phys).is_integer() else phys
        raise TypeError(f"expects a {info.value_type.__name__}, got the string {value!r}")
    if info.value_type is bool:
        if isinstance(value, (bool, int, float)) and value in (0, 1):
            return bool(value)
        raise TypeError(f"expects a boolean (true/false or 0/1), got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expects a {info.value_type.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise TypeError(f"expects a finite number, got {value!r}")
    if info.value_type is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise TypeError(f"expects an integer, got {value!r}")
            return int(value)
        return value
    return float(value)


def check_limits(info: SignalInfo, phys: Value) -> None:
    """ValueError when a checked value is outside the signal's limits or not one of its choices."""
    if not info.minimum <= phys <= info.maximum:
        unit = f" {info.unit}" if info.unit else ""
        raise ValueError(f"{phys!r} is outside {_num(info.minimum)}..{_num(info.maximum)}{unit}")
    if info.choices and not info.is_float and round((phys - info.offset) / info.scale) not in info.choices:
        raise ValueError(f"{phys!r} is not one of the choices {dict(info.choices)}")


class _Bucket:
    """Token bucket: ``rate`` writes per second, bursts up to ``max(1, rate)``."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


class WritePath:
    def __init__(self, table: MappingTable, store: SignalStore, runners: Mapping[str, BusRunner],
                 audit: AuditLog) -> None:
        self.table = table
        self.store = store
        self.runners = runners
        self.audit = audit
        self.shadow: dict[int, bytes] = {e.index: e.initial for e in table.message_list if e.transmit}
        self.written: set[int] = set()  # tx messages written at least once
        self.last_write: dict[int, float] = {}
        self._buckets: dict[int, _Bucket] = {}
        self.accepted = 0
        self.refused: dict[str, int] = {r.value: 0 for r in RefusalReason}

    # --- helpers ---
    def _refuse(self, reason: RefusalReason, detail: str, target: str, caller: Caller, value: Any) -> WriteRefused:
        self.refused[reason.value] += 1
        self.audit.record(who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                          target=target, value=value, result=reason.value, detail=detail)
        return WriteRefused(reason, detail, target)

    # --- signals ---
    async def write(self, name: str, value: Any, caller: Caller) -> WriteReceipt:
        info = self.table.signals.get(name)
        if info is None:
            raise self._refuse(RefusalReason.UNKNOWN_SIGNAL, "no such signal in the mapping table", name,
                               caller, value)
        if not info.writable:
            why = "the signal is received, not transmitted" if info.direction == "rx" else \
                "the signal is not in the mapping's 'writable' list"
            raise self._refuse(RefusalReason.NOT_WRITABLE, why, name, caller, value)
        if Permission.WRITE not in caller.permissions:
            raise self._refuse(RefusalReason.NOT_ALLOWED, f"{caller} may not write signals", name, caller, value)
        try:
            phys = check_type(info, value)
        except TypeError as e:
            raise self._refuse(RefusalReason.WRONG_TYPE, str(e), name, caller, value) from None
        try:
            check_limits(info, phys)
        except ValueError as e:
            raise self._refuse(RefusalReason.OUT_OF_RANGE, str(e), name, caller, value) from None
        mi = self.table.signal_message[info.index]
        entry = self.table.message_list[mi]
        enc = entry.encoders[info.signal]
        try:
            raw = enc.to_raw(phys)
        except (ValueError, OverflowError) as e:
            raise self._refuse(RefusalReason.OUT_OF_RANGE, str(e), name, caller, value) from None
        runner = self.runners[info.bus]
        if not runner.usable:
            raise self._refuse(RefusalReason.BUS_DOWN, f"bus {info.bus} is {runner.state.value}"
                               + (f" ({runner.last_error})" if runner.last_error else ""), name, caller, value)
        base = self._base_payload(entry, runner)
        if base is None:
            raise self._refuse(RefusalReason.WAITING, f"message {entry.info.message} is seeded from the bus and "
                               "no frame of it has been received yet", name, caller, value)
        bucket = self._buckets.get(info.index)
        if info.max_write_rate is not None:
            if bucket is None:
                bucket = self._buckets[info.index] = _Bucket(info.max_write_rate)
            if not bucket.take():
                raise self._refuse(RefusalReason.RATE_LIMITED,
                                   f"more than {info.max_write_rate:g} writes/s; retry in "
                                   f"{bucket.retry_after():.2f} s", name, caller, value)
        payload = enc.insert(base, raw)
        if info.multiplexer and info.multiplexer_ids:
            mux_enc = entry.encoders.get(info.multiplexer)
            if mux_enc is not None:
                payload = mux_enc.insert(payload, mux_enc.to_raw(info.multiplexer_ids[0]))
        frame = Frame(entry.info.frame_id, payload, extended=entry.info.extended, fd=entry.info.fd,
                      bus=info.bus)
        cyclic = self._transmit(entry, runner, frame, name, caller, phys)
        self._commit(entry, payload)
        self.accepted += 1
        self.audit.record(who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                          target=name, value=phys, raw=raw, result="accepted", frame=frame.to_cansend(),
                          cyclic=cyclic)
        return WriteReceipt(name, phys, raw, frame, cyclic)

    def _base_payload(self, entry: MessageEntry, runner: BusRunner) -> bytes | None:
        tcfg = entry.transmit
        if tcfg is not None and tcfg.seed == "received" and entry.index not in self.written:
            return runner.last_payload.get(entry.key)
        return self.shadow[entry.index]

    def _transmit(self, entry: MessageEntry, runner: BusRunner, frame: Frame, name: str, caller: Caller,
                  value: Any) -> bool:
        tcfg = entry.transmit
        try:
            if tcfg is not None and tcfg.period_ms:
                runner.set_cyclic(entry.index, frame, tcfg.period_ms / 1000)
                return True
            runner.send(frame)
            return False
        except BusError as e:
            raise self._refuse(RefusalReason.BUS_DOWN, str(e), name, caller, value) from None

    def _commit(self, entry: MessageEntry, payload: bytes) -> None:
        self.shadow[entry.index] = payload
        self.written.add(entry.index)
        self.last_write[entry.index] = time.monotonic()
        self.publish_payload(entry, payload)

    def publish_payload(self, entry: MessageEntry, payload: bytes) -> None:
        """Show what the bridge transmits in the store: tx signals read back their sent values."""
        changed: list[int] = []
        entry.decoder(payload, self.store.values, changed)
        self.store.msg_ts[entry.index] = time.time_ns()
        self.store.msg_mono[entry.index] = time.monotonic()
        if self.store.msg_quality[entry.index] is not Quality.GOOD:
            self.store.msg_quality[entry.index] = Quality.GOOD
            changed.extend(entry.signal_indices)
        self.store.publish(changed)

    # --- raw frames ---
    async def send_frame(self, bus: str, frame: Any, caller: Caller) -> Frame:
        target = f"{bus} (raw frame)"
        if Permission.RAW not in caller.permissions:
            raise self._refuse(RefusalReason.NOT_ALLOWED, f"{caller} may not send raw frames", target, caller,
                               str(frame))
        runner = self.runners.get(bus)
        if runner is None:
            raise self._refuse(RefusalReason.UNKNOWN_BUS, f"no bus named {bus!r}; buses: "
                               f"{', '.join(sorted(self.runners))}", target, caller, str(frame))
        try:
            parsed = parse_frame(frame)
        except FrameFormatError as e:
            self._refuse(RefusalReason.INVALID_FRAME, str(e), target, caller, str(frame))
            raise
        if parsed.fd and not runner.cfg.fd:
            raise self._refuse(RefusalReason.INVALID_FRAME, f"bus {bus} is not configured for CAN FD (fd: true)",
                               target, caller, parsed.to_cansend())
        parsed = Frame(parsed.can_id, parsed.data, parsed.extended, parsed.rtr, parsed.fd, parsed.brs,
                       dlc=parsed.dlc, bus=bus)
        try:
            runner.send(parsed)
        except BusError as e:
            raise self._refuse(RefusalReason.BUS_DOWN, str(e), target, caller, parsed.to_cansend()) from None
        self.accepted += 1
        self.audit.record(who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                          target=target, value=parsed.to_cansend(), result="accepted")
        return parsed


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)
