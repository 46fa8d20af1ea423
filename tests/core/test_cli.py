"""The ``canbridge`` command (canbridge/cli.py): check reports every problem at once, run refuses to
start on them, every test DBC checks in strict or lenient mode, plugins lists what is installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from canbridge import __version__
from canbridge.cli import main
from canbridge.core.app import DEMO_DBC

ROOT = Path(__file__).resolve().parents[2]
DBC_DIR = ROOT / "tests" / "data" / "dbc"
CANBRIDGE = ROOT / ".venv" / "bin" / "canbridge"
# opendbc files that cantools' strict mode rejects, and why (the message names file, line and cause)
STRICT_REJECTED = {
    "FORD_CADS_64.dbc": "does not fit in message",
    "chrysler_cusw.dbc": "is more than 11 bits",
    "mazda_2017.dbc": "invalid syntax",
    "vw_mqb.dbc": "are overlapping",
}

BAD = """\
buses:
  - name: demo
    interface: virtual
    channel: x
    chanel: typo
  - name: two
    interface: nosuchbus
mappings:
  - bus: demo
    dbc: {dbc}
    writable: [MotorCommand.Nope]
    transmit:
      Ghost: {{}}
  - bus: demo
    dbc: missing.dbc
plugins:
  nosuch: {{}}
  rest: {{listen: 5}}
