"""Small fakes for unit tests of the Modbus plugin: signal infos and a bridge without buses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Literal

from canbridge import (
    Bridge,
    BridgeStats,
    BusInfo,
    BusState,
    BusStatus,
    Caller,
    Frame,
    FrameSubscription,
    MessageInfo,
    MessageStatus,
    Quality,
    RefusalReason,
    SignalInfo,
    SignalValue,
    Subscription,
    UnknownSignal,
    Value,
    WriteReceipt,
    WriteRefused,
)


def sig(
    name: str,
    value_type: type = int,
    minimum: float = 0,
    maximum: float = 100,
    *,
    writable: bool = False,
    bit_length: int = 16,
    is_float: bool = False,
    unit: str | None = None,
    direction: Literal["rx", "tx"] = "rx",
    index: int = 0,
) -> SignalInfo:
    bus, message, signal = name.split(".")
    return SignalInfo(
        name=name,
        bus=bus,
        message=message,
        signal=signal,
        index=index,
        frame_id=0x100,
        extended=False,
        direction="tx" if writable else direction,
        value_type=value_type,
        bit_length=1 if value_type is bool else bit_length,
        signed=minimum < 0,
        is_float=is_float,
        scale=1.0,
        offset=0.0,
        minimum=minimum,
        maximum=maximum,
        unit=unit,
        writable=writable,
    )


def table(*infos: SignalInfo) -> dict[str, SignalInfo]:
    return {i.name: i for i in infos}


class _Sub(Subscription):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[SignalValue] | None] = asyncio.Queue()

    async def _iter(self) -> AsyncIterator[list[SignalValue]]:
        while (batch := await self.queue.get()) is not None:
            yield batch

    def __aiter__(self) -> AsyncIterator[list[SignalValue]]:
        return self._iter()

    def close(self) -> None:
        self.queue.put_nowait(None)

    @property
    def lag_s(self) -> float:
        return 0.0


class FakeBridge(Bridge):
    """A bridge with a fixed table; ``refuse`` makes writes fail with a reason."""

    def __init__(
        self, signals: Mapping[str, SignalInfo], state_dir: Path, buses: Iterable[str] = ("demo",)
    ) -> None:
        self._signals = dict(signals)
        self._state = state_dir
        self._buses = {b: BusInfo(b, "virtual", b, False, 500_000) for b in buses}
        self.values: dict[str, SignalValue] = {
            n: SignalValue(n, None, Quality.WAITING, None) for n in self._signals
        }
        self.writes: list[tuple[str, Value | str, Caller]] = []
        self.refuse: RefusalReason | None = None
        self.subs: list[_Sub] = []
        self.status: dict[str, BusStatus] = {b: BusStatus(b, BusState.ACTIVE) for b in self._buses}

    @property
    def signals(self) -> Mapping[str, SignalInfo]:
        return self._signals

    @property
    def messages(self) -> Mapping[str, MessageInfo]:
        return {}

    @property
    def buses(self) -> Mapping[str, BusInfo]:
        return self._buses

    @property
    def state_dir(self) -> Path:
        return self._state

    @property
    def config_path(self) -> Path | None:
        return None

    def read(self, name: str) -> SignalValue:
        if name not in self.values:
            raise UnknownSignal(name)
        return self.values[name]

    def read_many(self, names: Iterable[str] | None = None) -> list[SignalValue]:
        return [self.values[n] for n in (names if names is not None else self._signals)]

    def subscribe(self, names: Iterable[str] | None = None, interval: float = 0.05) -> Subscription:
        s = _Sub()
        self.subs.append(s)
        return s

    def publish(self, *values: SignalValue) -> None:
        for v in values:
            self.values[v.name] = v
        for s in self.subs:
            s.queue.put_nowait(list(values))

    def subscribe_frames(self, bus: str | None = None, maxlen: int = 1000) -> FrameSubscription:
        raise NotImplementedError

    def bus_status(self, name: str) -> BusStatus:
        return self.status[name]

    def message_status(self, bus: str | None = None) -> list[MessageStatus]:
        return []

    async def write(self, name: str, value: Value | str, caller: Caller) -> WriteReceipt:
        if self.refuse is not None:
            raise WriteRefused(self.refuse, f"refused: {self.refuse.value}", name)
        self.writes.append((name, value, caller))
        assert not isinstance(value, str)
        self.values[name] = SignalValue(name, value, Quality.GOOD, None)
        return WriteReceipt(name, value, int(value), Frame(0x300), cyclic=False)

    async def send_frame(self, bus: str, frame: Frame | str | Mapping[str, object], caller: Caller) -> Frame:
        raise NotImplementedError

    def stats(self) -> BridgeStats:
        return BridgeStats(0, {}, 0, 0.0, 0, 0.0)
