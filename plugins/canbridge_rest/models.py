"""The JSON the API speaks: pydantic models that the OpenAPI document is generated from, and the
fast functions that build the same JSON from the bridge's objects (a test checks they agree)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

import canbridge

Scalar = float | int | bool

# --- models (documentation and validation of what the handlers build) --------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignalUpdate(_Out):
    """A signal's current value with quality and source timestamp (what streams carry)."""

    name: str = Field(description="<bus>.<message>.<signal>")
    value: Scalar | None = Field(description="physical value; null when nothing was received yet")
    choice: str | None = Field(description="the choice text of the value, for signals with choices")
    quality: Literal["good", "stale", "bad", "waiting"]
    timestamp: str | None = Field(description="source timestamp, ISO 8601 UTC")
    timestamp_ns: int | None = Field(description="source timestamp, nanoseconds since the epoch")
    reason: str | None = Field(None, description="why the value is missing although its frame came "
                               "(J1939 not available / error indicator)")


class Signal(SignalUpdate):
    """A signal with its static description."""

    bus: str
    message: str
    signal: str
    unit: str | None
    age_s: float | None = Field(description="seconds since the source timestamp")
    type: Literal["bool", "int", "float"]
    minimum: float | None = Field(description="lowest value a write may use (DBC or raw-bit limit)")
    maximum: float | None
    choices: dict[str, str] | None = Field(description="raw value -> text")
    writable: bool
    direction: Literal["rx", "tx"] = Field(description="rx: received from the bus; tx: sent by the bridge")
    comment: str | None
    frame_id: int
    extended: bool
    timeout_s: float | None = Field(description="stale after this long without a frame")
    max_write_rate: float | None = Field(description="writes per second allowed")


class SignalList(_Out):
    count: int
    signals: list[Signal]


class WriteRequest(BaseModel):
    """A signal write. ``value`` may be the choice text for signals with choices."""

    model_config = ConfigDict(extra="forbid")
    value: float | int | bool | str


class WriteItem(BaseModel):
    """One item of a multi-signal write."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="<bus>.<message>.<signal>")
    value: float | int | bool | str


class WriteManyRequest(RootModel[list[WriteItem]]):
    """Several signal writes, all or nothing: when one is refused none is sent. Each signal once."""

    root: list[WriteItem] = Field(min_length=1, max_length=256)


class NodeBuffer(_Out):
    """Bytes as a Node.js Buffer serialises to JSON (``Buffer.from(obj)`` reads it back)."""

    type: Literal["Buffer"]
    data: list[int]


class FrameOut(_Out):
    """A frame in node-red-contrib-socketcan's format (its received objects carry ``rawData``), plus its
    cansend string. ``canfd``, ``brs`` and ``bus`` are canbridge's additions."""

    timestamp: int | None = Field(description="milliseconds since the epoch")
    ext: bool
    canid: int
    dlc: int
    rtr: bool
    canfd: bool
    brs: bool = Field(description="CAN FD bit rate switch")
    data: list[int]
    rawData: NodeBuffer = Field(description="the data as a Node.js Buffer in JSON")  # node-red spells it so
    err: bool
    bus: str | None
    cansend: str


class WriteResult(_Out):
    name: str
    value: Scalar
    raw: int
    cyclic: bool = Field(description="true when the write changed a cyclically transmitted frame")
    frame: FrameOut


class WriteManyResult(_Out):
    """Every write of the request, in its order; items of one message share one frame."""

    writes: list[WriteResult]


_Bytes = list[Annotated[int, Field(ge=0, le=255)]]


class NodeBufferIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["Buffer"]
    data: _Bytes = Field(max_length=64)


