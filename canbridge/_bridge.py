"""The bridge object handed to plugins: the whole public surface of the core.

Plugins (built-in or third party) see only this class and the types in :mod:`canbridge`;
they never import :mod:`canbridge.core`. A test enforces that layering.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path

from canbridge._errors import PluginError, RefusalReason, WriteRefused
from canbridge._events import DiagnosticEvent
from canbridge._model import (
    BridgeStats,
    BusInfo,
    BusLoad,
    BusStatus,
    Caller,
    Frame,
    LoopLag,
    MessageInfo,
    MessageStatus,
    OperatingStats,
    SignalInfo,
    SignalValue,
    Value,
    WriteReceipt,
)


class Subscription(ABC):
    """Coalesced batches of changed signals, delivered at most once per ``interval``, and further apart
    while the consumer's work on a batch would take more than a fifth of the time (it then coalesces more
    instead of saturating the event loop).

    Use as ``async with bridge.subscribe(...) as sub: async for batch in sub: ...``. The first batch
    holds every subscribed signal (the initial state); later batches hold the signals whose value or
    quality changed since the previous batch, each once, with its newest value; a large change set comes
    as several batches of at most 500 signals in a row, so no consumer holds the event loop for the whole
    set. A subscriber that falls behind loses nothing but intermediate values: its pending set never
    outgrows the signal table.
    """

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[list[SignalValue]]:
        """Iterate over batches until the subscription or the bridge is closed."""

    @abstractmethod
    def close(self) -> None:
        """Stop the subscription; a waiting iteration ends."""

    @property
    @abstractmethod
    def lag_s(self) -> float:
        """Age of the oldest change not yet delivered (0 when none waits)."""

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class FrameSubscription(ABC):
    """Raw frames as received, in batches, from a bounded buffer: when the subscriber is slow the
    oldest frames are dropped (and counted in ``dropped``), the bridge never waits."""

    dropped: int = 0

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[list[Frame]]:
        """Iterate over batches of frames until closed."""

    @abstractmethod
    def close(self) -> None:
        """Stop the subscription."""

    async def __aenter__(self) -> FrameSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventSubscription(ABC):
    """Diagnostic events (:class:`DiagnosticEvent`) in batches, from a bounded queue: when the subscriber
    is slow the oldest events are dropped (and counted in ``dropped``), the bridge never waits."""

    dropped: int = 0

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[list[DiagnosticEvent]]:
        """Iterate over batches of events until closed."""

    @abstractmethod
    def close(self) -> None:
        """Stop the subscription."""

    async def __aenter__(self) -> EventSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class SignalsAddedSubscription(ABC):
    """Signals the mapping table gains while the bridge runs (a J1939 sender heard but not configured,
    docs/j1939.md "Senders nobody configured"), in batches: each batch holds the :class:`SignalInfo` of
    the signals added since the previous batch (or since the subscription was made), in table order, each
    once. Nothing is dropped: the table only grows, and only as far as its bounds allow
    (``buses[].j1939_max_unknown_sources``). When a batch arrives the signals are already in
    :attr:`Bridge.signals` and :attr:`Bridge.messages` and can be read and subscribed to.

    A plugin that builds from :attr:`Bridge.signals` at start should subscribe *before* it reads the
    table and skip names it already has: a signal added in between is then in both.
    """

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[list[SignalInfo]]:
        """Iterate over batches of added signals until the subscription or the bridge is closed."""

    @abstractmethod
    def close(self) -> None:
        """Stop the subscription; a waiting iteration ends."""

    async def __aenter__(self) -> SignalsAddedSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class _NeverAdded(SignalsAddedSubscription):
    """The table of a bridge that never grows: the iteration waits until closed."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[list[SignalInfo]]:
        return self._wait()

    async def _wait(self) -> AsyncIterator[list[SignalInfo]]:
        await self._closed.wait()
        return
        yield  # an async generator that yields nothing

    def close(self) -> None:
        self._closed.set()


