"""Store-and-forward: a bounded queue of changes on disk (SQLite) that survives a restart.

Each output (``sparkplug``, ``json``) has its own rows, read back oldest first. All disk I/O runs on one
writer thread, in the order it was asked for: ``append`` hands rows to it and returns at once (a slow or
full disk never stalls the bridge's event loop), reads and deletes are awaited. What the thread has not
written yet is bounded (``max_pending`` changes); past that new changes are refused and counted.

The file is bounded by ``max_page_count``, so a full queue and a full disk look the same to the code
(SQLITE_FULL): the oldest rows are dropped and counted, and when even that does not make room the new
changes are refused and counted. Each write is one transaction: on disk whole or not at all. Nothing here
raises into the bridge: a broken disk costs history, never the service.

A row is one change (``append``), or a **chunk** of up to a message's worth of changes of one device kept
ready to send (``append_chunks``: the Sparkplug output's framed metrics, with the ``epoch`` of the mapping
that framed them). A chunk is replayed, delivered, deleted and dropped whole; every count is in changes
(column ``n``), so the bounds mean the same for both kinds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from canbridge import Quality
from canbridge_mqtt.rbe import Change

log = logging.getLogger("canbridge.mqtt")

T = TypeVar("T")
Row = tuple[str, str, str, str, int | None, int, bytes | None, int, str | None]


class Chunk(NamedTuple):
    """Changes of one device kept as the bytes of their message, in order (``Buffer.append_chunks``)."""

    names: Sequence[str]  # the signals, one per change
    blob: bytes  # what the output sends for them
    epoch: str  # what the blob depends on (the output's mapping): another epoch must rebuild it


class QueuedRow(NamedTuple):
    """A row read back by ``Buffer.peek_rows``: a change (``n`` 1, ``epoch`` None, ``names`` its signal,
    ``blob`` its bytes) or a chunk (``names`` joined by newlines)."""

    id: int
    n: int
    names: str
    blob: bytes
    epoch: str | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    quality TEXT NOT NULL,
    ts_ms INTEGER,
    queued_ms INTEGER NOT NULL,
    blob BLOB,
    n INTEGER NOT NULL DEFAULT 1,
    epoch TEXT
);
CREATE INDEX IF NOT EXISTS queue_sink ON queue (sink, id);
"""
_COLUMNS = "sink, name, value, quality, ts_ms, queued_ms, blob, n, epoch"
_INSERT = f"INSERT INTO queue ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
_INSERT_AT = f"INSERT INTO queue (id, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
_IDS_PER_STATEMENT = 500  # below SQLite's oldest limit of host parameters (999)
_PAGE = 4096
_LOG_EVERY_S = 60.0
CLOSE_TIMEOUT_S = 10.0


def _full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(e)


