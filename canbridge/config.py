"""The configuration file: pydantic models (unknown keys are errors) and a YAML loader that
reports every problem with its file, line and key path."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from canbridge._errors import ConfigError, Problem

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"


class Strict(BaseModel):
    """Base of every configuration model: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReplayOptions(Strict):
    """Options of the ``replay`` bus kind."""

    file: Path = Field(description="candump -L, ASC, BLF, CSV or TRC log that python-can reads")
    speed: Literal["recorded", "fast"] = Field("recorded", description="recorded timing, or as fast as possible")
    loop: bool = Field(False, description="start again at the end of the log")


class NetlinkSettings(Strict):
    """Interface settings the bridge applies through netlink before opening (needs CAP_NET_ADMIN)."""

    bitrate: int | None = Field(None, gt=0, le=1_000_000)
    sample_point: float | None = Field(None, gt=0, lt=1)
    data_bitrate: int | None = Field(None, gt=0, le=15_000_000, description="CAN FD data phase")
    data_sample_point: float | None = Field(None, gt=0, lt=1)
    restart_ms: int | None = Field(None, ge=0, description="automatic restart after bus-off")
    fd: bool | None = Field(None, description="switch CAN FD on or off")


class CanopenNodeConfig(Strict):
    """A CANopen node on a bus, described by its EDS or DCF file (docs/canopen.md)."""

    id: int = Field(ge=1, le=127, description="CANopen node id (1-127)")
    name: str = Field(pattern=NAME_PATTERN, description="used in signal names `<bus>.<node>.<object>`")
    eds: Path = Field(description="the node's EDS or DCF file (relative to the configuration file)")
    heartbeat_timeout_ms: int | None = Field(
        None, ge=0, description="heartbeat consumer time: the node's signals are bad after this long without a "
        "heartbeat; default: 1.5 x the producer heartbeat time of the file (0x1017); 0: not supervised")
    sdo: list[str] = Field(
        default_factory=lambda: ["*"], description="objects in no TPDO served by SDO upload/download, as globs "
        "over their names (`Object` or `Object.Subobject`); [] for none")
    writable: list[str] = Field(
        default_factory=list, description="objects written by SDO download (globs over their names); each must "
        "be rw or wo in the dictionary and in no TPDO")
    write_rate: float | None = Field(10.0, gt=0, description="SDO writes (and NMT commands) per second per object; "
                                     "null: unbounded")
    rpdo_period_ms: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="receive PDOs sent cyclically: `RPDO<n>` -> period in ms (the kernel's "
        "broadcast manager on SocketCAN); the others are sent on write")
    nmt: bool = Field(False, description="NMT commands to the node (start, stop, pre_operational, reset_node, "
                      "reset_communication) as the writable signal `<bus>.<node>.NMT_command`")
    sdo_timeout_ms: int = Field(
        500, ge=1, le=60000, description="longest wait for each SDO answer of the node; then the transfer is "
        "aborted (0x05040000): a read turns the value bad, a write is refused")
    poll_ms: dict[str, Annotated[int, Field(ge=10)]] = Field(
        default_factory=dict, description="objects read by SDO at an interval: glob over object names -> "
        "interval in ms (the first glob that matches); others are read on demand (Bridge.refresh)")
    max_age_ms: int | None = Field(
        None, ge=1, description="a value read by SDO turns stale when it is older than this; default: never")
    sdo_queue: int = Field(32, ge=1, le=1024, description="SDO transfers that may wait for the node (one is in "
                           "flight per node); more are refused")
    pdo: Literal["file", "from_node"] = Field(
        "file", description="where the TPDO layouts come from: the file's mapping parameters, or read from the "
        "node by SDO at start and after every boot-up (its PDO values are bad until then)")


J1939_NAME_LAYOUT = (("identity_number", 0), ("manufacturer_code", 21), ("ecu_instance", 32),
                     ("function_instance", 35), ("function", 40), ("vehicle_system", 49),
                     ("vehicle_system_instance", 56), ("industry_group", 60), ("arbitrary_address_capable", 63))
"""Where each field of a J1939 NAME starts (J1939-81; bit 48 is reserved)."""


