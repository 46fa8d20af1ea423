"""Live streams: Server-Sent Events and WebSocket clients fed from bridge subscriptions.

Back-pressure without memory growth: a client's loop takes the next batch from its subscription only
after the previous one was written. While a client is slow the bridge's subscription coalesces signal
changes (the client skips ahead to the newest values) and the frame subscription drops the oldest
frames from its bounded buffer. A write that cannot be handed to the socket within
``stream_write_timeout_s`` drops the client and discards what was buffered for it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import canbridge
from canbridge_rest import models

log = logging.getLogger("canbridge.rest")

Send = Callable[[str, dict[str, Any]], Awaitable[None]]


class StreamParamError(ValueError):
    """A stream's parameters are invalid (HTTP 400, or an error message on a WebSocket)."""


@dataclass(frozen=True)
class StreamParams:
    names: tuple[str, ...] | None  # None: every signal
    signals: bool
    frames: bool
    frame_bus: str | None
    interval: float
    # (bus, can_id, extended) of the messages the name/message filters select; None: every frame
    frame_ids: frozenset[tuple[str, int, bool]] | None = None
    events: bool = False  # diagnostic events (J1939 DTCs, CANopen EMCY) as 'events' events


def _flag(v: object, key: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.lower() in ("0", "false", "no", "off", ""):
        return False
    raise StreamParamError(f"{key!r} must be 1/0 or true/false, got {v!r}")


def parse_params(
    q: Mapping[str, Any], bridge: canbridge.Bridge, default_interval: float, min_interval: float = 0.01
) -> StreamParams:
    """Stream parameters from a query string or a WebSocket subscribe message."""
    pattern = q.get("name")
    bus = q.get("bus")
    message = q.get("message")
    for key, v in (("name", pattern), ("bus", bus), ("message", message)):
        if v is not None and not isinstance(v, str):
            raise StreamParamError(f"{key!r} must be a string")
    if bus is not None and bus not in bridge.buses:
        raise StreamParamError(f"unknown bus {bus!r}; buses: {', '.join(bridge.buses)}")
    names: tuple[str, ...] | None = None
    frame_ids: frozenset[tuple[str, int, bool]] | None = None
    if pattern is not None or bus is not None or message is not None:
        infos = bridge.signals
        names = tuple(
            n
            for n, info in infos.items()
            if (pattern is None or fnmatch.fnmatchcase(n, pattern))
            and (bus is None or info.bus == bus)
            and (message is None or info.message == message)
        )
        if pattern is not None or message is not None:  # frames of the selected signals' messages
            frame_ids = frozenset((infos[n].bus, infos[n].frame_id, infos[n].extended) for n in names)
    raw_interval = q.get("interval", default_interval)
    try:
        interval = float(raw_interval)
    except (TypeError, ValueError):
        raise StreamParamError(f"'interval' must be a number of seconds, got {raw_interval!r}") from None
    if not min_interval <= interval <= 60:
        raise StreamParamError(f"'interval' must be between {min_interval} and 60 s, got {interval}")
    return StreamParams(
        names=names,
        signals=_flag(q.get("signals", True), "signals"),
        frames=_flag(q.get("frames", False), "frames"),
        frame_bus=bus,
        interval=interval,
        frame_ids=frame_ids,
        events=_flag(q.get("events", False), "events"),
    )


class StreamHub:
    """Every open stream of one service: counted, bounded and closed on shutdown."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._closing: set[asyncio.Event] = set()
        self.clients = 0
        self.clients_total = 0
        self.dropped_slow = 0
        self.refused_busy = 0
        self.events_sent = 0
        self.max_write_buffer = 0  # the largest socket write buffer seen before a send

    def try_acquire(self) -> asyncio.Event | None:
        if self.clients >= self.max_clients:
            self.refused_busy += 1
            return None
        ev = asyncio.Event()
        self._closing.add(ev)
        self.clients += 1
        self.clients_total += 1
        return ev

    def release(self, ev: asyncio.Event) -> None:
        if ev in self._closing:
            self._closing.discard(ev)
            self.clients -= 1

    def close_all(self) -> None:
        for ev in self._closing:
            ev.set()


class SlowClient(Exception):
    """A stream client did not take a write within the write timeout."""


async def _pull(it: AsyncIterator[Any]) -> Any:
    return await it.__anext__()


async def run_stream(
    bridge: canbridge.Bridge,
    params: StreamParams,
    send: Send,
    heartbeat: Callable[[], Awaitable[None]] | None,
    closing: asyncio.Event,
    infos: Mapping[str, canbridge.SignalInfo],
    heartbeat_s: float,
    frames_maxlen: int,
) -> str:
    """Feed one client until it goes away, the server shuts down or a subscription ends.

    ``send`` must raise :class:`SlowClient` when it times out. Returns why the stream ended.
    """
    sub = bridge.subscribe(params.names, params.interval) if params.signals and params.names != () else None
    fsub = bridge.subscribe_frames(params.frame_bus, frames_maxlen) if params.frames else None
    sources: dict[str, AsyncIterator[Any]] = {}
    if sub is not None:
        sources["signals"] = sub.__aiter__()
    if fsub is not None:
        sources["frames"] = fsub.__aiter__()
    esub = bridge.subscribe_events(frames_maxlen) if params.events else None
    if esub is not None:
        sources["events"] = esub.__aiter__()
    tasks: dict[asyncio.Future[Any], str] = {}
    close_wait = asyncio.ensure_future(closing.wait())
    try:
        if params.signals and params.names == ():
            await send("signals", {"signals": []})  # say so: the selection matched no signal
        while True:
            for kind, it in sources.items():
                if kind not in tasks.values():
                    tasks[asyncio.ensure_future(_pull(it))] = kind
            done, _ = await asyncio.wait(
                [*tasks, close_wait], timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED
            )
            if close_wait in done:
                return "server shutting down"
            if not done:
                if heartbeat is not None:
                    await heartbeat()
                continue
            for task in done:
                kind = tasks.pop(task)
                try:
                    batch = task.result()
                except StopAsyncIteration:
                    return f"{kind} subscription ended"
                if kind == "events":
                    assert esub is not None
                    evs = [e for e in batch if params.frame_bus is None or e.bus == params.frame_bus]
                    if evs:
                        await send("events", {"events": [models.event(e) for e in evs], "dropped": esub.dropped})
                    continue
                if kind == "signals":
                    await send(
                        "signals",
                        {"signals": [models.update(infos[sv.name], sv) for sv in batch]},
                    )
                else:
                    assert fsub is not None
                    ids = params.frame_ids
                    if ids is not None:
                        batch = [f for f in batch if (f.bus, f.can_id, f.extended) in ids]
                        if not batch:
                            continue
                    await send(
                        "frames",
                        {"frames": [models.frame(f) for f in batch], "dropped": fsub.dropped},
                    )
    finally:
        close_wait.cancel()
        for task in tasks:
            task.cancel()
        if sub is not None:
            sub.close()
        if fsub is not None:
            fsub.close()
        if esub is not None:
            esub.close()
        if tasks:  # let cancelled pulls finish so none is left pending on a closed subscription
            await asyncio.wait(list(tasks), timeout=1.0)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)
