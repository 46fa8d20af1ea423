"""Operating statistics (Bridge.operating_stats): loop lag, CPU charged per plugin, subscription queues,
coalesced-away updates and per-bus receive counters (canbridge/core/looplag.py, cpuaccount.py, store.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from canbridge import Bridge, NorthboundPlugin, Strict, hookimpl
from canbridge.core import cpuaccount
from canbridge.core.looplag import BUCKETS_S, LoopLagSampler
from canbridge.testing import until
from tests.core.test_busrunner import SPEED, TEMP, fake_runtime, motor_status

BURN_S = 0.05  # CPU a test plugin burns: the accounting must charge at least this to it


def burn(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU (not wall time: a loaded machine must not matter)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class BusyConfig(Strict):
    how: str = "task"  # task | callback | protocol | idle


class BusyService:
    """Burns CPU after start in the way ``how`` says, each a path asyncio runs plugin code on."""

    def __init__(self, bridge: Bridge, config: BusyConfig) -> None:
        self.bridge = bridge
        self.how = config.how
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.sub = self.bridge.subscribe([SPEED], interval=5.0)
        if self.how == "task":
            self.task = asyncio.create_task(self._later())
        elif self.how == "callback":
            loop.call_later(0.01, self._burn)
        elif self.how == "protocol":  # a server's data_received, as Modbus TCP answers requests
            service = self

            class Proto(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    service._burn()

            self.server = await loop.create_server(Proto, "127.0.0.1", 0)
        else:
            self.done.set()

    async def _later(self) -> None:
        await asyncio.sleep(0.01)
        self._burn()

    def _burn(self) -> None:
        burn(BURN_S)
        self.done.set()

    async def stop(self) -> None:
        self.sub.close()
        if self.server is not None:
            self.server.close()
        if self.task is not None:
            await self.task

    def endpoints(self) -> list[str]:
        return []


class BusyPlugins:
    @hookimpl
    def register_northbound(self, register: Callable[[NorthboundPlugin], None]) -> None:
        register(NorthboundPlugin("busy", BusyConfig, BusyService, "burns CPU"))
        register(NorthboundPlugin("calm", BusyConfig, BusyService, "burns nothing"))


async def poke(server: asyncio.Server) -> None:
    host, port = server.sockets[0].getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)  # the test's own context: no meter
    writer.write(b"x")
    await writer.drain()
    writer.close()


async def test_cpu_is_charged_to_the_plugin_whose_code_ran(tmp_path: Path) -> None:
    for how in ("task", "callback", "protocol"):
        enable: dict[str, Any] = {"busy": {"how": how}, "calm": {"how": "idle"}}
        async with fake_runtime(tmp_path, hook_plugins=[BusyPlugins()], enable=enable) as (rt, _):
            busy = rt.services["busy"]
            assert isinstance(busy, BusyService)
            if busy.server is not None:
                await poke(busy.server)
            await until(busy.done.is_set, what=f"the busy plugin burned its CPU ({how})")
            st = rt.operating_stats()
            assert st.plugins["busy"].cpu_seconds >= BURN_S, how
            assert st.plugins["calm"].cpu_seconds < BURN_S / 2, how
            assert 0 < st.plugins["busy"].cpu_share <= 1
            # what plugins did is not the core's: the loop thread's CPU minus theirs
            assert st.core_cpu_seconds + st.plugins["busy"].cpu_seconds <= st.cpu_seconds + 0.01


async def test_accounting_is_undone_when_the_last_bridge_stops(tmp_path: Path) -> None:
    import asyncio.events

    original = asyncio.events.Handle._run
    async with fake_runtime(tmp_path) as (rt1, _):
        assert asyncio.events.Handle._run is not original
        async with fake_runtime(tmp_path) as (_rt2, _):
            pass
        assert asyncio.events.Handle._run is not original
        assert rt1.operating_stats().uptime_s > 0
    assert asyncio.events.Handle._run is original
    assert cpuaccount.current_name() is None


async def test_subscriptions_name_their_plugin_and_count_what_they_coalesced(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, hook_plugins=[BusyPlugins()], enable={"calm": {"how": "idle"}}) as (rt, link):
        st = rt.operating_stats()
        (sub,) = st.subscriptions
        assert (sub.plugin, sub.signals, sub.interval_s) == ("calm", 1, 5.0)
        assert st.coalesced_by_plugin == {"calm": 0}
        mine = rt.subscribe(interval=5.0)  # not from a plugin: no owner, every signal
        it = aiter(mine)
        await anext(it)  # the initial batch; now it waits out its 5 s interval
        for speed in range(10):
            link.deliver(motor_status(speed))
        st = rt.operating_stats()
        calm = next(s for s in st.subscriptions if s.plugin == "calm")
        anon = next(s for s in st.subscriptions if s.plugin is None)
        assert calm.pending == 1 and calm.coalesced == 9  # ten speeds, one waits: nine never seen
        # every signal: speed nine times, and the first frame's signals (quality) once each
        assert anon.signals is None and anon.pending >= 2 and anon.coalesced >= 9
        assert st.coalesced_by_plugin["calm"] == 9
        total = st.coalesced_total
        mine.close()
        after = rt.operating_stats()
        assert after.coalesced_total == total  # a closed subscription's count stays in the total
        assert all(s.plugin is not None for s in after.subscriptions)


async def test_a_filtered_subscription_counts_only_its_signals(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link), rt.subscribe([TEMP], interval=5.0) as sub:
        await anext(aiter(sub))
        for speed in range(10):  # temperature stays: nothing of this subscription is coalesced
            link.deliver(motor_status(speed))
        assert rt.operating_stats().subscriptions[0].coalesced == 0
        for temp in range(10):
            link.deliver(motor_status(1, temp))
        (s,) = rt.operating_stats().subscriptions
        assert s.pending == 1 and s.coalesced >= 9


async def test_frame_subscriptions_report_buffer_and_drops(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        fsub = rt.subscribe_frames("demo", maxlen=4)
        link.deliver(*[motor_status(i) for i in range(10)])
        (f,) = rt.operating_stats().frame_subscriptions
        assert (f.bus, f.buffered, f.capacity, f.dropped) == ("demo", 4, 4, 6)
        fsub.close()
        st = rt.operating_stats()
        assert st.frame_subscriptions == () and st.frames_dropped_total == 6


async def test_buses_count_frames_and_decoded_frames(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(5), motor_status(5), motor_status(6))  # the second repeats the first
        bus = rt.operating_stats().buses["demo"]
        assert (bus.frames, bus.decoded, bus.lost, bus.decode_errors) == (3, 2, 0, 0)


async def test_the_loop_lag_sampler_sees_a_stall(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, _):
        await until(lambda: rt.operating_stats().loop_lag.samples > 0, what="a loop-lag sample")
        before = rt.operating_stats().loop_lag
        burn(0.08)  # a stall: code that holds the loop for 80 ms of CPU (the next sample is due in <= 10 ms)
        await until(lambda: rt.operating_stats().loop_lag.samples > before.samples + 1, what="samples after it")
        lag = rt.operating_stats().loop_lag
        assert lag.stalls > before.stalls
        assert lag.max_s >= 0.06
        assert lag.buckets[-1][0] == BUCKETS_S[-1] and lag.buckets[-1][1] <= lag.samples
        assert lag.sampler_cpu_s > 0
        assert rt.operating_stats().loop_lag.p50_s <= lag.max_s


def test_the_histogram_is_cumulative_with_prometheus_bounds() -> None:
    s = LoopLagSampler()
    for lag in (0.0, 0.0005, 0.003, 0.015, 0.03, 20.0):
        s.record(lag)
    snap = s.snapshot()
    counts = dict(snap.buckets)
    assert counts[0.001] == 2 and counts[0.005] == 3 and counts[0.02] == 4 and counts[0.05] == 5
    assert counts[10.0] == 5 and snap.samples == 6  # 20 s is above every bound: only in +Inf
    assert snap.stalls == 2 and snap.max_s == 20.0
    assert snap.p50_s == 0.015 and snap.p99_s == 20.0
    s.record(0.001)  # a bound is inclusive ("le")
    assert dict(s.snapshot().buckets)[0.001] == 3
