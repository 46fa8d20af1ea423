"""The audit log: one JSON line per accepted or refused write (who, what, value, result).

The rule (a safety product's): **no frame without its audit record**. The write path records an
accepted write *before* it transmits; when that record cannot be written (disk full, read-only file
system, deleted directory) :class:`AuditUnavailable` is raised, the write is refused with
``audit_unavailable`` and nothing is sent. The log is then an alarm point (``available`` False, with
the error) until a write succeeds again: :meth:`AuditLog.probe` (called by the runtime every second)
and every later record try again, so recovery needs no restart and no client write.

Refusals never raise: a refusal that cannot be written waits in a bounded backlog, written first once
the file takes lines again. Refusal records are rate-limited per (plugin, address), so a flood of
refused attempts (a password guesser, a PLC hammering a read-only register) cannot fill the disk: what
is suppressed is counted in one ``suppressed`` record per key.

A line is written with one ``write(2)`` on an ``O_APPEND`` descriptor; a short write (the disk filled
mid-line) is cut off again with ``ftruncate``, so the file never holds half a record. The file rotates
at ``max_bytes`` into ``audit.jsonl.1`` … ``.N``.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("canbridge.audit")

MAX_KEYS = 4096  # refusal rate buckets kept (one per plugin and address); the oldest is forgotten first
BACKLOG = 10_000  # refusal records kept in memory while the file cannot be written


class AuditUnavailable(Exception):
    """The audit record could not be written; the write it describes must not happen."""


class _Bucket:
    __slots__ = ("stamp", "suppressed", "tokens")

    def __init__(self, burst: float) -> None:
        self.tokens = burst
        self.stamp = time.monotonic()
        self.suppressed = 0


def _timestamp(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns % 10**9 // 10**6:03d}Z"


def _dumps(entry: dict[str, Any]) -> str:
    try:
        return json.dumps(entry, default=str, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a refused NaN/inf value: NaN is not JSON, other tools would reject the line
        entry = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
        return json.dumps(entry, default=str, separators=(",", ":"))


class AuditLog:
    """Appends JSON lines to a file (when ``path`` is set) and mirrors them to ``canbridge.audit``."""

    def __init__(self, path: Path | None, *, max_bytes: int = 100 * 2**20, backups: int = 10,
                 fsync: bool = False, refusal_rate: float = 20.0, refusal_burst: float = 200.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self.refusal_rate = refusal_rate
        self.refusal_burst = refusal_burst
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._seq = 0
        self._buckets: collections.OrderedDict[tuple[str, str], _Bucket] = collections.OrderedDict()
        self._backlog: collections.deque[str] = collections.deque(maxlen=BACKLOG)
        self.backlog_dropped = 0  # refusal records lost because the backlog was full
        self.suppressed = 0  # refusal records folded into "suppressed" counts
        self.failures = 0
        self.error: str | None = None
        self._down_since: float | None = None
        self._closed = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    # --- state ---
    @property
    def available(self) -> bool:
        return self.error is None

    def _open(self) -> None:
        assert self.path is not None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def _fail(self, e: OSError) -> None:
        self.failures += 1
        why = f"{self.path}: {os.strerror(e.errno) if e.errno else e}"
        if self.error is None:
            self._down_since = time.monotonic()
            log.error("audit log cannot be written (%s): every write is refused until it can", why)
        self.error = why

    # --- writing ---
    def _append(self, line: str) -> None:
        """Write one whole line or nothing; OSError when the file does not take it."""
        if self.path is None:
            return
        if self._fd is None:
            self._open()
        assert self._fd is not None
        data = (line + "\n").encode()
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        start = self._size
        written = 0
        try:
            while written < len(data):
                n = os.write(self._fd, data[written:])
                if n == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += n
            if self.fsync:
                os.fsync(self._fd)
        except OSError:
            if written:  # never leave half a record behind
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
            raise
        self._size = start + len(data)

    def _rotate(self) -> None:
        assert self.path is not None and self._fd is not None
        os.close(self._fd)
        self._fd = None
        for i in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.unlink(self.path)
        self._open()

    def _drain(self) -> None:
        """Write what waited while the file could not be written; OSError when it still cannot."""
        if self.error is not None:
            down = time.monotonic() - (self._down_since or time.monotonic())
            self._append(_dumps({"time": _timestamp(time.time_ns()), "event": "audit_recovered",
                                 "unavailable_s": round(down, 3), "error": self.error,
                                 "refusals_waiting": len(self._backlog), "refusals_lost": self.backlog_dropped}))
            log.warning("audit log writable again after %.1f s (%s)", down, self.error)
            self.error = None
            self._down_since = None
        while self._backlog:
            self._append(self._backlog[0])
            self._backlog.popleft()

    def _entry(self, entry: dict[str, Any]) -> str:
        self._seq += 1
        return _dumps({"time": _timestamp(time.time_ns()), "seq": self._seq, **entry})

    def record(self, **entry: Any) -> int:
        """Record an accepted write before it happens; its sequence number, or AuditUnavailable."""
        with self._lock:
            if self._closed:
                raise AuditUnavailable("the audit log is closed (the bridge is stopping)")
            line = self._entry(entry)
            try:
                self._drain()
                self._append(line)
            except OSError as e:
                self._fail(e)
                raise AuditUnavailable(self.error or str(e)) from None
            seq = self._seq
        log.info("%s", line)
        return seq

    def _take(self, key: tuple[str, str], rate: float, burst: float, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(burst)
            if len(self._buckets) > MAX_KEYS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        return bucket

    def record_refusal(self, **entry: Any) -> None:
        """Record a refused write; never raises. Rate-limited per (plugin, address) and in total."""
        key = (str(entry.get("plugin")), str(entry.get("address")))
        with self._lock:
            now = time.monotonic()
            bucket = self._take(key, self.refusal_rate, self.refusal_burst, now)
            # many peers at once (or one that changes its address) meet the bound over all of them
            total = self._take(("*", "*"), self.refusal_rate * 10, self.refusal_burst * 5, now)
            if bucket.tokens < 1.0 or total.tokens < 1.0:
                bucket.suppressed += 1
                self.suppressed += 1
                return
            bucket.tokens -= 1.0
            total.tokens -= 1.0
            lines = []
            if bucket.suppressed:
                lines.append(self._entry({"result": "suppressed", "plugin": key[0], "address": entry.get("address"),
                                          "count": bucket.suppressed,
                                          "detail": "refusals from this peer above the audit rate bound"}))
                bucket.suppressed = 0
            lines.append(self._entry(entry))
            for line in lines:
                self._write_or_keep(line)
        for line in lines:
            log.info("%s", line)

    def record_event(self, **entry: Any) -> None:
        """Record something that is not a write (a follow-up of an accepted record); never raises."""
        with self._lock:
            self._write_or_keep(self._entry(entry))

    def _write_or_keep(self, line: str) -> None:
        if self._closed:
            log.warning("audit record after close: %s", line)
            return
        try:
            self._drain()
            self._append(line)
        except OSError as e:
            self._fail(e)
            if len(self._backlog) == self._backlog.maxlen:
                self.backlog_dropped += 1
            self._backlog.append(line)

    def probe(self) -> bool:
        """Try again to write what waits (and clear the alarm); True when the log is available."""
        with self._lock:
            if self.error is None and not self._backlog:
                return True
            try:
                self._drain()
            except OSError as e:
                self._fail(e)
                return False
            return True

    def close(self) -> None:
        with self._lock:
            if self._backlog or self.error is not None:
                try:
                    self._drain()
                except OSError as e:
                    self._fail(e)
                    log.error("audit log closed with %d refusal records unwritten (%s)", len(self._backlog),
                              self.error)
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