class J1939NameFields(Strict):
    """The fields of a 64-bit J1939 NAME (J1939-81); the bridge packs them."""

    identity_number: int = Field(0, ge=0, lt=1 << 21, description="21 bits, unique per manufacturer")
    manufacturer_code: int = Field(0, ge=0, lt=1 << 11, description="11 bits, assigned by SAE")
    ecu_instance: int = Field(0, ge=0, lt=8, description="3 bits")
    function_instance: int = Field(0, ge=0, lt=32, description="5 bits")
    function: int = Field(0, ge=0, lt=256, description="8 bits")
    vehicle_system: int = Field(0, ge=0, lt=128, description="7 bits")
    vehicle_system_instance: int = Field(0, ge=0, lt=16, description="4 bits")
    industry_group: int = Field(0, ge=0, lt=8, description="3 bits (0 global, 1 on-highway, 2 agricultural, ...)")
    arbitrary_address_capable: bool = Field(
        False, description="may take another address of address_range when it loses its claim")


class J1939Settings(Strict):
    """The bridge as a J1939 controller application on this bus: its NAME and address (docs/j1939.md)."""

    name: int | J1939NameFields = Field(
        description="the 64-bit NAME, as a number (0x...) or as its fields; the lower NAME wins a contested address")
    address: int = Field(ge=0, le=253, description="preferred source address")
    address_range: tuple[int, int] | None = Field(
        None, description="addresses to try after losing the preferred one (arbitrary address capable NAMEs "
        "only); default 128..247")
    retry_s: float | None = Field(
        None, gt=0, description="after a lost claim, claim again this often; default: only when the bus reopens")
    request_rate: float = Field(
        10.0, gt=0, le=1000, description="Requests (PGN 59904) the bridge sends per second at most on this bus")

    @field_validator("name")
    @classmethod
    def _name_fits(cls, v: int | J1939NameFields) -> int | J1939NameFields:
        if isinstance(v, int) and not 0 <= v < 1 << 64:
            raise ValueError(f"NAME {v} is not a 64-bit number")
        return v

    @model_validator(mode="after")
    def _range(self) -> J1939Settings:
        if self.address_range is not None:
            lo, hi = self.address_range
            if not 0 <= lo <= hi <= 253:
                raise ValueError(f"address_range {lo}..{hi}: needs 0 <= first <= last <= 253")
            if not self.name_value >> 63:
                raise ValueError("address_range needs an arbitrary address capable NAME (bit 63)")
        return self

    @property
    def name_value(self) -> int:
        """The NAME as its 64-bit number."""
        if isinstance(self.name, int):
            return self.name
        return sum(int(getattr(self.name, attr)) << shift for attr, shift in J1939_NAME_LAYOUT)


class SyncConfig(Strict):
    """The bridge as the bus's CANopen SYNC producer (CiA 301)."""

    period_ms: int = Field(ge=1, le=60000, description="communication cycle period: one SYNC every this many ms "
                           "(the kernel's broadcast manager on SocketCAN)")
    cob_id: int = Field(0x80, ge=0x001, le=0x7FF, description="the SYNC COB-ID (11 bit), CiA 301 default 0x80")


class CanopenBusConfig(Strict):
    """What the bridge does for the CANopen network of one bus, beside its nodes."""

    sync: SyncConfig | None = Field(None, description="send SYNC cyclically (the bridge is the SYNC producer)")


