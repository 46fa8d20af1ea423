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
        self._sent: dict[str, asyncio.Queue[Frame]] = {}
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
            q: asyncio.Queue[Frame] = asyncio.Queue()
            self._sent[b.name] = q

            def on_msg(msg: can.Message, q: asyncio.Queue[Frame] = q, bus: str = b.name) -> None:
                can_id, _flags, data, ts = message_to_raw(msg)
                q.put_nowait(Frame(can_id, data, extended=msg.is_extended_id, rtr=msg.is_remote_frame,
                                   fd=msg.is_fd, timestamp_ns=ts, bus=bus))

            self._notifiers.append(can.Notifier(peer, [on_msg], loop=loop))
        await self.runtime.start()
        await self._stack.enter_async_context(simulators(self.runtime))
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
        """The next frame the bridge sends (with this id), as a peer node sees it; TimeoutError if none."""
        q = self._sent[self._bus(bus)]
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame{'' if can_id is None else f' 0x{can_id:X}'} sent within {timeout} s")
            frame = await asyncio.wait_for(q.get(), remaining)
            if can_id is None or frame.can_id == can_id:
                return frame

    def clear_sent(self, bus: str | None = None) -> None:
        q = self._sent[self._bus(bus)]
        while not q.empty():
            q.get_nowait()

    async def until(self, predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> None:
        """Wait until ``predicate()`` is true; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)
