"""Real-kernel SocketCAN tests: they need a kernel with CAN (vcan, can-raw, can-bcm) and root.

On a machine whose kernel has no CAN they are skipped here and run in a QEMU micro-VM with
``make test-socketcan`` (tools/vm/run-in-vm.sh), which sets CANBRIDGE_SOCKETCAN_REQUIRED=1: there a
missing kernel feature is a failure, never a skip. Python is 18-30x slower in the VM: keep imports
lean and every wait bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from canbridge import Frame
from canbridge.config import BusConfig
from canbridge.core.can.socketcan import SocketcanDriver, can_available
from canbridge.testing import until

REQUIRED = os.environ.get("CANBRIDGE_SOCKETCAN_REQUIRED") == "1"
HOW = "runs against a real kernel: make test-socketcan (or sudo bash tools/vm/run-in-vm.sh)"


def _why_not() -> str | None:
    why = can_available()
    if why:
        return f"kernel has no CAN ({why})"
    if os.geteuid() != 0:
        return "needs root to create vcan interfaces"
    for tool in ("ip", "cansend", "candump", "cangen"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install can-utils iproute2)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _real_kernel() -> None:
    why = _why_not()
    if why is None:
        for dev in ("vcan0", "vcan1"):
            ensure_vcan(dev)
        return
    if REQUIRED:
        pytest.fail(f"SocketCAN tier cannot run: {why}", pytrace=False)
    pytest.skip(f"{why}; {HOW}")


# --- shell helpers ---------------------------------------------------------------------------------
def run(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", *args, check=check)


def ensure_vcan(dev: str, up: bool = True) -> None:
    if ip("link", "show", dev, check=False).returncode != 0:
        ip("link", "add", "dev", dev, "type", "vcan")
    if up:
        ip("link", "set", "up", dev)


def cansend(dev: str, *frames: str) -> None:
    for f in frames:
        run("cansend", dev, f)


_scratch = itertools.count(10)


@pytest.fixture
def scratch_vcan() -> Iterator[str]:
    """A vcan interface of its own, for tests that take it down or delete it."""
    dev = f"vcan{next(_scratch)}"
    ensure_vcan(dev)
    yield dev
    ip("link", "del", "dev", dev, check=False)


# --- receiving through the driver ------------------------------------------------------------------
class Collector:
    """Receives a driver's batches and errors; every wait is bounded."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, int, bytes, int]] = []
        self.batches = 0
        self.errors: list[BaseException] = []

    def on_frames(self, batch: list[tuple[int, int, bytes, int]]) -> None:
        self.batches += 1
        self.frames.extend(batch)

    def on_error(self, exc: BaseException) -> None:
        self.errors.append(exc)

    async def until(self, pred: Callable[[], object], limit: float = 10.0, what: str = "condition") -> None:
        await until(pred, limit, 0.02, what=what, detail=lambda: f"{len(self.frames)} frames, errors {self.errors!r}")

    async def count(self, n: int, limit: float = 10.0) -> None:
        await self.until(lambda: len(self.frames) >= n, limit, f"{n} frames")

    def ids(self) -> list[int]:
        return [f[0] for f in self.frames]


MARK_DATA = b"\xa5" * 8


async def sent_since(sender: SocketcanDriver, col: Collector, can_id: int, since_ns: int) -> list[bytes]:
    """The payloads ``col`` received stamped (by the kernel) after ``since_ns``, read up to a marker frame
    with this id that ``sender`` sends now: once the marker is in, so is everything sent before it."""
    n = len(col.frames)
    sender.send(Frame(can_id, MARK_DATA))
    await col.until(lambda: any(f[2] == MARK_DATA for f in col.frames[n:]), what="the marker frame")
    return [f[2] for f in col.frames if f[3] > since_ns and f[2] != MARK_DATA]


def bus_config(channel: str, **kw: Any) -> BusConfig:
    return BusConfig(name=kw.pop("name", "b"), interface="socketcan", channel=channel, **kw)


@pytest.fixture
async def open_driver() -> AsyncIterator[OpenDriver]:
    """``await open_driver("vcan0", fd=True)`` -> (driver, collector), reading; closed at the end."""
    drivers: list[SocketcanDriver] = []

    async def make(channel: str, read: bool = True, filters: Any = "all", **kw: Any) -> Any:
        drv = SocketcanDriver(bus_config(channel, **kw))
        await drv.open()
        drivers.append(drv)
        if filters != "all":
            drv.set_filters(filters)
        col = Collector()
        if read:
            drv.start_reading(col.on_frames, col.on_error)
        return drv, col

    yield make
    for d in drivers:
        await d.close()


# --- candump ----------------------------------------------------------------------------------------
class Candump:
    """candump -L on an interface, synchronised: :meth:`start` returns once candump receives."""

    MARK = "7FF#5A5A"

    def __init__(self, dev: str, *filters: str) -> None:
        self.dev = dev
        spec = ",".join((dev, *filters, "7FF:7FF")) if filters else dev
        self.args = ["candump", "-L", "-T", "8000", spec]
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.stamps: list[float] = []  # candump's receive times of the lines

    async def start(self, limit: float = 15.0) -> Candump:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + limit
        # cansend a marker until candump shows it: then it is bound and everything after is seen
        while time.monotonic() < deadline:
            cansend(self.dev, self.MARK)
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), 0.5)
            except TimeoutError:
                continue
            if not line:
                raise AssertionError("candump exited before it received anything")
            if self.MARK in line.decode():
                # drain further markers that are already queued
                return self
        raise AssertionError("candump never received the marker frame")

    async def collect(self, n: int, limit: float = 10.0) -> list[str]:
        """Lines (``ID#DATA``, markers left out) until ``n`` arrived, bounded by ``limit`` seconds."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + limit
        while len(self.lines) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                break
            if not raw:
                break
            text = raw.decode().strip()
            if text and self.MARK not in text:
                parts = text.split()
                self.lines.append(parts[-1])
                self.stamps.append(float(parts[0].strip("()")))
        return self.lines

    async def wait_for(self, line: str, limit: float = 10.0) -> None:
        """Read on until ``line`` has been seen (since the start), bounded by ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while line not in self.lines:
            left = deadline - time.monotonic()
            before = len(self.lines)
            if left <= 0 or len(await self.collect(before + 1, limit=left)) == before:
                raise AssertionError(f"candump did not show {line} within {limit}s (last: {self.lines[-3:]})")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


OpenDriver = Callable[..., Awaitable[tuple[SocketcanDriver, Collector]]]
"""``await open_driver(channel, read=True, filters=..., **bus_config)``"""
CandumpFactory = Callable[..., Awaitable[Candump]]
"""``await candump(dev, *filters)``"""


@pytest.fixture
async def candump() -> AsyncIterator[CandumpFactory]:
    dumps: list[Candump] = []

    async def make(dev: str, *filters: str) -> Candump:
        d = Candump(dev, *filters)
        dumps.append(d)
        return await d.start()

    yield make
    for d in dumps:
        await d.stop()