class BusConfig(Strict):
    """One CAN bus."""

    name: str = Field(pattern=NAME_PATTERN, description="used in signal names `<bus>.<message>.<signal>`")
    interface: str = Field(
        "socketcan", description="socketcan, virtual, replay or any python-can interface name"
    )
    channel: str = Field("can0", description="interface channel (can0, vcan0, a virtual bus name)")
    fd: bool = Field(False, description="CAN FD frames (up to 64 bytes)")
    bitrate: int | None = Field(None, gt=0, description="nominal bitrate, for the bus load estimate")
    receive_buffer: int = Field(4 * 1024 * 1024, ge=65536, description="socket receive buffer in bytes")
    kernel_filters: bool = Field(True, description="let the kernel drop frames of unmapped ids")
    reconnect_min_s: float = Field(0.2, gt=0, description="first reconnect delay; doubles up to the max")
    reconnect_max_s: float = Field(5.0, gt=0, description="longest reconnect delay")
    replay: ReplayOptions | None = Field(None, description="for interface: replay")
    netlink: NetlinkSettings | None = Field(None, description="configure the interface itself (socketcan)")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for python-can")
    nodes: list[CanopenNodeConfig] = Field(
        default_factory=list, description="CANopen nodes: their TPDOs become signals (docs/canopen.md)")
    canopen: CanopenBusConfig | None = Field(
        None, description="CANopen network services of the bridge on this bus: the SYNC producer (docs/canopen.md)")
    j1939: J1939Settings | None = Field(
        None, description="J1939 address claiming: the bridge's NAME and address; needed to write or request")
    j1939_max_unknown_sources: int = Field(
        32, ge=0, le=253, description="J1939 source addresses heard but not configured that get signals at run "
        "time (<bus>.sa0x<SA>.<message>.<signal>); frames of further ones are only counted; 0: none")

    @model_validator(mode="after")
    def _replay_needs_file(self) -> BusConfig:
        for attr in ("id", "name"):
            seen = [getattr(n, attr) for n in self.nodes]
            dup = sorted({str(v) for v in seen if seen.count(v) > 1})
            if dup:
                who = ", ".join(f"{n.name} ({n.eds})" for n in self.nodes if str(getattr(n, attr)) in dup)
                raise ValueError(f"nodes: duplicate node {attr} {', '.join(dup)} on bus {self.name}: {who}")
        if self.interface == "replay" and self.replay is None:
            raise ValueError("interface 'replay' needs a 'replay: {file: ...}' section")
        if self.replay is not None and self.interface != "replay":
            raise ValueError("'replay' options are only for interface 'replay'")
        if self.netlink is not None and self.interface != "socketcan":
            raise ValueError("'netlink' settings are only for interface 'socketcan'")
        return self


class TransmitConfig(Strict):
    """How the bridge transmits one message it owns."""

    period_ms: int | None = Field(
        None, ge=1, description="cyclic transmission period (kernel broadcast manager); None: on write"
    )
    seed: Literal["initial", "received"] = Field(
        "initial",
        description="initial: frame starts from DBC initial values; received: writes wait for a received frame",
    )
    start: Literal["immediately", "first_write"] = Field(
        "immediately", description="when cyclic transmission begins"
    )
    writer_timeout_ms: int | None = Field(
        None, ge=1, description="if no write arrives for this long, apply on_writer_timeout"
    )
    on_writer_timeout: Literal["stop", "initial", "keep"] = Field(
        "keep", description="stop the cyclic frame, fall back to initial values, or keep sending"
    )


class MappingConfig(Strict):
    """A mapping file (DBC/KCD/SYM/ARXML or YAML signals) attached to one bus."""

    bus: str = Field(description="name of a configured bus")
    dbc: Path | None = Field(None, description="signal database: .dbc, .kcd, .sym, .arxml")
    signals: Path | None = Field(None, description="hand-written signal definitions (YAML)")
    format: str | None = Field(None, description="mapping format; default: from the file suffix")
    strict: bool = Field(True, description="false: lenient mode for real-world files strict mode rejects")
    messages: list[str] | None = Field(None, description="only these messages (glob patterns)")
    writable: list[str] = Field(default_factory=list, description="writable signals, 'Message.Signal' globs")
    transmit: dict[str, TransmitConfig] = Field(default_factory=dict, description="messages the bridge sends")
    stale_factor: float = Field(3.0, gt=0, description="stale after this many cycle times without a frame")
    stale_after_ms: dict[str, int] = Field(
        default_factory=dict, description="per message (glob) staleness timeout by hand"
    )
    write_rate: float | None = Field(10.0, gt=0, description="writes per second per signal; null: unbounded")
    protocol: Literal["j1939", "plain"] | None = Field(
        None, description="j1939: match extended frames by PGN and source address (docs/j1939.md); plain: by "
        "exact frame id; default: j1939 for messages the DBC marks VFrameFormat J1939PG, else plain")
    sources: dict[int, str] = Field(
        default_factory=dict, description="J1939 source addresses (0-253) the mapping decodes, with their "
        "names; one source: <bus>.<message>.<signal>, several: <bus>.<source>.<message>.<signal>; default: "
        "the source address of the DBC frame id")
    destination: int | None = Field(
        None, ge=0, le=255, description="J1939 messages the bridge sends (writable, transmit) of PDU1 groups: the "
        "destination address; default: the one in the DBC frame id")

    @model_validator(mode="after")
    def _one_source(self) -> MappingConfig:
        if (self.dbc is None) == (self.signals is None):
            raise ValueError("give exactly one of 'dbc' or 'signals'")
        for address, name in self.sources.items():
            if not 0 <= address <= 253:
                raise ValueError(f"sources: address {address} is not a J1939 source address (0-253)")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"sources: name {name!r} of address {address} is not an identifier")
        names = list(self.sources.values())
        if len(set(names)) != len(names):
            raise ValueError("sources: each address needs its own name")
        if self.sources and self.protocol == "plain":
            raise ValueError("sources are J1939 source addresses: they need protocol j1939")
        return self

    @property
    def file(self) -> Path:
        path = self.dbc if self.dbc is not None else self.signals
        assert path is not None
        return path


