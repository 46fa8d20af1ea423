"""Store-and-forward: a bounded queue of changes on disk (SQLite) that survives a restart.

Each output (``sparkplug``, ``json``) has its own rows, read back oldest first. The file is bounded by
``max_page_count``, so a full queue and a full disk look the same to the code (SQLITE_FULL): the oldest
rows are dropped and counted, and when even that does not make room the new changes are dropped and
counted. Nothing here raises into the bridge: a broken disk costs history, never the service.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from canbridge import Quality
from canbridge_mqtt.rbe import Change

log = logging.getLogger("canbridge.mqtt")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    quality TEXT NOT NULL,
    ts_ms INTEGER,
    queued_ms INTEGER NOT NULL,
    blob BLOB
);
CREATE INDEX IF NOT EXISTS queue_sink ON queue (sink, id);
"""
_PAGE = 4096
_LOG_EVERY_S = 60.0


class Buffer:
    """The on-disk queue. Methods are synchronous and short (one transaction per batch)."""

    def __init__(self, path: Path, max_mb: float, max_age_h: float) -> None:
        self.path = path
        self.max_age_ms = int(max_age_h * 3600_000)
        self.max_pages = max(8, int(max_mb * 1024 * 1024) // _PAGE)
        self.dropped = 0  # changes lost to the size or age bound, or to a failing disk
        self.errors = 0  # writes or reads that failed
        self.last_error: str | None = None
        self._last_log = 0.0
        self._counts: dict[str, int] = {}
        self.db: sqlite3.Connection | None = None
        self._open()

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA page_size={_PAGE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            if "blob" not in {r[1] for r in db.execute("PRAGMA table_info(queue)")}:
                db.execute("ALTER TABLE queue ADD COLUMN blob BLOB")  # a queue file of an earlier version
            db.execute(f"PRAGMA max_page_count={self.max_pages}")
            self.db = db
            self._counts = dict(db.execute("SELECT sink, COUNT(*) FROM queue GROUP BY sink").fetchall())
        except (sqlite3.Error, OSError) as e:
            self._failed("cannot open the store-and-forward queue", e)
            self.db = None

    def _failed(self, what: str, e: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{what}: {e}"
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:  # a failing disk must not flood the log
            self._last_log = now
            log.error("mqtt: %s %s: %s (changes are dropped and counted until it works)", what, self.path, e)

    def _note_dropped(self, n: int, why: str) -> None:
        if n <= 0:
            return
        self.dropped += n
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("mqtt: store-and-forward dropped %d change(s): %s (%d dropped in all)", n, why,
                        self.dropped)

    def count(self, sink: str) -> int:
        """Changes queued for ``sink``."""
        return self._counts.get(sink, 0)

    def append(self, sink: str, changes: Sequence[Change], blobs: Sequence[bytes] | None = None) -> None:
        """Queue changes for ``sink``; on a full queue drop the oldest rows (of any sink) to make room.
        ``blobs`` (one per change) is what the sink will send, encoded now so that the replay is cheap."""
        if not changes:
            return
        if self.db is None:
            self._open()
            if self.db is None:
                self._note_dropped(len(changes), "the queue file cannot be opened")
                return
        now = int(time.time() * 1000)
        rows: list[tuple[str, str, str, str, int | None, int, bytes | None]]
        if blobs is None:
            rows = [(sink, name, json.dumps(value), str(q), ts, now, None) for name, value, q, ts in changes]
        else:
            rows = [(sink, name, json.dumps(value), str(q), ts, now, blob)
                    for (name, value, q, ts), blob in zip(changes, blobs, strict=True)]
        for attempt in range(4):
            try:
                with self.db:
                    self.db.execute("BEGIN")
                    self.db.executemany(
                        "INSERT INTO queue (sink, name, value, quality, ts_ms, queued_ms, blob) VALUES (?,?,?,?,?,?,?)",
                        rows
                    )
                self._counts[sink] = self._counts.get(sink, 0) + len(rows)
                return
            except sqlite3.OperationalError as e:
                if "full" not in str(e) or attempt == 3:
                    self._failed("cannot write the store-and-forward queue", e)
                    break
                # make room: the oldest tenth of the queue, at least as many rows as we bring
                self._drop_oldest(max(len(rows), self.total() // 10), "the queue is full")
            except sqlite3.Error as e:
                self._failed("cannot write the store-and-forward queue", e)
                break
        self._note_dropped(len(rows), "the queue is full and nothing more can be dropped")

    def total(self) -> int:
        return sum(self._counts.values())

    def _drop_oldest(self, n: int, why: str) -> None:
        self._delete_counted("id IN (SELECT id FROM queue ORDER BY id LIMIT ?)", (n,), why)

    def expire(self) -> None:
        """Drop the changes older than the age bound."""
        limit = int(time.time() * 1000) - self.max_age_ms
        self._delete_counted("queued_ms < ?", (limit,), "older than max_age_h")

    def _delete_counted(self, where: str, params: tuple[int, ...], why: str) -> None:
        """Delete the rows ``where`` selects, keep the per-sink counts right and count them as dropped."""
        if self.db is None:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                gone = self.db.execute(
                    f"SELECT sink, COUNT(*) FROM queue WHERE {where} GROUP BY sink", params).fetchall()
                self.db.execute(f"DELETE FROM queue WHERE {where}", params)
        except sqlite3.Error as e:
            self._failed("cannot drop from the store-and-forward queue", e)
            return
        for sink, k in gone:
            self._counts[sink] = max(0, self._counts.get(sink, 0) - k)
        self._note_dropped(sum(k for _, k in gone), why)

    def peek(self, sink: str, limit: int) -> list[tuple[int, Change]]:
        """The oldest ``limit`` changes of ``sink`` with their row ids (delete them once delivered)."""
        if self.db is None or not self.count(sink):
            return []
        try:
            rows = self.db.execute(
                "SELECT id, name, value, quality, ts_ms FROM queue WHERE sink = ? ORDER BY id LIMIT ?", (sink, limit)
            ).fetchall()
        except sqlite3.Error as e:
            self._failed("cannot read the store-and-forward queue", e)
            return []
        out: list[tuple[int, Change]] = []
        for rid, name, value, quality, ts in rows:
            try:
                out.append((rid, (name, json.loads(value), Quality(quality), ts)))
            except ValueError:
                out.append((rid, (name, None, Quality.BAD, ts)))
        return out

    def peek_encoded(self, sink: str, limit: int, encode: Callable[[Change], bytes]) -> list[tuple[int, str, bytes]]:
        """The oldest ``limit`` rows of ``sink`` as ``(id, name, blob)``, in one SELECT and without decoding
        them; a row queued without a blob (by an earlier version) is encoded now with ``encode``."""
        if self.db is None or not self.count(sink):
            return []
        try:
            rows = self.db.execute(
                "SELECT id, name, blob, value, quality, ts_ms FROM queue WHERE sink = ? ORDER BY id LIMIT ?",
                (sink, limit)).fetchall()
        except sqlite3.Error as e:
            self._failed("cannot read the store-and-forward queue", e)
            return []
        out: list[tuple[int, str, bytes]] = []
        for rid, name, blob, value, quality, ts in rows:
            if blob is None:
                try:
                    blob = encode((name, json.loads(value), Quality(quality), ts))
                except ValueError:
                    blob = encode((name, None, Quality.BAD, ts))
            out.append((rid, name, blob))
        return out

    def delete(self, sink: str, last_id: int) -> None:
        """Forget the changes of ``sink`` up to row ``last_id`` (they were delivered)."""
        if self.db is None:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                n = self.db.execute("DELETE FROM queue WHERE sink = ? AND id <= ?", (sink, last_id)).rowcount
        except sqlite3.Error as e:
            self._failed("cannot delete from the store-and-forward queue", e)
            return
        self._counts[sink] = max(0, self._counts.get(sink, 0) - n)

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None
