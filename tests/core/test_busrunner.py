"""The receive path and bus supervision (canbridge/core/busrunner.py), driven through a fake
BusDriver that a test plugin registers as the bus kind ``fake`` on the plugin manager.

The fake delivers batches synchronously, so most assertions need no waiting at all; the ones that
involve the supervisor or the reconnect loop wait with a bounded ``until``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from canbridge import (
    BusDriver,
    BusError,
    BusKind,
    BusState,
    BusUnavailable,
    Frame,
    FrameFlags,
    PeriodicHandle,
    Quality,
    RawFrame,
    hookimpl,
)
from canbridge.config import BusConfig, parse_config
from canbridge.core.app import DEMO_DBC, build_runtime
from canbridge.core.can import errorframes as ef
from canbridge.core.host import Registry, collect, make_plugin_manager
from canbridge.core.runtime import Runtime
from canbridge.testing import until

EXT = int(FrameFlags.EXTENDED)
ERR = int(FrameFlags.ERROR)
RTR = int(FrameFlags.RTR)


# --- the fake bus ---------------------------------------------------------------------------------

class FakePeriodic(PeriodicHandle):
    def __init__(self, link: FakeLink, frame: Frame, period_s: float) -> None:
        self.link = link
        self.frame = frame
        self.period_s = period_s
        self.frames: list[Frame] = [frame]  # every frame this transmission carried, in order
        self.stopped = False

    def modify(self, frame: Frame) -> None:
        assert not self.stopped, "modify after stop"
        self.frame = frame
        self.frames.append(frame)

    def stop(self) -> None:
        self.stopped = True


class FakeLink:
    """The test's side of one fake bus."""

    def __init__(self) -> None:
        self.drivers: list[FakeDriver] = []
        self.sent: list[Frame] = []
        self.periodic: list[FakePeriodic] = []
        self.down = False  # open() raises BusUnavailable while True
        self.send_fails = False
        self.open_attempts = 0

    @property
    def driver(self) -> FakeDriver:
        assert self.drivers, "the bus was never opened"
        return self.drivers[-1]

    def deliver(self, *frames: RawFrame) -> None:
        self.driver.deliver(list(frames))

    def fail(self, exc: BaseException) -> None:
        assert self.driver.on_error is not None
        self.driver.on_error(exc)

    @property
    def running_periodic(self) -> list[FakePeriodic]:
        return [p for p in self.periodic if not p.stopped]


LINKS: dict[str, FakeLink] = {}


class FakeDriver(BusDriver):
    def __init__(self, cfg: BusConfig) -> None:
        self.link = LINKS[cfg.channel]
        self.on_frames: Callable[[list[RawFrame]], None] | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self.filters: Sequence[tuple[int, bool]] | str | None = "unset"
        self.closed = False

    async def open(self) -> None:
        self.link.open_attempts += 1
        if self.link.down:
            raise BusUnavailable("fake interface is down", hint="plug the cable in")
        self.link.drivers.append(self)

    def set_filters(self, ids: Sequence[tuple[int, bool]] | None) -> None:
        self.filters = ids

    def start_reading(self, on_frames: Callable[[list[RawFrame]], None],
                      on_error: Callable[[BaseException], None]) -> None:
        self.on_frames = on_frames
        self.on_error = on_error

    def deliver(self, batch: list[RawFrame]) -> None:
        assert self.on_frames is not None and not self.closed
        self.on_frames(batch)

    def send(self, frame: Frame) -> None:
        if self.link.send_fails:
            raise BusError("transmit queue full")
        self.link.sent.append(frame)

    def send_periodic(self, frame: Frame, period_s: float) -> PeriodicHandle:
        h = FakePeriodic(self.link, frame, period_s)
        self.link.periodic.append(h)
        return h

    async def close(self) -> None:
        self.closed = True


class FakeBusPlugin:
    """A test plugin: registers the ``fake`` bus kind through the same hook as any plugin."""

    @hookimpl
    def register_bus_kinds(self, register: Callable[[BusKind], None]) -> None:
        register(BusKind("fake", FakeDriver, "a bus the test drives by hand"))


