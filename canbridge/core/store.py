"""The latest-value store: one slot per signal, quality per message, and coalescing subscriptions.

The store is the one owner of values, timestamps and qualities and of their publication. The
receive path hands it each batch (:meth:`SignalStore.receive`: generated decoders write values in
place, one pass, indices that changed published once per batch), the write path what it transmitted
(:meth:`SignalStore.transmitted`), the supervisor the clock (:meth:`SignalStore.expire`). Each
subscriber keeps a pending *set* of indices, so a slow subscriber costs at most one entry per signal
and never stalls the receive path or the other subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from canbridge._bridge import FrameSubscription, Subscription
from canbridge._loop import io_turn
from canbridge._model import Frame, FrameFlags, Quality, RawFrame, SignalValue
from canbridge.core.mapping.codec import Decoder
from canbridge.core.mapping.j1939 import Unavailable
from canbridge.core.mapping.table import EXT_KEY, MappingTable

GOOD = Quality.GOOD
_ERR = int(FrameFlags.ERROR)
_EXT = int(FrameFlags.EXTENDED)
_RTR = int(FrameFlags.RTR)


_new = object.__new__
_set = object.__setattr__  # SignalValue is frozen: its own __init__ sets fields this way too


def _fast_build_matches() -> bool:
    """The fast build in :meth:`SignalStore.values_of` sets every field of today's SignalValue."""
    try:
        sv = _new(SignalValue)
        for f in ("name", "value", "quality", "timestamp_ns", "reason"):
            _set(sv, f, None)
        return set(SignalValue.__slots__) == {"name", "value", "quality", "timestamp_ns", "reason"} and (
            sv == SignalValue(None, None, None, None, None))  # type: ignore[arg-type]
    except Exception:
        return False


_FAST_BUILD = _fast_build_matches()


