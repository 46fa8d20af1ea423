"""The register map through the start-up cache: byte-identical to planning without it, reused only
when the map file, the configuration, the buses, the signals and canbridge's version are unchanged."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.listing import render_csv
from canbridge_modbus.mapfile import dump_map, load_map_file, save_map
from canbridge_modbus.plancache import KIND, _key, cached_plan, remember
from canbridge_modbus.planner import plan_register_map
from canbridge_modbus.registers import RegisterMap

import canbridge
from canbridge import SignalInfo, StartupCache
from canbridge.testing import signal_info
from tests.plugins.modbus.test_modbus_planner_scale import big_table

BUSES = ["demo"]


def start(
    signals: dict[str, SignalInfo], config: ModbusConfig, path: Path, cache: StartupCache
) -> tuple[RegisterMap, bool]:
    """What the service does at start: plan (or reuse), write the map file when it changed, remember."""
    rmap, cached = cached_plan(signals, BUSES, config, path, cache)
    if rmap.changed:
        save_map(path, rmap)
    if not cached:
        remember(signals, BUSES, config, path, cache, rmap)
    return rmap, cached


def uncached(signals: dict[str, SignalInfo], config: ModbusConfig, path: Path) -> RegisterMap:
    return plan_register_map(signals, BUSES, config, load_map_file(path), path)


def test_1000_signals_identical_with_and_without_cache(tmp_path: Path) -> None:
    signals, config, path = big_table(1000), ModbusConfig(), tmp_path / "m.yaml"
    cache = StartupCache(tmp_path / "cache")
    first, hit1 = start(signals, config, path, cache)
    second, hit2 = start(signals, config, path, cache)
    reference = uncached(signals, config, path)
    assert (hit1, hit2) == (False, True)
    assert second == dataclasses.replace(reference, changed=False)
    assert render_csv(second) == render_csv(reference) == render_csv(first)
    assert dump_map(second) == dump_map(reference) == path.read_text()


def changes(tmp_path: Path) -> dict[str, tuple[dict[str, SignalInfo], ModbusConfig, Path]]:
    signals = big_table(40)
    path = tmp_path / "m.yaml"
    edited = dict(signals)
    first = next(iter(edited))
    edited[first] = dataclasses.replace(edited[first], maximum=edited[first].maximum / 2)
    added = signals | {"demo.New.X": signal_info("demo.New.X", maximum=10)}
    removed = dict(list(signals.items())[1:])
    reordered = dict(reversed(list(signals.items())))
    return {
        "a signal's limits": (edited, ModbusConfig(), path),
        "a signal added": (added, ModbusConfig(), path),
        "a signal removed": (removed, ModbusConfig(), path),
        "the table order": (reordered, ModbusConfig(), path),
        "a config option": (signals, ModbusConfig(scale=10.0), path),
        "another option": (signals, ModbusConfig(holding_only=True), path),
        "the map file's place": (signals, ModbusConfig(), tmp_path / "other.yaml"),
    }


@pytest.mark.parametrize("what", list(changes(Path("/x"))))
def test_every_change_is_a_miss(tmp_path: Path, what: str) -> None:
    cache = StartupCache(tmp_path / "cache")
    start(big_table(40), ModbusConfig(), tmp_path / "m.yaml", cache)
    signals, config, path = changes(tmp_path)[what]
    if path.name == "other.yaml":
        path.write_bytes((tmp_path / "m.yaml").read_bytes())
    rmap, cached = start(signals, config, path, cache)
    assert not cached
    assert rmap == dataclasses.replace(uncached(signals, config, path), changed=rmap.changed)


def test_an_edited_map_file_is_a_miss(tmp_path: Path) -> None:
    signals, config, path = big_table(40), ModbusConfig(), tmp_path / "m.yaml"
    cache = StartupCache(tmp_path / "cache")
    first, _ = start(signals, config, path, cache)
    name = next(iter(first.placements))
    text = path.read_text()
    # move one signal by hand to a free address: the edit must win over the cache
    path.write_text(text.replace(f"{name}: {{unit: 1, table: input_register, address: 0,",
                                 f"{name}: {{unit: 1, table: input_register, address: 9000,", 1))
    assert path.read_text() != text
    rmap, cached = start(signals, config, path, cache)
    assert not cached and rmap.placements[name].address == 9000
    path.write_text(text + "\n# a comment only\n")  # any byte counts: no guessing what matters
    assert not start(signals, config, path, cache)[1]


def test_a_deleted_map_file_is_a_miss(tmp_path: Path) -> None:
    signals, config, path = big_table(40), ModbusConfig(), tmp_path / "m.yaml"
    cache = StartupCache(tmp_path / "cache")
    start(signals, config, path, cache)
    path.unlink()
    rmap, cached = start(signals, config, path, cache)
    assert not cached and rmap.changed and path.exists()


def test_a_new_canbridge_version_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    signals, config, path = big_table(40), ModbusConfig(), tmp_path / "m.yaml"
    cache = StartupCache(tmp_path / "cache")
    start(signals, config, path, cache)
    monkeypatch.setattr(canbridge, "__version__", "99.0.0")
    assert not start(signals, config, path, cache)[1]


def test_a_corrupt_cache_plans_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    signals, config, path = big_table(200), ModbusConfig(), tmp_path / "m.yaml"
    cache = StartupCache(tmp_path / "cache")
    first, _ = start(signals, config, path, cache)
    file = tmp_path / "cache" / f"{KIND}.json"
    file.write_bytes(file.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        rmap, cached = start(signals, config, path, cache)
    assert not cached and "not usable" in caplog.text
    assert dataclasses.replace(rmap, changed=False) == dataclasses.replace(first, changed=False)
    assert start(signals, config, path, cache)[1]  # repaired by that start


def test_well_formed_but_wrong_data_plans_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    signals, config, path = big_table(40), ModbusConfig(), tmp_path / "m.yaml"
    cache = StartupCache(tmp_path / "cache")
    first, _ = start(signals, config, path, cache)
    key = _key(path, signals, BUSES, config)
    assert key is not None
    bad_data: list[object] = [{"placements": [{"signal": "x"}]}, [], {"placements": []}]
    for bad in bad_data:
        cache.store(KIND, key, bad)
        with caplog.at_level(logging.WARNING):
            rmap, cached = cached_plan(signals, BUSES, config, path, cache)
        assert not cached and rmap.placements == first.placements
    assert "planning it again" in caplog.text


def test_no_writable_cache_still_starts(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    cache = StartupCache(tmp_path / "state" / "cache")
    signals, config, path = big_table(40), ModbusConfig(), tmp_path / "m.yaml"
    a, _ = start(signals, config, path, cache)
    b, cached = start(signals, config, path, cache)
    assert not cached and b.placements == a.placements
