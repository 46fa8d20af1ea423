"""The write path: the one way from any plugin to the bus.

Order of checks (the first that fails refuses the write, and nothing is sent): the signal exists, it
is writable, the caller holds the write permission, the value has the right type, it is inside the
signal's limits, the bus is usable, the frame has its initial data, the rate is within its bound,
the audit log can be written. Then read-modify-write of the frame's shadow, the audit record, send
once or update the cyclic transmission, and only after the bus took it, commit the shadow and the
store. Every outcome goes to the audit log, and no frame leaves without its record (audit.py).

``write_many`` judges every item before anything is sent: one refused item refuses the request.
Plugins hand values over as their protocol decoded them; judging them is this module's job alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from canbridge._errors import BusError, FrameFormatError, RefusalReason, WriteRefused
from canbridge._frames import parse_frame
from canbridge._model import Caller, Frame, Permission, Quality, SignalInfo, Value, WriteReceipt
from canbridge.core.audit import AuditLog, AuditUnavailable
from canbridge.core.busrunner import SYNC_CYCLIC, BusRunner
from canbridge.core.can.j1939claim import request_frame
from canbridge.core.can.sdo import TIMEOUT, SdoBusy, SdoError
from canbridge.core.mapping.table import MappingTable, MessageEntry
from canbridge.core.store import SignalStore

log = logging.getLogger("canbridge")


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


# SDO abort codes (CiA 301) that mean what a refusal reason of the bridge means: a client sees that
# reason (and its protocol's code for it), with the abort code kept in WriteRefused.abort_code.
_ABORT_REASONS: dict[int, RefusalReason] = {
    0x06090030: RefusalReason.OUT_OF_RANGE, 0x06090031: RefusalReason.OUT_OF_RANGE,
    0x06090032: RefusalReason.OUT_OF_RANGE, 0x06090036: RefusalReason.OUT_OF_RANGE,
    0x06010000: RefusalReason.NOT_WRITABLE, 0x06010002: RefusalReason.NOT_WRITABLE,
    0x06020000: RefusalReason.NOT_WRITABLE, 0x06090011: RefusalReason.NOT_WRITABLE,
    0x06070010: RefusalReason.WRONG_TYPE, 0x06070012: RefusalReason.WRONG_TYPE,
    0x06070013: RefusalReason.WRONG_TYPE, TIMEOUT: RefusalReason.DEVICE_TIMEOUT,
}


def abort_reason(code: int) -> RefusalReason:
    """The refusal reason an SDO abort code becomes (DEVICE_REFUSED where no reason of the bridge fits)."""
    return _ABORT_REASONS.get(code, RefusalReason.DEVICE_REFUSED)


class _Bucket:
    """Token bucket: ``rate`` writes per second, bursts up to ``max(1, rate)``."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def ready(self) -> bool:
        self._refill()
        return self.tokens >= 1.0

    def take(self) -> bool:
        if self.ready():
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


