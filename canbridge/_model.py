"""Plain data types of the public API: what a plugin reads from and hands to the bridge."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Any, Literal

from canbridge._canopen import CanopenNodeStatus
from canbridge._j1939 import Dm1

Value = bool | int | float
"""A signal's physical value: ``bool`` for one-bit flags, ``int`` when scaling keeps integers, else ``float``."""


class Quality(StrEnum):
    """How much a signal's value can be trusted."""

    GOOD = "good"
    """Received within its timeout (or, for a transmitted signal, what the bridge sends)."""
    STALE = "stale"
    """No frame within the signal's timeout; the value is the last one received."""
    BAD = "bad"
    """The bus is off or the interface is down."""
    WAITING = "waiting"
    """Nothing received yet."""

    @property
    def code(self) -> int:
        """A small integer for register-based protocols: good 0, stale 1, bad 2, waiting 3."""
        return _QUALITY_CODES[self]


_QUALITY_CODES = {Quality.GOOD: 0, Quality.STALE: 1, Quality.BAD: 2, Quality.WAITING: 3}


class BusState(StrEnum):
    """The state of a bus, from the CAN controller's error state and the interface's link state."""

    STARTING = "starting"
    ACTIVE = "active"  # error-active: all is well
    WARNING = "warning"  # an error counter passed 96
    PASSIVE = "passive"  # error-passive: an error counter passed 127
    BUS_OFF = "bus_off"
    DOWN = "down"  # interface down, missing, or the socket failed; reconnecting
    STOPPED = "stopped"

    @property
    def code(self) -> int:
        """A small integer for register-based protocols (see docs/architecture.md)."""
        return _BUS_STATE_CODES[self]

    @property
    def usable(self) -> bool:
        """Whether frames can be sent and received in this state."""
        return self in (BusState.ACTIVE, BusState.WARNING, BusState.PASSIVE)


_BUS_STATE_CODES = {
    BusState.ACTIVE: 0,
    BusState.WARNING: 1,
    BusState.PASSIVE: 2,
    BusState.BUS_OFF: 3,
    BusState.DOWN: 4,
    BusState.STOPPED: 5,
    BusState.STARTING: 6,
}


class FrameFlags(IntFlag):
    """Flags of a raw frame in a receive batch."""

    NONE = 0
    EXTENDED = 1
    RTR = 2
    FD = 4
    BRS = 8
    ERROR = 16
    ESI = 32


RawFrame = tuple[int, int, bytes, int]
"""One received frame in a batch: ``(can_id, FrameFlags, data, timestamp_ns)``.

``can_id`` has no flag bits; ``timestamp_ns`` is the kernel receive time (nanoseconds since the epoch)
where the interface gives one. Tuples, not objects: the receive path handles tens of thousands a second.
"""