class AuditConfig(Strict):
    """Where the audit log of writes goes (JSON lines)."""

    file: Path | None = Field(None, description="default: <state_dir>/audit.jsonl")
    enabled: bool = Field(True, description="write the audit log")
    max_mb: float = Field(100.0, gt=0, description="rotate the file at this size (MiB)")
    backups: int = Field(10, ge=0, le=1000, description="rotated files kept (audit.jsonl.1 ... .N)")
    fsync: bool = Field(False, description="fsync after every record: survives a power cut, costs a disk "
                        "flush per write")
    refusal_rate: float = Field(20.0, gt=0, description="refusal records per second and peer; more are counted "
                                "in one 'suppressed' record, so a flood of refused writes cannot fill the disk")
    refusal_burst: int = Field(200, ge=1, description="refusal records a peer may cause at once before the rate "
                               "bound applies")


class WaveProfile(Strict):
    """A simulated signal's range: a slow sine between low and high."""

    low: float
    high: float
    period_s: float = Field(30.0, gt=0)


class SimulatorConfig(Strict):
    """An in-process ECU simulator (used by the demo)."""

    bus: str = Field(description="name of a configured bus whose received messages it plays; the bus's CANopen "
                     "nodes play themselves from their EDS/DCF (heartbeat, TPDOs, SDO server; docs/canopen.md)")
    follow: dict[str, str] = Field(
        default_factory=dict, description="status signal -> command signal whose value it shows (Message.Signal)"
    )
    ramp: dict[str, str] = Field(
        default_factory=dict, description="status signal -> command signal it moves towards (Message.Signal)"
    )
    waves: dict[str, WaveProfile] = Field(
        default_factory=dict, description="Message.Signal -> {low, high, period_s}: plausible ranges"
    )
    constants: dict[str, float] = Field(default_factory=dict, description="Message.Signal -> fixed value")
    counters: dict[str, float] = Field(
        default_factory=dict, description="Message.Signal -> increase per second (odometers, uptimes)"
    )


class Config(Strict):
    """The whole configuration file."""

    buses: list[BusConfig] = Field(min_length=1, description="the CAN buses, at least one")
    mappings: list[MappingConfig] = Field(default_factory=list, description="mapping files attached to buses")
    plugins: dict[str, dict[str, Any]] = Field(default_factory=dict, description="northbound plugins by name")
    state_dir: Path | None = Field(None, description="default: .canbridge-state next to the config file")
    audit: AuditConfig = Field(default_factory=lambda: AuditConfig(), description="audit log of writes")
    simulators: list[SimulatorConfig] = Field(
        default_factory=list, description="in-process ECU simulators (demo, development)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log verbosity")
    gc_freeze: bool = Field(True, description="freeze start-up objects out of the garbage collector")

    @field_validator("buses")
    @classmethod
    def _unique_bus_names(cls, v: list[BusConfig]) -> list[BusConfig]:
        seen: set[str] = set()
        for b in v:
            if b.name in seen:
                raise ValueError(f"bus name {b.name!r} is used twice")
            seen.add(b.name)
        return v

    @model_validator(mode="after")
    def _refs(self) -> Config:
        # A guard for models built without parse_config; parse_config reports these at their own
        # `bus:` line (reference_problems), even when other keys are wrong too.
        names = {b.name for b in self.buses}
        for m in self.mappings:
            if m.bus not in names:
                raise PydanticCustomError(UNKNOWN_BUS, "mapping for {file} names bus {bus!r}, which is not configured",
                                          {"file": str(m.file), "bus": m.bus})
        for s in self.simulators:
            if s.bus not in names:
                raise PydanticCustomError(UNKNOWN_BUS, "simulator names bus {bus!r}, which is not configured",
                                          {"bus": s.bus})
        return self


