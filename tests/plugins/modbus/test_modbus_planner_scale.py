"""The planner at scale: its bisected address space answers exactly as a scan of every range would
(the scan was quadratic: 18 s for 10,000 signals), and the libyaml map file is the pure-Python one."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from canbridge_modbus import mapfile
from canbridge_modbus.config import ModbusConfig
from canbridge_modbus.mapfile import dump_map, load_map_file, save_map
from canbridge_modbus.planner import _Space, plan_register_map
from canbridge_modbus.registers import MAX_ADDRESS

from canbridge import SignalInfo
from canbridge.testing import signal_info


class NaiveSpace:
    """The obvious model: every range in a list, every question a scan (what the planner did before)."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[int, str], list[tuple[int, int, str]]] = {}

    def overlaps(self, unit: int, table: str, start: int, count: int) -> list[str]:
        end = start + count
        return [label for s, e, label in self.ranges.get((unit, table), []) if s < end and start < e]

    def add(self, unit: int, table: str, start: int, count: int, label: str) -> None:
        self.ranges.setdefault((unit, table), []).append((start, start + count, label))

    def release(self, label: str) -> None:
        for key, ranges in self.ranges.items():
            self.ranges[key] = [r for r in ranges if r[2] != label]

    def allocate(self, unit: int, table: str, floor: int, count: int) -> int | None:
        # the lowest free place starts at the floor or right after some range
        ends = [e for _, e, _ in self.ranges.get((unit, table), []) if e >= floor]
        free = [a for a in [floor, *ends] if not self.overlaps(unit, table, a, count)]
        addr = min(free)
        return addr if addr + count <= MAX_ADDRESS + 1 else None

    def highest_end(self, unit: int, table: str, floor: int, below: int | None) -> int:
        ends = [e for s, e, _ in self.ranges.get((unit, table), []) if s >= floor and (below is None or s < below)]
        return max(ends, default=floor)


@pytest.mark.parametrize("seed", range(20))
def test_space_answers_as_a_scan_would(seed: int) -> None:
    rnd = random.Random(seed)
    fast, naive = _Space(), NaiveSpace()
    labels: list[str] = []
    tables = [(1, "input_register"), (1, "holding_register"), (2, "input_register")]
    for step in range(400):
        unit, table = rnd.choice(tables)
        op = rnd.random()
        start = rnd.randrange(0, 300) if rnd.random() < 0.9 else rnd.randrange(0, MAX_ADDRESS + 1)
        count = rnd.choice([1, 1, 2, 4, 20])
        if op < 0.45:
            label = f"s{step}" if rnd.random() < 0.9 or not labels else rnd.choice(labels)  # labels may repeat
            labels.append(label)
            fast.add(unit, table, start, count, label)
            naive.add(unit, table, start, count, label)
        elif op < 0.55 and labels:
            label = rnd.choice(labels)
            fast.release(label)
            naive.release(label)
        elif op < 0.7:
            assert fast.overlaps(unit, table, start, count) == naive.overlaps(unit, table, start, count)
        elif op < 0.85:
            assert fast.allocate(unit, table, start, count) == naive.allocate(unit, table, start, count)
        else:
            below = rnd.choice([None, start + rnd.randrange(1, 400)])
            assert fast.highest_end(unit, table, start, below) == naive.highest_end(unit, table, start, below)


def big_table(n: int) -> dict[str, SignalInfo]:
    """``n`` signals of every kind the planner places differently (registers, bits, writable, wide)."""
    out: dict[str, SignalInfo] = {}
    for i in range(n):
        name = f"demo.M{i // 8:04d}.S{i % 8}"
        kind = i % 4
        if kind == 0:
            out[name] = signal_info(name, value_type=float, scale=0.1, bit_length=16, maximum=6553.5)
        elif kind == 1:
            out[name] = signal_info(name, value_type=bool, bit_length=1, writable=i % 8 == 1)
        elif kind == 2:
            out[name] = signal_info(name, bit_length=24, maximum=2**24 - 1, writable=i % 3 == 0)
        else:
            out[name] = signal_info(name, value_type=float, scale=0.001, bit_length=32, maximum=4e6)
    return out


def test_replanning_a_large_map_keeps_every_address(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    config = ModbusConfig()
    signals = big_table(2000)
    first = plan_register_map(signals, ["demo"], config, None, path)
    save_map(path, first)
    # a third of the signals leave, new ones arrive: the rest keep their places, nothing overlaps
    kept = {k: v for i, (k, v) in enumerate(signals.items()) if i % 3}
    extra = {f"demo.N{i}.X": signal_info(f"demo.N{i}.X", maximum=100) for i in range(300)}
    second = plan_register_map(kept | extra, ["demo"], config, load_map_file(path), path)
    for name, p in second.placements.items():
        if name in first.placements:
            assert p == first.placements[name]
    seen: set[tuple[int, str, int]] = set()
    for p in second.placements.values():
        cells = {(p.unit, p.table, p.address + k) for k in range(p.count)}
        assert not cells & seen
        seen |= cells
    reserved = {(r.unit, r.table, r.address) for r in second.reserved}
    assert all((p.unit, p.table, p.address) not in reserved for p in second.placements.values())
    save_map(path, second)
    # everything back: every returning signal gets its old place again
    third = plan_register_map(signals | extra, ["demo"], config, load_map_file(path), path)
    assert {k: third.placements[k] for k in first.placements} == first.placements


def test_libyaml_map_file_is_the_pure_python_one(tmp_path: Path) -> None:
    if not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml: the pure-Python path is the only one")
    rmap = plan_register_map(big_table(1000), ["demo"], ModbusConfig(), None, tmp_path / "m.yaml")
    text = dump_map(rmap)
    assert mapfile._Dumper.__name__ == "CSafeDumper"
    pure = text.split("\n", 3)[3]  # after the three comment lines
    assert pure == yaml.safe_dump(yaml.safe_load(pure), sort_keys=False, default_flow_style=None, width=200)
    assert yaml.load(text, Loader=mapfile._Loader) == yaml.safe_load(text)