@dataclass(frozen=True, slots=True)
class Frame:
    """A CAN or CAN FD frame as plugins see it (raw frames sent or streamed)."""

    can_id: int
    data: bytes = b""
    extended: bool = False
    rtr: bool = False
    fd: bool = False
    brs: bool = False
    error: bool = False
    dlc: int | None = None  # for RTR frames, the requested length; else len(data)
    timestamp_ns: int | None = None
    bus: str | None = None

    @property
    def length(self) -> int:
        """The data length code as a byte count."""
        return self.dlc if self.dlc is not None else len(self.data)

    def to_cansend(self) -> str:
        """The frame as a can-utils ``cansend`` string (``123#DEADBEEF``); ``parse_cansend`` reads it back."""
        ident = f"{self.can_id:08X}" if self.extended else f"{self.can_id:03X}"
        if self.rtr:
            return f"{ident}#R" + (str(self.dlc) if self.dlc else "")
        if self.fd:
            return f"{ident}##{1 if self.brs else 0}{self.data.hex().upper()}"
        return f"{ident}#{self.data.hex().upper()}"

    def to_nodered(self) -> dict[str, object]:
        """The frame in node-red-contrib-socketcan's format (``timestamp`` in ms since the epoch).

        ``rawData`` is the data as a Node.js Buffer serialises to JSON, as that node's received objects
        carry it; ``canfd``, ``brs`` and ``bus`` are canbridge's additions."""
        data = list(self.data)
        return {
            "timestamp": None if self.timestamp_ns is None else self.timestamp_ns // 1_000_000,
            "ext": self.extended,
            "canid": self.can_id,
            "dlc": self.length,
            "rtr": self.rtr,
            "canfd": self.fd,
            "brs": self.brs,
            "data": data,
            "rawData": {"type": "Buffer", "data": list(data)},
            "err": self.error,
            "bus": self.bus,
        }


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """Everything static about one signal of the mapping table."""

    name: str  # "<bus>.<message>.<signal>", stable: plugins use it as is
    bus: str
    message: str
    signal: str
    index: int  # position in the mapping table; stable for one loaded configuration
    frame_id: int
    extended: bool
    direction: Literal["rx", "tx"]
    value_type: type  # bool, int or float
    bit_length: int
    signed: bool
    is_float: bool
    scale: float
    offset: float
    minimum: float  # effective limits: the DBC's where given, else what the raw bits can carry
    maximum: float
    unit: str | None = None
    initial: Value | None = None
    choices: Mapping[int, str] | None = None
    comment: str | None = None
    writable: bool = False
    timeout_s: float | None = None  # staleness timeout; None: never stale
    cycle_time_ms: int | None = None
    multiplexer: str | None = None  # name of the multiplexer signal this one depends on
    multiplexer_ids: tuple[int, ...] | None = None
    is_multiplexer: bool = False
    max_write_rate: float | None = None  # writes per second allowed; None: unbounded
    # read from the device when a client asks (a CANopen object served by SDO): plugins call
    # Bridge.refresh for it before answering a read; its value is otherwise only as new as the last read
    on_demand: bool = False

    @property
    def raw_range(self) -> tuple[int, int]:
        """The raw integers the signal's bits carry (for an IEEE float: its bits as an unsigned integer)."""
        return raw_range(self.bit_length, self.signed and not self.is_float)

    @property
    def physical_range(self) -> tuple[float, float]:
        """What the signal's bits can carry in physical units (its limits are inside this)."""
        return physical_range(self.bit_length, self.signed, self.is_float, self.scale, self.offset)

    def choice_value(self, text: str) -> int | None:
        """The raw value of a choice text, or None when the signal has no such choice."""
        if not self.choices:
            return None
        for k, v in self.choices.items():
            if v == text:
                return k
        return None


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A mapped CAN message (frame) and its signals."""

    name: str  # "<bus>.<message>"
    bus: str
    message: str
    frame_id: int
    extended: bool
    fd: bool
    length: int
    direction: Literal["rx", "tx"]
    signals: tuple[str, ...]
    cycle_time_ms: int | None = None
    period_ms: int | None = None  # cyclic transmission period for tx messages, if configured
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class SignalValue:
    """A signal's latest value with its quality and source timestamp."""

    name: str
    value: Value | None
    quality: Quality
    timestamp_ns: int | None  # receive time of the newest frame carrying it (kernel time where known)
    reason: str | None = None  # why the quality is what it is, where the value itself says (J1939 ranges)

    @property
    def timestamp(self) -> float | None:
        """The source timestamp in seconds since the epoch."""
        return None if self.timestamp_ns is None else self.timestamp_ns / 1e9

    def age(self, now_ns: int | None = None) -> float | None:
        """Seconds since the source timestamp."""
        if self.timestamp_ns is None:
            return None
        return ((now_ns if now_ns is not None else time.time_ns()) - self.timestamp_ns) / 1e9


@dataclass(frozen=True, slots=True)
class BusInfo:
    """A configured bus."""

    name: str
    interface: str
    channel: str
    fd: bool
    bitrate: int | None