def fake_registry(*plugins: object) -> Registry:
    pm = make_plugin_manager(load_entry_points=False)
    pm.register(FakeBusPlugin(), name="fake-bus")
    for i, p in enumerate(plugins):
        pm.register(p, name=f"test-plugin-{i}")
    return collect(pm)


def fake_config(channel: str, tmp_path: Path, mapping: Mapping[str, Any] | None = None,
                bus: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "buses": [{"name": "demo", "interface": "fake", "channel": channel, "reconnect_min_s": 0.01,
                   "reconnect_max_s": 0.05, **(bus or {})}],
        "mappings": [{"bus": "demo", "dbc": str(DEMO_DBC), **(mapping or {})}],
        "state_dir": str(tmp_path / "state"),
        **extra,
    }


@contextlib.asynccontextmanager
async def fake_runtime(tmp_path: Path, mapping: Mapping[str, Any] | None = None,
                       bus: Mapping[str, Any] | None = None, hook_plugins: Sequence[object] = (),
                       start: bool = True, enable: Mapping[str, Any] | None = None,
                       **extra: Any) -> AsyncIterator[tuple[Runtime, FakeLink]]:
    """A runtime on a fresh fake bus; ``hook_plugins`` join the plugin manager, ``enable`` is the
    configuration's ``plugins:`` section."""
    channel = f"fake-{uuid.uuid4().hex[:8]}"
    link = LINKS[channel] = FakeLink()
    try:
        if enable is not None:
            extra["plugins"] = dict(enable)
        rt = build_runtime(parse_config(fake_config(channel, tmp_path, mapping, bus, **extra)),
                           fake_registry(*hook_plugins), base_dir=tmp_path)
        if start:
            await rt.start()
        try:
            yield rt, link
        finally:
            await rt.stop()
    finally:
        del LINKS[channel]



def now_ns() -> int:
    return time.time_ns()


SPEED = "demo.MotorStatus.MotorSpeed"
TEMP = "demo.MotorStatus.MotorTemperature"


def motor_status(speed: int, temp_raw: int = 60) -> RawFrame:
    return (0x100, 0, speed.to_bytes(2, "little", signed=True) + bytes([temp_raw]) + bytes(5), now_ns())


# --- receive path ---------------------------------------------------------------------------------

