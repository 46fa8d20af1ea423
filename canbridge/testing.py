"""Test helpers for canbridge and for plugin authors: a running bridge on an in-process virtual bus.

    async with BridgeHarness(plugins={"rest": {"host": "127.0.0.1", "port": 0}}) as h:
        h.inject("100#E803000000000000")           # a peer node sends a frame
        await h.until(lambda: h.bridge.read("demo.MotorStatus.MotorSpeed").value == 1000)
        await h.bridge.write("demo.MotorCommand.SpeedSetpoint", 1500, Caller("test"))
        frame = await h.next_sent(0x300)           # what the bridge put on the bus
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import can

from canbridge._frames import parse_frame
from canbridge._model import Frame
from canbridge._plugin import Service
from canbridge.core.app import demo_config, runtime_from_data, simulators, unique_channel
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.pycan import frame_to_message, message_to_raw
from canbridge.core.runtime import Runtime


class _Seen:
    """Frames a peer node saw, bounded (a cyclic frame every 100 ms must not grow a long test without end)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.frames: deque[Frame] = deque(maxlen=maxlen)
        self.event = asyncio.Event()

    def add(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.event.set()

    def take(self, can_id: int | None) -> Frame | None:
        for i, frame in enumerate(self.frames):
            if can_id is None or frame.can_id == can_id:
                del self.frames[i]
                return frame
        return None


class BridgeHarness:
    """Start a bridge (default: the demo mapping on a fresh virtual channel) for a test."""

    def __init__(self, config: Mapping[str, Any] | None = None, plugins: Mapping[str, Any] | None = None,
                 simulate: bool = False, state_dir: Path | None = None, base_dir: Path | None = None,
                 extra_plugins: Sequence[object] = ()) -> None:
        if config is None:
            data = demo_config(unique_channel("test"), dict(plugins or {}), state_dir)
            if not simulate:
                data["simulators"] = []
        else:
            data = copy.deepcopy(dict(config))
            if plugins is not None:
                data["plugins"] = dict(plugins)
            if state_dir is not None:
                data.setdefault("state_dir", str(state_dir))
            if not simulate:
                data["simulators"] = []
        if state_dir is None and "state_dir" not in data:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="canbridge-test-")
            data["state_dir"] = self._tmp.name
        self.data = data
        self._base_dir = base_dir
        self._extra_plugins = list(extra_plugins)
        self.runtime: Runtime | None = None
        self._peers: dict[str, can.BusABC] = {}
        self._sent: dict[str, _Seen] = {}
        self._notifiers: list[can.Notifier] = []
        self._stack = contextlib.AsyncExitStack()

    @property
    def bridge(self) -> Runtime:
        assert self.runtime is not None, "the harness is not running"
        return self.runtime

    def service(self, name: str) -> Service:
        return self.bridge.services[name]

    async def __aenter__(self) -> BridgeHarness:
        registry = None
        if self._extra_plugins:  # plugins under test, registered as if installed
            pm = make_plugin_manager()
            for plugin in self._extra_plugins:
                pm.register(plugin)
            registry = collect(pm)
        self.runtime = runtime_from_data(self.data, registry, base_dir=self._base_dir)
        loop = asyncio.get_running_loop()
        for b in self.runtime.config.buses:
            if b.interface != "virtual":
                continue
            peer = can.Bus(interface="virtual", channel=b.channel, receive_own_messages=False)
            self._peers[b.name] = peer
            seen = self._sent[b.name] = _Seen()

            def on_msg(msg: can.Message, seen: _Seen = seen, bus: str = b.name) -> None:
                can_id, _flags, data, ts = message_to_raw(msg)
                seen.add(Frame(can_id, data, extended=msg.is_extended_id, rtr=msg.is_remote_frame,
                               fd=msg.is_fd, timestamp_ns=ts, bus=bus))

            self._notifiers.append(can.Notifier(peer, [on_msg], loop=loop))
        try:
            await self.runtime.start()
            await self._stack.enter_async_context(simulators(self.runtime))
        except BaseException:
            await self.__aexit__(None, None, None)  # a failed start leaves no peers or threads behind
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
        if self.runtime is not None:
            await self.runtime.stop()
        for n in self._notifiers:
            n.stop(timeout=1)
        for p in self._peers.values():
            p.shutdown()
        if getattr(self, "_tmp", None) is not None:
            self._tmp.cleanup()

    def _bus(self, bus: str | None) -> str:
        if bus is None:
            if len(self._peers) != 1:
                raise ValueError("name the bus: the harness has several")
            return next(iter(self._peers))
        return bus

    def inject(self, frame: Frame | str | Mapping[str, object], bus: str | None = None) -> None:
        """A peer node sends a frame to the bridge."""
        f = parse_frame(frame)
        self._peers[self._bus(bus)].send(frame_to_message(f))

    async def next_sent(self, can_id: int | None = None, timeout: float = 2.0, bus: str | None = None) -> Frame:
        """The oldest frame not yet taken that the bridge sent (with this id), as a peer node saw it; waits for
        one up to ``timeout`` seconds (TimeoutError). Frames with other ids stay for later calls."""
        seen = self._sent[self._bus(bus)]
        deadline = time.monotonic() + timeout
        while True:
            frame = seen.take(can_id)
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame{'' if can_id is None else f' 0x{can_id:X}'} sent within {timeout} s")
            seen.event.clear()
            try:
                await asyncio.wait_for(seen.event.wait(), remaining)
            except TimeoutError:
                pass

    def clear_sent(self, bus: str | None = None) -> None:
        """Forget the frames seen so far (e.g. before a write whose frame a test waits for)."""
        self._sent[self._bus(bus)].frames.clear()

    async def until(self, predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> None:
        """Wait until ``predicate()`` is true; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)