@dataclass(slots=True)
class _Judged:
    """A write that passed every check: what to insert into which message."""

    info: SignalInfo
    entry: MessageEntry
    runner: BusRunner
    phys: Value
    raw: int
    bucket: _Bucket | None


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
        self._request_buckets: dict[str, _Bucket] = {}  # J1939 requests, per bus
        self.accepted = 0
        self.refused: dict[str, int] = {r.value: 0 for r in RefusalReason}

    # --- helpers ---
    def refuse(self, reason: RefusalReason, detail: str, target: str, caller: Caller, value: Any,
               index: int | None = None) -> WriteRefused:
        """Count and audit a refusal; the exception to raise."""
        self.refused[reason.value] += 1
        self.audit.record_refusal(who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                                  target=target, value=value, result=reason.value, detail=detail)
        return WriteRefused(reason, detail, target, index)

    def _accept_record(self, judged: list[_Judged], frames: Mapping[int, Frame], cyclic: Mapping[int, bool],
                       caller: Caller, values: list[Any]) -> list[int]:
        """Audit each write before its frame goes out (no frame without its record)."""
        seqs = []
        batch = len(judged) > 1
        for j, value in zip(judged, values, strict=True):
            extra: dict[str, Any] = {"batch": len(judged)} if batch else {}
            try:
                seqs.append(self.audit.record(
                    who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                    target=j.info.name, value=j.phys, raw=j.raw, result="accepted",
                    frame=frames[j.entry.index].to_cansend(), cyclic=cyclic[j.entry.index], **extra))
            except AuditUnavailable as e:
                for done in seqs:  # a batch is all or nothing: what was recorded is withdrawn
                    self.audit.record_event(event="withdrawn", of=done, result=RefusalReason.AUDIT_UNAVAILABLE.value,
                                            detail="the rest of the batch could not be recorded; nothing sent")
                raise self.refuse(RefusalReason.AUDIT_UNAVAILABLE,
                                  f"the audit log cannot be written ({e}); no write is sent while it cannot",
                                  j.info.name, caller, value) from None
        return seqs

    # --- signals ---
    def _judge(self, name: str, value: Any, caller: Caller, index: int | None = None) -> _Judged:
        """Every check of one write, in order; the first that fails refuses it (audited)."""
        info = self.table.signals.get(name)
        if info is None:
            raise self.refuse(RefusalReason.UNKNOWN_SIGNAL, "no such signal in the mapping table", name,
                              caller, value, index)
        if not info.writable:
            why = "the signal is received, not transmitted" if info.direction == "rx" else \
                "the signal is not in the mapping's 'writable' list"
            raise self.refuse(RefusalReason.NOT_WRITABLE, why, name, caller, value, index)
        if Permission.WRITE not in caller.permissions:
            raise self.refuse(RefusalReason.NOT_ALLOWED, f"{caller} may not write signals", name, caller, value,
                              index)
        try:
            phys = check_type(info, value)
        except TypeError as e:
            raise self.refuse(RefusalReason.WRONG_TYPE, str(e), name, caller, value, index) from None
        try:
            check_limits(info, phys)
        except ValueError as e:
            raise self.refuse(RefusalReason.OUT_OF_RANGE, str(e), name, caller, value, index) from None
        entry = self.table.message_list[self.table.signal_message[info.index]]
        try:
            raw = entry.encoders[info.signal].to_raw(phys)
        except (ValueError, OverflowError) as e:
            raise self.refuse(RefusalReason.OUT_OF_RANGE, str(e), name, caller, value, index) from None
        runner = self.runners[info.bus]
        if not runner.usable:
            raise self.refuse(RefusalReason.BUS_DOWN, f"bus {info.bus} is {runner.state.value}"
                              + (f" ({runner.last_error})" if runner.last_error else ""), name, caller, value, index)
        no_address = runner.claim_refusal()
        if no_address is not None:
            raise self.refuse(RefusalReason.NO_ADDRESS, no_address, name, caller, value, index)
        if self._base_payload(entry, runner) is None:
            raise self.refuse(RefusalReason.WAITING, f"message {entry.info.message} is seeded from the bus and "
                              "no frame of it has been received yet", name, caller, value, index)
        bucket = None
        if info.max_write_rate is not None:
            bucket = self._buckets.get(info.index)
            if bucket is None:
                bucket = self._buckets[info.index] = _Bucket(info.max_write_rate)
            if not bucket.ready():
                raise self.refuse(RefusalReason.RATE_LIMITED,
                                  f"more than {info.max_write_rate:g} writes/s; retry in "
                                  f"{bucket.retry_after():.2f} s", name, caller, value, index)
        sdo = entry.sdo
        if sdo is not None and runner.sdo is not None:
            busy = runner.sdo.busy(sdo.node_id)
            if busy is not None:
                raise self.refuse(RefusalReason.RATE_LIMITED, busy, name, caller, value, index)
        if not self.audit.available:  # checked last: a refusal for a reason of its own says that reason
            raise self.refuse(RefusalReason.AUDIT_UNAVAILABLE,
                              f"the audit log cannot be written ({self.audit.error}); no write is sent while it "
                              "cannot", name, caller, value, index)
        return _Judged(info, entry, runner, phys, raw, bucket)

    async def write(self, name: str, value: Any, caller: Caller) -> WriteReceipt:
        return (await self.write_many([(name, value)], caller, single=True))[0]

    async def write_many(self, items: Sequence[tuple[str, Any]], caller: Caller, *,
                         single: bool = False) -> list[WriteReceipt]:
        """All or nothing: judge every item, then one read-modify-write frame per message."""
        if not items:
            return []
        judged: list[_Judged] = []
        values: list[Any] = []
        first: WriteRefused | None = None
        for i, (name, value) in enumerate(items):
            try:
                judged.append(self._judge(name, value, caller, None if single else i))
                values.append(value)
            except WriteRefused as e:  # judge the rest too, so that each refused item is audited
                first = first or e
        if first is not None:
            for j, value in zip(judged, values, strict=True):  # audited too: asked for, not sent
                self.refuse(first.reason, f"not sent: item {first.index} of this request was refused "
                            f"({first.detail})", j.info.name, caller, value, first.index)
            raise first
        if any(j.entry.sdo is not None for j in judged):
            if len(judged) == 1:
                return [await self._sdo_write(judged[0], caller, values[0])]
            detail = "an SDO object is written alone: several SDO downloads cannot be all or nothing"
            first_sdo = next(i for i, j in enumerate(judged) if j.entry.sdo is not None)
            for j, value in zip(judged, values, strict=True):
                self.refuse(RefusalReason.UNSUPPORTED, detail, j.info.name, caller, value, first_sdo)
            raise WriteRefused(RefusalReason.UNSUPPORTED, detail, judged[first_sdo].info.name, first_sdo)
        for j in judged:  # every bucket was ready; a signal named twice takes one token
            if j.bucket is not None and j.bucket.tokens >= 1.0:
                j.bucket.tokens -= 1.0
        # read-modify-write: the items of one message go into one payload, in request order
        payloads: dict[int, bytes] = {}
        order: list[_Judged] = []
        for j in judged:
            ent = j.entry
            if ent.index not in payloads:
                base = self._base_payload(ent, j.runner)
                assert base is not None  # judged above
                payloads[ent.index] = base
                order.append(j)
            payload = ent.encoders[j.info.signal].insert(payloads[ent.index], j.raw)
            if j.info.multiplexer and j.info.multiplexer_ids:
                mux_enc = ent.encoders.get(j.info.multiplexer)
                if mux_enc is not None:
                    payload = mux_enc.insert(payload, mux_enc.to_raw(j.info.multiplexer_ids[0]))
            payloads[ent.index] = payload
        frames = {j.entry.index: Frame(self._frame_id(j.entry, j.runner), payloads[j.entry.index],
                                       extended=j.entry.info.extended, fd=j.entry.info.fd, bus=j.info.bus)
                  for j in order}
        cyclic = {j.entry.index: bool(j.entry.transmit is not None and j.entry.transmit.period_ms) for j in order}
        seqs = self._accept_record(judged, frames, cyclic, caller, values)
        sent: set[int] = set()
        for j in order:
            try:
                self._transmit(j.entry, j.runner, frames[j.entry.index])
            except BusError as e:
                failed = [k for k, x in enumerate(judged) if x.entry.index not in sent]
                for k in failed:
                    self.refused[RefusalReason.BUS_DOWN.value] += 1
                    self.audit.record_event(event="send_failed", of=seqs[k], target=judged[k].info.name,
                                            result=RefusalReason.BUS_DOWN.value, detail=str(e))
                done = sorted({x.info.name for x in judged if x.entry.index in sent})
                detail = str(e) + (f"; already sent: {', '.join(done)}" if done else "")
                raise WriteRefused(RefusalReason.BUS_DOWN, detail, judged[failed[0]].info.name,
                                   None if single else failed[0]) from None
            sent.add(j.entry.index)
            self._commit(j.entry, payloads[j.entry.index])
        self.accepted += len(judged)
        return [WriteReceipt(j.info.name, j.phys, j.raw, frames[j.entry.index], cyclic[j.entry.index])
                for j in judged]

    async def _sdo_write(self, j: _Judged, caller: Caller, value: Any) -> WriteReceipt:
        """An SDO download of a judged write: audited before its first frame, the node's abort a refusal."""
        obj, client, name = j.entry.sdo, j.runner.sdo, j.info.name
        assert obj is not None and client is not None
        data = j.entry.encoders[j.info.signal].insert(bytes(obj.size), j.raw)
        first = client.download_request(obj.node_id, obj.index, obj.subindex, data)
        if j.bucket is not None:
            j.bucket.tokens -= 1.0
        try:
            seq = self.audit.record(who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                                    target=name, value=j.phys, raw=j.raw, result="accepted", frame=first.to_cansend(),
                                    sdo=f"download {obj.where()} node {obj.node_id}")
        except AuditUnavailable as e:
            raise self.refuse(RefusalReason.AUDIT_UNAVAILABLE, f"the audit log cannot be written ({e}); no write is "
                              "sent while it cannot", name, caller, value) from None
        try:
            await client.download(obj.node_id, obj.index, obj.subindex, data)
        except (BusError, SdoBusy) as e:
            reason = RefusalReason.BUS_DOWN if isinstance(e, BusError) else RefusalReason.RATE_LIMITED
            self.refused[reason.value] += 1
            self.audit.record_event(event="send_failed", of=seq, target=name, result=reason.value, detail=str(e))
            raise WriteRefused(reason, str(e), name) from None
        except SdoError as e:
            reason = abort_reason(e.code)
            self.refused[reason.value] += 1
            self.audit.record_event(event="sdo_abort", of=seq, target=name, result=reason.value,
                                    abort_code=f"0x{e.code:08X}", by=e.by, detail=str(e))
            raise WriteRefused(reason, f"CANopen node {obj.node}: {e}", name, abort_code=e.code) from None
        self.written.add(j.entry.index)
        self.last_write[j.entry.index] = time.monotonic()
        self.publish_payload(j.entry, data)
        self.accepted += 1
        return WriteReceipt(name, j.phys, j.raw, first, False)
    @staticmethod
    def _frame_id(entry: MessageEntry, runner: BusRunner) -> int:
        return runner.j1939_id(entry.info.frame_id) if entry.j1939_tx else entry.info.frame_id

    def _base_payload(self, entry: MessageEntry, runner: BusRunner) -> bytes | None:
        tcfg = entry.transmit
        if tcfg is not None and tcfg.seed == "received" and entry.index not in self.written:
            return runner.last_payload.get(entry.key)
        return self.shadow[entry.index]

    def _transmit(self, entry: MessageEntry, runner: BusRunner, frame: Frame) -> None:
        tcfg = entry.transmit
        if tcfg is not None and tcfg.period_ms:
            runner.set_cyclic(entry.index, frame, tcfg.period_ms / 1000)
        else:
            runner.send(frame)

    def _commit(self, entry: MessageEntry, payload: bytes) -> None:
        self.shadow[entry.index] = payload
        self.written.add(entry.index)
        self.last_write[entry.index] = time.monotonic()
        self.publish_payload(entry, payload)

    def publish_payload(self, entry: MessageEntry, payload: bytes) -> None:
        """Show what the bridge transmits in the store: tx signals read back their sent values."""
        self.store.transmitted(entry.index, entry.decoder, payload, entry.signal_indices)

    def expire_writers(self, now: float) -> None:
        """The dead-man switch: a transmitted message whose writer went quiet for ``writer_timeout_ms``
        stops, or goes back to its initial values (``on_writer_timeout``)."""
        for e in self.table.message_list:
            t = e.transmit
            if t is None or t.writer_timeout_ms is None or t.on_writer_timeout == "keep":
                continue
            last = self.last_write.get(e.index)
            if last is None or now - last < t.writer_timeout_ms / 1000:
                continue
            runner = self.runners[e.info.bus]
            del self.last_write[e.index]
            log.warning("%s: no write for %d ms; %s", e.info.name, t.writer_timeout_ms,
                        "stopping its transmission" if t.on_writer_timeout == "stop" else "back to initial values")
            if t.on_writer_timeout == "stop":
                runner.stop_cyclic(e.index)
                self.store.set_message_quality(e.index, Quality.STALE)
                continue
            self.shadow[e.index] = e.initial
            self.publish_payload(e, e.initial)
            if t.period_ms and e.index in runner.cyclic:
                try:
                    runner.set_cyclic(e.index, Frame(e.info.frame_id, e.initial, extended=e.info.extended,
                                                     fd=e.info.fd, bus=e.info.bus), t.period_ms / 1000)
                except BusError as err:
                    # the bus is down: the runner restarts the (initial) cyclic frame when it returns;
                    # this must not end supervision (it did: staleness stopped for every bus)
                    log.warning("%s: initial values not transmitted now: %s", e.info.name, err)

    # --- the CANopen SYNC producer ---
    def start_sync(self, runner: BusRunner) -> None:
        """Send SYNC cyclically on the bus (``canopen.sync``), audited before its first frame; the runner
        keeps it across reconnects. Without an audit record there is no SYNC (logged)."""
        sync = runner.cfg.canopen.sync if runner.cfg.canopen is not None else None
        if sync is None:
            return
        frame = Frame(sync.cob_id, b"", bus=runner.cfg.name)
        target = f"{runner.cfg.name}.SYNC"
        try:
            seq = self.audit.record(who="bridge", plugin="core", user=None, address=None, target=target,
                                    value=sync.period_ms, result="accepted", frame=frame.to_cansend(), cyclic=True,
                                    event="sync_started", detail=f"SYNC producer every {sync.period_ms} ms")
        except AuditUnavailable as e:
            log.error("%s: SYNC not started: the audit log cannot be written (%s)", target, e)
            return
        try:
            runner.set_cyclic(SYNC_CYCLIC, frame, sync.period_ms / 1000)
        except BusError as e:  # remembered by the runner only when the driver took it: not sending
            self.audit.record_event(event="send_failed", of=seq, target=target, result=RefusalReason.BUS_DOWN.value,
                                    detail=str(e))
            log.warning("%s: SYNC not started: %s", target, e)

    def stop_sync(self, runner: BusRunner) -> None:
        """End the SYNC transmission (the bridge stops), audited with the frames it sent."""
        if SYNC_CYCLIC not in runner.cyclic:
            return
        sent = runner.cyclic[SYNC_CYCLIC].sent(time.monotonic())
        runner.stop_cyclic(SYNC_CYCLIC)
        self.audit.record_event(event="sync_stopped", target=f"{runner.cfg.name}.SYNC", frames=sent,
                                detail=f"SYNC producer stopped after about {sent} frames")

    # --- raw frames ---
    async def send_frame(self, bus: str, frame: Any, caller: Caller) -> Frame:
        target = f"{bus} (raw frame)"
        shown = frame if isinstance(frame, (str, Mapping)) else str(frame)
        if Permission.RAW not in caller.permissions:
            raise self.refuse(RefusalReason.NOT_ALLOWED, f"{caller} may not send raw frames", target, caller, shown)
        runner = self.runners.get(bus)
        if runner is None:
            raise self.refuse(RefusalReason.UNKNOWN_BUS, f"no bus named {bus!r}; buses: "
                              f"{', '.join(sorted(self.runners))}", target, caller, shown)
        try:
            parsed = parse_frame(frame)
        except FrameFormatError as e:
            self.refuse(RefusalReason.INVALID_FRAME, str(e), target, caller, shown)
            raise
        if parsed.fd and not runner.cfg.fd:
            raise self.refuse(RefusalReason.INVALID_FRAME, f"bus {bus} is not configured for CAN FD (fd: true)",
                              target, caller, parsed.to_cansend())
        parsed = Frame(parsed.can_id, parsed.data, parsed.extended, parsed.rtr, parsed.fd, parsed.brs,
                       dlc=parsed.dlc, bus=bus)
        if not runner.usable:
            raise self.refuse(RefusalReason.BUS_DOWN, f"bus {bus} is {runner.state.value}"
                              + (f" ({runner.last_error})" if runner.last_error else ""), target, caller,
                              parsed.to_cansend())
        why = runner.claim_refusal()
        if why is not None:
            raise self.refuse(RefusalReason.NO_ADDRESS, why, target, caller, parsed.to_cansend())
        self._audited_send(runner, parsed, target, caller, parsed.to_cansend(), "frame")
        return parsed

    def _audited_send(self, runner: BusRunner, frame: Frame, target: str, caller: Caller, shown: Any, what: str,
                      before_send: Callable[[], object] | None = None) -> None:
        """A frame judged sendable: its accepted record first (refused while the log cannot be written),
        then the frame; a bus error after the record adds a ``send_failed`` record tied to it."""
        extra = {} if what == "frame" else {"frame": frame.to_cansend()}
        try:
            seq = self.audit.record(who=str(caller), plugin=caller.plugin, user=caller.user, address=caller.address,
                                    target=target, value=shown, result="accepted", **extra)
        except AuditUnavailable as e:
            raise self.refuse(RefusalReason.AUDIT_UNAVAILABLE, f"the audit log cannot be written ({e}); no "
                              f"{what} is sent while it cannot", target, caller, shown) from None
        if before_send is not None:
            before_send()
        try:
            runner.send(frame)
        except BusError as e:
            self.refused[RefusalReason.BUS_DOWN.value] += 1
            self.audit.record_event(event="send_failed", of=seq, target=target, result=RefusalReason.BUS_DOWN.value,
                                    detail=str(e))
            raise WriteRefused(RefusalReason.BUS_DOWN, str(e), target) from None
        self.accepted += 1

    # --- J1939 requests ---
    async def request_pgn(self, bus: str, pgn: int, destination: int, caller: Caller) -> Frame:
        """Send a J1939 Request (PGN 59904) for ``pgn`` to ``destination`` (255: every ECU) from the
        bridge's claimed address; the answer arrives as the signals of that PGN's mapping. Checks in
        order: write permission, the bus, the numbers, the bus is usable, an address is claimed, the bus's
        request rate, the audit log; nothing is sent on a refusal."""
        target = f"{bus} (J1939 request PGN {pgn})" if isinstance(pgn, int) else f"{bus} (J1939 request)"
        shown = {"pgn": pgn, "destination": destination}
        if Permission.WRITE not in caller.permissions:
            raise self.refuse(RefusalReason.NOT_ALLOWED, f"{caller} may not write (J1939 requests need the write "
                              "permission)", target, caller, shown)
        runner = self.runners.get(bus)
        if runner is None:
            raise self.refuse(RefusalReason.UNKNOWN_BUS, f"no bus named {bus!r}; buses: "
                              f"{', '.join(sorted(self.runners))}", target, caller, shown)
        settings = runner.cfg.j1939
        if settings is None:
            raise self.refuse(RefusalReason.UNSUPPORTED, f"bus {bus} claims no J1939 address (no 'j1939' "
                              "settings): it sends no requests", target, caller, shown)
        for what, v, hi in (("pgn", pgn, 0x3FFFF), ("destination", destination, 255)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.refuse(RefusalReason.WRONG_TYPE, f"{what} must be an integer, got {v!r}", target,
                                  caller, shown)
            if not 0 <= v <= hi:
                raise self.refuse(RefusalReason.OUT_OF_RANGE, f"{what} {v} is outside 0..{hi}", target, caller,
                                  shown)
        if not runner.usable:
            raise self.refuse(RefusalReason.BUS_DOWN, f"bus {bus} is {runner.state.value}"
                              + (f" ({runner.last_error})" if runner.last_error else ""), target, caller, shown)
        why = runner.claim_refusal()
        if why is not None:
            raise self.refuse(RefusalReason.NO_ADDRESS, why, target, caller, shown)
        bucket = self._request_buckets.get(bus)
        if bucket is None:
            bucket = self._request_buckets[bus] = _Bucket(settings.request_rate)
        if not bucket.ready():
            raise self.refuse(RefusalReason.RATE_LIMITED, f"more than {settings.request_rate:g} requests/s on bus "
                              f"{bus}; retry in {bucket.retry_after():.2f} s", target, caller, shown)
        assert runner.claim is not None
        can_id, data = request_frame(pgn, runner.claim.address, destination)
        frame = Frame(can_id, data, extended=True, bus=bus)
        self._audited_send(runner, frame, target, caller, shown, "request", before_send=bucket.take)
        return frame


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)