UNKNOWN_BUS = "unknown_bus"


def reference_problems(data: Mapping[str, Any], file: str | None, lines: LineMap) -> list[Problem]:
    """Mappings and simulators naming a bus that is not configured, each at the line of its ``bus:``.

    Computed from the raw data, so it is reported together with every other problem of the file.
    """
    buses = data.get("buses")
    if not isinstance(buses, list):
        return []  # no bus list at all: reported as such, naming every reference again would be noise
    names = sorted({b["name"] for b in buses if isinstance(b, Mapping) and isinstance(b.get("name"), str)})
    known = ", ".join(names) or "none"
    out: list[Problem] = []
    for section in ("mappings", "simulators"):
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, Mapping) or not isinstance(item.get("bus"), str) or item["bus"] in names:
                continue
            what = "simulator"
            if section == "mappings":
                what = f"mapping for {item.get('dbc') or item.get('signals') or '(no file)'}"
            loc = (section, i, "bus")
            out.append(Problem(f"{what} names bus {item['bus']!r}, which is not configured (buses: {known})",
                               file, _line_for(loc, lines), _fmt(loc)))
    return out


# --- YAML with line numbers ---------------------------------------------------------------------

LineMap = dict[tuple[str | int, ...], int]


def _build(node: yaml.Node, path: tuple[str | int, ...], lines: LineMap, file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for k_node, v_node in node.value:
            key = _build(k_node, (*path, "<key>"), {}, file)
            if isinstance(key, (dict, list)):
                raise ConfigError([Problem("a key must be a plain value", file, k_node.start_mark.line + 1)])
            if key in out:
                raise ConfigError(
                    [Problem(f"key {key!r} appears twice", file, k_node.start_mark.line + 1, _fmt(path))]
                )
            out[key] = _build(v_node, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, (*path, i), lines, file) for i, v in enumerate(node.value)]
    return yaml.SafeLoader.construct_object(_LOADER, node, deep=True)


class _Loader(yaml.SafeLoader):
    pass


_LOADER = _Loader("")


def load_yaml(path: Path) -> tuple[Any, LineMap]:
    """Load a YAML file, returning the data and a map from key paths to line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem(f"cannot read: {e.strerror or e}", str(path))]) from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise ConfigError([Problem(f"YAML syntax: {e.problem}", str(path), line)]) from e
    lines: LineMap = {}
    if node is None:
        return {}, lines
    return _build(node, (), lines, str(path)), lines


def _fmt(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_for(loc: Sequence[str | int], lines: LineMap) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def problems_from_validation(
    err: ValidationError, file: str | None, lines: LineMap, prefix: Sequence[str | int] = (),
    skip: Collection[str] = (),
) -> list[Problem]:
    """Turn pydantic's errors into problems with file, line and key path (except error types in ``skip``)."""
    out = []
    for e in err.errors():
        if e["type"] in skip:
            continue
        loc = [p for p in (*prefix, *e["loc"]) if isinstance(p, (str, int))]
        # pydantic puts the failing union/tagged member in loc; keep only real keys
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}" if loc else "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        out.append(Problem(msg, file, _line_for(loc, lines), _fmt(loc) or None))
    return out


def parse_config(data: Any, file: str | None = None, lines: LineMap | None = None) -> Config:
    """Validate configuration data; raise ConfigError listing every problem."""
    lines = lines or {}
    if not isinstance(data, Mapping):
        raise ConfigError([Problem("the configuration must be a mapping with 'buses:'", file, 1)])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        problems = problems_from_validation(e, file, lines, skip={UNKNOWN_BUS}) + reference_problems(data, file, lines)
        raise ConfigError(sorted_problems(problems)) from None


def sorted_problems(problems: Sequence[Problem]) -> list[Problem]:
    """In reading order: by file, then line (problems without a line first in their file)."""
    return sorted(problems, key=lambda p: (p.file or "", p.line or 0))


def load_config(path: Path) -> tuple[Config, LineMap]:
    """Load and validate a configuration file (relative paths inside stay relative to it)."""
    data, lines = load_yaml(path)
    return parse_config(data, str(path), lines), lines
