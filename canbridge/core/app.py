"""Assembling a bridge: configuration file (or data) + plugin registry → Runtime, plus the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import can

from canbridge.config import Config, LineMap, load_config, parse_config
from canbridge.core.host import Registry, load_registry
from canbridge.core.runtime import Runtime
from canbridge.core.simulator import Simulator

log = logging.getLogger("canbridge.simulator")

DEMO_DBC = Path(__file__).resolve().parent.parent / "demo" / "demo.dbc"
DEMO_J1939_DBC = DEMO_DBC.with_name("j1939.dbc")  # the example of docs/j1939.md; mappings/examples/ links to it


DEMO_WAVES: dict[str, dict[str, float]] = {
    "MotorStatus.MotorTemperature": {"low": 45, "high": 78, "period_s": 90},
    "MotorStatus.MotorCurrent": {"low": 20, "high": 140, "period_s": 25},
    "PowerStatus.MotorPower": {"low": 8, "high": 55, "period_s": 25},
    "PowerStatus.Efficiency": {"low": 88, "high": 95, "period_s": 40},
    "BatteryStatus.PackVoltage": {"low": 385, "high": 402, "period_s": 60},
    "BatteryStatus.PackCurrent": {"low": 15, "high": 160, "period_s": 25},
    "BatteryStatus.StateOfCharge": {"low": 62, "high": 64, "period_s": 300},
    "BatteryStatus.CellTempMax": {"low": 28, "high": 36, "period_s": 120},
    "VehicleInfo.AmbientTemp": {"low": 17, "high": 19, "period_s": 600},
    "VehicleInfo.VehicleSpeed": {"low": 0, "high": 88, "period_s": 45},
}


DEMO_TRUCK_WAVES: dict[str, dict[str, float]] = {
    "engine.EEC1.EngineSpeed": {"low": 650, "high": 1900, "period_s": 40},
    "engine.EEC1.ActualEngineTorque": {"low": 10, "high": 70, "period_s": 30},
    "engine.ET1.EngineCoolantTemperature": {"low": 82, "high": 94, "period_s": 120},
    "transmission.EEC1.EngineSpeed": {"low": 600, "high": 1200, "period_s": 50},
    "transmission.ET1.EngineCoolantTemperature": {"low": 70, "high": 80, "period_s": 150},
    "engine.CCVS.WheelBasedVehicleSpeed": {"low": 0, "high": 88, "period_s": 45},
    "transmission.CCVS.WheelBasedVehicleSpeed": {"low": 0, "high": 88, "period_s": 45},
}

# States held still: a wave through their whole raw range would keep hitting J1939's reserved top values
# ("error", "not available": quality bad), which the demo should show only when asked to.
DEMO_TRUCK_STATES: dict[str, float] = {
    **{f"{source}.{signal}": 0 for source in ("engine", "transmission") for signal in (
        "EEC1.EngineTorqueMode", "CCVS.ParkingBrakeSwitch", "CCVS.CruiseControlActive", "CCVS.BrakeSwitch")},
    "engine.EEC1.SourceAddressOfController": 0x00, "transmission.EEC1.SourceAddressOfController": 0x03,
}


def demo_truck(channel: str) -> dict[str, Any]:
    """The demo's second bus: J1939 traffic of an engine (0x00) and a transmission (0x03), with DM1s."""
    return {
        "bus": {"name": "truck", "interface": "virtual", "channel": channel, "bitrate": 250000},
        "mapping": {"bus": "truck", "dbc": str(DEMO_J1939_DBC), "messages": ["EEC1", "ET1", "CCVS", "EC1"],
                    "sources": {0x00: "engine", 0x03: "transmission"},
                    "stale_after_ms": {"EEC1": 250}},  # 20 ms cycle: 60 ms would flicker on a busy machine
        "simulator": {"bus": "truck", "waves": DEMO_TRUCK_WAVES, "constants": DEMO_TRUCK_STATES,
                      "counters": {"engine.CCVS.OdometerRaw": 0.02, "transmission.CCVS.OdometerRaw": 0.02}},
    }


DEMO_EDS = DEMO_DBC.parent / "io_module.eds"
DEMO_CANOPEN_BUS = "canopen"
DEMO_CANOPEN_NODE: dict[str, Any] = {
    "id": 3, "name": "io1", "eds": str(DEMO_EDS),
    # the objects worth showing by SDO (the file's PDO and communication parameters are not)
    "sdo": ["Device_type", "Identity_object.*", "Producer_heartbeat_time", "Supply_voltage",
            "Write_analogue_output_16_bit.Analogue_output_1"],
    "writable": ["Write_output_8_bit.Digital_outputs_1_8", "Write_analogue_output_16_bit.Analogue_output_1"],
    "poll_ms": {"Supply_voltage": 1000},
    "nmt": True,
}


