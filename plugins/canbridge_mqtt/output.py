"""What the Sparkplug and JSON outputs share: report by exception, live or buffered, the ordered backlog."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence

from canbridge_mqtt.buffer import Buffer
from canbridge_mqtt.config import BufferConfig
from canbridge_mqtt.rbe import Change, ReportFilter


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

    @abstractmethod
    async def send(self, changes: Sequence[Change], historical: bool) -> int:
        """Publish ``changes`` in order; return how many (from the start) went out: fewer when the link
        broke, and the rest must be kept."""

    def encode_queued(self, changes: Sequence[Change]) -> list[bytes] | None:
        """What to keep with queued changes so that the replay is cheap (None: nothing, ``send`` them)."""
        return None

    async def replay(self, buf: Buffer, limit: int) -> tuple[int, int, int]:
        """Send the oldest ``limit`` queued changes as history: ``(rows read, rows sent, id of the last row
        sent)``; fewer sent than read when the link broke."""
        rows = await buf.peek(self.sink, limit)
        if not rows:
            return 0, 0, 0
        sent = await self.send([c for _, c in rows], True)
        return len(rows), sent, rows[sent - 1][0] if sent else 0

    def interrupted(self) -> bool:
        """Whether the drain should pause for something more urgent (a rebirth)."""
        return False

    def backlog(self) -> int:
        return 0 if self.buffer is None else self.buffer.count(self.sink)

    async def offer(self, changes: Sequence[Change]) -> None:
        """Report changes: live, or queued behind a backlog so that the order is kept."""
        if not changes:
            return
        sent = 0
        if self.online and self.backlog() == 0:
            sent = await self.send(changes, False)
            self.published += sent
        rest = changes[sent:]
        if rest:
            if self.buffer is not None:
                self.buffer.append(self.sink, rest, self.encode_queued(rest))
            else:
                self.lost += len(rest)

    async def drain(self) -> None:
        """Send the queue oldest first at ``drain_rate``; returns when it is empty or the link broke."""
        buf = self.buffer
        if buf is None:
            return
        cfg = self.buffer_cfg
        while self.online and buf.count(self.sink) and not self.interrupted():
            n, sent, last_id = await self.replay(buf, cfg.batch)
            if not n:
                return
            if sent:
                await buf.delete(self.sink, last_id)
                self.replayed += sent
            if sent < n:
                return
            await asyncio.sleep(n / cfg.drain_rate)