class FrameObjectIn(BaseModel):
    """A frame as node-red-contrib-socketcan sends it. ``timestamp``, ``rawData``, ``err`` (false only:
    error frames cannot be sent) and ``bus`` are accepted as the frames this API sends carry them, so a
    received frame can be sent back; ``rawData`` must hold the same bytes as ``data``, ``bus`` must be
    the bus of the URL."""

    model_config = ConfigDict(extra="forbid")
    canid: int = Field(ge=0, le=0x1FFFFFFF, description="up to 0x7FF unless ext is true")
    data: _Bytes | str | NodeBufferIn | None = Field(
        None, description="bytes, a hex string ('16 2D AA FF', '162DAAFF', '16.2D') or a Buffer object"
    )
    ext: bool | None = None
    rtr: bool | None = None
    canfd: bool | None = None
    brs: bool | None = None
    dlc: int | None = Field(None, ge=0, le=64, description="byte count; for rtr frames the requested length")
    timestamp: float | None = Field(None, description="ignored (ms since the epoch)")
    err: Literal[False] | None = Field(None, description="error frames cannot be sent")
    rawData: _Bytes | NodeBufferIn | None = None  # node-red spells it so
    bus: str | None = Field(None, description="the bus of the URL, when given")


class CansendIn(BaseModel):
    """A frame as a can-utils cansend string."""

    model_config = ConfigDict(extra="forbid")
    cansend: str = Field(examples=["123#DEADBEEF"])


class FrameSent(_Out):
    bus: str
    frame: FrameOut


class Bus(_Out):
    name: str
    interface: str
    channel: str
    fd: bool
    bitrate: int | None
    state: Literal["starting", "active", "warning", "passive", "bus_off", "down", "stopped"]
    state_code: int
    since: str | None = Field(description="when the state was entered, ISO 8601 UTC")
    rx_frames: int
    tx_frames: int
    error_frames: int
    decode_errors: int
    unmapped_frames: int
    dropped_frames: int
    rx_error_counter: int | None
    tx_error_counter: int | None
    bus_off_count: int
    restarts: int
    reconnects: int
    bus_load: float = Field(description="percent of the bitrate used over the last second")
    last_error: str | None
    unconfigured_sources: dict[str, int] = Field(
        default_factory=dict, description="J1939: frames of mapped PGNs from unconfigured sources, <message>@0x<SA>")
    transport: dict[str, int] = Field(
        default_factory=dict, description="J1939 transport protocol: completed and broken transfers by reason")
    dm1: dict[str, Dm1Out] = Field(default_factory=dict, description="J1939: active trouble codes by source, 0x<SA>")
    dm2: dict[str, Dm1Out] = Field(
        default_factory=dict, description="J1939: previously active trouble codes (DM2, on request) by source, 0x<SA>")
    canopen: dict[str, CanopenNodeOut] = Field(default_factory=dict, description="CANopen: node state by node name")
    address_claim: dict[str, Any] = Field(
        default_factory=dict, description="J1939: the bridge's address claim on this bus (state idle, claiming, "
        "claimed or lost; address, name, claims_sent, contests; reason once lost); empty without j1939 settings")


class EmcyOut(_Out):
    """A CANopen emergency message (docs/canopen.md)."""

    code: int
    error_class: str = Field(description="CiA 301 class of the error code")
    error_register: int = Field(description="error register (0x1001)")
    register_bits: list[str]
    manufacturer: str = Field(description="the 5 manufacturer-specific bytes, hex")
    timestamp: str | None


class CanopenNodeOut(_Out):
    """A CANopen node: NMT state from its heartbeat, counters, last EMCY."""

    node_id: int
    nmt_state: str | None
    heartbeats: int
    boot_ups: int
    lost: bool = Field(description="no heartbeat within the consumer time: its signals are bad")
    emcy_count: int
    last_emcy: EmcyOut | None
    sdo_transfers: int = Field(description="SDO uploads and downloads begun with the node")
    sdo_aborts: int = Field(description="SDO transfers the node aborted")
    sdo_timeouts: int = Field(description="SDO transfers the node did not answer in time (aborted by the bridge)")


class DtcOut(_Out):
    spn: int
    fmi: int
    occurrences: int
    conversion_method: int


class Dm1Out(_Out):
    """A J1939 source's active trouble codes (DM1)."""

    source: int
    lamps: dict[str, str] = Field(description="mil, red_stop, amber_warning, protect: off|on|reserved|not_available")
    flash: dict[str, str] = Field(description="the lamps' flash: slow|fast|reserved|none")
    dtcs: list[DtcOut]
    timestamp: str | None
    messages: int


