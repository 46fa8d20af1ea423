"""A small in-memory :class:`canbridge.Bridge` for OPC UA unit tests: the values and the write
path's answers are set by the test, so each refusal reason and quality can be produced on demand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path

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
    Permission,
    Quality,
    RefusalReason,
    SignalInfo,
    SignalValue,
    Subscription,
    UnknownSignal,
    Value,
    WriteReceipt,
    WriteRefused,
    parse_frame,
)


def sig(message: str, signal: str, **kw: object) -> SignalInfo:
    defaults: dict[str, object] = {
        "bus": "b0",
        "message": message,
        "signal": signal,
        "name": f"b0.{message}.{signal}",
        "index": 0,
        "frame_id": 0x100,
        "extended": False,
        "direction": "rx",
        "value_type": int,
        "bit_length": 16,
        "signed": False,
        "is_float": False,
        "scale": 1.0,
        "offset": 0.0,
        "minimum": 0.0,
        "maximum": 65535.0,
    }
    defaults.update(kw)
    return SignalInfo(**defaults)  # type: ignore[arg-type]


def small_table() -> list[SignalInfo]:
    return [
        sig("Status", "Speed", unit="rpm", signed=True, minimum=-8000, maximum=8000, comment="Rotor speed."),
        sig("Status", "Temp", unit="degC", bit_length=8, offset=-40, minimum=-40, maximum=215),
        sig("Status", "Current", unit="A", value_type=float, scale=0.1, signed=True, minimum=-500, maximum=500),
        sig(
            "Status",
            "State",
            bit_length=4,
            minimum=0,
            maximum=3,
            choices={0: "Off", 1: "Ready", 2: "Running", 3: "Fault"},
        ),
        sig("Status", "Enabled", value_type=bool, bit_length=1, minimum=0, maximum=1),
        sig("Status", "Gear", bit_length=8, minimum=0, maximum=255, choices={1: "Low", 4: "High"}),
        sig("Status", "Odd", unit="furlongs", bit_length=32, minimum=0, maximum=4294967295),
        sig(
            "Command",
            "Setpoint",
            frame_id=0x300,
            direction="tx",
            unit="rpm",
            minimum=0,
            maximum=6000,
            writable=True,
            max_write_rate=5.0,
        ),
        sig(
            "Command",
            "Mode",
            frame_id=0x300,
            direction="tx",
            bit_length=2,
            minimum=0,
            maximum=2,
            writable=True,
            choices={0: "Off", 1: "Speed", 2: "Torque"},
        ),
        sig(
            "Command",
            "Enable",
            frame_id=0x300,
            direction="tx",
            value_type=bool,
            bit_length=1,
            minimum=0,
            maximum=1,
            writable=True,
        ),
    ]


class _Sub(Subscription):
    def __init__(self, owner: FakeBridge, names: set[str] | None) -> None:
        self.owner = owner
        self.names = names
        self.queue: asyncio.Queue[list[SignalValue] | None] = asyncio.Queue()
        self.queue.put_nowait(owner.read_many(names))

    def __aiter__(self) -> AsyncIterator[list[SignalValue]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[list[SignalValue]]:
        while True:
            batch = await self.queue.get()
            if batch is None:
                return
            yield batch

    def close(self) -> None:
        if self in self.owner.subs:
            self.owner.subs.remove(self)
        self.queue.put_nowait(None)

    @property
    def lag_s(self) -> float:
        return 0.0


class FakeBridge(Bridge):
    def __init__(self, signals: list[SignalInfo], state_dir: Path) -> None:
        self._signals = {s.name: s for s in signals}
        msgs: dict[str, list[str]] = {}
        for s in signals:
            msgs.setdefault(f"{s.bus}.{s.message}", []).append(s.name)
        self._messages = {
            k: MessageInfo(
                name=k,
                bus=k.split(".")[0],
                message=k.split(".")[1],
                frame_id=self._signals[v[0]].frame_id,
                extended=False,
                fd=False,
                length=8,
                direction=self._signals[v[0]].direction,
                signals=tuple(v),
                comment=f"message {k}",
            )
            for k, v in msgs.items()
        }
        self._buses = {b: BusInfo(b, "virtual", b, False, 500000) for b in {s.bus for s in signals}}
        self._state_dir = state_dir
        self.values: dict[str, SignalValue] = {n: SignalValue(n, None, Quality.WAITING, None) for n in self._signals}
        self.subs: list[_Sub] = []
        self.writes: list[tuple[str, Value | str, Caller]] = []
        self.frames: list[tuple[str, Frame, Caller]] = []
        self.refuse_next: RefusalReason | None = None
        self.bus_state = BusState.ACTIVE
        self.rx_frames = 0

    # --- test controls ---
    def set(self, name: str, value: Value | None, quality: Quality = Quality.GOOD, ts_ns: int | None = None) -> None:
        ts = ts_ns if ts_ns is not None else time.time_ns()
        self.values[name] = SignalValue(name, value, quality, ts)
        self.publish([self.values[name]])

    def publish(self, batch: list[SignalValue]) -> None:
        for s in self.subs:
            mine = [v for v in batch if s.names is None or v.name in s.names]
            if mine:
                s.queue.put_nowait(mine)

    # --- Bridge ---
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
        return None

    def ready(self) -> bool:
        return True

    def read(self, name: str) -> SignalValue:
        if name not in self.values:
            raise UnknownSignal(name)
        return self.values[name]

    def read_many(self, names: Iterable[str] | None = None) -> list[SignalValue]:
        wanted = set(names) if names is not None else None
        return [v for n, v in self.values.items() if wanted is None or n in wanted]

    def subscribe(self, names: Iterable[str] | None = None, interval: float = 0.05) -> Subscription:
        s = _Sub(self, set(names) if names is not None else None)
        self.subs.append(s)
        return s

    def subscribe_frames(self, bus: str | None = None, maxlen: int = 1000) -> FrameSubscription:
        raise NotImplementedError

    def bus_status(self, name: str) -> BusStatus:
        if name not in self._buses:
            raise KeyError(name)
        return BusStatus(
            name, self.bus_state, rx_frames=self.rx_frames, tx_frames=len(self.frames), bus_load=12.5, bus_off_count=1
        )

    def message_status(self, bus: str | None = None) -> list[MessageStatus]:
        out = []
        for name, m in self._messages.items():
            vals = [self.values[s] for s in m.signals]
            ts = max((v.timestamp_ns or 0) for v in vals)
            age = None if ts == 0 else (time.time_ns() - ts) / 1e9
            out.append(MessageStatus(name, 1 if ts else 0, age, vals[0].quality))
        return out

    async def write(self, name: str, value: Value | str, caller: Caller) -> WriteReceipt:
        self.writes.append((name, value, caller))
        info = self._signals.get(name)
        if info is None:
            raise UnknownSignal(name)
        if self.refuse_next is not None:
            reason, self.refuse_next = self.refuse_next, None
            raise WriteRefused(reason, "refused by the test", name)
        if not info.writable:
            raise WriteRefused(RefusalReason.NOT_WRITABLE, "not writable", name)
        if Permission.WRITE not in caller.permissions:
            raise WriteRefused(RefusalReason.NOT_ALLOWED, "no write permission", name)
        if isinstance(value, str):
            raw = info.choice_value(value)
            if raw is None:
                raise WriteRefused(RefusalReason.WRONG_TYPE, "no such choice", name)
            value = raw
        if info.value_type is int and isinstance(value, float) and not value.is_integer():
            raise WriteRefused(RefusalReason.WRONG_TYPE, "not an integer", name)
        if not info.minimum <= value <= info.maximum:
            raise WriteRefused(RefusalReason.OUT_OF_RANGE, "out of range", name)
        v: Value = info.value_type(value)
        self.set(name, v)
        frame = Frame(info.frame_id, bytes(8))
        return WriteReceipt(name, v, int(value), frame, False)

    async def send_frame(self, bus: str, frame: Frame | str | Mapping[str, object], caller: Caller) -> Frame:
        if Permission.RAW not in caller.permissions:
            raise WriteRefused(RefusalReason.NOT_ALLOWED, "no raw permission", bus)
        if bus not in self._buses:
            raise WriteRefused(RefusalReason.UNKNOWN_BUS, "no such bus", bus)
        f = parse_frame(frame)
        self.frames.append((bus, f, caller))
        return f

    def stats(self) -> BridgeStats:
        return BridgeStats(0, {}, 0, 0.0, len(self.subs), 0.0)
