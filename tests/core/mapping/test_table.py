"""The mapping table (canbridge/core/mapping/table.py) built from a configuration and mapping files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from canbridge import ConfigError, SignalInfo
from canbridge.config import parse_config
from canbridge.core.app import DEMO_DBC
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.mapping.table import EXT_KEY, MappingTable, build_table, frame_key

FORMATS = collect(make_plugin_manager(load_entry_points=False)).formats
DATA = Path(__file__).resolve().parents[2] / "data"


def table(*mappings: dict[str, Any], buses: tuple[str, ...] = ("demo",), base: Path | None = None,
          lines: dict[Any, int] | None = None) -> MappingTable:
    data = {"buses": [{"name": b, "interface": "virtual", "channel": b} for b in buses],
            "mappings": [{"bus": buses[0], "dbc": str(DEMO_DBC), **m} for m in mappings]}
    return build_table(parse_config(data), base or Path.cwd(), FORMATS, "bridge.yaml", lines)


def sig(t: MappingTable, name: str) -> SignalInfo:
    return t.signals[name]


def test_names_order_and_directions() -> None:
    t = table({"writable": ["MotorCommand.Speed*"]})
    names = list(t.signals)
    assert names[:3] == ["demo.MotorStatus.MotorSpeed", "demo.MotorStatus.MotorTemperature",
                         "demo.MotorStatus.MotorCurrent"]
    assert [s.index for s in t.signal_list] == list(range(len(names)))
    assert len(t.message_list) == 6 and len(names) == 25
    assert set(t.messages) == {f"demo.{m}" for m in ("MotorStatus", "PowerStatus", "BatteryStatus",
                                                     "MotorCommand", "VehicleInfo", "Diagnostics")}
    cmd = t.messages["demo.MotorCommand"].info
    assert cmd.direction == "tx" and cmd.signals[0] == "demo.MotorCommand.SpeedSetpoint"
    assert sig(t, "demo.MotorCommand.SpeedSetpoint").writable
    torque = sig(t, "demo.MotorCommand.TorqueLimit")
    assert (torque.direction, torque.writable, torque.initial) == ("tx", False, 50)
    assert t.messages["demo.MotorCommand"].initial[3] == 50
    speed = sig(t, "demo.MotorStatus.MotorSpeed")
    assert (speed.direction, speed.writable, speed.bus, speed.message, speed.signal) == (
        "rx", False, "demo", "MotorStatus", "MotorSpeed")
    assert speed.unit == "rpm" and speed.comment == "Measured rotor speed."
    for s in t.signal_list:
        assert t.message_list[t.signal_message[s.index]].info.name == f"{s.bus}.{s.message}"


def test_extended_ids_have_their_own_keys() -> None:
    t = table({})
    vi = t.messages["demo.VehicleInfo"]
    assert vi.info.extended and vi.info.frame_id == 0x18FEF100
    assert vi.key == 0x18FEF100 | EXT_KEY == frame_key(0x18FEF100, True)
    assert t.by_bus["demo"][vi.key] is vi
    assert frame_key(0x100, False) == 0x100 in t.by_bus["demo"]


def test_value_types_limits_and_choices() -> None:
    t = table({})
    expect = {
        "demo.MotorStatus.MotorSpeed": (int, -8000, 8000),
        "demo.MotorStatus.MotorTemperature": (int, -40, 215),
        "demo.MotorStatus.MotorCurrent": (float, -500, 500),
        "demo.MotorStatus.MotorEnabled": (bool, 0, 1),
        "demo.MotorStatus.MotorState": (int, 0, 3),
        "demo.PowerStatus.MotorPower": (float, -500, 500),
        "demo.VehicleInfo.Odometer": (float, 0, 400000000),
        "demo.Diagnostics.UptimeSeconds": (int, 0, 4294967295),
    }
    for name, (vt, lo, hi) in expect.items():
        s = sig(t, name)
        assert (s.value_type, s.minimum, s.maximum) == (vt, lo, hi), name
    assert sig(t, "demo.PowerStatus.MotorPower").is_float
    state = sig(t, "demo.MotorStatus.MotorState")
    assert dict(state.choices or {}) == {0: "Off", 1: "Ready", 2: "Running", 3: "Fault"}
    assert state.choice_value("Running") == 2 and state.choice_value("Broken") is None
    assert sig(t, "demo.MotorStatus.MotorSpeed").choices is None


def test_limits_without_dbc_range_come_from_the_bits(tmp_path: Path) -> None:
    dbc = tmp_path / "limits.dbc"
    dbc.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: A\n\n'
        "BO_ 100 Lim: 8 A\n"
        ' SG_ Unset : 0|8@1- (0.5,10) [0|0] "" A\n'
        ' SG_ Partial : 8|8@1+ (1,0) [0|300] "" A\n'
        ' SG_ Wide : 16|12@1+ (1,0) [-5|5000] "" A\n\n'
    )
    t = table({"dbc": str(dbc)})
    assert (sig(t, "demo.Lim.Unset").minimum, sig(t, "demo.Lim.Unset").maximum) == (-54.0, 73.5)
    assert (sig(t, "demo.Lim.Partial").minimum, sig(t, "demo.Lim.Partial").maximum) == (0, 255)
    assert (sig(t, "demo.Lim.Wide").minimum, sig(t, "demo.Lim.Wide").maximum) == (0, 4095)


def test_staleness_from_cycle_time_and_by_hand() -> None:
    t = table({"stale_factor": 2.5, "stale_after_ms": {"Battery*": 1234}, "writable": ["MotorCommand.*"]})
    assert t.messages["demo.MotorStatus"].timeout_s == pytest.approx(0.25)  # 100 ms x 2.5
    assert t.messages["demo.Diagnostics"].timeout_s == pytest.approx(2.5)
    assert t.messages["demo.BatteryStatus"].timeout_s == pytest.approx(1.234)  # by hand wins
    assert sig(t, "demo.BatteryStatus.PackVoltage").timeout_s == pytest.approx(1.234)
    assert sig(t, "demo.MotorStatus.MotorSpeed").cycle_time_ms == 100
    assert t.messages["demo.MotorCommand"].timeout_s is None  # what the bridge sends never goes stale
    default = table({})
    assert default.messages["demo.VehicleInfo"].timeout_s == pytest.approx(1.5)  # 500 ms x 3


def test_message_without_cycle_time_never_goes_stale(tmp_path: Path) -> None:
    dbc = tmp_path / "nocycle.dbc"
    dbc.write_text('VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: A\n\nBO_ 100 M: 1 A\n SG_ S : 0|8@1+ (1,0) [0|0] "" A\n\n')
    assert table({"dbc": str(dbc)}).messages["demo.M"].timeout_s is None


def test_multiplexer_info() -> None:
    t = table({})
    page = sig(t, "demo.Diagnostics.DiagPage")
    assert page.is_multiplexer and page.multiplexer is None
    up = sig(t, "demo.Diagnostics.UptimeSeconds")
    assert (up.multiplexer, up.multiplexer_ids) == ("DiagPage", (1,))
    assert sig(t, "demo.Diagnostics.FirmwareMinor").multiplexer_ids == (2,)
    assert sig(t, "demo.MotorStatus.MotorSpeed").multiplexer is None


def test_yaml_signals_with_nested_multiplexers_and_fd() -> None:
    data = {"buses": [{"name": "fd", "interface": "virtual", "channel": "x", "fd": True}],
            "mappings": [{"bus": "fd", "signals": str(DATA / "signals" / "fd_nested.yaml")}]}
    t = build_table(parse_config(data), Path.cwd(), FORMATS)
    m = t.messages["fd.FdTelemetry"].info
    assert (m.fd, m.extended, m.length) == (True, True, 64)
    cur = sig(t, "fd.FdTelemetry.Current")
    assert (cur.multiplexer, cur.multiplexer_ids) == ("SubPage", (1, 2))
    assert sig(t, "fd.FdTelemetry.Energy").value_type is float


def test_messages_filter_and_write_rate() -> None:
    t = table({"messages": ["Motor*"], "writable": ["MotorCommand.Enable"], "write_rate": None})
    assert set(t.messages) == {"demo.MotorStatus", "demo.MotorCommand"}
    assert sig(t, "demo.MotorCommand.Enable").max_write_rate is None
    default = table({"writable": ["MotorCommand.*"]})
    assert default.signals["demo.MotorCommand.SpeedSetpoint"].max_write_rate == 10.0
    assert default.signals["demo.MotorStatus.MotorSpeed"].max_write_rate is None  # received: no write rate


def test_two_buses_with_the_same_dbc_are_separate_signals() -> None:
    data = {"buses": [{"name": "left", "interface": "virtual", "channel": "l"},
                      {"name": "right", "interface": "virtual", "channel": "r"}],
            "mappings": [{"bus": "left", "dbc": str(DEMO_DBC)},
                         {"bus": "right", "dbc": str(DEMO_DBC), "writable": ["MotorCommand.*"]}]}
    t = build_table(parse_config(data), Path.cwd(), FORMATS)
    a, b = t.signals["left.MotorStatus.MotorSpeed"], t.signals["right.MotorStatus.MotorSpeed"]
    assert a.index != b.index and (a.bus, b.bus) == ("left", "right")
    assert not t.signals["left.MotorCommand.Enable"].writable and t.signals["right.MotorCommand.Enable"].writable
    assert t.by_bus["left"][0x100] is not t.by_bus["right"][0x100]
    assert len(t.messages_of("left")) == len(t.messages_of("right")) == 6
    # decoding a frame of one bus touches only its own slots
    values: list[Any] = [None] * len(t.signal_list)
    changed: list[int] = []
    t.by_bus["left"][0x100].decoder(bytes([1, 0, 0, 0, 0, 0, 0, 0]), values, changed)
    assert values[a.index] == 1 and values[b.index] is None


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    lines = {("mappings", 0): 5, ("mappings", 0, "writable"): 7, ("mappings", 0, "messages"): 6,
             ("mappings", 0, "transmit", "NoSuchMessage"): 9, ("mappings", 0, "stale_after_ms", "Nothing*"): 11}
    with pytest.raises(ConfigError) as info:
        table({"messages": ["Motor*", "Ghost*"], "writable": ["MotorCommand.*", "MotorCommand.Nope"],
               "transmit": {"NoSuchMessage": {}}, "stale_after_ms": {"Nothing*": 5}},
              {"dbc": str(tmp_path / "missing.dbc")}, lines=lines)
    text = str(info.value)
    problems = info.value.problems
    assert len(problems) == 5, text
    assert "bridge.yaml:6 mappings[0].messages: message pattern 'Ghost*' matches no message" in text
    assert "bridge.yaml:7 mappings[0].writable: writable pattern 'MotorCommand.Nope' matches no signal" in text
    assert "bridge.yaml:9 mappings[0].transmit.NoSuchMessage: transmit names message 'NoSuchMessage'" in text
    assert "bridge.yaml:11 mappings[0].stale_after_ms.Nothing*: stale_after_ms pattern" in text
    assert f"bridge.yaml mappings[1].dbc: file not found: {tmp_path / 'missing.dbc'}" in text


def test_the_same_frame_id_twice_on_one_bus_is_an_error(tmp_path: Path) -> None:
    dbc = tmp_path / "clash.dbc"
    dbc.write_text('VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: A\n\nBO_ 256 Other: 1 A\n SG_ S : 0|8@1+ (1,0) [0|0] "" A\n\n')
    with pytest.raises(ConfigError, match=r"frame id 0x100 of Other is already mapped by demo\.MotorStatus"):
        table({}, {"dbc": str(dbc)})
    with pytest.raises(ConfigError, match=r"message demo\.MotorStatus is mapped twice"):
        table({"messages": ["MotorStatus"]}, {"messages": ["MotorStatus"]})


def test_unknown_mapping_suffix_and_format(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("")
    with pytest.raises(ConfigError, match=r"unknown mapping file type '\.txt'; known: .*\.dbc"):
        table({"dbc": str(f)})
    with pytest.raises(ConfigError, match=r"unknown mapping format 'nope'; installed: .*dbc"):
        table({"format": "nope"})


def test_relative_mapping_paths_resolve_against_the_base_dir() -> None:
    t = table({"dbc": DEMO_DBC.name}, base=DEMO_DBC.parent)
    assert len(t.signals) == 25
    assert all(math.isfinite(s.minimum) for s in t.signal_list)