class MessageAge(_Out):
    name: str
    frames: int
    age_s: float | None
    quality: Literal["good", "stale", "bad", "waiting"]


class BusDetail(Bus):
    messages: list[MessageAge]


class BusList(_Out):
    buses: list[Bus]


class Error(_Out):
    """Every error response."""

    status: int
    error: str = Field(description="a stable code: unknown_signal, not_writable, rate_limited, ...")
    detail: str = Field(description="what is wrong, for people")
    target: str | None = None
    index: int | None = Field(None, description="which item of a multi-signal write was refused")
    abort_code: str | None = Field(None, description="the CANopen SDO abort code behind a refusal, e.g. 0x06090030")


class Health(_Out):
    status: Literal["ok"]


class Audit(_Out):
    """The audit log: while it cannot be written no write is sent (refused with audit_unavailable)."""

    available: bool
    error: str | None = Field(description="why it cannot be written, while it cannot")
    failures: int = Field(description="audit records that could not be written since start")


class Ready(_Out):
    ready: bool = Field(description="buses open and the service started (reads work); see 'writable'")
    writable: bool = Field(description="ready and the audit log can be written: writes can be accepted")
    audit: Audit
    buses: dict[str, str]
    problems: list[str]


class LoopLag(_Out):
    """How late the event loop ran: a timer due every interval_s records its lateness."""

    interval_s: float
    samples: int
    p50_s: float = Field(description="median over the last window_samples samples (one minute)")
    p99_s: float
    max_s: float = Field(description="since start")
    window_samples: int
    stalls: int = Field(description="samples later than stall_threshold_s since start: alarm on any")
    stall_threshold_s: float
    sampler_cpu_s: float = Field(description="CPU the sampler itself used since start")
    buckets: list[tuple[float, int]] = Field(
        description="[upper bound s, samples at or below it] since start (cumulative, as Prometheus)"
    )


class PluginLoad(_Out):
    cpu_seconds: float = Field(description="CPU of every callback and task step run for the plugin")
    cpu_share: float = Field(description="of the process's CPU since start, 0 to 1")


class SubscriptionQueue(_Out):
    plugin: str | None = Field(description="the plugin that subscribed (null: the bridge or a test)")
    signals: int | None = Field(description="signals subscribed; null: all")
    interval_s: float
    pending: int = Field(description="changed signals waiting for the next batch (at most one per signal)")
    lag_s: float = Field(description="age of the oldest of them")
    coalesced: int = Field(description="changes to a signal already waiting: a value its consumer never saw")


class FrameQueue(_Out):
    plugin: str | None
    bus: str | None
    buffered: int
    capacity: int
    dropped: int = Field(description="frames dropped for a slow consumer")


class Queues(_Out):
    subscriptions: list[SubscriptionQueue]
    frame_subscriptions: list[FrameQueue]
    write_path: int = Field(
        description="writes waiting in the write path: always 0, each write is judged and sent in its "
        "caller's request (there is no queue to back up)"
    )


class Coalesced(_Out):
    total: int = Field(description="every subscription's coalesced changes since start, closed ones included")
    by_plugin: dict[str, int] = Field(description="by subscribing plugin ('-': not a plugin)")
    frames_dropped: int = Field(description="raw-frame subscriptions' dropped frames since start")


class BusCounters(_Out):
    frames: int = Field(description="frames that reached the bridge")
    decoded: int = Field(description="of them, frames with a new payload, decoded")
    lost: int = Field(description="frames the kernel dropped for a full receive queue")
    decode_errors: int
    error_frames: int
    receive_backlog: int | None = Field(description="frames waiting in the driver's queue, where known")


class Stats(_Out):
    """What an operator of a large gateway watches (Bridge.operating_stats())."""

    uptime_s: float
    cpu_seconds: float = Field(description="the process's CPU since the bridge started, every thread")
    core_cpu_seconds: float = Field(description="the event loop's thread minus what plugins were charged")
    loop_lag: LoopLag
    plugins: dict[str, PluginLoad]
    queues: Queues
    coalesced: Coalesced
    buses: dict[str, BusCounters]


