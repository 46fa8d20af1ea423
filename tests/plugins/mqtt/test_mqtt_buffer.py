"""Store-and-forward queue: order, restart, size and age bounds, a disk that fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.rbe import Change

from canbridge import Quality


def changes(start: int, n: int, name: str = "b.M.S") -> list[Change]:
    return [(name, i, Quality.GOOD, 1_000 + i) for i in range(start, start + n)]


def test_replay_is_oldest_first_per_sink_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    buf = Buffer(path, 10, 72)
    buf.append("sparkplug", changes(0, 5))
    buf.append("json", changes(100, 2))
    buf.append("sparkplug", changes(5, 5))
    buf.close()
    buf = Buffer(path, 10, 72)  # as after a bridge restart during the outage
    assert (buf.count("sparkplug"), buf.count("json")) == (10, 2)
    rows = buf.peek("sparkplug", 4)
    assert [c[1] for _, c in rows] == [0, 1, 2, 3] and rows[0][1] == ("b.M.S", 0, Quality.GOOD, 1000)
    buf.delete("sparkplug", rows[-1][0])
    assert [c[1] for _, c in buf.peek("sparkplug", 100)] == [4, 5, 6, 7, 8, 9]
    assert [c[1] for _, c in buf.peek("json", 100)] == [100, 101]


def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 0.1, 72)  # 100 kB: a few thousand rows
    total = 0
    for k in range(40):
        buf.append("sparkplug", changes(k * 500, 500))
        total += 500
    kept = buf.count("sparkplug")
    assert buf.dropped > 0 and kept + buf.dropped == total
    rows = buf.peek("sparkplug", kept)
    values = [int(c[1]) for _, c in rows]  # type: ignore[call-overload]
    assert values == sorted(values) and values[-1] == total - 1  # the newest are kept, in order
    assert (tmp_path / "q.sqlite").stat().st_size <= 0.1 * 1024 * 1024 + 4096


def test_age_bound_drops_old_changes(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 10, 1)
    buf.append("json", changes(0, 3))
    assert buf.db is not None
    buf.db.execute("UPDATE queue SET queued_ms = queued_ms - 2 * 3600 * 1000")
    buf.append("json", changes(3, 1))
    buf.expire()
    assert buf.count("json") == 1 and buf.dropped == 3


def test_a_failing_disk_costs_changes_never_the_service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    buf.append("json", changes(0, 2))

    class Broken:
        def __getattr__(self, name: str) -> object:
            raise sqlite3.OperationalError("disk I/O error")

        def __enter__(self) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        def __exit__(self, *a: object) -> None: ...

    buf.db = Broken()  # type: ignore[assignment]
    buf.append("json", changes(2, 3))  # no exception
    assert buf.dropped == 3 and buf.errors >= 1 and "disk I/O error" in (buf.last_error or "")
    assert buf.peek("json", 10) == [] and buf.count("json") == 2
    buf.delete("json", 10)
    buf.expire()


def test_an_unopenable_queue_file_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    buf = Buffer(tmp_path / "file" / "q.sqlite", 10, 72)  # parent is a file: cannot be created
    buf.append("json", changes(0, 2))
    assert buf.db is None and buf.dropped == 2 and buf.last_error
