"""The latest-value store and its coalescing subscriptions (canbridge/core/store.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import canbridge.core.store as store_module
from canbridge import Quality, SignalValue
from canbridge.testing import until
from tests.core.test_busrunner import SPEED, TEMP, fake_runtime, motor_status


async def next_batch(it: AsyncIterator[list[SignalValue]], timeout: float = 2.0) -> list[SignalValue]:
    return await asyncio.wait_for(anext(it), timeout)


async def test_first_batch_is_every_subscribed_signal(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(3))
        async with rt.subscribe() as sub:
            first = await next_batch(aiter(sub))
        assert [v.name for v in first] == list(rt.signals)
        assert first[rt.signals[SPEED].index].value == 3
        async with rt.subscribe([TEMP, SPEED]) as sub:
            first = await next_batch(aiter(sub))
        assert [v.name for v in first] == [SPEED, TEMP]  # table order, not request order


async def test_later_batches_coalesce_to_the_newest_value(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link), rt.subscribe([SPEED, TEMP], interval=0.01) as sub:
        it = aiter(sub)
        await next_batch(it)
        for speed in range(100, 200):  # 100 frames in 100 batches, temperature constant
            link.deliver(motor_status(speed))
        batch = await next_batch(it)
        by_name = {v.name: v for v in batch}
        assert by_name[SPEED].value == 199
        assert [v.name for v in batch].count(SPEED) == 1
        # the first frame also changed temperature (None -> 20) and quality; later ones did not
        assert set(by_name) == {SPEED, TEMP}
        link.deliver(motor_status(200))
        batch = await next_batch(it)
        assert [(v.name, v.value) for v in batch] == [(SPEED, 200)]


async def test_unchanged_frames_produce_no_batch(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(5))
        async with rt.subscribe([SPEED], interval=0.0) as sub:
            it = aiter(sub)
            await next_batch(it)
            before = rt.bus_status("demo").rx_frames
            link.deliver(motor_status(5), motor_status(5))  # received in this call (no task in between)
            assert rt.bus_status("demo").rx_frames == before + 2
            assert not sub._pending  # type: ignore[attr-defined]  # received, and nothing for the subscriber
            pending = asyncio.ensure_future(anext(it))
            link.deliver(motor_status(6))
            batch = await asyncio.wait_for(pending, 2)
            assert [v.value for v in batch] == [6]


async def test_slow_subscriber_does_not_stall_others_and_stays_bounded(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link):
        slow = rt.subscribe()  # never iterated
        async with rt.subscribe([SPEED], interval=0.0) as fast:
            it = aiter(fast)
            await next_batch(it)
            for i in range(2000):
                link.deliver(motor_status(i % 1000, i % 200))
                if i % 500 == 0:
                    assert (await next_batch(it))[0].value == i % 1000
            assert len(slow._pending) <= len(rt.signals)  # type: ignore[attr-defined]
            assert rt.bus_status("demo").rx_frames == 2000
            assert rt.stats().subscribers == 2
            lag = slow.lag_s
            assert lag > 0
            assert rt.stats().max_subscriber_lag_s >= lag
        # the slow one still gets the newest state when it finally reads
        first = await next_batch(aiter(slow))
        assert first[rt.signals[SPEED].index].value == 1999 % 1000
        slow.close()
        assert rt.stats().subscribers == 0


async def test_close_ends_a_waiting_iteration(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, _link):
        sub = rt.subscribe([SPEED])
        got: list[list[SignalValue]] = []

        async def consume() -> None:
            async for batch in sub:
                got.append(batch)

        task = asyncio.create_task(consume())
        await until(lambda: len(got) == 1)
        sub.close()
        await asyncio.wait_for(task, 2)
        assert sub.lag_s == 0


async def test_stopping_the_bridge_ends_subscriptions(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, _link):
        sub = rt.subscribe()
        frames = rt.subscribe_frames()

        got: list[object] = []

        async def consume() -> int:
            async for values in sub:
                got.append(values)
            async for raw in frames:
                got.append(raw)
            return len(got)

        task = asyncio.create_task(consume())
        await until(lambda: got, what="the initial batch")  # iterating when the bridge stops
    assert await asyncio.wait_for(task, 2) == 1


async def test_quality_waiting_good_stale_good(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path, mapping={"stale_after_ms": {"MotorStatus": 150}}) as (rt, link):
        assert rt.read(SPEED).quality is Quality.WAITING
        async with rt.subscribe([SPEED], interval=0.0) as sub:
            it = aiter(sub)
            assert (await next_batch(it))[0].quality is Quality.WAITING
            link.deliver(motor_status(1))
            assert (await next_batch(it))[0].quality is Quality.GOOD
            stale = await next_batch(it)  # published by the staleness supervisor
            assert (stale[0].quality, stale[0].value) == (Quality.STALE, 1)
            [ms] = [m for m in rt.message_status("demo") if m.name == "demo.MotorStatus"]
            assert ms.quality is Quality.STALE and ms.age_s is not None and ms.age_s > 0.1
            link.deliver(motor_status(1))  # same payload: not decoded, but fresh again
            again = await next_batch(it)
            assert (again[0].quality, again[0].value) == (Quality.GOOD, 1)


async def test_stale_from_cycle_time(tmp_path: Path) -> None:
    # MotorStatus has GenMsgCycleTime 100 ms; factor 1 gives a 0.1 s timeout
    async with fake_runtime(tmp_path, mapping={"stale_factor": 1}) as (rt, link):
        assert rt.signals[SPEED].timeout_s == 0.1
        link.deliver(motor_status(1))
        await until(lambda: rt.read(SPEED).quality is Quality.STALE)


async def test_read_and_read_many(tmp_path: Path) -> None:
    import pytest

    from canbridge import UnknownSignal

    async with fake_runtime(tmp_path) as (rt, link):
        link.deliver(motor_status(9))
        assert rt.read_many([TEMP, SPEED])[1].value == 9
        assert len(rt.read_many()) == len(rt.signals)
        with pytest.raises(UnknownSignal, match=r"demo\.Nope"):
            rt.read("demo.Nope")
        with pytest.raises(UnknownSignal):
            rt.subscribe(["demo.Nope"])
        assert rt.stats().store_batches >= 1
        assert rt.stats().store_update_seconds_total > 0


async def test_a_large_change_set_comes_in_chunks_with_a_loop_turn_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "CHANGE_CHUNK", 2)
    async with fake_runtime(tmp_path) as (rt, link), rt.subscribe(interval=0.0) as sub:
        it = aiter(sub)
        first = await next_batch(it)
        assert len(first) == len(rt.signals) > 2  # the initial state stays one batch
        link.deliver(motor_status(7))  # None -> values: every signal of the message changes
        changed = {v.name for v in rt.read_many() if v.value is not None}
        assert len(changed) > 2
        got: list[list[str]] = []
        ran: list[int] = []
        while sum(map(len, got)) < len(changed):
            asyncio.get_running_loop().call_soon(ran.append, len(got))
            chunk = await anext(it)  # in this task: only an await inside the iterator lets the callback run
            got.append([v.name for v in chunk])
        assert all(len(chunk) <= 2 for chunk in got)
        names = [n for chunk in got for n in chunk]
        assert sorted(names) == sorted(changed)  # each changed signal once, nothing else
        assert names == [n for n in rt.signals if n in changed]  # in table order across the chunks
        # The first chunk came at once; before every later one the loop ran the callback scheduled for it.
        assert ran[: len(got)] == list(range(len(got)))
        assert ran[0] == 0 and len(got) >= 2


async def test_a_consumer_whose_batches_are_heavy_gets_them_further_apart(tmp_path: Path) -> None:
    async with fake_runtime(tmp_path) as (rt, link), rt.subscribe([SPEED], interval=0.05) as sub:
        assert isinstance(sub, store_module._Subscription)  # the spacing in force is the store's to show
        it = aiter(sub)
        await next_batch(it)
        assert sub.interval_s == 0.05
        link.deliver(motor_status(1))
        await next_batch(it)
        busy_until = time.monotonic() + 0.03  # the consumer's work on that batch: 30 ms of CPU, as a heavy flush
        while time.monotonic() < busy_until:
            pass
        link.deliver(motor_status(2))
        await next_batch(it)  # the heavy batch's work is measured when the consumer asks for the next
        # 30 ms of work may be 20 % of the time: the next batch comes at least 150 ms after the last one
        assert sub.interval_s >= 0.03 / store_module.CONSUMER_SHARE
        assert sub.interval_s <= store_module.MAX_GAP_S
        link.deliver(motor_status(3))
        await next_batch(it)  # a light batch (no work): the spacing is back to the interval
        link.deliver(motor_status(4))
        await next_batch(it)
        assert sub.interval_s < 0.03 / store_module.CONSUMER_SHARE


async def test_batch_build_equals_one_value_at_a_time(tmp_path: Path) -> None:
    """values_of (the subscriptions' fast build) gives what value() gives: waiting, good, bad with a
    reason, and a J1939 "not available" raw value (bad, no number, its own reason)."""
    from canbridge.core.mapping.j1939 import NOT_AVAILABLE

    async with fake_runtime(tmp_path) as (rt, link):
        store = rt.store
        every = range(len(store.values))
        assert store.values_of(every) == [store.value(i) for i in every]  # nothing received: waiting
        link.deliver(motor_status(7))
        assert store.values_of(every) == [store.value(i) for i in every]
        speed = rt.signals[SPEED].index
        store.set_message_quality(store.signal_message[speed], Quality.BAD, "node lost")
        built = store.values_of([speed])
        assert built == [store.value(speed)] and built[0].reason == "node lost" and built[0].value == 7
        store.values[speed] = NOT_AVAILABLE
        built = store.values_of([speed])
        assert built == [store.value(speed)] and built[0].value is None and built[0].quality is Quality.BAD
        assert type(built[0]) is SignalValue and hash(built[0]) == hash(store.value(speed))