def demo_config(channel: str | None = None, plugins: dict[str, Any] | None = None,
                state_dir: Path | None = None, *, truck: bool = False, canopen: bool = False) -> dict[str, Any]:
    """The demo: a virtual bus with the demo DBC, MotorCommand writable and sent every 100 ms; with
    ``truck``, a second virtual bus of J1939 traffic; with ``canopen``, a CANopen bus with a simulated I/O
    module from its EDS (``canbridge demo`` has both; tests leave them out)."""
    buses: list[dict[str, Any]] = [{"name": "demo", "interface": "virtual", "channel": channel or "canbridge-demo",
                                    "bitrate": 500000}]
    sims: list[dict[str, Any]] = []
    if canopen:
        buses.append({"name": DEMO_CANOPEN_BUS, "interface": "virtual",
                      "channel": f"{channel or 'canbridge-demo'}-canopen", "bitrate": 250000,
                      "nodes": [dict(DEMO_CANOPEN_NODE)]})
        sims.append({"bus": DEMO_CANOPEN_BUS})  # the node plays itself from its EDS (core/simulator_canopen.py)
    data: dict[str, Any] = {
        "buses": buses,
        "mappings": [{
            "bus": "demo", "dbc": str(DEMO_DBC), "writable": ["MotorCommand.*"],
            "transmit": {"MotorCommand": {"period_ms": 100}}, "write_rate": 20,
        }],
        "simulators": [{
            "bus": "demo",
            "follow": {"MotorStatus.SetpointEcho": "MotorCommand.SpeedSetpoint",
                       "MotorStatus.MotorEnabled": "MotorCommand.Enable"},
            "ramp": {"MotorStatus.MotorSpeed": "MotorCommand.SpeedSetpoint"},
            "waves": DEMO_WAVES,
            "constants": {"MotorStatus.MotorState": 2, "Diagnostics.FirmwareMajor": 2, "Diagnostics.FirmwareMinor": 7,
                          "Diagnostics.ErrorCount": 0, "Diagnostics.LastErrorCode": 0},
            "counters": {"Diagnostics.UptimeSeconds": 1.0, "VehicleInfo.Odometer": 0.02},
        }, *sims],
        "plugins": plugins or {},
        **({"state_dir": str(state_dir)} if state_dir else {}),
    }
    if truck:
        t = demo_truck(f"{channel or 'canbridge-demo'}-truck")
        data["buses"].append(t["bus"])
        data["mappings"].append(t["mapping"])
        data["simulators"].append(t["simulator"])
    return data


def demo_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The demo's own per-user state directory (OPC UA certificates, Modbus map, audit log), created 0700.

    ``$XDG_STATE_HOME/canbridge/demo``, else ``~/.local/state/canbridge/demo``, else
    ``$XDG_RUNTIME_DIR/canbridge-demo``; with none of them usable, a fresh private directory from
    ``mkdtemp``. Never a fixed path in a world-writable directory: another user could own it first.
    """
    env = os.environ if env is None else env
    candidates: list[Path] = []
    if (xdg := env.get("XDG_STATE_HOME")) and Path(xdg).is_absolute():  # the spec: ignore relative ones
        candidates.append(Path(xdg) / "canbridge" / "demo")
    if (home := env.get("HOME")) and Path(home).is_absolute() and Path(home).is_dir():
        candidates.append(Path(home) / ".local" / "state" / "canbridge" / "demo")
    if (run := env.get("XDG_RUNTIME_DIR")) and Path(run).is_absolute():
        candidates.append(Path(run) / "canbridge-demo")
    errors = []
    for path in candidates:
        try:
            return private_dir(path)
        except OSError as e:
            errors.append(f"{path}: {e.strerror or e}")
    fallback = Path(tempfile.mkdtemp(prefix="canbridge-demo-"))  # 0700, unique, ours
    logging.getLogger("canbridge.demo").warning("demo state in the temporary %s (%s)", fallback,
                                                "; ".join(errors) or "no HOME or XDG_STATE_HOME")
    return fallback


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) mode 0700, or check that the existing one is a real directory
    of this user; tighten its mode to 0700. OSError when it belongs to someone else or is not a directory."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory (a symbolic link or a file)")
    if st.st_uid != os.getuid():
        raise OSError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def build_runtime(config: Config, registry: Registry | None = None, *, base_dir: Path | None = None,
                  config_path: Path | None = None, lines: LineMap | None = None) -> Runtime:
    if registry is None:
        _, registry = load_registry()
    base = base_dir or (config_path.parent if config_path else Path.cwd())
    return Runtime(config, registry, base, config_path=config_path, lines=lines)


def runtime_from_file(path: Path, registry: Registry | None = None) -> Runtime:
    config, lines = load_config(path)
    return build_runtime(config, registry, config_path=path.resolve(), lines=lines)


def runtime_from_data(data: dict[str, Any], registry: Registry | None = None,
                      base_dir: Path | None = None) -> Runtime:
    return build_runtime(parse_config(data), registry, base_dir=base_dir)


@contextlib.asynccontextmanager
async def simulators(runtime: Runtime) -> AsyncIterator[list[Simulator]]:
    """Run the configuration's simulators, each on its own python-can bus beside the bridge's."""
    sims: list[Simulator] = []
    buses: list[can.BusABC] = []
    tasks = []
    try:
        for sc in runtime.config.simulators:
            bcfg = next(b for b in runtime.config.buses if b.name == sc.bus)
            if bcfg.interface != "virtual":
                # Only an in-process bus needs an in-process simulator; on a real interface the ECUs (or
                # `canbridge simulate` in another process) play the other side.
                log.info("simulator for bus %s skipped: run `canbridge simulate` beside the bridge", sc.bus)
                continue
            bus = can.Bus(interface=bcfg.interface, channel=bcfg.channel, fd=bcfg.fd, receive_own_messages=False)
            buses.append(bus)
            sim = Simulator(runtime.table, sc.bus, bus, sc.follow, sc.ramp, sc.waves, sc.constants,
                            sc.counters)
            sims.append(sim)
            tasks.append(asyncio.create_task(sim.run(), name=f"simulator-{sc.bus}"))
        yield sims
    finally:
        for s in sims:
            s.stop()
        if tasks:
            await asyncio.wait(tasks, timeout=3)
        for b in buses:
            b.shutdown()


def unique_channel(prefix: str = "canbridge") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
