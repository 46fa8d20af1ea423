"""Address assignment, pinning in the map file, overlaps and the printed map."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.listing import render_csv, render_markdown
from canbridge_modbus.mapfile import default_map_path, load_map_file, save_map
from canbridge_modbus.planner import plan_register_map
from canbridge_modbus.registers import BRIDGE_DIAG_SIZE, DIAG_SIZE, RegisterMap

from canbridge import ConfigError, SignalInfo
from canbridge.testing import signal_info
from tests.plugins.modbus.helpers import table

SPEED = signal_info("demo.M.Speed", minimum=-8000, maximum=8000, unit="rpm")
TEMP = signal_info("demo.M.Temp", value_type=float, is_float=True, bit_length=16, minimum=-40, maximum=215)
ENABLED = signal_info("demo.M.Enabled", value_type=bool)
SETPOINT = signal_info("demo.C.Setpoint", maximum=6000, writable=True)
ENABLE = signal_info("demo.C.Enable", value_type=bool, writable=True)
ODO = signal_info("demo.V.Odometer", value_type=float, maximum=400_000_000, bit_length=32)


def plan(infos: dict[str, SignalInfo], path: Path, **cfg: object) -> RegisterMap:
    config = ModbusConfig.model_validate(cfg)
    rmap = plan_register_map(infos, ["demo"], config, load_map_file(path), path)
    if rmap.changed:
        save_map(path, rmap)
    return rmap


def test_first_run_assigns_tables_and_encodings(tmp_path: Path) -> None:
    rmap = plan(table(SPEED, TEMP, ENABLED, SETPOINT, ENABLE, ODO), tmp_path / "m.yaml")
    p = rmap.placements
    assert (p["demo.M.Speed"].table, p["demo.M.Speed"].address, p["demo.M.Speed"].encoding) == (
        "input_register",
        0,
        "int16",
    )
    assert (p["demo.M.Temp"].address, p["demo.M.Temp"].encoding, p["demo.M.Temp"].count) == (1, "float32", 2)
    assert (p["demo.M.Enabled"].table, p["demo.M.Enabled"].address) == ("discrete_input", 0)
    assert (p["demo.C.Setpoint"].table, p["demo.C.Setpoint"].encoding) == ("holding_register", "uint16")
    assert p["demo.C.Enable"].table == "coil"
    assert p["demo.V.Odometer"].encoding == "float64"  # 32-bit scaled: float32 would lose digits
    assert p["demo.V.Odometer"].address == 3
    assert sorted(x.quality_address for x in p.values()) == list(range(20000, 20006))
    assert rmap.diagnostics["demo"].address == 30000
    assert (tmp_path / "m.yaml").exists()


def test_addresses_never_move(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    first = plan(table(SPEED, TEMP, ENABLED), path)
    # Temp leaves the table, a new signal arrives: Speed stays, Temp's registers stay reserved
    second = plan(table(SPEED, ENABLED, signal_info("demo.M.New", maximum=10)), path)
    assert second.placements["demo.M.Speed"] == first.placements["demo.M.Speed"]
    assert second.placements["demo.M.New"].address == 3  # after Temp's reserved 1..2
    assert [(r.signal, r.address, r.count) for r in second.reserved] == [("demo.M.Temp", 1, 2)]
    new_q = second.placements["demo.M.New"].quality_address
    assert new_q not in {p.quality_address for p in first.placements.values()}
    # unchanged third run: nothing to write
    third = plan(table(SPEED, ENABLED, signal_info("demo.M.New", maximum=10)), path)
    assert not third.changed
    assert third.placements == second.placements
    # Temp comes back: it gets its old address and quality register again
    fourth = plan(table(SPEED, ENABLED, signal_info("demo.M.New", maximum=10), TEMP), path)
    assert fourth.placements["demo.M.Temp"] == first.placements["demo.M.Temp"]
    assert fourth.reserved == []


def test_pinned_encoding_wins_over_a_changed_configuration(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    plan(table(SPEED), path)
    again = plan(table(SPEED), path, encoding="float32")
    assert again.placements["demo.M.Speed"].encoding == "int16"


def test_hand_written_overlap_names_both_signals(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "signals:\n  demo.M.Temp: {address: 10, encoding: float32}\n  demo.M.Speed: {address: 11}\n"
    )
    with pytest.raises(ConfigError) as e:
        plan(table(SPEED, TEMP), path)
    text = str(e.value)
    assert "demo.M.Temp" in text and "demo.M.Speed" in text and "overlap" in text


def test_hand_written_map_is_completed_and_honoured(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("signals:\n  demo.M.Speed: {address: 100, word_order: BADC}\n")
    rmap = plan(table(SPEED, TEMP), path)
    assert rmap.placements["demo.M.Speed"].address == 100
    assert rmap.placements["demo.M.Speed"].word_order == "BADC"
    assert rmap.placements["demo.M.Temp"].address == 101  # after the highest
    assert load_map_file(path).signals["demo.M.Speed"]["encoding"] == "int16"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("signals: [1]", "signals"),
        ("signals:\n  demo.M.Speed: {address: 70000}", "65535"),
        ("signals:\n  demo.M.Speed: {address: 1, encoding: int8}", "encoding"),
        ("signals:\n  demo.M.Speed: {address: 1, colour: red}", "colour"),
        ("version: 9", "version"),
        ("signals: {", "YAML"),
    ],
)
def test_malformed_map_files(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        plan(table(SPEED), path)


def test_encoding_too_narrow_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit int16"):
        plan(table(ODO), tmp_path / "m.yaml", encoding="int16")
    with pytest.raises(ConfigError, match="one-bit"):
        plan(table(SPEED), tmp_path / "n.yaml", signals={"*.Speed": {"encoding": "bool"}})


def test_holding_only_units_and_scale(tmp_path: Path) -> None:
    other = signal_info("body.D.Door", value_type=bool)
    rmap = plan_register_map(
        table(SPEED, ENABLED, ENABLE, other),
        ["demo", "body"],
        ModbusConfig.model_validate(
            {"holding_only": True, "unit_ids": {"body": 7}, "signals": {"*.Speed": {"scale": 0.5}}}
        ),
        None,
        tmp_path / "m.yaml",
    )
    p = rmap.placements
    assert {x.table for x in p.values()} == {"holding_register"}
    assert p["body.D.Door"].unit == 7 and p["body.D.Door"].address == 0
    assert [p["demo.M.Speed"].address, p["demo.M.Enabled"].address, p["demo.C.Enable"].address] == [0, 1, 2]
    assert p["demo.M.Speed"].scale == 0.5
    assert rmap.quality_table == "holding_register"
    assert rmap.diagnostics["body"].unit == 7 and rmap.diagnostics["body"].address == 30000
    assert rmap.units() == [1, 7]


def test_include_exclude(tmp_path: Path) -> None:
    rmap = plan(table(SPEED, TEMP, ENABLED), tmp_path / "m.yaml", include=["demo.M.*"], exclude=["*.Temp"])
    assert list(rmap.placements) == ["demo.M.Speed", "demo.M.Enabled"]


def test_removed_bus_keeps_its_diagnostics_reserved(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    config = ModbusConfig()
    rmap = plan_register_map(table(SPEED), ["demo", "aux"], config, None, path)
    save_map(path, rmap)
    again = plan_register_map(table(SPEED), ["demo", "third"], config, load_map_file(path), path)
    # after both bus blocks and the bridge block of unit 1
    assert rmap.bridge[1].address == 30000 + 2 * DIAG_SIZE
    assert again.diagnostics["third"].address == 30000 + 2 * DIAG_SIZE + BRIDGE_DIAG_SIZE
    assert any(r.count == DIAG_SIZE and r.address == 30000 + DIAG_SIZE for r in again.reserved)


def test_bridge_diagnostics_join_an_existing_map_without_moving_anything(tmp_path: Path) -> None:
    # a map pinned before the bridge block existed: every address stays, the block goes after the
    # highest diagnostics address of each unit, and is pinned from then on
    path = tmp_path / "m.yaml"
    config = ModbusConfig.model_validate({"unit_ids": {"body": 7}})
    first = plan_register_map(table(SPEED, SETPOINT), ["demo", "aux", "body"], config, None, path)
    save_map(path, first)
    import yaml

    old = yaml.safe_load(path.read_text())
    del old["bridge_diagnostics"]
    path.write_text(yaml.safe_dump(old))
    again = plan_register_map(table(SPEED, SETPOINT), ["demo", "aux", "body"], config, load_map_file(path), path)
    assert again.changed and again.placements == first.placements and again.diagnostics == first.diagnostics
    assert (again.bridge[1].address, again.bridge[7].address) == (30040, 30020)
    save_map(path, again)
    third = plan_register_map(table(SPEED, SETPOINT), ["demo", "aux", "body", "new"], config, load_map_file(path), path)
    assert third.bridge == again.bridge and third.diagnostics["new"].address == 30050
    rows = [r for r in csv.DictReader(io.StringIO(render_csv(third))) if r["signal"].startswith("bridge.")]
    assert [(r["unit_id"], r["address"]) for r in rows if r["signal"] == "bridge.audit_available"] == [
        ("1", "30040"),
        ("7", "30020"),
    ]


def test_printed_map(tmp_path: Path) -> None:
    rmap = plan(table(SPEED, TEMP, SETPOINT), tmp_path / "m.yaml", signals={"*.Temp": {"word_order": "CDAB"}})
    rows = list(csv.DictReader(io.StringIO(render_csv(rmap))))
    assert list(rows[0]) == [
        "signal",
        "unit_id",
        "table",
        "address",
        "registers",
        "encoding",
        "word_order",
        "scale",
        "unit",
        "writable",
        "quality_address",
    ]
    by = {r["signal"]: r for r in rows}
    assert by["demo.M.Speed"] | {} == {
        "signal": "demo.M.Speed",
        "unit_id": "1",
        "table": "input_register",
        "address": "0",
        "registers": "1",
        "encoding": "int16",
        "word_order": "",
        "scale": "1",
        "unit": "rpm",
        "writable": "no",
        "quality_address": "20000",
    }
    assert by["demo.M.Temp"]["word_order"] == "CDAB"
    assert by["demo.C.Setpoint"]["writable"] == "yes"
    assert by["demo.bus.rx_frames"]["address"] == "30004"
    md = render_markdown(rmap)
    assert md.splitlines()[0].startswith("| signal | unit_id |")
    assert "| demo.M.Temp | 1 | input_register | 1 | 2 | float32 | CDAB |" in md


def test_default_map_path(tmp_path: Path) -> None:
    cfg = ModbusConfig()
    plant = tmp_path / "plant.yaml"
    assert default_map_path(cfg, plant, tmp_path / "state") == tmp_path / "plant.modbus-map.yaml"
    assert default_map_path(cfg, None, tmp_path / "state") == tmp_path / "state" / "modbus-map.yaml"
    rel = ModbusConfig(map_file=Path("maps/x.yaml"))
    assert default_map_path(rel, tmp_path / "plant.yaml", tmp_path) == tmp_path / "maps" / "x.yaml"


def test_switching_to_holding_only_warns_and_keeps_addresses(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    first = plan(table(SPEED, ENABLED), path)
    again = plan(table(SPEED, ENABLED, SETPOINT), path, holding_only=True)
    assert again.placements["demo.M.Speed"] == first.placements["demo.M.Speed"]
    assert any("holding_only" in w and "demo.M.Speed" in w for w in again.warnings)
    assert again.quality_table == "input_register"  # pinned too
    assert again.placements["demo.C.Setpoint"].table == "holding_register"