@dataclass(frozen=True, slots=True)
class BusStatus:
    """A bus's state and counters at one moment."""

    name: str
    state: BusState
    rx_frames: int = 0  # frames that reached the bridge (after kernel filters)
    tx_frames: int = 0
    error_frames: int = 0
    decode_errors: int = 0
    unmapped_frames: int = 0  # frames that reached user space with no mapping (0 with kernel filters)
    dropped_frames: int = 0  # frames the kernel dropped for a full receive queue
    rx_error_counter: int | None = None  # the controller's REC
    tx_error_counter: int | None = None  # the controller's TEC
    bus_off_count: int = 0
    restarts: int = 0  # controller restarts after bus-off
    reconnects: int = 0  # times the bridge reopened the interface
    bus_load: float = 0.0  # percent of the bitrate used, over the last second
    last_error: str | None = None
    since_ns: int = 0  # when the state was entered
    # J1939: frames of mapped PGNs from sources no mapping decodes, "<message>@0x<SA>" -> frames
    unconfigured_sources: dict[str, int] = field(default_factory=dict)
    # J1939 transport protocol (multi-packet messages): "completed", broken ones by reason, "duplicates", ...
    transport: dict[str, int] = field(default_factory=dict)
    dm1: dict[int, Dm1] = field(default_factory=dict)  # J1939: source address -> its latest DM1
    # J1939: source address -> its latest DM2 (previously active codes, answers to a request for PGN 65227)
    dm2: dict[int, Dm1] = field(default_factory=dict)
    canopen: dict[str, CanopenNodeStatus] = field(default_factory=dict)  # CANopen: node name -> its state
    # J1939 address claim of the bridge (buses with ``j1939``): state (idle, claiming, claimed, lost),
    # address, name, claims_sent, contests, and the reason once lost
    address_claim: dict[str, Any] = field(default_factory=dict)


def dm1_quality(dm1: Dm1, status: BusStatus, now_ns: int, stale_after_s: float) -> Quality:
    """The quality of a source's DM1 (or DM2) as plugins serve it: bad while its bus is not usable,
    stale when none came for ``stale_after_s`` (an ECU sends DM1 once a second), else good."""
    if not status.state.usable:
        return Quality.BAD
    if now_ns - dm1.timestamp_ns > stale_after_s * 1e9:
        return Quality.STALE
    return Quality.GOOD


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """Reception statistics of one message."""

    name: str  # "<bus>.<message>"
    frames: int
    age_s: float | None  # seconds since the last frame; None if never received
    quality: Quality