class Buffer:
    """The on-disk queue. ``count``/``total`` are what was accepted (written or about to be); ``append`` and
    ``prepend`` never wait; ``peek*``, ``delete*``, ``expire``, ``flush`` and ``close`` are awaited and see
    every write asked for before them."""

    def __init__(self, path: Path, max_mb: float, max_age_h: float, max_pending: int = 200_000) -> None:
        self.path = path
        self.max_age_ms = int(max_age_h * 3600_000)
        self.max_pages = max(8, int(max_mb * 1024 * 1024) // _PAGE)
        self.max_pending = max_pending
        self.errors = 0  # writes or reads that failed
        self.last_error: str | None = None
        self.before_write: Callable[[], object] | None = None  # runs on the writer thread (tests: a slow disk)
        self.db: sqlite3.Connection | None = None
        self._dropped = 0  # changes lost to the size or age bound, a failing disk, or a shutdown
        self._pending = 0  # changes handed to the writer, not yet written
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()  # the counters, shared with the writer thread
        self._last_log = 0.0
        self._closing = False
        self._abandon = False  # shutdown timed out: the writes still waiting are counted lost, not run
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mqtt-buffer")
        self._opened: Future[None] = self._executor.submit(self._open)

    # --- counters (any thread) ----------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        return self._dropped

    def note_dropped(self, n: int, why: str) -> None:
        """Count ``n`` changes as lost, with a log line (at most one a minute)."""
        if n <= 0:
            return
        with self._lock:
            self._dropped += n
            total = self._dropped
            now = time.monotonic()
            say = now - self._last_log >= _LOG_EVERY_S
            if say:
                self._last_log = now
        if say:
            log.warning("mqtt: store-and-forward dropped %d change(s): %s (%d dropped in all)", n, why, total)

    def _failed(self, what: str, e: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{what}: {e}"
            now = time.monotonic()
            say = now - self._last_log >= _LOG_EVERY_S
            if say:
                self._last_log = now
        if say:  # a failing disk must not flood the log
            log.error("mqtt: %s %s: %s (changes are dropped and counted until it works)", what, self.path, e)

    def _count(self, sink: str, delta: int) -> None:
        with self._lock:
            self._counts[sink] = max(0, self._counts.get(sink, 0) + delta)

    def count(self, sink: str) -> int:
        """Changes queued for ``sink`` (including those the writer has not written yet)."""
        return self._counts.get(sink, 0)

    def total(self) -> int:
        return sum(self._counts.values())

    @property
    def pending(self) -> int:
        """Changes accepted but not yet on disk."""
        return self._pending

    # --- the loop's side --------------------------------------------------------------------------------
    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._executor.submit(fn))

    async def ready(self) -> None:
        """Wait until the file is open and the queue from before a restart counted."""
        await asyncio.wrap_future(self._opened)

    def append(self, sink: str, changes: Sequence[Change], blobs: Sequence[bytes] | None = None) -> None:
        """Queue changes for ``sink`` behind everything queued before; on a full queue the writer drops the
        oldest rows (of any sink) to make room. ``blobs`` (one per change) is what the sink will send,
        encoded now so that the replay is cheap. Never waits for the disk."""
        self._submit(sink, changes, blobs, front=False)

    def prepend(self, sink: str, changes: Sequence[Change], blobs: Sequence[bytes] | None = None) -> None:
        """Queue changes for ``sink`` in front of everything queued (they were taken out to be sent before
        what is queued now, and were not confirmed)."""
        self._submit(sink, changes, blobs, front=True)

    def append_chunks(self, sink: str, chunks: Sequence[Chunk], front: bool = False) -> None:
        """Queue chunks for ``sink``: behind everything queued, or (``front``) before it. Never waits."""
        if not chunks:
            return

        def rows(now: int) -> list[Row]:
            return [(sink, "\n".join(c.names), "", "", None, now, c.blob, len(c.names), c.epoch) for c in chunks]

        self._accept(sink, sum(len(c.names) for c in chunks), rows, front)

    def _submit(self, sink: str, changes: Sequence[Change], blobs: Sequence[bytes] | None, front: bool) -> None:
        if not changes:
            return

        def rows(now: int) -> list[Row]:
            if blobs is None:
                return [(sink, name, json.dumps(value), str(q), ts, now, None, 1, None)
                        for name, value, q, ts in changes]
            return [(sink, name, json.dumps(value), str(q), ts, now, blob, 1, None)
                    for (name, value, q, ts), blob in zip(changes, blobs, strict=True)]

        self._accept(sink, len(changes), rows, front)

    def _accept(self, sink: str, n: int, make_rows: Callable[[int], list[Row]], front: bool) -> None:
        """Hand ``n`` changes (as the rows ``make_rows`` builds) to the writer, or refuse and count them."""
        if self._closing:
            self.note_dropped(n, "the queue is closed (shutdown)")
            return
        with self._lock:
            over = self._pending + n > self.max_pending
            if not over:
                self._pending += n
                self._counts[sink] = self._counts.get(sink, 0) + n
        if over:  # the disk is slower than the changes arrive: refuse rather than grow memory or wait
            self.note_dropped(n, f"the disk is behind by more than {self.max_pending} changes")
            return
        self._executor.submit(self._write, sink, n, make_rows(int(time.time() * 1000)), front)

    async def peek(self, sink: str, limit: int) -> list[tuple[int, Change]]:
        """The oldest ``limit`` changes of ``sink`` with their row ids (delete them once delivered)."""
        if self._opened.done() and not self.count(sink):  # before the open: the count is not known yet
            return []
        rows = await self._run(lambda: self._select(
            "SELECT id, name, value, quality, ts_ms FROM queue WHERE sink = ? ORDER BY id LIMIT ?", sink, limit))
        out: list[tuple[int, Change]] = []
        for rid, name, value, quality, ts in rows:
            out.append((rid, _change(name, value, quality, ts)))
        return out

    async def peek_rows(self, sink: str, limit: int, encode: Callable[[Change], bytes]) -> list[QueuedRow]:
        """The oldest rows of ``sink`` holding up to ``limit`` changes (at least one row), in one SELECT and
        without decoding them; a change queued without bytes (by an earlier version) is encoded now."""
        if self._opened.done() and not self.count(sink):  # before the open: the count is not known yet
            return []
        rows = await self._run(lambda: self._select_changes(
            # the plain columns only where there are no bytes: a page of bytes moves nothing else
            "SELECT id, n, name, blob, epoch, IIF(blob IS NULL, value, NULL), IIF(blob IS NULL, quality, NULL), "
            "ts_ms FROM queue WHERE sink = ? ORDER BY id LIMIT ?", sink, limit))
        out: list[QueuedRow] = []
        for rid, n, names, blob, epoch, value, quality, ts in rows:
            if blob is None:
                blob = encode(_change(names, value, quality, ts))
            out.append(QueuedRow(rid, n, names, blob, epoch))
        return out

    async def delete(self, sink: str, last_id: int) -> None:
        """Forget the changes of ``sink`` up to row ``last_id`` (they were delivered)."""
        await self._run(lambda: self._delete(sink, "id <= ?", [last_id]))

    async def delete_ids(self, sink: str, ids: Sequence[int]) -> None:
        """Forget the rows ``ids`` of ``sink`` (they were delivered, not necessarily a prefix)."""
        ids = list(ids)
        for k in range(0, len(ids), _IDS_PER_STATEMENT):
            part = ids[k:k + _IDS_PER_STATEMENT]
            await self._run(functools.partial(self._delete, sink, f"id IN ({','.join('?' * len(part))})", part))

    async def expire(self) -> None:
        """Drop the changes older than the age bound."""
        limit = int(time.time() * 1000) - self.max_age_ms
        await self._run(lambda: self._delete_counted("queued_ms < ?", (limit,), "older than max_age_h"))

    async def flush(self) -> None:
        """Wait until every write asked for so far is on disk (or counted lost)."""
        await self._run(lambda: None)

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what was accepted, then close. A disk that does not finish within ``timeout``: the writes
        still waiting are not started and their changes counted lost (the one running is one transaction:
        it lands whole or not at all)."""
        self._closing = True
        done = self._executor.submit(self._close)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(done)), timeout)
        except TimeoutError:
            lost = self._pending
            self._abandon = True
            log.error("mqtt: the store-and-forward queue %s did not finish writing within %.0f s at shutdown: "
                      "up to %d change(s) not on disk are counted as dropped", self.path, timeout, lost)
        self._executor.shutdown(wait=False)

    # --- the writer thread --------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute(f"PRAGMA page_size={_PAGE}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            have = {r[1] for r in db.execute("PRAGMA table_info(queue)")}
            for column, decl in (("blob", "BLOB"), ("n", "INTEGER NOT NULL DEFAULT 1"), ("epoch", "TEXT")):
                if column not in have:  # a queue file of an earlier version
                    db.execute(f"ALTER TABLE queue ADD COLUMN {column} {decl}")
            db.execute(f"PRAGMA max_page_count={self.max_pages}")
            self.db = db
            for sink, k in db.execute("SELECT sink, SUM(n) FROM queue GROUP BY sink").fetchall():
                self._count(sink, k)
        except (sqlite3.Error, OSError) as e:
            self._failed("cannot open the store-and-forward queue", e)
            self.db = None

    def _write(self, sink: str, n: int, rows: list[Row], front: bool) -> None:
        try:
            if self._abandon:
                self._lost(sink, n, "not written before the shutdown")
                return
            if self.before_write is not None:
                self.before_write()
            if self.db is None:
                self._open()
                if self.db is None:
                    self._lost(sink, n, "the queue file cannot be opened")
                    return
            for attempt in range(4):
                try:
                    self._insert(self.db, rows, front)
                    return
                except sqlite3.Error as e:
                    if not _full(e) or attempt == 3:
                        self._failed("cannot write the store-and-forward queue", e)
                        break
                    # make room: the oldest tenth of the queue, at least as many rows as we bring
                    if not self._drop_oldest(max(n, self.total() // 10), "the queue is full (max_mb or the disk)"):
                        break
            self._lost(sink, n, "the queue is full and nothing more can be dropped")
        finally:
            with self._lock:
                self._pending -= n

    def _insert(self, db: sqlite3.Connection, rows: list[Row], front: bool) -> None:
        with db:
            db.execute("BEGIN")
            if front:  # ids below the smallest: read back before everything queued
                low = db.execute("SELECT MIN(id) FROM queue").fetchone()[0]
                start = (1 if low is None else int(low)) - len(rows)
                db.executemany(_INSERT_AT, [(start + i, *r) for i, r in enumerate(rows)])
            else:
                db.executemany(_INSERT, rows)

    def _lost(self, sink: str, n: int, why: str) -> None:
        self._count(sink, -n)
        self.note_dropped(n, why)

    def _select(self, sql: str, sink: str, limit: int) -> list[Any]:
        if self.db is None:
            return []
        try:
            return self.db.execute(sql, (sink, limit)).fetchall()
        except sqlite3.Error as e:
            self._failed("cannot read the store-and-forward queue", e)
            return []

    def _select_changes(self, sql: str, sink: str, limit: int) -> list[Any]:
        """The rows of ``sql`` (column 1: their ``n``) until they hold ``limit`` changes, at least one."""
        if self.db is None:
            return []
        out: list[Any] = []
        held = 0
        try:
            for row in self.db.execute(sql, (sink, limit)):
                out.append(row)
                held += row[1]
                if held >= limit:
                    break
        except sqlite3.Error as e:
            self._failed("cannot read the store-and-forward queue", e)
            return []
        return out

    def _delete(self, sink: str, where: str, params: list[int]) -> None:
        if self.db is None:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                # changes, not rows: a chunk holds many (the (sink, id) index keeps this to the rows deleted)
                n = self.db.execute(f"SELECT COALESCE(SUM(n), 0) FROM queue WHERE sink = ? AND {where}",
                                    (sink, *params)).fetchone()[0]
                self.db.execute(f"DELETE FROM queue WHERE sink = ? AND {where}", (sink, *params))
        except sqlite3.Error as e:
            self._failed("cannot delete from the store-and-forward queue", e)
            return
        self._count(sink, -int(n))

    def _drop_oldest(self, n: int, why: str) -> bool:
        """Drop the oldest rows (of any sink) holding at least ``n`` changes."""
        if self.db is None:
            return False
        last: int | None = None
        held = 0
        try:
            for rid, k in self.db.execute("SELECT id, n FROM queue ORDER BY id"):
                last, held = rid, held + k
                if held >= n:
                    break
        except sqlite3.Error as e:
            self._failed("cannot read the store-and-forward queue", e)
            return False
        return last is not None and self._delete_counted("id <= ?", (last,), why)

    def _delete_counted(self, where: str, params: tuple[int, ...], why: str) -> bool:
        """Delete the rows ``where`` selects, keep the per-sink counts right and count them as dropped;
        whether any row went."""
        if self.db is None:
            return False
        try:
            with self.db:
                self.db.execute("BEGIN")
                gone = self.db.execute(
                    f"SELECT sink, SUM(n) FROM queue WHERE {where} GROUP BY sink", params).fetchall()
                self.db.execute(f"DELETE FROM queue WHERE {where}", params)
        except sqlite3.Error as e:
            self._failed("cannot drop from the store-and-forward queue", e)
            return False
        for sink, k in gone:
            self._count(sink, -k)
        self.note_dropped(sum(k for _, k in gone), why)
        return bool(gone)

    def _close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None


def _change(name: object, value: object, quality: object, ts: object) -> Change:
    """A queued row as a change; a row whose value or quality cannot be read back is a BAD None."""
    try:
        return (str(name), json.loads(str(value)), Quality(str(quality)), ts if isinstance(ts, int) else None)
    except ValueError:
        return (str(name), None, Quality.BAD, ts if isinstance(ts, int) else None)