# --- fast builders ------------------------------------------------------------------------------


def iso(ns: int | None) -> str | None:
    if ns is None or ns <= 0:
        return None
    dt = datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def finite(v: Any) -> Any:
    """JSON has no NaN or infinity: a float32 signal can carry them, so they become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _type_name(t: type) -> str:
    return "bool" if t is bool else "int" if t is int else "float"


def static_signal(info: canbridge.SignalInfo) -> dict[str, Any]:
    """The parts of a signal's JSON that never change: computed once per signal."""
    return {
        "name": info.name,
        "bus": info.bus,
        "message": info.message,
        "signal": info.signal,
        "unit": info.unit or None,
        "type": _type_name(info.value_type),
        "minimum": finite(float(info.minimum)),
        "maximum": finite(float(info.maximum)),
        "choices": {str(k): str(v) for k, v in info.choices.items()} if info.choices else None,
        "writable": info.writable,
        "direction": info.direction,
        "comment": info.comment or None,
        "frame_id": info.frame_id,
        "extended": info.extended,
        "timeout_s": info.timeout_s,
        "max_write_rate": info.max_write_rate,
    }


def choice_text(info: canbridge.SignalInfo, value: object) -> str | None:
    if not info.choices or value is None or (isinstance(value, float) and not value.is_integer()):
        return None
    text = info.choices.get(int(value))  # type: ignore[call-overload]
    return None if text is None else str(text)


def update(info: canbridge.SignalInfo, sv: canbridge.SignalValue) -> dict[str, Any]:
    return {
        "name": sv.name,
        "value": finite(sv.value),
        "choice": choice_text(info, sv.value),
        "quality": sv.quality.value,
        "timestamp": iso(sv.timestamp_ns),
        "timestamp_ns": sv.timestamp_ns,
        "reason": sv.reason,
    }


def signal(
    static: dict[str, Any], info: canbridge.SignalInfo, sv: canbridge.SignalValue, now_ns: int | None = None
) -> dict[str, Any]:
    out = dict(static)
    out.update(update(info, sv))
    ts = sv.timestamp_ns
    out["age_s"] = None if ts is None else round(((now_ns or time.time_ns()) - ts) / 1e9, 6)
    return out


def frame(f: canbridge.Frame) -> dict[str, Any]:
    out = f.to_nodered()
    out["cansend"] = f.to_cansend()
    return out


def bus(info: canbridge.BusInfo | None, st: canbridge.BusStatus) -> dict[str, Any]:
    return {
        "name": st.name,
        "interface": info.interface if info else "",
        "channel": info.channel if info else "",
        "fd": info.fd if info else False,
        "bitrate": info.bitrate if info else None,
        "state": st.state.value,
        "state_code": st.state.code,
        "since": iso(st.since_ns),
        "rx_frames": st.rx_frames,
        "tx_frames": st.tx_frames,
        "error_frames": st.error_frames,
        "decode_errors": st.decode_errors,
        "unmapped_frames": st.unmapped_frames,
        "dropped_frames": st.dropped_frames,
        "rx_error_counter": st.rx_error_counter,
        "tx_error_counter": st.tx_error_counter,
        "bus_off_count": st.bus_off_count,
        "restarts": st.restarts,
        "reconnects": st.reconnects,
        "bus_load": finite(float(st.bus_load)) or 0.0,
        "last_error": st.last_error,
        "unconfigured_sources": dict(st.unconfigured_sources),
        "transport": dict(st.transport),
        "dm1": {f"0x{sa:02X}": dm1(d) for sa, d in sorted(st.dm1.items())},
        "dm2": {f"0x{sa:02X}": dm1(d) for sa, d in sorted(st.dm2.items())},
        "canopen": {name: canopen_node(n) for name, n in st.canopen.items()},
        "address_claim": dict(st.address_claim),
    }


