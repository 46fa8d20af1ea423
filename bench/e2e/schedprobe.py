"""What the machine does to any process: an asyncio loop in a process of its own that sleeps 10 ms and
records how late it wakes (no bridge involved). Its tail, next to the clients' figures of the same run,
tells a stall of the bridge from the scheduler not running anybody (shared 2-core machines).

    python bench/e2e/schedprobe.py SPEC_JSON OUT_JSON      (spec: ``{"period_s": 0.01}``)

Records ``[t_ns, seconds late]`` in ``samples["lag"]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e.clientbase import Recorder, main


async def run(spec: dict[str, Any], rec: Recorder, ready: asyncio.Event, stop: asyncio.Event) -> None:
    period = float(spec.get("period_s", 0.01))
    lag: list[tuple[int, float]] = []
    rec.samples["lag"] = lag
    ready.set()
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        lag.append((time.time_ns(), time.perf_counter() - t0 - period))


if __name__ == "__main__":
    raise SystemExit(main(run))
