"""The ``canbridge`` command: run, check, plugins, simulate, demo, and plugin-provided commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from canbridge import __version__
from canbridge._errors import BusUnavailable, CanbridgeError, ConfigError, PluginError, Problem
from canbridge.config import Config, load_config, parse_config

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


def _interface_problems(config: Config, file: str | None, lines: dict[Any, int] | None) -> list[Problem]:
    """Interfaces that are missing or down, with how to fix them (socketcan only)."""
    from canbridge.core.can.interfaces import check_interface

    out = []
    for i, b in enumerate(config.buses):
        if b.interface != "socketcan":
            continue
        msg = check_interface(b.channel)
        if msg:
            out.append(Problem(msg, file, (lines or {}).get(("buses", i, "channel")), f"buses[{i}].channel"))
    return out


# --- check ---
def _partial_problems(data: Any, file: str | None, lines: dict[Any, int], registry: Any) -> list[Problem]:
    """When the file fails validation, still check what can be checked on its own, so that one run
    reports every problem: plugin names and sections, and each mapping whose own keys and bus are valid."""
    import dataclasses
    from collections.abc import Mapping

    from pydantic import ValidationError

    from canbridge.config import BusConfig, MappingConfig
    from canbridge.core.mapping.table import build_table
    from canbridge.core.runtime import check_bus_kinds, validate_plugins

    out: list[Problem] = []
    if not isinstance(data, Mapping):
        return out
    plugins = data.get("plugins")
    if isinstance(plugins, Mapping) and all(isinstance(v, Mapping | None) for v in plugins.values()):
        try:
            validate_plugins(Config.model_construct(buses=[], plugins=dict(plugins)), registry, file, lines)
        except ConfigError as e:
            out += e.problems
    buses = []
    raw_buses = data.get("buses")
    for bi, b in enumerate(raw_buses if isinstance(raw_buses, list) else []):
        try:
            buses.append(BusConfig.model_validate(b))
            if registry.bus_kind(buses[-1].interface) is None:
                [p] = check_bus_kinds(Config.model_construct(buses=[buses[-1]]), registry, file)
                out.append(dataclasses.replace(p, line=lines.get(("buses", bi, "interface")),
                                               path=f"buses[{bi}].interface"))
        except ValidationError:  # reported already; its name is enough to check the mappings on it
            if isinstance(b, Mapping) and isinstance(b.get("name"), str):
                buses.append(BusConfig.model_construct(name=b["name"]))
    names = {b.name for b in buses}
    mappings = data.get("mappings")
    for i, m in enumerate(mappings if isinstance(mappings, list) else []):
        try:
            mc = MappingConfig.model_validate(m)
        except ValidationError:
            continue  # already reported by the validation of the whole file
        if mc.bus not in names:
            continue
        # one mapping at a time: its problems keep their real index and lines
        sub_lines = {("mappings", 0, *k[2:]): v for k, v in lines.items() if tuple(k[:2]) == ("mappings", i)}
        base = Path(file).resolve().parent if file else Path.cwd()
        try:
            build_table(Config.model_construct(buses=buses, mappings=[mc]), base, registry.formats, file, sub_lines)
        except ConfigError as e:
            for p in e.problems:
                path = p.path
                if path is not None and path.startswith("mappings[0]"):
                    path = f"mappings[{i}]" + path[len("mappings[0]"):]
                out.append(dataclasses.replace(p, path=path))
    return out


def collect_problems(path: Path, registry: Any, interfaces: bool = True) -> tuple[Config | None, list[Problem]]:
    """Every problem of a configuration file, at once: schema, bus kinds, mappings, plugins, interfaces."""
    from canbridge.config import load_yaml
    from canbridge.core.mapping.table import build_table
    from canbridge.core.runtime import check_bus_kinds, validate_plugins

    file = str(path)
    try:
        data, lines = load_yaml(path)
    except ConfigError as e:  # unreadable or not YAML: nothing else can be checked
        return None, list(e.problems)
    try:
        config = parse_config(data, file, lines)
    except ConfigError as e:
        return None, [*e.problems, *_partial_problems(data, file, lines, registry)]
    problems: list[Problem] = []
    problems += check_bus_kinds(config, registry, file, lines)
    try:
        build_table(config, path.resolve().parent, registry.formats, file, lines)
    except ConfigError as e:
        problems += e.problems
    try:
        validate_plugins(config, registry, file, lines)
    except ConfigError as e:
        problems += e.problems
    if interfaces:
        problems += _interface_problems(config, file, lines)
    return config, problems


def cmd_check(args: argparse.Namespace) -> int:
    from canbridge.core.host import load_registry
    from canbridge.core.mapping.table import build_table

    _, registry = load_registry()
    if args.dbc:
        path = Path(args.dbc)
        data: dict[str, Any] = {"buses": [{"name": "bus", "interface": "virtual", "channel": "check"}],
                                "mappings": [{"bus": "bus", "dbc": str(path.resolve()), "strict": not args.lenient}]}
        config = parse_config(data)
        problems: list[Problem] = []
        try:
            build_table(config, path.resolve().parent, registry.formats)
        except ConfigError as e:
            problems += e.problems
    else:
        if not args.config:
            print("canbridge check: give CONFIG or --dbc FILE", file=sys.stderr)
            return 2
        maybe, problems = collect_problems(Path(args.config), registry, interfaces=not args.no_interfaces)
        if maybe is None or problems:
            _print_problems(ConfigError(problems))
            return 1
        config = maybe
    if problems:
        _print_problems(ConfigError(problems))
        return 1
    table = build_table(config, Path(args.dbc or args.config).resolve().parent, registry.formats)
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


def cmd_run(args: argparse.Namespace) -> int:
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
        _, problems = collect_problems(path, registry, interfaces=False)
        _print_problems(ConfigError(problems or e.problems))
        print("canbridge: not started; fix the configuration (canbridge check CONFIG)", file=sys.stderr)
        return 1
    for p in _interface_problems(config, str(path), lines):
        # The bridge still starts: it reopens the interface as soon as it appears.
        log.error("%s", p)
    print(f"canbridge {__version__} running {path}", flush=True)
    return _run_async(runtime, with_simulators=bool(config.simulators))


# --- demo ---
def cmd_demo(args: argparse.Namespace) -> int:
    from canbridge.core.app import build_runtime, demo_config
    from canbridge.core.host import load_registry

    _setup_logging(args.log_level or "WARNING")
    _, registry = load_registry()
    plugins: dict[str, Any] = {}
    if not args.no_plugins:
        for name, spec in sorted(registry.northbound.items()):
            plugins[name] = dict(spec.demo_config or {})
    state = Path(args.state_dir) if args.state_dir else Path(tempfile.gettempdir()) / "canbridge-demo"
    data = demo_config(plugins=plugins, state_dir=state.resolve())
    try:
        runtime = build_runtime(parse_config(data), registry, base_dir=Path.cwd())
    except ConfigError as e:
        _print_problems(e)
        return 1
    t = runtime.table
    writable = ", ".join(s.signal for s in t.signal_list if s.writable)
    print(f"canbridge {__version__} demo: simulated motor controller, battery and vehicle ECUs on a virtual CAN bus")
    print(f"  {len(t.message_list)} messages, {len(t.signal_list)} signals from {DEMO_DBC_NAME}; "
          f"writable: demo.MotorCommand.{{{writable}}}")
    if not plugins:
        print("  no northbound plugins (--no-plugins): the core runs alone")
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
    c.set_defaults(func=cmd_check)

    d = sub.add_parser("demo", help="run the demo: virtual bus, simulated ECUs, every installed plugin")
    d.add_argument("--no-plugins", action="store_true", help="only the core")
    d.add_argument("--state-dir", help="where the demo keeps certificates and maps (default: a temp dir)")
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
