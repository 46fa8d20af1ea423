"""Store-and-forward queue: order, restart, size and age bounds, a full disk, a slow disk, a failing disk,
the shutdown."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.rbe import Change

from canbridge import Quality
from canbridge.testing import until


def changes(start: int, n: int, name: str = "b.M.S") -> list[Change]:
    return [(name, i, Quality.GOOD, 1_000 + i) for i in range(start, start + n)]


async def values(buf: Buffer, sink: str) -> list[Any]:
    return [c[1] for _, c in await buf.peek(sink, 1_000_000)]


async def test_replay_is_oldest_first_per_sink_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    buf = Buffer(path, 10, 72)
    buf.append("sparkplug", changes(0, 5))
    buf.append("json", changes(100, 2))
    buf.append("sparkplug", changes(5, 5))
    await buf.close()
    buf = Buffer(path, 10, 72)  # as after a bridge restart during the outage
    await buf.ready()
    assert (buf.count("sparkplug"), buf.count("json")) == (10, 2)
    rows = await buf.peek("sparkplug", 4)
    assert [c[1] for _, c in rows] == [0, 1, 2, 3] and rows[0][1] == ("b.M.S", 0, Quality.GOOD, 1000)
    await buf.delete("sparkplug", rows[-1][0])
    assert await values(buf, "sparkplug") == [4, 5, 6, 7, 8, 9]
    assert await values(buf, "json") == [100, 101]
    await buf.close()


async def test_prepend_puts_unconfirmed_changes_back_in_front(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    buf.append("json", changes(10, 3))
    buf.prepend("json", changes(7, 3))
    buf.append("json", changes(13, 1))
    assert await values(buf, "json") == [7, 8, 9, 10, 11, 12, 13]
    rows = await buf.peek("json", 100)
    await buf.delete_ids("json", [rows[0][0], rows[2][0]])  # delivered, not a prefix
    assert await values(buf, "json") == [8, 10, 11, 12, 13] and buf.count("json") == 5
    await buf.close()


async def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 0.1, 72)  # 100 kB: a few thousand rows
    total = 0
    for k in range(40):
        buf.append("sparkplug", changes(k * 500, 500))
        total += 500
    await buf.flush()
    kept = buf.count("sparkplug")
    assert buf.dropped > 0 and kept + buf.dropped == total
    got = await values(buf, "sparkplug")
    assert len(got) == kept and got == sorted(got) and got[-1] == total - 1  # the newest kept, in order
    assert (tmp_path / "q.sqlite").stat().st_size <= 0.1 * 1024 * 1024 + 4096
    await buf.close()


@pytest.mark.parametrize("preload", [0, 300])
async def test_a_full_disk_drops_oldest_or_refuses_counted_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, preload: int) -> None:
    """SQLITE_FULL from a disk that has no more room (max_page_count pinned to the file's current size):
    rows already queued are dropped oldest first to make room; with nothing to drop the new changes are
    refused. Counted and logged either way, never raised, and the queue goes on working once there is room."""
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    buf.append("json", changes(0, preload))
    await buf.flush()
    assert buf.db is not None
    pages = buf.db.execute("PRAGMA page_count").fetchone()[0]
    buf.db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now
    caplog.set_level(logging.WARNING, "canbridge.mqtt")
    big = [("b.M.S", "x" * 3000, Quality.GOOD, 5_000 + i) for i in range(40)]  # needs new pages
    buf.append("json", big)
    await buf.flush()
    assert buf.count("json") + buf.dropped == preload + len(big)
    assert buf.dropped > 0 and "store-and-forward dropped" in caplog.text
    stamps = [int(c[3] or 0) for _, c in await buf.peek("json", 1000)]
    assert len(stamps) == buf.count("json") and stamps == sorted(stamps)  # what is kept is in order
    buf.db.execute(f"PRAGMA max_page_count={buf.max_pages}")  # room again
    buf.append("json", changes(9_000, 2))
    assert (await values(buf, "json"))[-2:] == [9_000, 9_001]
    await buf.close()


async def test_a_slow_disk_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """The writer thread is held inside a write (a disk that does not answer): ``append`` returns at once,
    other coroutines run, and the changes land in order once the disk goes on."""
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    await buf.ready()
    held = threading.Event()
    go_on = threading.Event()

    def slow_disk() -> None:
        held.set()
        go_on.wait(30)

    buf.before_write = slow_disk
    buf.append("json", changes(0, 10))
    await until(lambda: held.is_set(), 10, what="the writer inside the slow write")
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        for _ in range(20):
            ticks += 1
            await asyncio.sleep(0)

    for k in range(1, 50):  # the loop goes on appending while the disk hangs ...
        buf.append("json", changes(k * 10, 10))
    await heartbeat()  # ... and other coroutines run: positive evidence that the loop is not blocked
    assert ticks == 20 and held.is_set() and not go_on.is_set()
    assert buf.count("json") == 500 and buf.pending == 500  # accepted, none written yet
    go_on.set()
    assert await values(buf, "json") == list(range(500))  # every change, oldest first
    assert buf.pending == 0 and buf.dropped == 0
    await buf.close()


async def test_a_disk_behind_by_more_than_max_pending_refuses_new_changes_counted(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 10, 72, max_pending=100)
    await buf.ready()
    go_on = threading.Event()
    buf.before_write = lambda: go_on.wait(30)
    for k in range(5):
        buf.append("json", changes(k * 40, 40))
    assert buf.dropped == 120 and buf.count("json") == 80  # two batches taken, three refused: memory bounded
    go_on.set()
    assert await values(buf, "json") == list(range(80))
    await buf.close()


async def test_shutdown_writes_what_was_accepted(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    buf = Buffer(path, 10, 72)
    for k in range(20):
        buf.append("json", changes(k * 100, 100))
    await buf.close()
    buf.append("json", changes(5_000, 3))  # after close: counted, not lost silently
    assert buf.dropped == 3
    again = Buffer(path, 10, 72)
    assert await values(again, "json") == list(range(2000))
    await again.close()


async def test_a_disk_that_hangs_at_shutdown_counts_the_unwritten_as_lost(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "q.sqlite"
    buf = Buffer(path, 10, 72)
    buf.append("json", changes(0, 5))
    await buf.flush()
    go_on = threading.Event()
    buf.before_write = lambda: go_on.wait(30)
    for k in range(1, 4):
        buf.append("json", changes(k * 5, 5))
    await buf.close(timeout=0.2)  # the writer is stuck in the first of three writes
    assert "did not finish writing" in caplog.text
    go_on.set()  # the stuck write finishes whole; the two behind it are not started
    await until(lambda: buf.pending == 0, 10, what="the writer done")
    assert buf.dropped == 10
    again = Buffer(path, 10, 72)
    assert await values(again, "json") == list(range(10))  # nothing half-written
    await again.close()


async def test_age_bound_drops_old_changes(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 10, 1)
    buf.append("json", changes(0, 3))
    await buf.flush()
    assert buf.db is not None
    buf.db.execute("UPDATE queue SET queued_ms = queued_ms - 2 * 3600 * 1000")
    buf.append("json", changes(3, 1))
    await buf.expire()
    assert buf.count("json") == 1 and buf.dropped == 3
    await buf.close()


async def test_a_failing_disk_costs_changes_never_the_service(tmp_path: Path) -> None:
    buf = Buffer(tmp_path / "q.sqlite", 10, 72)
    buf.append("json", changes(0, 2))
    await buf.flush()

    class Broken:
        def __getattr__(self, name: str) -> object:
            raise sqlite3.OperationalError("disk I/O error")

        def __enter__(self) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        def __exit__(self, *a: object) -> None: ...

    buf.db = Broken()  # type: ignore[assignment]
    buf.append("json", changes(2, 3))  # no exception
    await buf.flush()
    assert buf.dropped == 3 and buf.errors >= 1 and "disk I/O error" in (buf.last_error or "")
    assert await buf.peek("json", 10) == [] and buf.count("json") == 2
    await buf.delete("json", 10)
    await buf.expire()
    buf.db = None
    await buf.close()


async def test_an_unopenable_queue_file_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    buf = Buffer(tmp_path / "file" / "q.sqlite", 10, 72)  # parent is a file: cannot be created
    buf.append("json", changes(0, 2))
    await buf.flush()
    assert buf.db is None and buf.dropped == 2 and buf.last_error and buf.count("json") == 0
    await buf.close()
