"""Regression: ``canbridge check`` said OK to configurations that ``run`` then failed on: two plugins on
one port, a port another program holds; it hid problems until others were fixed, put a wrong bus name
at line 1, printed lines out of order; it did not look at simulator rules; ``--dbc`` did not say
``--lenient``; and it was silent about DBCs without cycle times (never stale) and limits clipped to
the raw range. Each variant below failed before the fix."""

from __future__ import annotations

import re
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from canbridge.cli import main
from canbridge.core.app import DEMO_DBC

HEAD = f"""\
buses:
  - {{name: demo, interface: virtual, channel: chk}}
mappings:
  - {{bus: demo, dbc: {DEMO_DBC}, writable: ["MotorCommand.*"]}}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(err: str) -> list[str]:
    return [ln.strip() for ln in err.split("problem", 1)[-1].splitlines()[1:] if ln.startswith("  ")]


def check(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    rc = main(["check", *extra, str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


@pytest.fixture
def taken() -> Iterator[tuple[str, int]]:
    """A port held by another program (a listening socket)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield "127.0.0.1", s.getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- ports ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("second", [
    "modbus: {{port: {p}}}",
    "opcua: {{listen: 'opc.tcp://127.0.0.1:{p}', allow_anonymous: true}}",
    "opcua: {{listen: 'opc.tcp://0.0.0.0:{p}', allow_anonymous: true}}",  # the wildcard takes 127.0.0.1 too
])
def test_two_plugins_on_one_port(tmp_path: Path, capsys: pytest.CaptureFixture[str], second: str) -> None:
    p = free_port()
    path = write(tmp_path, HEAD + f"plugins:\n  rest: {{port: {p}}}\n  {second.format(p=p)}\n")
    rc, _, err = check(path, capsys)
    assert rc == 1
    [line] = problems(err)
    key = "port" if second.startswith("modbus") else "listen"
    plugin = second.split(":")[0]
    assert line.startswith(f"{path}:7 plugins.{plugin}.{key}: port {p} ") and "plugins.rest.port" in line, line
    assert "line 6" in line and "two plugins cannot listen on one port" in line


def test_different_addresses_or_port_0_do_not_clash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = free_port()
    path = write(tmp_path, HEAD + f"plugins:\n  rest: {{port: 0}}\n  modbus: {{port: 0}}\n"
                                   f"  opcua: {{listen: 'opc.tcp://127.0.0.1:{p}', allow_anonymous: true}}\n")
    rc, out, err = check(path, capsys)
    assert rc == 0, err
    assert out.startswith("OK:")


@pytest.mark.parametrize("plugin", ["rest", "modbus", "opcua"])
def test_a_port_already_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str], taken: tuple[str, int],
                               plugin: str) -> None:
    host, port = taken
    section = {"rest": f"{{host: {host}, port: {port}}}", "modbus": f"{{host: {host}, port: {port}}}",
               "opcua": f"{{listen: 'opc.tcp://{host}:{port}', allow_anonymous: true}}"}[plugin]
    path = write(tmp_path, HEAD + f"plugins:\n  {plugin}: {section}\n")
    rc, _, err = check(path, capsys)
    assert rc == 1
    key = "listen" if plugin == "opcua" else "port"
    [line] = problems(err)
    assert line.startswith(f"{path}:6 plugins.{plugin}.{key}: port {port} on {host} is already in use"), line
    # checking elsewhere than on the target: the bind test can be left out
    rc, _, err = check(path, capsys, "--no-ports")
    assert rc == 0, err


def test_run_refuses_before_any_plugin_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              taken: tuple[str, int]) -> None:
    host, port = taken
    p = free_port()
    path = write(tmp_path, HEAD + f"plugins:\n  modbus: {{port: {p}}}\n  rest: {{host: {host}, port: {port}}}\n")
    assert main(["run", str(path)]) == 1
    out, err = capsys.readouterr()
    assert f"{path}:7 plugins.rest.port: port {port} on {host} is already in use" in err
    assert "not started" in err and "running" not in out and "Traceback" not in err
    assert not (tmp_path / "c.modbus-map.yaml").exists()  # modbus was not started first


def test_a_host_that_is_not_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, HEAD + "plugins:\n  modbus: {host: 192.0.2.1, port: 15020}\n")  # TEST-NET-1: not here
    rc, _, err = check(path, capsys)
    assert rc == 1
    assert "plugins.modbus.port: cannot listen on 192.0.2.1:15020: 192.0.2.1 is not an address of this machine" in err


