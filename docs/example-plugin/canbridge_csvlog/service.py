"""The running service: one subscription, one batch written per interval."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fnmatch

import canbridge
from canbridge_csvlog.config import CsvLogConfig


class CsvLog:
    """The running service: one subscription, one batch written per interval."""

    def __init__(self, bridge: canbridge.Bridge, config: CsvLogConfig) -> None:
        self.bridge = bridge
        self.config = config
        self.path = config.file if config.file.is_absolute() else bridge.state_dir / config.file
        self.rows = 0
        self._task: asyncio.Task[None] | None = None
        self._sub: canbridge.Subscription | None = None

    async def start(self) -> None:
        names = [n for n in self.bridge.signals if any(fnmatch.fnmatchcase(n, p) for p in self.config.signals)]
        self._sub = self.bridge.subscribe(names, interval=self.config.interval_s)
        self._task = asyncio.create_task(self._run(self._sub))

    async def _run(self, sub: canbridge.Subscription) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            out = csv.writer(fh)
            if new:
                out.writerow(["timestamp", "signal", "value", "quality"])
            async for batch in sub:  # coalesced: each changed signal once, newest value
                out.writerows([v.timestamp, v.name, v.value, v.quality.value] for v in batch)
                fh.flush()
                self.rows += len(batch)

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)

    def endpoints(self) -> list[str]:
        return [f"file://{self.path}"]
