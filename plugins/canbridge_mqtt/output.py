"""What the Sparkplug and JSON outputs share: report by exception, live or buffered, the ordered backlog."""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from canbridge import SignalInfo
from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import BufferConfig
from canbridge_mqtt.rbe import Change, ReportFilter

PAGE_MESSAGES = 16  # backlog messages read from the queue with one SELECT and sent together


class Output(ABC):
    """An output's data path: live while online and nothing is queued, else into the queue; after a
    (re)connect the queue drains oldest first, rate-limited, before live data flows again."""

    sink = ""

    def __init__(self, rbe: ReportFilter, buffer: Buffer | None, cfg: BufferConfig) -> None:
        self.rbe = rbe
        self.buffer = buffer
        self.buffer_cfg = cfg
        self.online = False  # connected and born: live data can go out
        self.published = 0  # changes sent live
        self.replayed = 0  # changes sent from the queue
        self.lost = 0  # changes that could not be sent nor queued (no buffer configured)
        self.inflight = 0  # changes published and not yet acknowledged, kept in flight (a slow broker)

    @abstractmethod
    async def send_live(self, changes: Sequence[Change]) -> Sequence[Change]:
        """Publish live ``changes`` (counting ``published``); return those that did not go out, in order, to
        be queued: the link broke. Changes still awaiting their acknowledgement are the output's business."""

    async def add_signals(self, signals: Sequence[SignalInfo]) -> None:  # noqa: B027 - most outputs need nothing
        """Get ready to publish these signals too (added to the bridge's table at run time); their changes
        are offered once this returns. By default there is nothing to prepare."""

    @abstractmethod
    async def replay(self, buf: Buffer, limit: int) -> tuple[int, int]:
        """Send the oldest ``limit`` queued changes as history and delete from the queue what was delivered:
        ``(rows read, rows delivered)``; fewer delivered than read stops the drain (the link broke, or the
        rest still awaits its acknowledgement)."""

    def store(self, buf: Buffer, changes: Sequence[Change], front: bool) -> None:
        """Queue ``changes`` in ``buf`` (``front``: before what is queued); an output may keep them in the form
        that is cheapest to replay."""
        if front:
            buf.prepend(self.sink, changes)
        else:
            buf.append(self.sink, changes)

    def interrupted(self) -> bool:
        """Whether the drain should pause for something more urgent (a rebirth)."""
        return False

    def backlog(self) -> int:
        """Changes that go out before the next live one: queued on disk, or in flight and unacknowledged."""
        return self.inflight + (0 if self.buffer is None else self.buffer.count(self.sink))

    def keep(self, changes: Sequence[Change], front: bool = False) -> None:
        """Queue changes that did not go out (``front``: before what is queued, they were older)."""
        if not changes:
            return
        if self.buffer is None:
            self.lost += len(changes)
        else:
            self.store(self.buffer, changes, front)

    async def offer(self, changes: Sequence[Change]) -> None:
        """Report changes: live, or queued behind a backlog so that the order is kept."""
        if not changes:
            return
        rest = changes
        if self.online and self.backlog() == 0:
            rest = await self.send_live(changes)
        self.keep(rest)

    async def drain(self) -> None:
        """Send the queue oldest first at ``drain_rate``; returns when it is empty or the link broke."""
        buf = self.buffer
        if buf is None:
            return
        cfg = self.buffer_cfg
        t0 = time.monotonic()
        done = 0
        while self.online and buf.count(self.sink) and not self.interrupted() and not self.inflight:
            n, sent = await self.replay(buf, cfg.batch * PAGE_MESSAGES)
            self.replayed += sent
            done += sent
            if not n or sent < n:
                return
            # paced against the clock: the time spent sending counts, only being ahead of drain_rate waits
            ahead = done / cfg.drain_rate - (time.monotonic() - t0)
            await asyncio.sleep(max(0.0, ahead))  # 0: let live work in between pages