class SignalStore:
    """Values, timestamps and qualities of every signal in the mapping table."""

    def __init__(self, table: MappingTable) -> None:
        self.table = table
        n_sig = len(table.signal_list)
        n_msg = len(table.message_list)
        self.values: list[Any] = [None] * n_sig
        self.msg_ts: list[int | None] = [None] * n_msg  # source timestamp, ns since the epoch
        self.msg_mono: list[float] = [0.0] * n_msg  # monotonic time of the last frame
        self.msg_count: list[int] = [0] * n_msg
        self.msg_quality: list[Quality] = [Quality.WAITING] * n_msg
        self.msg_reason: list[str | None] = [None] * n_msg  # why a message is bad, where a watcher knows
        self.held: set[int] = set()  # bad until a watcher releases them (CANopen node lost): frames do not revive
        self.watchers: list[Callable[[float], None]] = []  # run by expire(): node supervision (heartbeats)
        self.signal_message = table.signal_message
        self._names = [s.name for s in table.signal_list]
        self._subs: list[_Subscription] = []
        self._frame_subs: list[_FrameSubscription] = []
        self.batches = 0
        self.update_seconds = 0.0
        self.decoded: dict[str, int] = {}  # per bus: frames whose payload changed and were decoded
        # what closed subscriptions counted, by owner, so totals never go down
        self.coalesced_closed: dict[str | None, int] = {}
        self.frames_dropped_closed = 0

    def grow(self) -> None:
        """Slots for the signals and messages the table gained at run time (J1939 senders heard, not
        configured). The lists grow in place: the receive path holds them while it runs."""
        t = self.table
        self.values.extend([None] * (len(t.signal_list) - len(self.values)))
        self._names.extend(s.name for s in t.signal_list[len(self._names):])
        n = len(t.message_list) - len(self.msg_ts)
        self.msg_ts.extend([None] * n)
        self.msg_mono.extend([0.0] * n)
        self.msg_count.extend([0] * n)
        self.msg_quality.extend([Quality.WAITING] * n)
        self.msg_reason.extend([None] * n)

    # --- reading ---
    def value(self, index: int) -> SignalValue:
        mi = self.signal_message[index]
        value = self.values[index]
        if type(value) is Unavailable:  # a J1939 "not available" or "error" raw value: no number
            return SignalValue(self.table.signal_list[index].name, None, Quality.BAD, self.msg_ts[mi],
                               value.reason)
        q = self.msg_quality[mi]
        return SignalValue(self.table.signal_list[index].name, value, q, self.msg_ts[mi],
                           self.msg_reason[mi] if q is Quality.BAD else None)

    def values_of(self, indices: Iterable[int]) -> list[SignalValue]:
        """:meth:`value` of each index, built in one pass (subscription batches: ~0.45 µs a value
        against ~1 µs through the frozen dataclass's ``__init__``, which every subscriber paid)."""
        if not _FAST_BUILD:  # pragma: no cover - a SignalValue layout the fast path was not checked for
            return [self.value(i) for i in indices]
        values, sm, ts, mq, reasons = self.values, self.signal_message, self.msg_ts, self.msg_quality, self.msg_reason
        names = self._names
        new, put, unavailable, bad = _new, _set, Unavailable, Quality.BAD
        out: list[SignalValue] = []
        append = out.append
        for i in indices:
            mi = sm[i]
            value = values[i]
            sv = new(SignalValue)
            put(sv, "name", names[i])
            put(sv, "timestamp_ns", ts[mi])
            if type(value) is unavailable:
                put(sv, "value", None)
                put(sv, "quality", bad)
                put(sv, "reason", value.reason)
            else:
                q = mq[mi]
                put(sv, "value", value)
                put(sv, "quality", q)
                put(sv, "reason", reasons[mi] if q is bad else None)
            append(sv)
        return out

    # --- writing (receive path, write path, supervisor) ---
    def receive(self, bus: str, batch: list[RawFrame], lookup: Mapping[int, tuple[int, Decoder]],
                last: dict[int, bytes], msg_signals: Mapping[int, Sequence[int]],
                on_error_frame: Callable[[int, bytes], None],
                resolve: Callable[[int, bytes, int], tuple[int, Decoder] | None] | None = None,
                ) -> tuple[int, int, int, int, int, int]:
        """Apply one received batch of a bus; (error frames, unmapped, decode errors, remote requests,
        extended frames, data bytes) for the bus's counters. One pass: this runs for every frame.
        ``resolve(key, data, ts)`` is asked about keys the lookup misses (J1939 buses: PGN matching)."""
        t0 = time.perf_counter()
        values = self.values
        msg_ts = self.msg_ts
        msg_mono = self.msg_mono
        counts = self.msg_count
        mq = self.msg_quality
        changed: list[int] = []
        revived: list[int] = []
        mono = time.monotonic()
        nbytes = n_ext = unmapped = decode_errors = n_err = rtr = decoded = 0
        for frame in batch:
            can_id, flags, data, ts = frame
            if flags & _ERR:
                n_err += 1
                on_error_frame(can_id, data)
                continue
            nbytes += len(data)
            if flags & _EXT:
                n_ext += 1
                key = can_id | EXT_KEY
            else:
                key = can_id
            entry = lookup.get(key)
            if entry is None and resolve is not None:
                entry = resolve(key, data, ts)
            if entry is None:
                unmapped += 1
                continue
            mi, dec = entry
            if flags & _RTR:  # a remote request carries no data: it must not make old values look fresh
                rtr += 1
                continue
            if last.get(key) != data:
                try:
                    dec(data, values, changed)
                except ValueError:  # nor does a malformed frame
                    decode_errors += 1
                    continue
                last[key] = data
                decoded += 1
            msg_ts[mi] = ts
            msg_mono[mi] = mono
            counts[mi] += 1
            if mq[mi] is not GOOD and mi not in self.held:
                mq[mi] = GOOD
                revived.append(mi)
        for mi in revived:
            changed.extend(msg_signals[mi])
        taps = self._frame_subs
        if taps:
            frames = None
            for tap in taps:
                if tap.bus is None or tap.bus == bus:
                    if frames is None:
                        frames = [_to_frame(f, bus) for f in batch]
                    tap.push(frames)
        if changed:
            self.publish(changed)
        self.batches += 1
        if decoded:
            self.decoded[bus] = self.decoded.get(bus, 0) + decoded
        self.update_seconds += time.perf_counter() - t0
        return n_err, unmapped, decode_errors, rtr, n_ext, nbytes

    def transmitted(self, msg_index: int, decoder: Decoder, payload: bytes, signal_indices: Sequence[int]) -> None:
        """What the bridge transmits shows in the store: its signals read back their sent values, good."""
        changed: list[int] = []
        decoder(payload, self.values, changed)
        self.msg_ts[msg_index] = time.time_ns()
        self.msg_mono[msg_index] = time.monotonic()
        if self.msg_quality[msg_index] is not GOOD:
            self.msg_quality[msg_index] = GOOD
            changed.extend(signal_indices)
        self.publish(changed)

    def expire(self, now: float) -> None:
        """Good messages older than their timeout become stale (``now`` is monotonic)."""
        quality = self.msg_quality
        mono = self.msg_mono
        for e in self.table.message_list:
            if e.timeout_s is not None and quality[e.index] is GOOD and now - mono[e.index] > e.timeout_s:
                self.set_message_quality(e.index, Quality.STALE)
        for watch in self.watchers:
            watch(now)

    def publish(self, changed: Iterable[int]) -> None:
        """Tell subscribers these signal indices changed (value or quality)."""
        # one set per batch for every subscriber: a signal that changed twice in the batch counts once
        # (its intermediate value is lost to everyone alike), and set updates from a set are cheaper
        changed = changed if isinstance(changed, (set, frozenset)) else set(changed)
        if not changed:
            return
        now = time.monotonic()
        for sub in self._subs:
            sub.add(changed, now)

    def set_message_quality(self, msg_index: int, quality: Quality, reason: str | None = None) -> None:
        if self.msg_quality[msg_index] is not quality or self.msg_reason[msg_index] != reason:
            self.msg_quality[msg_index] = quality
            self.msg_reason[msg_index] = reason
            self.publish(self.table.message_list[msg_index].signal_indices)

    # --- subscriptions ---
    def subscribe(self, indices: Iterable[int] | None, interval: float, owner: str | None = None) -> Subscription:
        sub = _Subscription(self, None if indices is None else frozenset(indices), interval)
        sub.owner = owner
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: _Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self.coalesced_closed[sub.owner] = self.coalesced_closed.get(sub.owner, 0) + sub.coalesced

    @property
    def subscriptions(self) -> list[_Subscription]:
        return list(self._subs)

    @property
    def frame_subscriptions(self) -> list[_FrameSubscription]:
        return list(self._frame_subs)

    def subscribe_frames(self, bus: str | None, maxlen: int, owner: str | None = None) -> FrameSubscription:
        sub = _FrameSubscription(self, bus, maxlen)
        sub.owner = owner
        self._frame_subs.append(sub)
        return sub

    def max_lag(self) -> float:
        now = time.monotonic()
        return max((s.lag_at(now) for s in self._subs), default=0.0)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs) + len(self._frame_subs)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
        for fsub in list(self._frame_subs):
            fsub.close()


