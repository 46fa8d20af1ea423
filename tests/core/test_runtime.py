"""The runtime (canbridge/core/runtime.py): plugin lifecycle in order, failure handling, plugin
configuration errors, run(shutdown_trigger) and the Bridge facade."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from canbridge import (
    Bridge,
    BusState,
    Caller,
    ConfigError,
    NorthboundPlugin,
    PluginError,
    Quality,
    hookimpl,
)
from canbridge.config import Strict
from canbridge.core.app import DEMO_DBC, runtime_from_file
from canbridge.testing import until
from tests.core.test_busrunner import LINKS, FakeLink, fake_registry, fake_runtime, motor_status

EVENTS: list[str] = []


class AlphaConfig(Strict):
    port: int = Field(0, ge=0, le=65535)
    greeting: str = "hello"


class BetaConfig(Strict):
    fail_start: bool = False
    fail_stop: bool = False


class RecordingService:
    def __init__(self, name: str, bridge: Bridge, config: Any) -> None:
        self.name = name
        self.bridge = bridge
        self.config = config
        self.running = False

    async def start(self) -> None:
        EVENTS.append(f"start {self.name}")
        assert len(self.bridge.signals) == 25  # the table is there before any plugin starts
        if getattr(self.config, "fail_start", False):
            raise RuntimeError("port already in use")
        self.running = True

    async def stop(self) -> None:
        EVENTS.append(f"stop {self.name}")
        self.running = False
        if getattr(self.config, "fail_stop", False):
            raise RuntimeError("stuck")

    def endpoints(self) -> list[str]:
        return [f"test://{self.name}:{getattr(self.config, 'port', 0)}"]


def factory(name: str) -> Callable[[Bridge, Any], RecordingService]:
    return lambda bridge, cfg: RecordingService(name, bridge, cfg)


class NorthboundTestPlugin:
    """Registers northbound plugins through the register_northbound hook, as a package would."""

    @hookimpl
    def register_northbound(self, register: Callable[[NorthboundPlugin], None]) -> None:
        register(NorthboundPlugin("alpha", AlphaConfig, factory("alpha"), "first", order=10))
        register(NorthboundPlugin("beta", BetaConfig, factory("beta"), "second", order=20))
        register(NorthboundPlugin("gamma", BetaConfig, factory("gamma"), "third (same order, by name)", order=20))
        register(NorthboundPlugin("omega", BetaConfig, factory("omega"), "last", order=90))


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    EVENTS.clear()


async def test_plugins_start_in_order_and_stop_in_reverse(tmp_path: Path) -> None:
    plugins = {"omega": {}, "gamma": {}, "alpha": {"port": 4840, "greeting": "hi"}, "beta": {}}
    async with fake_runtime(tmp_path, hook_plugins=[NorthboundTestPlugin()], enable=plugins) as (rt, _):
        assert EVENTS == ["start alpha", "start beta", "start gamma", "start omega"]
        alpha = rt.services["alpha"]
        assert isinstance(alpha, RecordingService) and alpha.running
        assert alpha.config == AlphaConfig(port=4840, greeting="hi")
        assert alpha.bridge is rt
        assert rt.endpoints()["alpha"] == ["test://alpha:4840"]
        assert rt.ready
    assert EVENTS[4:] == ["stop omega", "stop gamma", "stop beta", "stop alpha"]
    assert not rt.ready


async def test_a_failing_start_stops_the_others_and_raises(tmp_path: Path) -> None:
    plugins = {"alpha": {}, "beta": {}, "gamma": {"fail_start": True}, "omega": {}}
    async with fake_runtime(tmp_path, hook_plugins=[NorthboundTestPlugin()], start=False,
                            enable=plugins) as (rt, link):
        with pytest.raises(PluginError, match="plugin 'gamma' failed to start: RuntimeError: port already in use"):
            await rt.start()
        assert EVENTS == ["start alpha", "start beta", "start gamma", "stop beta", "stop alpha"]
        assert rt.bus_status("demo").state is BusState.STOPPED
        assert link.driver.closed
        assert not rt.ready


async def test_a_failing_stop_does_not_keep_the_others_running(tmp_path: Path) -> None:
    plugins = {"alpha": {}, "beta": {"fail_stop": True}, "omega": {}}
    async with fake_runtime(tmp_path, hook_plugins=[NorthboundTestPlugin()], enable=plugins) as (rt, _):
        pass
    assert EVENTS[3:] == ["stop omega", "stop beta", "stop alpha"]
    assert not rt.services["alpha"].running  # type: ignore[attr-defined]


async def test_plugin_config_errors_have_key_paths_and_lines(tmp_path: Path) -> None:
    channel = "fake-cfg"
    LINKS[channel] = FakeLink()
    try:
        p = tmp_path / "bridge.yaml"
        p.write_text(f"""\