class Bridge(ABC):
    """What a plugin may use: the mapping table, latest values, bus health and the write path."""

    @property
    @abstractmethod
    def signals(self) -> Mapping[str, SignalInfo]:
        """Every mapped signal by its stable name ``<bus>.<message>.<signal>``, in table order."""

    @property
    @abstractmethod
    def messages(self) -> Mapping[str, MessageInfo]:
        """Every mapped message by ``<bus>.<message>``."""

    @property
    @abstractmethod
    def buses(self) -> Mapping[str, BusInfo]:
        """Every configured bus by name."""

    @property
    @abstractmethod
    def state_dir(self) -> Path:
        """A directory the bridge keeps across restarts (certificates, register maps); it exists."""

    @property
    @abstractmethod
    def config_path(self) -> Path | None:
        """The configuration file in use, or None for a built-in configuration."""

    @property
    def ready(self) -> bool:
        """True once every bus has been opened (or found missing) and every plugin has started.

        Not abstract, so that test doubles written against earlier versions keep working.
        """
        return True

    @abstractmethod
    def read(self, name: str) -> SignalValue:
        """The latest value of one signal; raises :class:`UnknownSignal`."""

    async def refresh(self, name: str) -> SignalValue:
        """Ask the device for the signal now where there is a way to (a CANopen object served by SDO,
        :attr:`SignalInfo.on_demand`: one upload through the node's queue, shared by the readers that
        ask while it is in flight), then return it as :meth:`read` does; a read that fails makes the
        value ``bad`` with the reason. A value uploaded less than the node's ``max_age_ms`` ago and good
        is returned at once. Other signals: their latest value, at once.

        Not abstract, so that test doubles written against earlier versions keep working.
        """
        return self.read(name)

    @abstractmethod
    def read_many(self, names: Iterable[str] | None = None) -> list[SignalValue]:
        """The latest values of the named signals (all when None), in table order."""

    @abstractmethod
    def subscribe(self, names: Iterable[str] | None = None, interval: float = 0.05) -> Subscription:
        """Subscribe to changes of the named signals (all when None), batched every ``interval`` s."""

    @abstractmethod
    def subscribe_frames(self, bus: str | None = None, maxlen: int = 1000) -> FrameSubscription:
        """Subscribe to raw received frames of one bus (all when None), bounded to ``maxlen``; raises
        :class:`UnknownBus` for an unknown bus."""

    def subscribe_events(self, maxlen: int = 1000) -> EventSubscription:
        """Subscribe to diagnostic events (J1939 DTC appeared/cleared, CANopen EMCY), bounded to ``maxlen``.

        Not abstract, so that test doubles written against earlier versions keep working.
        """
        raise PluginError(f"{type(self).__name__} does not implement subscribe_events")

    def subscribe_signals_added(self) -> SignalsAddedSubscription:
        """Subscribe to signals added to the table at run time (:class:`SignalsAddedSubscription`).

        Not abstract, so that test doubles written against earlier versions keep working: this default
        is a table that never grows.
        """
        return _NeverAdded()

    @abstractmethod
    def bus_status(self, name: str) -> BusStatus:
        """State and counters of one bus; raises :class:`UnknownBus` (a KeyError) for an unknown bus."""

    @abstractmethod
    def message_status(self, bus: str | None = None) -> list[MessageStatus]:
        """Per-message frame counts and ages."""

    @abstractmethod
    async def write(self, name: str, value: Value | str, caller: Caller) -> WriteReceipt:
        """Write a signal through the write path; raises :class:`WriteRefused` with a reason.

        ``value`` may be a choice text for signals with choices. Pass the protocol's decoded value as
        it is (NaN, a string, a list, None): judging it is the write path's job, and its refusal is
        audited. Nothing is sent when refused.
        """

    async def write_many(self, items: Sequence[tuple[str, object]], caller: Caller) -> list[WriteReceipt]:
        """Write several signals all or nothing: every item is judged first, and when one is refused
        nothing is sent and :class:`WriteRefused` names it (``index``). Items of one message go out as
        one frame. For multi-register (Modbus FC 16) and multi-node (OPC UA Write) requests.

        Not abstract, so that test doubles written against earlier versions keep working.
        """
        raise PluginError(f"{type(self).__name__} does not implement write_many")

    def refuse(self, target: str, value: object, caller: Caller, reason: RefusalReason,
               detail: str) -> WriteRefused:
        """Audit a write attempt refused before it reached the write path (authentication, permission,
        protocol form) and return the :class:`WriteRefused` for the plugin to raise or translate.

        Not abstract, so that test doubles written against earlier versions keep working.
        """
        return WriteRefused(reason, detail, target)

    @abstractmethod
    async def send_frame(self, bus: str, frame: Frame | str | Mapping[str, object], caller: Caller) -> Frame:
        """Send one raw frame (a :class:`Frame`, cansend string or frame object) through the write
        path; needs :attr:`Permission.RAW`. Raises :class:`WriteRefused` or :class:`FrameFormatError`."""

    async def request_pgn(self, bus: str, pgn: int, caller: Caller, destination: int = 255) -> Frame:
        """Send a J1939 Request (PGN 59904) for ``pgn`` to ``destination`` (255: global) from the
        bridge's claimed address on ``bus`` (a bus with ``j1939`` settings), through the write path:
        needs :attr:`Permission.WRITE`, bounded by the bus's ``request_rate``, audited; refused with
        :attr:`RefusalReason.NO_ADDRESS` while no address is claimed. The answer arrives as the signals
        of the PGN's mapping. Returns the frame sent; raises :class:`WriteRefused`.

        Not abstract, so that test doubles written against earlier versions keep working.
        """
        raise PluginError(f"{type(self).__name__} does not implement request_pgn")

    @abstractmethod
    def stats(self) -> BridgeStats:
        """Write counters, store update time and subscriber lag, for metrics."""

    def operating_stats(self) -> OperatingStats:
        """Loop lag, CPU per plugin, subscription queues, coalesced updates and per-bus receive counters:
        what an operator of a large gateway watches (REST ``/api/v1/stats``, ``canbridge stats``).

        Not abstract, so that test doubles written against earlier versions keep working: this default
        reports the buses' counters and zeros for what only a running core can measure.
        """
        buses = {}
        for name in self.buses:
            st = self.bus_status(name)
            buses[name] = BusLoad(name, st.rx_frames, 0, st.dropped_frames, st.decode_errors,
                                  st.error_frames)
        return OperatingStats(
            uptime_s=0.0, cpu_seconds=0.0, core_cpu_seconds=0.0,
            loop_lag=LoopLag(interval_s=0.0, samples=0, p50_s=0.0, p99_s=0.0, max_s=0.0, window_samples=0,
                             stalls=0, stall_threshold_s=0.02),
            plugins={}, subscriptions=(), frame_subscriptions=(), coalesced_total=0, coalesced_by_plugin={},
            frames_dropped_total=0, buses=buses,
        )