# Changes delivered per batch at most (the first batch, the initial state, is whole): at 10,000 signals a
# whole change set held the event loop for tens of milliseconds in every consumer (bench/bench_e2e.py).
CHANGE_CHUNK = 500
# A subscriber's consumer may spend about this share of the time on its batches: when one batch took longer
# than that share of the interval, the next waits longer (and coalesces more). A 5 ms interval gives low
# latency where the work is small and does not saturate the loop at four full buses of fast signals.
CONSUMER_SHARE = 0.2
MAX_GAP_S = 1.0  # however slow the consumer, it gets a batch at least this often


class _Subscription(Subscription):
    def __init__(self, store: SignalStore, indices: frozenset[int] | None, interval: float) -> None:
        self._store = store
        self._filter = indices
        self._interval = max(0.0, interval)
        self._gap = self._interval  # the spacing in force: the interval, or longer after a heavy batch
        self._pending: set[int] = set()
        self._since = 0.0  # monotonic time the oldest pending change arrived
        self._event = asyncio.Event()
        self._closed = False
        self._first = True
        self._last = 0.0
        self.owner: str | None = None  # the plugin that subscribed, for operating statistics
        self.coalesced = 0  # changes to a signal already pending: its previous value was never delivered

    @property
    def interval_s(self) -> float:
        """The spacing of batches in force: the requested interval, or longer while the consumer's work on
        a batch needs it (:data:`CONSUMER_SHARE`)."""
        return self._gap

    @property
    def size(self) -> int | None:
        return None if self._filter is None else len(self._filter)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, changed: Any, now: float) -> None:
        pending = self._pending
        before = len(pending)
        if self._filter is None:
            pending.update(changed)
            n = len(changed)
        else:
            relevant = self._filter.intersection(changed)
            pending.update(relevant)
            n = len(relevant)
        added = len(pending) - before
        if added != n:
            self.coalesced += n - added
        if added:
            if before == 0:
                self._since = now
            self._event.set()

    def lag_at(self, now: float) -> float:
        return now - self._since if self._pending else 0.0

    @property
    def lag_s(self) -> float:
        return self.lag_at(time.monotonic())

    def close(self) -> None:
        self._closed = True
        self._event.set()
        self._store._unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[list[SignalValue]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[SignalValue]]:
        store = self._store
        if self._first:
            self._first = False
            self._pending.clear()
            idx = range(len(store.values)) if self._filter is None else sorted(self._filter)
            self._last = time.monotonic()
            yield store.values_of(idx)
        while not self._closed:
            await self._event.wait()
            if self._closed:
                return
            delay = self._last + self._gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if self._closed:
                    return
            self._event.clear()
            pending, self._pending = self._pending, set()
            if not pending:
                continue
            self._last = time.monotonic()
            order = sorted(pending)
            work = 0.0  # the consumer's time on this batch (from handing a chunk over to being asked again)
            for start in range(0, len(order), CHANGE_CHUNK):
                if start:
                    # A loop turn between chunks in which sockets go first: the receive path, writes and
                    # other clients run while one consumer works through a large change set.
                    await io_turn()
                    if self._closed:
                        return
                chunk = store.values_of(order[start:start + CHANGE_CHUNK])
                handed = time.monotonic()
                yield chunk
                work += time.monotonic() - handed
            self._gap = max(self._interval, min(MAX_GAP_S, work / CONSUMER_SHARE))


