"""The configuration file (canbridge/config.py): unknown keys and every other problem are errors
with file, line and key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from canbridge import ConfigError
from canbridge.config import Config, Strict, load_config, parse_config
from canbridge.core.app import DEMO_DBC


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bridge.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return [str(p) for p in info.value.problems]


def test_a_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    config, lines = load_config(write(tmp_path, f"""
        buses:
          - name: demo
            interface: virtual
            channel: demo
        mappings:
          - bus: demo
            dbc: {DEMO_DBC}
            transmit:
              MotorCommand: {{period_ms: 100}}
    """))
    bus = config.buses[0]
    assert (bus.receive_buffer, bus.kernel_filters, bus.fd) == (4 * 1024 * 1024, True, False)
    m = config.mappings[0]
    assert (m.strict, m.stale_factor, m.write_rate, m.file) == (True, 3.0, 10.0, DEMO_DBC)
    t = m.transmit["MotorCommand"]
    assert (t.period_ms, t.seed, t.start, t.on_writer_timeout) == (100, "initial", "immediately", "keep")
    assert lines[("buses", 0, "channel")] == 5
    assert config.gc_freeze and config.audit.enabled


def test_unknown_keys_at_every_level_are_reported_together(tmp_path: Path) -> None:
    got = problems(tmp_path, f"""
        buses:
          - name: demo
            interface: virtual
            chanel: demo
        mappings:
          - bus: demo
            dbc: {DEMO_DBC}
            transmit:
              MotorCommand: {{period: 100}}
        plugin: {{}}
    """)
    path = str(tmp_path / "bridge.yaml")
    assert f"{path}:5 buses[0].chanel: unknown key 'chanel'" in got
    assert f"{path}:10 mappings[0].transmit.MotorCommand.period: unknown key 'period'" in got
    assert f"{path}:11 plugin: unknown key 'plugin'" in got
    assert len(got) == 3


def test_values_are_checked_with_their_paths(tmp_path: Path) -> None:
    got = problems(tmp_path, """
        buses:
          - name: "bad name"
            interface: virtual
            receive_buffer: 10
          - name: ok
            bitrate: -5
        log_level: LOUD
    """)
    text = "\n".join(got)
    assert "bridge.yaml:3 buses[0].name: String should match pattern" in text
    assert "bridge.yaml:5 buses[0].receive_buffer: Input should be greater than or equal to 65536" in text
    assert "bridge.yaml:7 buses[1].bitrate: Input should be greater than 0" in text
    assert "bridge.yaml:8 log_level:" in text


def test_cross_references(tmp_path: Path) -> None:
    got = "\n".join(problems(tmp_path, f"""
        buses:
          - {{name: a, interface: virtual}}
          - {{name: a, interface: virtual}}
        mappings:
          - {{bus: b, dbc: {DEMO_DBC}}}
          - {{bus: a}}
          - {{bus: a, dbc: x.dbc, signals: y.yaml}}
        simulators:
          - {{bus: c}}
    """))
    assert "bus name 'a' is used twice" in got
    assert "give exactly one of 'dbc' or 'signals'" in got
    assert "mappings[1]" in got and "mappings[2]" in got


def test_refs_to_unconfigured_buses(tmp_path: Path) -> None:
    got = "\n".join(problems(tmp_path, f"""
        buses:
          - {{name: a, interface: virtual}}
        mappings:
          - {{bus: b, dbc: {DEMO_DBC}}}
    """))
    assert "names bus 'b', which is not configured" in got


@pytest.mark.parametrize(
    ("bus", "needle"),
    [
        ("{name: r, interface: replay}", "needs a 'replay: {file: ...}' section"),
        ("{name: r, interface: virtual, replay: {file: x.log}}", "only for interface 'replay'"),
        ("{name: r, interface: virtual, netlink: {bitrate: 500000}}", "only for interface 'socketcan'"),
        ("{name: r, interface: replay, replay: {file: x.log, speed: warp}}", "buses[0].replay.speed"),
        ("{name: r, interface: socketcan, netlink: {bitrate: 2000000}}", "buses[0].netlink.bitrate"),
    ],
)
def test_bus_kind_specific_sections(tmp_path: Path, bus: str, needle: str) -> None:
    got = "\n".join(problems(tmp_path, f"buses:\n  - {bus}\n"))
    assert needle in got


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    [p] = problems(tmp_path, "buses:\n  - name: a\n   bad: [\n")
    assert "YAML syntax" in p and "bridge.yaml:" in p
    [p] = problems(tmp_path, "buses:\n  - name: a\n    name: b\n")
    assert "bridge.yaml:3 buses[0]: key 'name' appears twice" in p


def test_not_a_mapping_and_missing_buses(tmp_path: Path) -> None:
    [p] = problems(tmp_path, "- just\n- a list\n")
    assert "must be a mapping with 'buses:'" in p
    [p] = problems(tmp_path, "log_level: INFO\n")
    assert "buses: required key is missing" in p
    [p] = problems(tmp_path, "")
    assert "buses: required key is missing" in p


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_strict_base_forbids_extra_keys_and_is_frozen() -> None:
    class Mine(Strict):
        port: int = 0

    with pytest.raises(Exception, match="Extra inputs are not permitted"):
        Mine.model_validate({"prot": 1})
    m = Mine(port=1)
    with pytest.raises(Exception, match="frozen"):
        m.port = 2  # type: ignore[misc]


def test_parse_config_without_a_file() -> None:
    config = parse_config({"buses": [{"name": "a"}]})
    assert isinstance(config, Config) and config.buses[0].interface == "socketcan"
    with pytest.raises(ConfigError) as info:
        parse_config({"buses": [{"name": "a", "x": 1}]})
    assert str(info.value) == "buses[0].x: unknown key 'x'"