def canopen_node(n: canbridge.CanopenNodeStatus) -> dict[str, Any]:
    e = n.last_emcy
    return {
        "node_id": n.node_id, "nmt_state": n.nmt_state, "heartbeats": n.heartbeats, "boot_ups": n.boot_ups,
        "lost": n.lost, "emcy_count": n.emcy_count, "sdo_transfers": n.sdo_transfers, "sdo_aborts": n.sdo_aborts,
        "sdo_timeouts": n.sdo_timeouts,
        "last_emcy": None if e is None else {
            "code": e.code, "error_class": e.error_class, "error_register": e.error_register,
            "register_bits": list(e.register_bits), "manufacturer": e.manufacturer.hex(),
            "timestamp": iso(e.timestamp_ns)},
    }


def dm1(d: canbridge.Dm1) -> dict[str, Any]:
    return {
        "source": d.source,
        "lamps": {"mil": d.mil, "red_stop": d.red_stop, "amber_warning": d.amber_warning, "protect": d.protect},
        "flash": {"mil": d.mil_flash, "red_stop": d.red_stop_flash, "amber_warning": d.amber_warning_flash,
                  "protect": d.protect_flash},
        "dtcs": [{"spn": c.spn, "fmi": c.fmi, "occurrences": c.occurrences, "conversion_method": c.conversion_method}
                 for c in d.dtcs],
        "timestamp": iso(d.timestamp_ns),
        "messages": d.messages,
    }


def message_age(ms: canbridge.MessageStatus) -> dict[str, Any]:
    return {
        "name": ms.name,
        "frames": ms.frames,
        "age_s": None if ms.age_s is None else round(ms.age_s, 6),
        "quality": ms.quality.value,
    }


def error(
    status: int, code: str, detail: str, target: str | None = None, index: int | None = None,
    abort_code: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"status": status, "error": code, "detail": detail}
    if target is not None:
        out["target"] = target
    if index is not None:
        out["index"] = index
    if abort_code is not None:
        out["abort_code"] = f"0x{abort_code:08X}"
    return out


def stats(st: canbridge.OperatingStats) -> dict[str, Any]:
    """The JSON of ``GET /api/v1/stats``: a stable shape (bench/bench_e2e.py reads it)."""
    lag = st.loop_lag
    return {
        "uptime_s": st.uptime_s,
        "cpu_seconds": st.cpu_seconds,
        "core_cpu_seconds": st.core_cpu_seconds,
        "loop_lag": {
            "interval_s": lag.interval_s, "samples": lag.samples, "p50_s": lag.p50_s, "p99_s": lag.p99_s,
            "max_s": lag.max_s, "window_samples": lag.window_samples, "stalls": lag.stalls,
            "stall_threshold_s": lag.stall_threshold_s, "sampler_cpu_s": lag.sampler_cpu_s,
            "buckets": [list(b) for b in lag.buckets],
        },
        "plugins": {n: {"cpu_seconds": p.cpu_seconds, "cpu_share": p.cpu_share} for n, p in st.plugins.items()},
        "queues": {
            "subscriptions": [
                {"plugin": s.plugin, "signals": s.signals, "interval_s": s.interval_s, "pending": s.pending,
                 "lag_s": s.lag_s, "coalesced": s.coalesced}
                for s in st.subscriptions
            ],
            "frame_subscriptions": [
                {"plugin": f.plugin, "bus": f.bus, "buffered": f.buffered, "capacity": f.capacity,
                 "dropped": f.dropped}
                for f in st.frame_subscriptions
            ],
            "write_path": 0,
        },
        "coalesced": {"total": st.coalesced_total, "by_plugin": dict(st.coalesced_by_plugin),
                      "frames_dropped": st.frames_dropped_total},
        "buses": {
            n: {"frames": b.frames, "decoded": b.decoded, "lost": b.lost, "decode_errors": b.decode_errors,
                "error_frames": b.error_frames, "receive_backlog": b.receive_backlog}
            for n, b in st.buses.items()
        },
    }


def event(e: canbridge.DiagnosticEvent) -> dict[str, Any]:
    """A diagnostic event on the stream: kind, bus, source (J1939 address or CANopen node id), detail."""
    return {"kind": e.kind, "bus": e.bus, "source": e.source, "timestamp_ns": e.timestamp_ns, **e.detail}
