"""The latest-value store: one slot per signal, quality per message, and coalescing subscriptions.

The receive path writes values in place and hands the store the indices that changed, once per
batch; each subscriber keeps a pending *set* of indices, so a slow subscriber costs at most one
entry per signal and never stalls the receive path or the other subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from canbridge._bridge import FrameSubscription, Subscription
from canbridge._model import Frame, Quality, SignalValue
from canbridge.core.table import MappingTable


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
        self.signal_message = table.signal_message
        self._subs: list[_Subscription] = []
        self._frame_subs: list[_FrameSubscription] = []
        self.batches = 0
        self.update_seconds = 0.0

    # --- reading ---
    def value(self, index: int) -> SignalValue:
        mi = self.signal_message[index]
        return SignalValue(
            self.table.signal_list[index].name, self.values[index], self.msg_quality[mi], self.msg_ts[mi]
        )

    # --- writing (receive path, write path, supervisor) ---
    def publish(self, changed: Iterable[int]) -> None:
        """Tell subscribers these signal indices changed (value or quality)."""
        changed = changed if isinstance(changed, (list, set, tuple, frozenset)) else list(changed)
        if not changed:
            return
        now = time.monotonic()
        for sub in self._subs:
            sub.add(changed, now)

    def set_message_quality(self, msg_index: int, quality: Quality) -> None:
        if self.msg_quality[msg_index] is not quality:
            self.msg_quality[msg_index] = quality
            self.publish(self.table.message_list[msg_index].signal_indices)

    # --- subscriptions ---
    def subscribe(self, indices: Iterable[int] | None, interval: float) -> Subscription:
        sub = _Subscription(self, None if indices is None else frozenset(indices), interval)
        self._subs.append(sub)
        return sub

    def _unsubscribe(self, sub: _Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def subscribe_frames(self, bus: str | None, maxlen: int) -> FrameSubscription:
        sub = _FrameSubscription(self, bus, maxlen)
        self._frame_subs.append(sub)
        return sub

    @property
    def frame_taps(self) -> list[_FrameSubscription]:
        return self._frame_subs

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


class _Subscription(Subscription):
    def __init__(self, store: SignalStore, indices: frozenset[int] | None, interval: float) -> None:
        self._store = store
        self._filter = indices
        self._interval = max(0.0, interval)
        self._pending: set[int] = set()
        self._since = 0.0  # monotonic time the oldest pending change arrived
        self._event = asyncio.Event()
        self._closed = False
        self._first = True
        self._last = 0.0

    def add(self, changed: Any, now: float) -> None:
        before = len(self._pending)
        if self._filter is None:
            self._pending.update(changed)
        else:
            self._pending.update(self._filter.intersection(changed))
        if len(self._pending) != before:
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
            yield [store.value(i) for i in idx]
        while not self._closed:
            await self._event.wait()
            if self._closed:
                return
            delay = self._last + self._interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                if self._closed:
                    return
            self._event.clear()
            pending, self._pending = self._pending, set()
            if not pending:
                continue
            self._last = time.monotonic()
            yield [store.value(i) for i in sorted(pending)]


class _FrameSubscription(FrameSubscription):
    def __init__(self, store: SignalStore, bus: str | None, maxlen: int) -> None:
        self._store = store
        self.bus = bus
        self._buf: deque[Frame] = deque(maxlen=max(1, maxlen))
        self._event = asyncio.Event()
        self._closed = False
        self.dropped = 0

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