async def test_frames_decode_into_the_store_with_their_timestamp(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        assert rt.read(SPEED).quality is Quality.WAITING
        frame = motor_status(1234, 100)
        link.deliver(frame)
        v = rt.read(SPEED)
        assert (v.value, v.quality, v.timestamp_ns) == (1234, Quality.GOOD, frame[3])
        assert rt.read(TEMP).value == 60  # 100 - 40
        # extended id with big-endian signals: VehicleSpeed 55|16@0+ (0.01)
        data = bytearray(8)
        data[6:8] = (12345).to_bytes(2, "big")
        link.deliver((0x18FEF100, EXT, bytes(data), now_ns()))
        assert rt.read("demo.VehicleInfo.VehicleSpeed").value == pytest.approx(123.45)
        # the same id without the extended flag is another frame, unmapped
        link.deliver((0x100 | 0, EXT, bytes(8), now_ns()))
        assert rt.bus_status("demo").unmapped_frames == 1
        assert rt.read(SPEED).value == 1234


async def test_unchanged_payload_is_not_decoded_again_but_counted(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(500))
        idx = rt.signals[SPEED].index
        rt.store.values[idx] = "sentinel"  # a re-decode would overwrite it
        link.deliver(motor_status(500), motor_status(500))
        assert rt.store.values[idx] == "sentinel"
        st = rt.bus_status("demo")
        assert st.rx_frames == 3
        [ms] = [m for m in rt.message_status("demo") if m.name == "demo.MotorStatus"]
        assert ms.frames == 3
        link.deliver(motor_status(501))  # a changed payload decodes
        assert rt.read(SPEED).value == 501


async def test_unmapped_ids_are_counted_and_filters_reach_the_driver(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        assert link.driver.filters != "unset" and link.driver.filters is not None
        assert (0x100, False) in link.driver.filters and (0x18FEF100, True) in link.driver.filters
        assert len(link.driver.filters) == len(rt.messages)
        link.deliver((0x7AB, 0, b"\x01", now_ns()), (0x7AC, 0, b"", now_ns()), motor_status(1))
        st = rt.bus_status("demo")
        assert (st.unmapped_frames, st.rx_frames, st.decode_errors) == (2, 3, 0)
    async with fake_runtime(tmp_path, bus={"kernel_filters": False}) as (rt, link):
        assert link.driver.filters is None


async def test_decode_errors_are_counted_and_change_nothing(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver((0x100, 0, b"\x01\x02", now_ns()))  # MotorStatus needs 8 bytes
        st = rt.bus_status("demo")
        assert (st.decode_errors, st.rx_frames) == (1, 1)
        v = rt.read(SPEED)
        assert (v.value, v.quality) == (None, Quality.WAITING)
        link.deliver(motor_status(7))
        assert rt.read(SPEED).value == 7
        link.deliver((0x100, 0, b"", now_ns()))
        assert rt.bus_status("demo").decode_errors == 2
        assert rt.read(SPEED).value == 7


async def test_rtr_frames_are_counted_not_decoded(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver((0x100, RTR, b"", now_ns()))
        v = rt.read(SPEED)
        assert (v.value, v.quality) == (None, Quality.WAITING)
        assert rt.runners["demo"].rtr_frames == 1
        assert rt.bus_status("demo").rx_frames == 1
        link.deliver(motor_status(42))
        link.deliver((0x100, RTR, b"", now_ns()))
        assert rt.read(SPEED).value == 42


async def test_rtr_frame_does_not_refresh_a_stale_message(tmp_path: Path) -> None:
    """A remote request carries no data: it must not make old values look fresh."""
    async with fake_runtime(tmp_path, mapping={"stale_after_ms": {"MotorStatus": 100}}) as (rt, link):
        link.deliver(motor_status(42))
        ts = rt.read(SPEED).timestamp_ns
        await until(lambda: rt.read(SPEED).quality is Quality.STALE)
        link.deliver((0x100, RTR, b"", now_ns() + 10**9))
        v = rt.read(SPEED)
        assert (v.quality, v.timestamp_ns) == (Quality.STALE, ts)


async def test_error_frames_change_the_bus_state_and_are_never_signals(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(10))
        before = rt.read_many()
        # error-passive with counters; then an error frame whose class bits equal a mapped id
        # (0x400 Diagnostics) with a payload that would decode: it must not be decoded.
        passive = bytes([0, ef.CAN_ERR_CRTL_RX_PASSIVE, 0, 0, 0, 0, 3, 130])
        link.deliver((ef.CAN_ERR_CRTL | ef.CAN_ERR_CNT, ERR, passive, now_ns()),
                     (0x400, ERR, bytes([0, 5, 0, 9, 0, 0, 0, 0]), now_ns()))
        st = rt.bus_status("demo")
        assert st.state is BusState.PASSIVE
        assert (st.error_frames, st.rx_error_counter, st.tx_error_counter) == (2, 130, 3)
        assert st.rx_frames == 1  # error frames are not data frames
        assert rt.read_many() == before  # nothing decoded, passive is still usable: qualities unchanged
        link.deliver((ef.CAN_ERR_BUSOFF, ERR, bytes(8), now_ns()))
        st = rt.bus_status("demo")
        assert (st.state, st.bus_off_count) == (BusState.BUS_OFF, 1)
        assert "bus-off" in (st.last_error or "")
        assert rt.read(SPEED).quality is Quality.BAD
        assert rt.read(SPEED).value == 10  # the last value is kept
        link.deliver((ef.CAN_ERR_RESTARTED, ERR, bytes(8), now_ns()))
        assert rt.bus_status("demo").state is BusState.ACTIVE
        link.deliver(motor_status(11))
        assert (rt.read(SPEED).value, rt.read(SPEED).quality) == (11, Quality.GOOD)


async def test_frame_subscription_sees_raw_frames_and_drops_oldest(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        with pytest.raises(KeyError):
            rt.subscribe_frames("nope")
        async with rt.subscribe_frames("demo", maxlen=3) as sub:
            link.deliver(*(motor_status(i) for i in range(5)))
            link.deliver((ef.CAN_ERR_BUSOFF, ERR, bytes(8), now_ns()))
            it = aiter(sub)
            batch = await asyncio.wait_for(anext(it), 2)
            assert len(batch) == 3 and sub.dropped == 3
            assert batch[-1].error and batch[-1].bus == "demo"
            assert batch[0].data[:2] == (3).to_bytes(2, "little")


# --- supervision ----------------------------------------------------------------------------------

async def test_bus_down_makes_values_bad_and_reopen_recovers(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(5))
        assert rt.read(SPEED).quality is Quality.GOOD
        first = link.driver
        link.fail(OSError(100, "Network is down"))
        await until(lambda: rt.bus_status("demo").reconnects == 1)
        assert first.closed and link.driver is not first
        assert rt.bus_status("demo").state is BusState.ACTIVE
        assert "Network is down" in (rt.bus_status("demo").last_error or "")
        # no frame since the bus came back: the old value is not bad any more, it is stale
        assert rt.read(SPEED).quality is Quality.STALE
        # never received: still waiting, not bad
        assert rt.read("demo.BatteryStatus.PackVoltage").quality is Quality.WAITING
        link.deliver(motor_status(6))
        assert (rt.read(SPEED).value, rt.read(SPEED).quality) == (6, Quality.GOOD)


async def test_bad_while_down_then_recovery_with_backoff(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(5))
        link.down = True
        link.fail(OSError(19, "No such device"))
        await until(lambda: link.open_attempts >= 3)
        st = rt.bus_status("demo")
        assert st.state is BusState.DOWN
        assert "plug the cable in" in (st.last_error or "")
        assert rt.read(SPEED).quality is Quality.BAD
        link.down = False
        await until(lambda: rt.bus_status("demo").state is BusState.ACTIVE)
        assert rt.bus_status("demo").reconnects == 1
        link.deliver(motor_status(8))
        assert rt.read(SPEED).quality is Quality.GOOD


async def test_start_with_the_interface_missing_does_not_block(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, start=False) as (rt, link):
        link.down = True
        await asyncio.wait_for(rt.start(), 10)
        assert rt.bus_status("demo").state is BusState.DOWN
        assert rt.read(SPEED).quality is Quality.BAD
        link.down = False
        await until(lambda: rt.bus_status("demo").state is BusState.ACTIVE)
        assert rt.bus_status("demo").reconnects == 0  # the first successful open is not a reconnect


async def test_cyclic_transmission_restarts_on_the_new_driver(tmp_path: Path) -> None:
    mapping = {"writable": ["MotorCommand.*"], "transmit": {"MotorCommand": {"period_ms": 100}}}
    async with fake_runtime(tmp_path, mapping=mapping) as (rt, link):
        [p1] = link.running_periodic
        assert p1.period_s == pytest.approx(0.1) and p1.frame.can_id == 0x300
        link.fail(OSError(100, "Network is down"))
        await until(lambda: rt.bus_status("demo").reconnects == 1)
        assert p1.stopped
        [p2] = link.running_periodic
        assert (p2.frame, p2.period_s) == (p1.frame, p1.period_s)
    assert all(p.stopped for p in link.periodic)


async def test_stop_closes_the_driver_and_marks_the_bus_stopped(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        driver = link.driver
    assert driver.closed
    assert rt.bus_status("demo").state is BusState.STOPPED


async def test_bus_load_estimate_uses_the_bitrate(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, bus={"bitrate": 125000}) as (rt, link):
        runner = rt.runners["demo"]
        runner.poll()
        link.deliver(*(motor_status(i) for i in range(100)))
        runner._bits_mark = (runner._bits_mark[0] - 1.0, runner._bits_mark[1])  # pretend a second passed
        runner.poll()
        # 100 frames of 8 bytes, 111 bits each without stuffing: ~11,100 bits of 125,000
        assert 5 < rt.bus_status("demo").bus_load < 15
