"""The ``replay`` bus kind: plays a candump/ASC/BLF/CSV/TRC log (anything python-can's LogReader
reads) at recorded speed or as fast as possible, once or in a loop. Writes are accepted and counted,
so a mapping can be tested offline end to end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import can

from canbridge._errors import BusUnavailable
from canbridge._model import Frame, RawFrame
from canbridge._plugin import BusDriver, PeriodicHandle
from canbridge.config import BusConfig, ReplayOptions
from canbridge.core.can.pycan import message_to_raw

log = logging.getLogger("canbridge.bus")

BATCH = 512


class _AsyncPeriodic(PeriodicHandle):
    def __init__(self, driver: ReplayDriver, frame: Frame, period: float) -> None:
        self.frame = frame
        self._task = asyncio.get_running_loop().create_task(self._run(driver, period))

    async def _run(self, driver: ReplayDriver, period: float) -> None:
        while True:
            driver.send(self.frame)
            await asyncio.sleep(period)

    def modify(self, frame: Frame) -> None:
        self.frame = frame

    def stop(self) -> None:
        self._task.cancel()


class ReplayDriver(BusDriver):
    def __init__(self, config: BusConfig) -> None:
        assert config.replay is not None
        self.config = config
        self.options: ReplayOptions = config.replay
        self._task: asyncio.Task[None] | None = None
        self.sent: list[Frame] = []
        self.finished = asyncio.Event()
        self._filter: set[tuple[int, bool]] | None = None

    async def open(self) -> None:
        if not self.options.file.exists():
            raise BusUnavailable(f"replay log {self.options.file} not found")
        try:
            next(iter(can.LogReader(str(self.options.file))), None)
        except Exception as e:
            raise BusUnavailable(f"cannot read replay log {self.options.file}: {e}") from e

    def set_filters(self, ids: Any) -> None:
        self._filter = None if ids is None else set(ids)

    def _passes(self) -> Iterator[Iterator[can.Message]]:
        """One reader per pass over the log: once, or again and again with ``loop``."""
        while True:
            yield iter(can.LogReader(str(self.options.file)))
            if not self.options.loop:
                return

    def start_reading(
        self, on_frames: Callable[[list[RawFrame]], None], on_error: Callable[[BaseException], None]
    ) -> None:
        self._task = asyncio.get_running_loop().create_task(self._play(on_frames, on_error))

    async def _play(
        self, on_frames: Callable[[list[RawFrame]], None], on_error: Callable[[BaseException], None]
    ) -> None:
        fast = self.options.speed == "fast"
        batch: list[RawFrame] = []
        try:
            for messages in self._passes():
                # each pass restarts the clock: a looped log plays at its recorded speed every time
                t0_log: float | None = None
                t0 = time.monotonic()
                played = 0
                for msg in messages:
                    played += 1
                    filtered = self._filter is not None and \
                        (msg.arbitration_id, msg.is_extended_id) not in self._filter
                    if filtered and not msg.is_error_frame:
                        continue
                    if not fast:
                        if t0_log is None:
                            t0_log, t0 = msg.timestamp, time.monotonic()
                        delay = (msg.timestamp - t0_log) - (time.monotonic() - t0)
                        if delay > 0.001:
                            if batch:
                                on_frames(batch)
                                batch = []
                            await asyncio.sleep(delay)
                    msg.timestamp = time.time()
                    batch.append(message_to_raw(msg))
                    if len(batch) >= BATCH:  # bounded batches, and the loop gets its turn
                        on_frames(batch)
                        batch = []
                        await asyncio.sleep(0)
                if batch:
                    on_frames(batch)
                    batch = []
                if not played:  # an empty log in a loop would spin forever
                    break
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            on_error(e)
        finally:
            self.finished.set()

    def send(self, frame: Frame) -> None:
        self.sent.append(frame)
        if len(self.sent) > 10_000:
            del self.sent[:5_000]

    def send_periodic(self, frame: Frame, period_s: float) -> PeriodicHandle:
        return _AsyncPeriodic(self, frame, period_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
