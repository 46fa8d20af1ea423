"""Registration through the entry point, and ``canbridge modbus-map``."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import pytest
import yaml
from canbridge_modbus.config import ModbusConfig

from canbridge.core.host import load_registry
from tests.conftest import DEMO_DBC


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "buses": [{"name": "demo", "interface": "virtual", "channel": "x"}],
                "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC), "writable": ["MotorCommand.*"]}],
                "plugins": {"modbus": {"signals": {"demo.PowerStatus.*": {"word_order": "CDAB"}}}},
            }
        )
    )
    return path


def run_command(argv: list[str]) -> int:
    _, registry = load_registry()
    cmd = registry.commands["modbus-map"]
    parser = argparse.ArgumentParser()
    cmd.configure(parser)
    return cmd.run(parser.parse_args(argv))


def test_registered_through_the_entry_point() -> None:
    _, registry = load_registry()
    nb = registry.northbound["modbus"]
    assert nb.config_model is ModbusConfig
    assert nb.demo_config == {"host": "127.0.0.1", "port": 5020}
    assert "modbus-map" in registry.commands


def test_modbus_map_prints_csv_and_markdown(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command([str(config_file)]) == 0
    out, err = capsys.readouterr()
    assert "does not exist yet" in err
    rows = {r["signal"]: r for r in csv.DictReader(io.StringIO(out))}
    power = rows["demo.PowerStatus.MotorPower"]
    assert (power["table"], power["encoding"], power["word_order"], power["unit"]) == (
        "input_register",
        "float32",
        "CDAB",
        "kW",
    )
    assert rows["demo.MotorCommand.SpeedSetpoint"]["writable"] == "yes"
    assert rows["demo.bus.state"]["address"] == "30000"
    map_file = config_file.with_name("plant.modbus-map.yaml")
    assert not map_file.exists()
    # --write pins them; the output stays the same
    assert run_command([str(config_file), "--write", "--format", "markdown"]) == 0
    md, _ = capsys.readouterr()
    assert map_file.exists()
    row = f"| demo.PowerStatus.MotorPower | 1 | input_register | {power['address']} | 2 | float32 | CDAB |"
    assert row in md
    assert run_command([str(config_file)]) == 0
    again, err = capsys.readouterr()
    assert again == out and err == ""


def test_modbus_map_reports_configuration_errors(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.with_name("plant.modbus-map.yaml").write_text(
        "signals:\n  demo.MotorStatus.MotorSpeed: {address: 0}\n  demo.MotorStatus.MotorState: {address: 0}\n"
    )
    assert run_command([str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "demo.MotorStatus.MotorSpeed" in err and "demo.MotorStatus.MotorState" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_file.read_text().replace("word_order: CDAB", "word_order: XYZW"))
    assert run_command([str(bad)]) == 2
    assert "plugins.modbus" in capsys.readouterr().err
    # an error in the mapping table itself comes from canbridge.load_table, with the file named
    missing = tmp_path / "missing.yaml"
    missing.write_text(config_file.read_text().replace(str(DEMO_DBC), str(tmp_path / "nowhere.dbc")))
    assert run_command([str(missing)]) == 2
    assert "nowhere.dbc" in capsys.readouterr().err