buses: [{{name: demo, interface: fake, channel: {channel}}}]
mappings: [{{bus: demo, dbc: {DEMO_DBC}}}]
plugins:
  alpha:
    port: 70000
    greting: hi
  beta:
    fail_start: maybe
  zeta: {{}}
""")
        with pytest.raises(ConfigError) as info:
            runtime_from_file(p, fake_registry(NorthboundTestPlugin()))
        text = [str(x) for x in info.value.problems]
        assert f"{p}:5 plugins.alpha.port: Input should be less than or equal to 65535" in text
        assert f"{p}:6 plugins.alpha.greting: unknown key 'greting'" in text
        assert any(t.startswith(f"{p}:8 plugins.beta.fail_start: Input should be a valid boolean") for t in text)
        assert f"{p}:9 plugins.zeta: no plugin named 'zeta' is installed " \
               "(installed: alpha, beta, gamma, omega)" in text
        assert len(text) == 4
    finally:
        del LINKS[channel]


async def test_unknown_plugin_when_none_are_installed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no plugin named 'rest' is installed \(installed: none\)"):
        async with fake_runtime(tmp_path, enable={"rest": {}}):
            pass


async def test_unknown_interface_is_a_config_error(tmp_path: Path) -> None:
    from canbridge.config import parse_config
    from canbridge.core.app import build_runtime

    data = {"buses": [{"name": "x", "interface": "warp-drive"}]}
    with pytest.raises(ConfigError, match=r"buses\[0\]\.interface: unknown interface 'warp-drive'.*fake"):
        build_runtime(parse_config(data), fake_registry(), base_dir=tmp_path)


async def test_run_serves_until_the_trigger_and_then_stops(tmp_path: Path) -> None:
    stop = asyncio.Event()
    async with fake_runtime(tmp_path, hook_plugins=[NorthboundTestPlugin()], start=False, gc_freeze=False,
                            enable={"alpha": {}}) as (rt, link):
        task = asyncio.create_task(rt.run(stop.wait))
        await until(lambda: rt.ready)
        link.deliver(motor_status(77))
        assert rt.read("demo.MotorStatus.MotorSpeed").value == 77
        stop.set()
        await asyncio.wait_for(task, 10)
        assert EVENTS == ["start alpha", "stop alpha"]
        assert rt.bus_status("demo").state is BusState.STOPPED


async def test_run_stops_even_when_the_trigger_fails(tmp_path: Path) -> None:
    async def boom() -> None:
        raise RuntimeError("trigger failed")

    async with fake_runtime(tmp_path, hook_plugins=[NorthboundTestPlugin()], start=False, gc_freeze=False,
                            enable={"alpha": {}}) as (rt, _):
        with pytest.raises(RuntimeError, match="trigger failed"):
            await rt.run(boom)
        assert EVENTS == ["start alpha", "stop alpha"]


async def test_the_facade(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, bus={"bitrate": 500000}) as (rt, _):
        assert isinstance(rt, Bridge)
        assert rt.config_path is None
        assert rt.state_dir == tmp_path / "state" and rt.state_dir.is_dir()
        info = rt.buses["demo"]
        assert (info.interface, info.bitrate, info.fd) == ("fake", 500000, False)
        assert rt.messages["demo.MotorStatus"].cycle_time_ms == 100
        assert [m.name for m in rt.message_status()] == list(rt.messages)
        assert all(m.frames == 0 and m.age_s is None for m in rt.message_status("demo"))
        with pytest.raises(KeyError):
            rt.bus_status("nope")
    async with fake_runtime(tmp_path, start=False) as (rt, _):
        with pytest.raises(PluginError, match="not running"):
            await rt.write("demo.MotorCommand.SpeedSetpoint", 1, Caller("t"))
        with pytest.raises(PluginError, match="not running"):
            await rt.send_frame("demo", "123#00", Caller("t"))


async def test_config_path_and_relative_state_dir(tmp_path: Path) -> None:
    channel = "fake-path"
    LINKS[channel] = FakeLink()
    try:
        p = tmp_path / "bridge.yaml"
        p.write_text(f"buses: [{{name: demo, interface: fake, channel: {channel}}}]\n"
                     f"mappings: [{{bus: demo, dbc: {DEMO_DBC}}}]\nstate_dir: st\n")
        rt = runtime_from_file(p, fake_registry())
        assert rt.config_path == p.resolve()
        assert rt.state_dir == tmp_path / "st"
    finally:
        del LINKS[channel]


async def test_transmitted_messages_start_from_their_initial_frame(tmp_path: Path) -> None:
    mapping = {"writable": ["MotorCommand.*"], "transmit": {"MotorCommand": {"period_ms": 50}}}
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        v = rt.read("demo.MotorCommand.TorqueLimit")
        assert (v.value, v.quality) == (50, Quality.GOOD)
        [p] = link.running_periodic
        assert p.frame.data[3] == 50
    mapping = {"writable": ["MotorCommand.*"]}  # send on write only: waiting until written
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        v = rt.read("demo.MotorCommand.TorqueLimit")
        assert (v.value, v.quality) == (50, Quality.WAITING)
        assert link.running_periodic == []
    mapping = {"writable": ["MotorCommand.*"], "transmit": {"MotorCommand": {"period_ms": 50, "seed": "received"}}}
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        v = rt.read("demo.MotorCommand.TorqueLimit")
        assert (v.value, v.quality) == (None, Quality.WAITING)
        assert link.running_periodic == []  # nothing to send before a frame arrives and a write


async def test_transmitted_message_quality_follows_the_bus(tmp_path: Path) -> None:
    mapping = {"writable": ["MotorCommand.*"], "transmit": {"MotorCommand": {"period_ms": 50}}}
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        link.fail(OSError(100, "Network is down"))
        await until(lambda: rt.bus_status("demo").reconnects == 1)
        assert rt.read("demo.MotorCommand.TorqueLimit").quality is Quality.GOOD


async def test_two_buses_with_the_same_dbc_at_run_time() -> None:
    from canbridge.core.app import unique_channel
    from canbridge.testing import BridgeHarness

    buses = [{"name": n, "interface": "virtual", "channel": unique_channel(n)} for n in ("left", "right")]
    config = {"buses": buses, "mappings": [{"bus": "left", "dbc": str(DEMO_DBC)},
                                           {"bus": "right", "dbc": str(DEMO_DBC), "writable": ["MotorCommand.*"]}]}
    async with BridgeHarness(config=config) as h:
        h.inject("100#0A00000000000000", bus="left")
        h.inject("100#1400000000000000", bus="right")
        await h.until(lambda: h.bridge.read("right.MotorStatus.MotorSpeed").value == 20)
        await h.until(lambda: h.bridge.read("left.MotorStatus.MotorSpeed").value == 10)
        await h.bridge.write("right.MotorCommand.SpeedSetpoint", 5, Caller("test"))
        assert (await h.next_sent(0x300, bus="right")).data[0] == 5
        with pytest.raises(TimeoutError):
            await h.next_sent(0x300, bus="left", timeout=0.3)
        assert h.bridge.bus_status("left").tx_frames == 0


async def test_unknown_bus_is_named_and_still_a_key_error(tmp_path: Path) -> None:
    from canbridge import UnknownBus

    async with fake_runtime(tmp_path) as (rt, _):
        for call in (lambda: rt.bus_status("nope"), lambda: rt.subscribe_frames("nope")):
            with pytest.raises(UnknownBus, match="no bus named 'nope'; buses: demo") as info:
                call()
            assert isinstance(info.value, KeyError)


@pytest.mark.parametrize(("options", "path", "needle"), [
    ({"max_drain": 0}, "buses[0].options.max_drain", "greater than or equal to 1"),
    ({"max_drain": "lots"}, "buses[0].options.max_drain", "valid integer"),
    ({"recvmmsg": "sometimes"}, "buses[0].options.recvmmsg", "valid boolean"),
])
def test_a_bus_kinds_options_model_checks_options(tmp_path: Path, options: dict[str, object], path: str,
                                                  needle: str) -> None:
    from canbridge.config import parse_config
    from canbridge.core.app import build_runtime
    from canbridge.core.host import load_registry

    data = {"buses": [{"name": "can0", "interface": "socketcan", "channel": "vcan0", "options": options}],
            "mappings": []}
    with pytest.raises(ConfigError) as info:
        build_runtime(parse_config(data), load_registry(load_entry_points=False)[1], base_dir=tmp_path)
    (problem,) = info.value.problems
    assert problem.path == path and needle in problem.message


def test_socketcan_options_pass_other_keys_to_python_can(tmp_path: Path) -> None:
    from canbridge.config import parse_config
    from canbridge.core.app import build_runtime
    from canbridge.core.host import load_registry

    data = {"buses": [{"name": "can0", "interface": "socketcan", "channel": "vcan0",
                       "options": {"max_drain": 64, "local_loopback": True}}], "mappings": []}
    rt = build_runtime(parse_config(data), load_registry(load_entry_points=False)[1], base_dir=tmp_path)
    assert rt.config.buses[0].options == {"max_drain": 64, "local_loopback": True}