# --- every problem at once, at its line, in order ---------------------------------------------------

def test_a_wrong_bus_is_reported_at_its_line_with_the_other_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"""\
        buses:
          - {{name: demo, interface: virtual, chanel: x}}
        mappings:
          - {{bus: demo, dbc: {DEMO_DBC}}}
          - bus: demo2
            dbc: {DEMO_DBC}
        simulators:
          - {{bus: nope}}
        plugins:
          rest: {{prot: 1}}
        """)
    for extra in ((), ("--no-interfaces",)):
        rc, _, err = check(path, capsys, *extra)
        assert rc == 1
        got = problems(err)
        assert got == [
            f"{path}:2 buses[0].chanel: unknown key 'chanel'",
            f"{path}:5 mappings[1].bus: mapping for {DEMO_DBC} names bus 'demo2', which is not configured "
            "(buses: demo)",
            f"{path}:8 simulators[0].bus: simulator names bus 'nope', which is not configured (buses: demo)",
            f"{path}:10 plugins.rest.prot: unknown key 'prot'",
        ], err


def test_only_a_wrong_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, HEAD + f"  - {{bus: other, dbc: {DEMO_DBC}}}\n")
    rc, _, err = check(path, capsys)
    assert rc == 1 and problems(err) == [
        f"{path}:5 mappings[1].bus: mapping for {DEMO_DBC} names bus 'other', which is not configured (buses: demo)"]


def test_problems_come_in_file_and_line_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_dbc = tmp_path / "bad.dbc"
    bad_dbc.write_text('VERSION ""\n\nBO_ 1 M: 8 X\n SG_ a : 0|8@1+ (1,0) [0|0] "" X\nBO_ 2 M: 8 X\n')
    path = write(tmp_path, f"""\
        plugins:
          nosuch: {{}}
        buses:
          - {{name: demo, interface: warp}}
        mappings:
          - {{bus: demo, dbc: {DEMO_DBC}, writable: [Nope.*]}}
          - {{bus: demo, dbc: {bad_dbc}}}
        """)
    rc, _, err = check(path, capsys)
    assert rc == 1
    got = problems(err)
    where = [(m.group(1), int(m.group(2))) for ln in got if (m := re.match(r"(\S+?):(\d+) ", ln))]
    assert len(where) == len(got) >= 4, got
    assert where == sorted(where), got


# --- simulators ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "needle"), [
    ("follow: {MotorStatus.Nope: MotorCommand.Enable}", "no signal 'MotorStatus.Nope' on bus 'demo'"),
    ("follow: {MotorStatus.MotorEnabled: MotorCommand.Enabel}",
     "follow source: no signal 'MotorCommand.Enabel' on bus 'demo' (did you mean 'MotorCommand.Enable'?)"),
    ("ramp: {MotorStatus.MotorSpeed: MotorStatus.MotorCurrent}",
     "ramp source MotorStatus.MotorCurrent is not in a message the bridge sends"),
    ("waves: {MotorStatus.MotorTemp: {low: 1, high: 2}}", "no signal 'MotorStatus.MotorTemp' on bus 'demo'"),
    ("constants: {NoMessage.X: 1}", "no signal 'NoMessage.X' on bus 'demo'"),
    ("counters: {MotorCommand.Mode: 1}", "MotorCommand.Mode is in a message the bridge sends"),
])
def test_simulator_rules_name_signals_that_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str], rule: str,
                                                 needle: str) -> None:
    path = write(tmp_path, HEAD + f"simulators:\n  - bus: demo\n    {rule}\n")
    rc, _, err = check(path, capsys)
    assert rc == 1
    [line] = problems(err)
    section = rule.split(":")[0]
    assert line.startswith(f"{path}:7 simulators[0].{section}.") and needle in line, line
    assert main(["run", str(path)]) == 1  # run refuses the same
    assert needle in capsys.readouterr().err


def test_the_demo_simulator_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from canbridge.core.app import demo_config

    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(demo_config(channel="chk-demo")))
    rc, _, err = check(path, capsys)
    assert rc == 0, err


# --- --dbc: the --lenient hint ----------------------------------------------------------------------