class _FrameSubscription(FrameSubscription):
    def __init__(self, store: SignalStore, bus: str | None, maxlen: int) -> None:
        self._store = store
        self.bus = bus
        self._buf: deque[Frame] = deque(maxlen=max(1, maxlen))
        self._event = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self.owner: str | None = None  # the plugin that subscribed, for operating statistics

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def capacity(self) -> int:
        return self._buf.maxlen or 0

    def push(self, frames: list[Frame]) -> None:
        overflow = len(self._buf) + len(frames) - (self._buf.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow
        self._buf.extend(frames)
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()
        if self in self._store._frame_subs:
            self._store._frame_subs.remove(self)
            self._store.frames_dropped_closed += self.dropped

    def __aiter__(self) -> AsyncIterator[list[Frame]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[list[Frame]]:
        while not self._closed:
            await self._event.wait()
            self._event.clear()
            if self._closed:
                return
            batch = list(self._buf)
            self._buf.clear()
            if batch:
                yield batch


def _to_frame(f: RawFrame, bus: str) -> Frame:
    can_id, flags, data, ts = f
    return Frame(can_id, data, extended=bool(flags & _EXT), rtr=bool(flags & _RTR),
                 fd=bool(flags & FrameFlags.FD), brs=bool(flags & FrameFlags.BRS),
                 error=bool(flags & _ERR), timestamp_ns=ts, bus=bus)
