#!/usr/bin/env python3
"""What the operating statistics cost: CPU accounting per event-loop callback and the loop-lag sampler.

    .venv/bin/python bench/bench_stats.py [--steps 200000] [--seconds 5]

Same run, same process:

* ``call_soon`` chains of ``--steps`` callbacks: asyncio's own ``Handle._run``; accounting installed, a
  callback of the core (no meter: one ``Context.get``); accounting installed, a plugin's callback (two
  ``time.thread_time()`` calls and the sums). The difference per callback is the accounting's cost.
* task steps (``await asyncio.sleep(0)`` loops) with and without a meter, the same way.
* the loop-lag sampler running ``--seconds`` on an idle loop: its CPU per second (charged to its own
  meter, as in the bridge) and per sample.
Timings vary from run to run on shared machines; compare rows of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from canbridge.core import cpuaccount
from canbridge.core.cpuaccount import CpuMeter
from canbridge.core.looplag import LoopLagSampler


async def chain(n: int, context: contextvars.Context | None) -> float:
    """CPU seconds for ``n`` callbacks, each scheduling the next."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n

    def step() -> None:
        nonlocal left
        left -= 1
        if left:
            loop.call_soon(step, context=context)
        else:
            done.set_result(None)

    t0 = time.process_time()
    loop.call_soon(step, context=context)
    await done
    return time.process_time() - t0


async def task_steps(n: int, context: contextvars.Context | None) -> float:
    async def spin() -> None:
        for _ in range(n):
            await asyncio.sleep(0)

    t0 = time.process_time()
    await asyncio.create_task(spin(), context=context)
    return time.process_time() - t0


def best(fn: Callable[[], float], repeat: int = 5) -> float:
    return min(fn() for _ in range(repeat))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    n = args.steps
    meter = CpuMeter("plugin")
    rows: list[tuple[str, float]] = []

    def three(coro_fn: Callable[[int, contextvars.Context | None], Coroutine[Any, Any, float]]) -> list[float]:
        """CPU of ``n`` steps: asyncio's own, then with accounting on for the core and for a plugin."""
        out = [best(lambda: asyncio.run(coro_fn(n, None)))]
        cpuaccount.install()
        try:
            out.append(best(lambda: asyncio.run(coro_fn(n, None))))
            out.append(best(lambda: asyncio.run(coro_fn(n, cpuaccount.context_for(meter)))))
        finally:
            cpuaccount.uninstall()
        return out

    plain, core, plugin = three(chain)
    tplain, tcore, tplugin = three(task_steps)
    rows += [("callback, asyncio's own Handle._run", plain), ("callback of the core, accounting on", core),
             ("callback of a plugin, accounting on", plugin), ("task step, asyncio's own", tplain),
             ("task step of the core, accounting on", tcore), ("task step of a plugin, accounting on", tplugin)]

    t0 = time.perf_counter()
    for _ in range(n):
        time.thread_time()
    tt = time.perf_counter() - t0

    print(f"\n{n:,} steps each, best of 5; Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.2f}\n")
    print("| what | µs per step | added µs |")
    print("|---|---:|---:|")
    for i, (name, s) in enumerate(rows):
        base = plain if i < 3 else tplain
        print(f"| {name} | {s / n * 1e6:.3f} | {(s - base) / n * 1e6:+.3f} |")
    print(f"| time.thread_time() alone | {tt / n * 1e6:.3f} | |")

    async def sample() -> tuple[LoopLagSampler, CpuMeter]:
        lag = LoopLagSampler()
        m = CpuMeter("loop-lag")
        lag.start(cpuaccount.context_for(m))
        await asyncio.sleep(args.seconds)
        lag.stop()
        return lag, m

    cpuaccount.install()
    try:
        c0 = time.process_time()
        lag, m = asyncio.run(sample())
        total = time.process_time() - c0
    finally:
        cpuaccount.uninstall()
    snap = lag.snapshot(m.cpu_s)
    share = m.cpu_s / args.seconds * 100
    print(f"\nloop-lag sampler, {args.seconds:.0f} s idle: {snap.samples} samples, {share:.2f} % "
          f"of a core ({m.cpu_s / max(1, snap.samples) * 1e6:.1f} µs per sample; whole idle process "
          f"{total / args.seconds * 100:.2f} %); lag p50 {snap.p50_s * 1e3:.2f} ms, p99 {snap.p99_s * 1e3:.2f} ms, "
          f"max {snap.max_s * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