class Permission(StrEnum):
    """What a caller may do through the write path."""

    WRITE = "write"  # write signals
    RAW = "raw"  # send raw frames


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is writing: recorded in the audit log and checked against permissions."""

    plugin: str  # "opcua", "modbus", "rest", ...
    user: str | None = None
    address: str | None = None
    permissions: frozenset[Permission] = field(default_factory=lambda: frozenset({Permission.WRITE}))

    def __str__(self) -> str:
        who = self.plugin + (f":{self.user}" if self.user else "")
        return who + (f"@{self.address}" if self.address else "")


@dataclass(frozen=True, slots=True)
class WriteReceipt:
    """What an accepted write did."""

    name: str
    value: Value
    raw: int
    frame: Frame  # the frame as sent (or as now transmitted cyclically)
    cyclic: bool  # True when the write updated a cyclic transmission instead of sending once


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """Counters of the bridge as a whole, for metrics."""

    writes_accepted: int
    writes_refused: Mapping[str, int]  # by RefusalReason value
    store_batches: int
    store_update_seconds_total: float  # time spent applying batches to the store
    subscribers: int
    max_subscriber_lag_s: float  # oldest undelivered change among subscribers
    # The audit log is an alarm point: while it cannot be written, every write is refused.
    audit_available: bool = True
    audit_error: str | None = None  # why the last audit write failed (None while available)
    audit_failures: int = 0  # audit writes that failed since start


@dataclass(frozen=True, slots=True)
class LoopLag:
    """How late the event loop ran callbacks: a sampler sleeps ``interval_s`` and records its lateness.

    Every stall delays the receive path and every protocol's answers by as much; alarm on ``stalls``
    (samples later than ``stall_threshold_s``, 20 ms) and on ``max_s``.
    """

    interval_s: float  # sampling period
    samples: int  # since start
    p50_s: float  # over the most recent ``window_samples`` samples (one minute)
    p99_s: float
    max_s: float  # since start
    window_samples: int
    stalls: int  # samples over stall_threshold_s since start
    stall_threshold_s: float
    buckets: tuple[tuple[float, int], ...] = ()  # (upper bound s, samples at or below it) since start
    sum_s: float = 0.0  # sum of every sample (Prometheus histogram _sum)
    sampler_cpu_s: float = 0.0  # CPU the sampler itself used since start


@dataclass(frozen=True, slots=True)
class PluginLoad:
    """CPU time charged to one plugin: every callback and task step that runs in its context."""

    name: str
    cpu_seconds: float  # since the bridge started
    cpu_share: float  # of the process's CPU time since the bridge started, 0 to 1


@dataclass(frozen=True, slots=True)
class SubscriptionLoad:
    """One open signal subscription: what waits for its consumer and what it coalesced away."""

    plugin: str | None  # the plugin that subscribed (None: the bridge itself or a test)
    signals: int | None  # signals subscribed (None: all)
    interval_s: float
    pending: int  # changed signals waiting for the next batch (at most one per signal)
    lag_s: float  # age of the oldest of them
    coalesced: int  # changes to a signal that was already waiting: the consumer never saw that value


@dataclass(frozen=True, slots=True)
class FrameSubscriptionLoad:
    """One open raw-frame subscription: buffered frames and frames dropped for a slow consumer."""

    plugin: str | None
    bus: str | None
    buffered: int
    capacity: int
    dropped: int


@dataclass(frozen=True, slots=True)
class BusLoad:
    """Receive counters of one bus since start."""

    name: str
    frames: int  # frames that reached the bridge
    decoded: int  # of them, frames whose payload changed and went through the decoder
    lost: int  # frames the kernel dropped for a full receive queue
    decode_errors: int
    error_frames: int
    receive_backlog: int | None = None  # frames waiting in the driver's queue, where the driver knows it


@dataclass(frozen=True, slots=True)
class OperatingStats:
    """What an operator of a large gateway watches: loop lag, CPU per plugin, queues, coalescing.

    ``Bridge.operating_stats()``; served as REST ``GET /api/v1/stats`` and by ``canbridge stats``.
    """

    uptime_s: float
    cpu_seconds: float  # the process's CPU time since the bridge started (every thread)
    core_cpu_seconds: float  # the event loop's thread minus what was charged to plugins
    loop_lag: LoopLag
    plugins: Mapping[str, PluginLoad]
    subscriptions: tuple[SubscriptionLoad, ...]
    frame_subscriptions: tuple[FrameSubscriptionLoad, ...]
    coalesced_total: int  # every subscription's coalesced changes since start, closed ones included
    coalesced_by_plugin: Mapping[str, int]
    frames_dropped_total: int  # raw-frame subscriptions' dropped frames since start, closed ones included
    buses: Mapping[str, BusLoad]


def raw_range(bits: int, signed: bool) -> tuple[int, int]:
    """The raw integers ``bits`` bits carry, two's complement when ``signed``."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


_FLOAT_MAX = {32: 3.4028234663852886e38, 64: 1.7976931348623157e308}


def physical_range(bits: int, signed: bool, is_float: bool, scale: float, offset: float) -> tuple[float, float]:
    """The physical values a signal of these bits can carry: raw range times scale plus offset, low first
    (an IEEE float: its finite range)."""
    if is_float:
        big = _FLOAT_MAX.get(bits, _FLOAT_MAX[64])
        return -big, big
    lo, hi = raw_range(bits, signed)
    a, b = lo * scale + offset, hi * scale + offset
    return (a, b) if a <= b else (b, a)
