"""The ``canbridge`` command: run, check, plugins, simulate, demo, stats, and plugin-provided commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canbridge import __version__, statsview
from canbridge._errors import BusUnavailable, CanbridgeError, ConfigError, PluginError, Problem
from canbridge.config import BusConfig, Config, MappingConfig, SimulatorConfig, parse_config, sorted_problems

if TYPE_CHECKING:
    from canbridge._model import SignalInfo
    from canbridge._plugin import NorthboundPlugin
    from canbridge.core.mapping.table import MappingTable

log = logging.getLogger("canbridge")


def _setup_logging(level: str) -> None:
    """canbridge's own loggers at ``level``; libraries (asyncua, pymodbus, aiohttp...) only warn, unless DEBUG."""
    lib_level = logging.DEBUG if level == "DEBUG" else logging.WARNING
    logging.basicConfig(level=lib_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("canbridge").setLevel(getattr(logging, level))


def _print_problems(e: ConfigError, out: Any = None) -> None:
    out = out or sys.stderr  # looked up at call time: redirections (and pytest's capsys) apply
    n = len(e.problems)
    print(f"{n} problem{'s' if n != 1 else ''} found:", file=out)
    for p in e.problems:
        print(f"  {p}", file=out)


def _interface_problems(buses: Sequence[tuple[int, BusConfig]], file: str | None,
                        lines: dict[Any, int] | None) -> list[Problem]:
    """Interfaces that are missing or down, with how to fix them (socketcan only)."""
    from canbridge.core.can.interfaces import check_interface

    out = []
    for i, b in buses:
        if b.interface != "socketcan":
            continue
        msg = check_interface(b.channel)
        if msg:
            out.append(Problem(msg, file, (lines or {}).get(("buses", i, "channel")), f"buses[{i}].channel"))
    return out


# --- check ---
@dataclass
class CheckReport:
    """What ``canbridge check`` found: problems (``run`` would fail or refuse) and warnings (it runs, but
    something probably is not what was meant)."""

    config: Config | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    table: MappingTable | None = None  # the whole mapping table, when there is no problem


@dataclass
class _Endpoint:
    plugin: str
    key: str
    host: str
    port: int
    line: int | None
    addrs: list[tuple[int, Any]]  # (family, sockaddr) the host resolves to

    @property
    def path(self) -> str:
        return f"plugins.{self.plugin}.{self.key}"


def _overlap(a: _Endpoint, b: _Endpoint) -> bool:
    """Would the two sockets collide? Same port, and one address equal or a wildcard of the same family
    (asyncio sets IPV6_V6ONLY, so :: and 0.0.0.0 do not collide)."""
    if a.port != b.port:
        return False
    for fa, sa in a.addrs:
        for fb, sb in b.addrs:
            if fa == fb and (sa[0] == sb[0] or sa[0] in ("0.0.0.0", "::") or sb[0] in ("0.0.0.0", "::")):
                return True
    return False


def _bind_problem(ep: _Endpoint) -> str | None:
    """Bind (and close at once) every address the endpoint listens on, as the server will."""
    for family, sockaddr in ep.addrs:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                where = f"{ep.host}:{ep.port}" if family == socket.AF_INET else f"[{sockaddr[0]}]:{ep.port}"
                if e.errno == errno.EADDRINUSE:
                    return (f"port {ep.port} on {ep.host} is already in use by another program (a running "
                            f"canbridge?); `ss -ltnp 'sport = :{ep.port}'` shows which")
                if e.errno == errno.EADDRNOTAVAIL:
                    return f"cannot listen on {where}: {sockaddr[0]} is not an address of this machine"
                if e.errno == errno.EACCES:
                    return (f"cannot listen on {where}: ports below 1024 need CAP_NET_BIND_SERVICE; "
                            "use a port above 1023")
                return f"cannot listen on {where}: {e.strerror or e}"
    return None


def _endpoint_problems(plugins: Mapping[str, Any], registry: Any, file: str | None, lines: dict[Any, int],
                       bind: bool) -> list[Problem]:
    """Two plugins on one port, and (``bind``) ports that cannot be listened on: what would stop ``run``."""
    from pydantic import ValidationError

    endpoints: list[_Endpoint] = []
    out: list[Problem] = []
    for name, section in plugins.items():
        spec = registry.northbound.get(name)
        if spec is None or not isinstance(section, Mapping | None):
            continue  # reported by the plugin validation
        try:
            cfg = spec.config_model.model_validate(section or {})
        except ValidationError:
            continue  # reported by the plugin validation
        for key, host, port in spec.listen_endpoints(cfg):
            line = lines.get(("plugins", name, key), lines.get(("plugins", name)))
            if port == 0:  # any free port: never a conflict
                continue
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except socket.gaierror as e:
                out.append(Problem(f"cannot listen on {host!r}: the name does not resolve ({e.strerror})", file,
                                   line, f"plugins.{name}.{key}"))
                continue
            addrs = sorted({(fam, sa[:2]) for fam, _, _, _, sa in infos if fam in (socket.AF_INET, socket.AF_INET6)})
            endpoints.append(_Endpoint(name, key, host, port, line, list(addrs)))
    clashing: set[int] = set()
    for j, b in enumerate(endpoints):
        for i in range(j):
            a = endpoints[i]
            if _overlap(a, b):
                clashing |= {i, j}
                out.append(Problem(f"port {b.port} on {b.host} is also used by {a.path} ({a.host}:{a.port}"
                                   f"{f', line {a.line}' if a.line else ''}): two plugins cannot listen on one port",
                                   file, b.line, b.path))
    if bind:
        for k, ep in enumerate(endpoints):
            if k not in clashing and (msg := _bind_problem(ep)):
                out.append(Problem(msg, file, ep.line, ep.path))
    return out


def _mapping_tables(buses: Sequence[BusConfig], mappings: Sequence[tuple[int, MappingConfig]], base: Path,
                    registry: Any, file: str | None, lines: dict[Any, int]
                    ) -> list[tuple[int, MappingConfig, MappingTable | None, list[Problem]]]:
    """Each mapping built on its own: its problems keep their real index and lines, and the mappings
    that load still give their signals to the checks after them (simulators, warnings)."""
    import dataclasses

    from canbridge.core.mapping.table import build_table

    out: list[tuple[int, MappingConfig, MappingTable | None, list[Problem]]] = []
    for i, mc in mappings:
        sub_lines = {("mappings", 0, *k[2:]): v for k, v in lines.items() if tuple(k[:2]) == ("mappings", i)}
        try:
            table = build_table(Config.model_construct(buses=list(buses), mappings=[mc]), base, registry.formats,
                                file, sub_lines)
        except ConfigError as e:
            problems = []
            for p in e.problems:
                path = p.path
                if path is not None and path.startswith("mappings[0]"):
                    path = f"mappings[{i}]" + path[len("mappings[0]"):]
                problems.append(dataclasses.replace(p, path=path))
            out.append((i, mc, None, problems))
        else:
            out.append((i, mc, table, []))
    return out


_LIST_MAX = 5


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_MAX])
    return shown + (f" and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else "")


def _mapping_warnings(i: int, mc: MappingConfig, table: MappingTable, file: str | None,
                      lines: dict[Any, int]) -> list[Problem]:
    """It runs, but: received messages that never turn stale, DBC limits the raw bits cannot reach."""
    from canbridge._model import physical_range
    from canbridge.core.mapping.j1939rules import message_warnings

    key = "dbc" if mc.dbc is not None else "signals"
    where = (file, lines.get(("mappings", i, key)), f"mappings[{i}].{key}") if file else (str(mc.file), None, None)
    out = []
    # the table is built with every bus's CANopen nodes: their messages are not this mapping file's
    nodes = {f"{bus}.{m.name}" for bus, described in table.canopen.items() for _, d in described for m in d.messages}
    own = [e for e in table.message_list if e.info.name not in nodes]
    rx = [e for e in own if e.info.direction == "rx"]
    never_stale = [e.info.message for e in rx if e.timeout_s is None]
    if never_stale:
        out.append(Problem(
            f"staleness is off for {len(never_stale)} of {len(rx)} received messages ({_names(never_stale)}): "
            f"{mc.file.name} gives them no cycle time (GenMsgCycleTime), so their values stay 'good' when "
            "the sender stops; give them a timeout with stale_after_ms", *where))
    clipped = []
    for e in own:
        for sig in e.db_message.signals:
            mn, mx = sig.minimum, sig.maximum
            if sig.is_float or (mn is None and mx is None) or (mn == 0 and mx == 0):
                continue
            lo, hi = physical_range(sig.length, sig.is_signed, sig.is_float, sig.scale, sig.offset)
            tol = abs(sig.scale) * 1e-6  # a limit one rounding away from the raw range is not clipped
            if (mn is not None and mn < lo - tol) or (mx is not None and mx > hi + tol):
                new_lo = max(lo, mn) if mn is not None else lo
                new_hi = min(hi, mx) if mx is not None else hi
                name = f"{e.info.message}.{sig.name}"
                clipped.append(f"{name} [{_num(mn)}|{_num(mx)}] -> [{_num(new_lo)}|{_num(new_hi)}]")
    if clipped:
        out.append(Problem(
            f"the limits of {len(clipped)} signals lie outside what their raw bits can carry and are clipped to "
            f"the raw range: {_names(clipped)}; check the signals' length, scale and offset in {mc.file.name}",
            *where))
    dbc_messages = list({id(e.db_message): e.db_message for e in table.message_list}.values())
    sent = {e.db_message.name for e in table.message_list if e.j1939_tx}
    out += [Problem(w, *where) for w in message_warnings(mc.file.name, dbc_messages, mc.protocol, sent,
                                                         bool(mc.sources))]
    return out


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def _simulator_problems(sims: Sequence[tuple[int, SimulatorConfig]], signals: Mapping[str, SignalInfo],
                        incomplete: set[str], file: str | None, lines: dict[Any, int]) -> list[Problem]:
    """Simulator rules naming signals that do not exist on their bus, or that it cannot play or hear."""
    import difflib

    out = []

    def problem(i: int, section: str, key: str, msg: str) -> None:
        loc = ("simulators", i, section, key)
        out.append(Problem(msg, file, lines.get(loc, lines.get(("simulators", i, section))),
                           f"simulators[{i}].{section}.{key}"))

    def unknown(bus: str, name: str) -> str:
        known = [n.split(".", 1)[1] for n in signals if n.startswith(f"{bus}.")]
        close = difflib.get_close_matches(name, known, n=1)
        return f"no signal {name!r} on bus {bus!r}" + (f" (did you mean {close[0]!r}?)" if close else "")

    for i, sc in sims:
        if sc.bus in incomplete:
            continue  # a mapping of this bus did not load: reported, and its signals are unknown
        rules: dict[str, Mapping[str, Any]] = {"follow": sc.follow, "ramp": sc.ramp, "waves": sc.waves,
                                                "constants": sc.constants, "counters": sc.counters}
        for section, rule in rules.items():
            for key, value in rule.items():
                info = signals.get(f"{sc.bus}.{key}")
                if info is None:
                    problem(i, section, key, unknown(sc.bus, key))
                elif info.direction != "rx":
                    problem(i, section, key, f"{key} is in a message the bridge sends; a simulator plays only the "
                                             "messages the bridge receives")
                if section in ("follow", "ramp"):
                    cmd = signals.get(f"{sc.bus}.{value}")
                    if cmd is None:
                        problem(i, section, key, f"{section} source: {unknown(sc.bus, str(value))}")
                    elif cmd.direction != "tx":
                        problem(i, section, key, f"{section} source {value} is not in a message the bridge sends, "
                                                 "so the simulator never hears it")
    return out


def check_data(data: Any, lines: dict[Any, int], file: str | None, base: Path, registry: Any, *,
               interfaces: bool = True, ports: bool = True) -> CheckReport:
    """Every problem of configuration data at once, sorted by file and line: schema, bus references, bus
    kinds, mappings, plugins, simulators, ports (``ports``: also try to bind each), interfaces; and
    warnings. When the file does not validate as a whole, each part that does is still checked."""
    import dataclasses

    from pydantic import ValidationError

    from canbridge.core.mapping.table import build_table
    from canbridge.core.runtime import check_bus_kinds, validate_plugins

    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = parse_config(data, file, lines)
    except ConfigError as e:
        problems += e.problems
    if not isinstance(data, Mapping):
        return CheckReport(None, problems)

    # the parts, each validated on its own when the whole did not validate
    buses: list[tuple[int, BusConfig]] = []
    mappings: list[tuple[int, MappingConfig]] = []
    sims: list[tuple[int, SimulatorConfig]] = []
    if config is not None:
        buses = list(enumerate(config.buses))
        mappings = list(enumerate(config.mappings))
        sims = list(enumerate(config.simulators))
        plugins: Mapping[str, Any] = config.plugins
        problems += check_bus_kinds(config, registry, file, lines)
        try:
            validate_plugins(config, registry, file, lines)
        except ConfigError as e:
            problems += e.problems
    else:
        raw_buses = data.get("buses")
        for bi, b in enumerate(raw_buses if isinstance(raw_buses, list) else []):
            try:
                buses.append((bi, BusConfig.model_validate(b)))
            except ValidationError:  # reported; its name is enough to check the mappings on it
                if isinstance(b, Mapping) and isinstance(b.get("name"), str):
                    buses.append((bi, BusConfig.model_construct(name=b["name"], interface="virtual")))
                continue
            for p in check_bus_kinds(Config.model_construct(buses=[buses[-1][1]]), registry, file):
                problems.append(dataclasses.replace(p, line=lines.get(("buses", bi, "interface")),
                                                    path=f"buses[{bi}].interface"))
        names = {b.name for _, b in buses}
        for i, m in enumerate(_list(data.get("mappings"))):
            with contextlib.suppress(ValidationError):  # reported by the validation of the whole file
                if (mc := MappingConfig.model_validate(m)).bus in names:
                    mappings.append((i, mc))
        for i, m in enumerate(_list(data.get("simulators"))):
            with contextlib.suppress(ValidationError):
                if (sc := SimulatorConfig.model_validate(m)).bus in names:
                    sims.append((i, sc))
        raw_plugins = data.get("plugins")
        plugins = raw_plugins if isinstance(raw_plugins, Mapping) else {}
        if plugins and all(isinstance(v, Mapping | None) for v in plugins.values()):
            try:
                validate_plugins(Config.model_construct(buses=[], plugins=dict(plugins)), registry, file, lines)
            except ConfigError as e:
                problems += e.problems

    built = _mapping_tables([b for _, b in buses], mappings, base, registry, file, lines)
    whole: MappingTable | None = None
    if config is not None and len(config.mappings) != 1:
        try:  # the whole table: what only shows across mappings (a message or frame id mapped twice)
            whole = build_table(config, base, registry.formats, file, lines)
        except ConfigError as e:
            problems += e.problems
    else:  # each mapping on its own says it all
        problems += [p for _, _, _, ps in built for p in ps]
        if config is not None:
            whole = built[0][2]
    signals: dict[str, SignalInfo] = {}
    warnings: list[Problem] = []
    for i, mc, table, _ in built:
        if table is not None:
            signals.update(table.signals)
            warnings += _mapping_warnings(i, mc, table, file, lines)
    incomplete = {mc.bus for _, mc, table, _ in built if table is None}
    problems += _simulator_problems(sims, signals, incomplete, file, lines)
    problems += _endpoint_problems(plugins, registry, file, lines, bind=ports)
    if interfaces:
        problems += _interface_problems(buses, file, lines)
    problems = _unique(sorted_problems(problems))
    return CheckReport(config, problems, sorted_problems(warnings), None if problems else whole)


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Problem] = set()
    return [p for p in problems if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


def check_file(path: Path, registry: Any, *, interfaces: bool = True, ports: bool = True) -> CheckReport:
    """``canbridge check CONFIG``: everything :func:`check_data` finds, in the file's own terms."""
    from canbridge.config import load_yaml

    try:
        data, lines = load_yaml(path)
    except ConfigError as e:  # unreadable or not YAML: nothing else can be checked
        return CheckReport(None, list(e.problems))
    return check_data(data, lines, str(path), path.resolve().parent, registry, interfaces=interfaces, ports=ports)


def _print_warnings(warnings: Sequence[Problem], out: Any = None) -> None:
    out = out or sys.stderr
    n = len(warnings)
    print(f"{n} warning{'s' if n != 1 else ''}:", file=out)
    for w in warnings:
        print(f"  {w}", file=out)


def _dbc_data(path: Path, lenient: bool) -> dict[str, Any]:
    return {"buses": [{"name": "bus", "interface": "virtual", "channel": "check"}],
            "mappings": [{"bus": "bus", "dbc": str(path.resolve()), "strict": not lenient}]}


def cmd_check(args: argparse.Namespace) -> int:
    from canbridge.core.host import load_registry

    _, registry = load_registry()
    if args.dbc:
        path = Path(args.dbc)
        report = check_data(_dbc_data(path, args.lenient), {}, None, path.resolve().parent, registry,
                            interfaces=False, ports=False)
        if report.problems and not args.lenient:
            logging.disable(logging.WARNING)  # only asking whether it would load: its lenient notes are noise here
            try:
                lenient = check_data(_dbc_data(path, True), {}, None, path.resolve().parent, registry,
                                     interfaces=False, ports=False)
            finally:
                logging.disable(logging.NOTSET)
            if not lenient.problems:
                _print_problems(ConfigError(report.problems))
                print(f"hint: it loads in lenient mode: canbridge check --dbc {args.dbc} --lenient "
                      "(in a configuration: strict: false on the mapping)", file=sys.stderr)
                return 1
    else:
        if not args.config:
            print("canbridge check: give CONFIG or --dbc FILE", file=sys.stderr)
            return 2
        report = check_file(Path(args.config), registry, interfaces=not args.no_interfaces,
                            ports=not args.no_ports)
    if report.warnings:
        _print_warnings(report.warnings)
    if report.problems or report.config is None or report.table is None:
        _print_problems(ConfigError(report.problems))
        return 1
    config, table = report.config, report.table
    n_msg = len(table.message_list)
    n_sig = len(table.signal_list)
    n_w = sum(1 for s in table.signal_list if s.writable)
    print(f"OK: {len(config.buses)} bus(es), {n_msg} messages, {n_sig} signals ({n_w} writable), "
          f"plugins: {', '.join(config.plugins) or 'none'}")
    return 0


# --- run ---
async def _serve(runtime: Any, stop: asyncio.Event, with_simulators: bool,
                 after_start: Callable[[Any], None] | None = None) -> None:
    from canbridge.core.app import simulators

    async def trigger() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if with_simulators:
                await stack.enter_async_context(simulators(runtime))
            _print_endpoints(runtime)
            if after_start is not None:
                after_start(runtime)
            await stop.wait()

    await runtime.run(trigger)


def _print_endpoints(runtime: Any) -> None:
    for name, urls in runtime.endpoints().items():
        for url in urls:
            print(f"  {name:8s} {url}", flush=True)


def _run_async(runtime: Any, with_simulators: bool, after_start: Callable[[Any], None] | None = None) -> int:
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await _serve(runtime, stop, with_simulators, after_start)
        except PluginError as e:
            print(f"canbridge: {e}", file=sys.stderr)
            return 1
        print("canbridge stopped", file=sys.stderr)
        return 0

    return asyncio.run(main())


def _not_started(problems: Sequence[Problem]) -> int:
    _print_problems(ConfigError(problems))
    print("canbridge: not started; fix the configuration (canbridge check CONFIG)", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from canbridge.config import load_config
    from canbridge.core.app import runtime_from_file
    from canbridge.core.host import load_registry

    path = Path(args.config)
    _, registry = load_registry()
    try:
        config, lines = load_config(path)
        _setup_logging(args.log_level or config.log_level)
        runtime = runtime_from_file(path, registry)
    except ConfigError as e:
        # report every problem, as check does, not only the first kind found
        return _not_started(check_file(path, registry, interfaces=False, ports=False).problems or e.problems)
    # what would only fail once running: rules of simulators, ports taken (before any plugin starts)
    late = _simulator_problems(list(enumerate(config.simulators)), runtime.table.signals, set(), str(path), lines)
    late += _endpoint_problems(config.plugins, registry, str(path), lines, bind=True)
    if late:
        return _not_started(sorted_problems(late))
    for p in _interface_problems(list(enumerate(config.buses)), str(path), lines):
        # The bridge still starts: it reopens the interface as soon as it appears.
        log.error("%s", p)
    print(f"canbridge {__version__} running {path}", flush=True)
    return _run_async(runtime, with_simulators=bool(config.simulators))


# --- demo ---
def demo_plugins(northbound: Mapping[str, NorthboundPlugin]) -> tuple[dict[str, Any], dict[str, str]]:
    """The plugin sections ``canbridge demo`` enables, and the plugins it leaves out with the reason
    their ``demo_requires`` gave."""
    plugins: dict[str, Any] = {}
    left_out: dict[str, str] = {}
    for name, spec in sorted(northbound.items()):
        missing = spec.demo_requires() if spec.demo_requires is not None else None
        if missing is None:
            plugins[name] = dict(spec.demo_config or {})
        else:
            left_out[name] = missing
    return plugins, left_out


def cmd_demo(args: argparse.Namespace) -> int:
    from canbridge.core.app import DEMO_CANOPEN_BUS, build_runtime, demo_config, demo_state_dir, private_dir
    from canbridge.core.host import load_registry

    _setup_logging(args.log_level or "WARNING")
    _, registry = load_registry()
    plugins, left_out = ({}, {}) if args.no_plugins else demo_plugins(registry.northbound)
    try:
        state = private_dir(Path(args.state_dir).resolve()) if args.state_dir else demo_state_dir()
    except OSError as e:
        print(f"canbridge demo: {e}", file=sys.stderr)
        return 1
    data = demo_config(plugins=plugins, state_dir=state, truck=True, canopen=True)
    try:
        runtime = build_runtime(parse_config(data), registry, base_dir=Path.cwd())
    except ConfigError as e:
        _print_problems(e)
        return 1
    taken = _endpoint_problems(runtime.config.plugins, registry, None, {}, bind=True)
    if taken:  # the demo's ports are fixed: say which is taken before anything starts
        _print_problems(ConfigError(taken))
        print("canbridge demo: not started; stop what holds the port, or run `canbridge demo --no-plugins`",
              file=sys.stderr)
        return 1
    t = runtime.table
    writable = ", ".join(s.signal for s in t.signal_list if s.writable and s.bus == "demo")
    print(f"canbridge {__version__} demo: simulated motor controller, battery and vehicle ECUs on a virtual CAN bus")
    demo_messages = t.messages_of("demo")
    print(f"  {len(demo_messages)} messages, {sum(len(e.info.signals) for e in demo_messages)} signals from "
          f"{DEMO_DBC_NAME}; "
          f"writable: demo.MotorCommand.{{{writable}}}")
    truck = [e for e in t.message_list if e.info.bus == "truck"]
    if truck:
        print(f"  and a J1939 bus 'truck': an engine (0x00) and a transmission (0x03) sending "
              f"{len({e.db_message.name for e in truck})} parameter groups and DM1s (BAM)")
    io = [s for s in t.signal_list if s.bus == DEMO_CANOPEN_BUS]
    if io:
        print(f"  and a CANopen bus {DEMO_CANOPEN_BUS!r}: I/O module io1 (node 3) from canbridge/demo/io_module.eds, "
              f"{len(io)} signals (TPDO1, RPDO1, heartbeat, EMCY, SDO); writable: "
              f"{', '.join(s.name for s in io if s.writable)}")
    print(f"  state (certificates, register map, audit log): {state}")
    if not plugins:
        print("  no northbound plugins (--no-plugins): the core runs alone")
    for name, why in left_out.items():
        print(f"  {name}: not started: {why}")
    print("Connect to (127.0.0.1 only; the demo needs no login):", flush=True)
    return _run_async(runtime, with_simulators=True, after_start=_demo_hints)


DEMO_DBC_NAME = "canbridge/demo/demo.dbc"


def _demo_hints(runtime: Any) -> None:
    rest = runtime.endpoints().get("rest")
    if not rest:
        return
    base = rest[0].rstrip("/")
    print("Try:")
    print(f"  open {base}/ in a browser (the dashboard)")
    print(f"  curl -s {base}/api/v1/signals/demo.MotorStatus.MotorSpeed")
    print(f"  curl -s -X PUT -H 'content-type: application/json' -d '{{\"value\": 1500}}' "
          f"{base}/api/v1/signals/demo.MotorCommand.SpeedSetpoint")
    print("Stop with Ctrl-C.", flush=True)


# --- simulate ---
def cmd_simulate(args: argparse.Namespace) -> int:
    import can

    from canbridge.core.app import runtime_from_file
    from canbridge.core.simulator import Simulator

    _setup_logging(args.log_level or "INFO")
    try:
        runtime = runtime_from_file(Path(args.config))
    except ConfigError as e:
        _print_problems(e)
        return 1
    names = [args.bus] if args.bus else [b.name for b in runtime.config.buses]
    rules = {s.bus: s for s in runtime.config.simulators}

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sims = []
        buses = []
        for name in names:
            bcfg = next((b for b in runtime.config.buses if b.name == name), None)
            if bcfg is None:
                print(f"canbridge simulate: no bus named {name!r}", file=sys.stderr)
                return 2
            try:
                bus = can.Bus(interface=bcfg.interface, channel=bcfg.channel, fd=bcfg.fd)
            except Exception as e:
                print(f"canbridge simulate: cannot open {bcfg.interface} {bcfg.channel}: {e}", file=sys.stderr)
                return 1
            buses.append(bus)
            r = rules.get(name)
            sims.append(Simulator(runtime.table, name, bus, r.follow if r else None, r.ramp if r else None,
                                  r.waves if r else None, r.constants if r else None,
                                  r.counters if r else None))
            print(f"simulating {len(sims[-1].played)} messages on {bcfg.interface} {bcfg.channel}", flush=True)
        tasks = [asyncio.create_task(s.run()) for s in sims]
        await stop.wait()
        for s in sims:
            s.stop()
        await asyncio.wait(tasks, timeout=3)
        for b in buses:
            b.shutdown()
        return 0

    return asyncio.run(main())


# --- plugins ---
def cmd_plugins(args: argparse.Namespace) -> int:
    from canbridge.core.host import installed_plugins, load_registry

    pm, reg = load_registry()
    plugins = installed_plugins(pm)
    if args.json:
        print(json.dumps({"plugins": plugins, "northbound": sorted(reg.northbound), "bus_kinds": sorted(reg.bus_kinds),
                          "mapping_formats": sorted(reg.formats), "commands": sorted(reg.commands)}, indent=2))
        return 0
    print(f"{'plugin':24s} {'distribution':14s} {'version':9s} hooks")
    for p in plugins:
        print(f"{p['name']:24s} {p['distribution']:14s} {p['version']:9s} {', '.join(p['hooks'])}")
    print()
    print("northbound:      " + ", ".join(f"{n} ({s.description})" if s.description else n
                                          for n, s in sorted(reg.northbound.items())))
    print("bus kinds:       " + ", ".join(sorted(reg.bus_kinds)) + " (+ every python-can interface)")
    print("mapping formats: " + ", ".join(sorted(reg.formats)))
    if reg.commands:
        print("commands:        " + ", ".join(sorted(reg.commands)))
    return 0


def build_parser(commands: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canbridge", description="Bridge CAN buses to OPC UA, Modbus and HTTP.")
    p.add_argument("--version", action="version", version=f"canbridge {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="run the bridge with a configuration file")
    r.add_argument("config", help="YAML configuration file")
    r.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="check a configuration (or one mapping file) and report every problem")
    c.add_argument("config", nargs="?", help="YAML configuration file")
    c.add_argument("--dbc", help="check one signal database file instead of a configuration")
    c.add_argument("--lenient", action="store_true", help="with --dbc: load in lenient mode")
    c.add_argument("--no-interfaces", action="store_true", help="do not check that CAN interfaces exist and are up")
    c.add_argument("--no-ports", action="store_true",
                   help="do not try to bind the plugins' ports (checking on a machine other than the target)")
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("demo", help="run the demo: virtual bus, simulated ECUs, every installed plugin")
    d.add_argument("--no-plugins", action="store_true", help="only the core")
    d.add_argument("--state-dir", help="where the demo keeps its OPC UA certificates, register map and audit log "
                        "(default: $XDG_STATE_HOME/canbridge/demo, i.e. ~/.local/state/canbridge/demo)")
    d.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="play the ECUs of a configuration's mappings on its buses")
    s.add_argument("config", help="YAML configuration file")
    s.add_argument("--bus", help="only this bus")
    s.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.set_defaults(func=cmd_simulate)

    pl = sub.add_parser("plugins", help="list installed plugins with their versions")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    st = sub.add_parser("stats", help="a running bridge's loop lag, CPU per plugin, queues and coalesced updates "
                        "(from its REST /api/v1/stats)")
    statsview.configure(st)
    st.set_defaults(func=statsview.run)

    for name, cmd in sorted((commands or {}).items()):
        cp = sub.add_parser(name, help=cmd.help, aliases=list(cmd.aliases))
        cmd.configure(cp)
        cp.set_defaults(func=cmd.run)
    return p


def main(argv: list[str] | None = None) -> int:
    commands: dict[str, Any] = {}
    try:
        from canbridge.core.host import load_registry

        _, reg = load_registry()
        commands = reg.commands
    except CanbridgeError as e:
        print(f"canbridge: {e}", file=sys.stderr)
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except ConfigError as e:
        _print_problems(e)
        return 1
    except BusUnavailable as e:
        print(f"canbridge: {e}", file=sys.stderr)
        return 1
    except CanbridgeError as e:
        print(f"canbridge: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
