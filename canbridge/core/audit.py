"""The audit log: one JSON line per accepted or refused write (who, what, value, result)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("canbridge.audit")


class AuditLog:
    """Appends JSON lines to a file and mirrors them to the ``canbridge.audit`` logger."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh: Any = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def record(self, **entry: Any) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9 // 10**6:03d}Z",
                 **entry}
        try:
            line = json.dumps(entry, default=str, separators=(",", ":"), allow_nan=False)
        except ValueError:  # a refused NaN/inf value: NaN is not JSON, other tools would reject the line
            entry = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in entry.items()}
            line = json.dumps(entry, default=str, separators=(",", ":"))
        log.info("%s", line)
        if self._fh is not None:
            with self._lock:
                # writes are rate-bounded and rare next to frames: flushing each keeps the log complete on a crash
                self._fh.write(line + "\n")
                self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