def test_dbc_check_suggests_lenient(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbc = tmp_path / "overlap.dbc"
    dbc.write_text('VERSION ""\n\nBO_ 100 M: 8 X\n SG_ a : 0|8@1+ (1,0) [0|255] "" X\n'
                   ' SG_ b : 4|8@1+ (1,0) [0|255] "" X\n')
    assert main(["check", "--dbc", str(dbc)]) == 1
    err = capsys.readouterr().err
    assert f"hint: it loads in lenient mode: canbridge check --dbc {dbc} --lenient" in err
    assert main(["check", "--dbc", str(dbc), "--lenient"]) == 0
    capsys.readouterr()


def test_no_lenient_hint_when_lenient_fails_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbc = tmp_path / "broken.dbc"
    dbc.write_text("this is not a DBC at all {{{\n")
    assert main(["check", "--dbc", str(dbc)]) == 1
    assert "--lenient" not in capsys.readouterr().err


# --- warnings: it runs, but ----------------------------------------------------------------------

DBC_WARN = """\
VERSION ""

BU_: ECU

BO_ 256 Cycled: 8 ECU
 SG_ Speed : 0|8@1+ (1,0) [0|250] "rpm" Vector__XXX

BO_ 257 Quiet1: 8 ECU
 SG_ Level : 0|8@1+ (1,0) [0|1000] "%" Vector__XXX
 SG_ Temp : 8|8@1- (1,0) [-200|100] "degC" Vector__XXX

BO_ 258 Quiet2: 8 ECU
 SG_ Flag : 0|8@1+ (0.5,0) [0|127.5] "" Vector__XXX

BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "GenMsgCycleTime" BO_ 256 100;
"""


def test_warnings_for_missing_cycle_times_and_clipped_limits(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    dbc = tmp_path / "w.dbc"
    dbc.write_text(DBC_WARN)
    path = write(tmp_path, f"buses: [{{name: b, interface: virtual, channel: w}}]\nmappings:\n  - bus: b\n"
                           f"    dbc: {dbc}\n")
    rc, out, err = check(path, capsys)
    assert rc == 0 and out.startswith("OK:"), err  # warnings, not errors
    assert "2 warnings:" in err
    stale = next(ln for ln in err.splitlines() if "staleness" in ln)
    assert stale.strip().startswith(f"{path}:4 mappings[0].dbc: staleness is off for 2 of 3 received messages "
                                    "(Quiet1, Quiet2)"), stale
    assert "stale_after_ms" in stale
    clip = next(ln for ln in err.splitlines() if "clipped" in ln)
    assert "the limits of 2 signals" in clip, clip
    assert "Quiet1.Level [0|1000] -> [0|255]" in clip and "Quiet1.Temp [-200|100] -> [-128|100]" in clip
    assert "Flag" not in clip  # 127.5 = 255 x 0.5: exactly the raw range

    # a hand-set timeout turns staleness on: that warning goes, the other stays
    path.write_text(path.read_text() + "    stale_after_ms: {'Quiet*': 500}\n")
    rc, _, err = check(path, capsys)
    assert rc == 0 and "staleness" not in err and "1 warning:" in err
    # the same warnings for --dbc, naming the DBC itself
    assert main(["check", "--dbc", str(dbc)]) == 0
    err = capsys.readouterr().err
    assert f"{dbc}: staleness is off for 2 of 3" in err and "clipped" in err


def test_a_clean_dbc_has_no_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, HEAD)
    rc, out, err = check(path, capsys)
    assert rc == 0 and "warning" not in err and out.startswith("OK:")


def test_the_demo_names_its_taken_port_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       taken: tuple[str, int]) -> None:
    import dataclasses

    from canbridge import cli
    from canbridge.core import host

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    real = host.load_registry

    def registry_with_the_taken_port() -> tuple[object, host.Registry]:  # the demo's REST port is fixed: move it
        pm, reg = real()
        spec = reg.northbound["rest"]
        reg.northbound["rest"] = dataclasses.replace(spec, demo_config={**(spec.demo_config or {}), "port": taken[1]})
        return pm, reg

    def must_not_serve(*args: object, **kwargs: object) -> int:
        raise AssertionError("the demo started although its port is taken")

    monkeypatch.setattr(host, "load_registry", registry_with_the_taken_port)
    monkeypatch.setattr(cli, "_run_async", must_not_serve)
    assert main(["demo"]) == 1
    out, err = capsys.readouterr()
    assert f"plugins.rest.port: port {taken[1]} on 127.0.0.1 is already in use" in err
    assert "--no-plugins" in err and "Connect to" not in out and "Traceback" not in err
