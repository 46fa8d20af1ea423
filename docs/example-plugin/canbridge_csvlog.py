"""An example canbridge plugin: appends every signal change to a CSV file.

Install it next to canbridge (``pip install ./docs/example-plugin``) and enable it in the
configuration::

    plugins:
      csvlog: {file: changes.csv, interval_s: 1.0, signals: ["demo.MotorStatus.*"]}
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fnmatch
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import canbridge


class CsvLogConfig(BaseModel):
    """The plugin's configuration: unknown keys are errors, like everywhere in canbridge."""

    model_config = ConfigDict(extra="forbid")

    file: Path = Field(description="CSV file to append to (relative: to the state directory)")
    interval_s: float = Field(1.0, gt=0, description="how often changes are written")
    signals: list[str] = Field(default_factory=lambda: ["*"], description="signal name globs")


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


@canbridge.hookimpl
def register_northbound(register: Callable[[canbridge.NorthboundPlugin], None]) -> None:
    register(canbridge.NorthboundPlugin(
        name="csvlog",
        config_model=CsvLogConfig,
        factory=CsvLog,
        description="append signal changes to a CSV file",
    ))