"""


def bad_config(tmp_path: Path, schema_error: bool = True) -> Path:
    text = BAD.format(dbc=DEMO_DBC)
    if not schema_error:
        text = text.replace("    chanel: typo\n", "")
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


def expected_problems(path: Path, schema_error: bool) -> list[str]:
    off = 0 if schema_error else -1
    out = [
        f"{path}:{7 + off} buses[1].interface: unknown interface 'nosuchbus'",
        f"{path}:{11 + off} mappings[0].writable: writable pattern 'MotorCommand.Nope' matches no signal",
        f"{path}:{13 + off} mappings[0].transmit.Ghost: transmit names message 'Ghost', which is not mapped",
        f"{path}:{15 + off} mappings[1].dbc: file not found: {path.parent / 'missing.dbc'}",
        f"{path}:{17 + off} plugins.nosuch: no plugin named 'nosuch' is installed (installed: ",
        f"{path}:{18 + off} plugins.rest.listen: unknown key 'listen'",
    ]
    if schema_error:
        out.append(f"{path}:5 buses[0].chanel: unknown key 'chanel'")
    return out


@pytest.mark.parametrize("schema_error", [False, True], ids=["valid-schema", "with-unknown-key"])
def test_check_reports_every_problem_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             schema_error: bool) -> None:
    path = bad_config(tmp_path, schema_error)
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    expected = expected_problems(path, schema_error)
    assert f"{len(expected)} problems found:" in err
    for line in expected:
        assert line in err, f"{line!r} missing from:\n{err}"
    assert "installed: modbus, mqtt, opcua, rest" in err


def test_run_refuses_to_start_on_the_same_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for schema_error in (False, True):
        path = bad_config(tmp_path, schema_error)
        assert main(["run", str(path)]) == 1
        err = capsys.readouterr().err
        for line in expected_problems(path, schema_error):
            assert line in err
        assert "not started" in err


def test_check_and_run_as_commands(tmp_path: Path) -> None:
    path = bad_config(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    exe = str(CANBRIDGE) if CANBRIDGE.exists() else None
    cmd = [exe, "check", str(path)] if exe else [sys.executable, "-m", "canbridge", "check", str(path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "7 problems found" in r.stderr
    r = subprocess.run([sys.executable, "-m", "canbridge", "run", str(path)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 1 and "not started" in r.stderr and "running" not in r.stdout


def test_check_ok_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "ok.yaml"
    p.write_text(textwrap.dedent(f"""\
        buses: [{{name: demo, interface: virtual, channel: x}}]
        mappings: [{{bus: demo, dbc: {DEMO_DBC}, writable: ["MotorCommand.*"]}}]
        plugins: {{rest: {{port: 0}}}}
    """))
    assert main(["check", str(p)]) == 0  # port 0: check tries to bind the port, 8080 may be taken here
    assert capsys.readouterr().out.strip() == \
        "OK: 1 bus(es), 6 messages, 25 signals (4 writable), plugins: rest"


def test_check_names_a_missing_socketcan_interface(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "can.yaml"
    p.write_text(f"buses: [{{name: c, interface: socketcan, channel: cbtestabsent0}}]\n"
                 f"mappings: [{{bus: c, dbc: {DEMO_DBC}}}]\n")
    assert main(["check", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}:1 buses[0].channel:" in err
    assert "cbtestabsent0" in err or "SocketCAN" in err
    assert main(["check", "--no-interfaces", str(p)]) == 0


def _dbc_config(tmp_path: Path, dbc: Path, strict: bool) -> Path:
    p = tmp_path / f"{dbc.stem}-{'strict' if strict else 'lenient'}.yaml"
    p.write_text(f"buses:\n  - {{name: car, interface: virtual, channel: x}}\nmappings:\n"
                 f"  - bus: car\n    dbc: {dbc}\n    strict: {'true' if strict else 'false'}\n")
    return p


@pytest.mark.parametrize("dbc", sorted(DBC_DIR.glob("*.dbc")), ids=lambda p: p.name)
def test_check_every_test_dbc(tmp_path: Path, capsys: pytest.CaptureFixture[str], dbc: Path) -> None:
    rc = main(["check", str(_dbc_config(tmp_path, dbc, strict=True))])
    out, err = capsys.readouterr()
    if dbc.name in STRICT_REJECTED:
        assert rc == 1
        # file:line: cause, and how to get past it
        assert f"{dbc}:" in err and STRICT_REJECTED[dbc.name] in err, err
        line = err.split(f"{dbc}:", 1)[1].split(":", 1)[0]
        assert line.isdigit() and int(line) > 1
        assert "strict: false" in err
    else:
        assert rc == 0, err
        assert out.startswith("OK: 1 bus(es)")
    assert main(["check", str(_dbc_config(tmp_path, dbc, strict=False))]) == 0
    assert "OK: 1 bus(es)" in capsys.readouterr().out


def test_strict_rejected_list_is_current() -> None:
    names = {p.name for p in DBC_DIR.glob("*.dbc")}
    assert set(STRICT_REJECTED) <= names
    assert {"mazda_2017.dbc", "chrysler_cusw.dbc"} <= set(STRICT_REJECTED)


@pytest.mark.parametrize("name", ["mazda_2017.dbc", "chrysler_cusw.dbc", "toyota_prius_2010_pt.dbc"])
def test_check_dbc_option(capsys: pytest.CaptureFixture[str], name: str) -> None:
    dbc = DBC_DIR / name
    rc = main(["check", "--dbc", str(dbc)])
    out, err = capsys.readouterr()
    if name in STRICT_REJECTED:
        assert rc == 1 and f"{dbc}:" in err and STRICT_REJECTED[name] in err
        assert main(["check", "--dbc", str(dbc), "--lenient"]) == 0
        out = capsys.readouterr().out
    else:
        assert rc == 0
    assert out.startswith("OK: 1 bus(es), ")


def test_check_dbc_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check", "--dbc", str(tmp_path / "nope.dbc")]) == 1
    assert "file not found" in capsys.readouterr().err


def test_check_needs_something(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 2
    assert "give CONFIG or --dbc FILE" in capsys.readouterr().err


def test_plugins_lists_the_builtin_plugins_with_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:6] if line.strip()}
    for name in ("canbridge.builtin", "opcua", "modbus", "mqtt", "rest"):
        assert rows[name][1:3] == ["canbridge", __version__], out
    assert "register_northbound" in rows["rest"][3:][0]
    assert "mapping formats: arxml, dbc, kcd, sym, yaml" in out
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"modbus", "opcua", "rest"} <= set(data["northbound"])
    assert {"socketcan", "virtual", "replay", "python-can"} <= set(data["bus_kinds"])
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["opcua"]["module"] == "canbridge_opcua.plugin"
    assert by_name["canbridge.builtin"]["hooks"] == ["register_bus_kinds", "register_mapping_formats"]


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "run" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def _wait_for_line(proc: subprocess.Popen[bytes], needle: str, timeout: float, stderr: bool = False) -> str:
    """What ``proc`` printed (on stdout, or stderr) up to and including ``needle``."""
    import selectors

    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None
    fd = stream.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(min(left, 0.5)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
            if needle.encode() in seen:
                return seen.decode()
    raise AssertionError(f"{needle!r} not printed within {timeout} s; got {seen!r}")


def test_demo_starts_and_stops_on_sigint(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "canbridge", "demo", "--no-plugins", "--state-dir",
                             str(tmp_path), "--log-level", "INFO"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = _wait_for_line(proc, "Connect to", 60)
        assert "25 signals" in out
        assert "a J1939 bus 'truck': an engine (0x00) and a transmission (0x03)" in out
        # serving: the bus came up (logged once the signal handlers are installed and the bridge started)
        started = _wait_for_line(proc, "-> active", 60, stderr=True)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
        err = started.encode() + rest
        assert proc.returncode == 0, err
        assert b"canbridge stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_simulate_plays_a_config_until_stopped(tmp_path: Path) -> None:
    p = tmp_path / "sim.yaml"
    p.write_text(f"buses: [{{name: demo, interface: virtual, channel: sim-{os.getpid()}}}]\n"
                 f"mappings: [{{bus: demo, dbc: {DEMO_DBC}, writable: ['MotorCommand.*']}}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "canbridge", "simulate", str(p)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = _wait_for_line(proc, "simulating", 60)
        assert "simulating 5 messages on virtual" in out  # the received ones; MotorCommand is the bridge's
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_demo_leaves_out_a_plugin_whose_requirement_is_missing() -> None:
    from pydantic import BaseModel

    from canbridge import NorthboundPlugin
    from canbridge.cli import demo_plugins

    class Options(BaseModel):
        port: int = 0

    asked: list[str] = []

    def needs_broker() -> str | None:
        asked.append("broker")
        return "no MQTT broker on 127.0.0.1:1883"

    plain = NorthboundPlugin("plain", Options, lambda b, c: None, demo_config={"port": 1})  # type: ignore[arg-type, return-value]
    needy = NorthboundPlugin("needy", Options, lambda b, c: None, demo_config={"port": 2},  # type: ignore[arg-type, return-value]
                             demo_requires=needs_broker)
    ready = NorthboundPlugin("ready", Options, lambda b, c: None, demo_requires=lambda: None)  # type: ignore[arg-type, return-value]
    plugins, left_out = demo_plugins({"plain": plain, "needy": needy, "ready": ready})
    assert plugins == {"plain": {"port": 1}, "ready": {}}
    assert left_out == {"needy": "no MQTT broker on 127.0.0.1:1883"}
    assert asked == ["broker"]
