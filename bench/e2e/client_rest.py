"""REST client process (aiohttp): paced ``GET /api/v1/signals/{name}`` (latency of each) and writes of
RestCmd.Seq with ``PUT /api/v1/signals/{name}``.

Spec: ``url``, ``get_signal``, ``get_hz``, ``get_concurrency``, ``write_hz``, ``write_signal``. The GETs
record ``[send_ns, seconds]`` in ``samples["get"]``, each timed from just before the request to the
parsed answer. ``get_hz`` > 0: one connection at that rate, never overlapping; ``get_hz`` 0:
``get_concurrency`` connections each sending the next GET as soon as the answer came (as the old
bench/bench_rest.py did).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from bench.e2e.clientbase import Recorder, main, paced, write_loop


async def run(spec: dict[str, Any], rec: Recorder, ready: asyncio.Event, stop: asyncio.Event) -> None:
    base = spec["url"]
    gets: list[tuple[int, float]] = []
    rec.samples["get"] = gets
    connections = aiohttp.TCPConnector(limit=int(spec["get_concurrency"]))
    async with aiohttp.ClientSession(connector=connections) as get_session, aiohttp.ClientSession() as put_session:
        get_url = f"{base}/api/v1/signals/{spec['get_signal']}"
        async with get_session.get(get_url) as r:
            r.raise_for_status()
            await r.json()
        ready.set()

        async def get() -> None:
            t_ns, t0 = time.time_ns(), time.perf_counter()
            try:
                async with get_session.get(get_url) as r:
                    await r.json()
                    ok = r.status == 200
            except aiohttp.ClientError as e:
                rec.error(f"GET: {e!r}")
                ok = False
            if ok:
                gets.append((t_ns, time.perf_counter() - t0))

        put_url = f"{base}/api/v1/signals/{spec['write_signal']}"

        async def write(seq: int) -> bool:
            async with put_session.put(put_url, json={"value": seq}) as r:
                await r.read()
                if r.status != 200:
                    rec.error(f"PUT {r.status}")
                return r.status == 200

        async def flat_out() -> None:
            while not stop.is_set():
                await get()

        hz = float(spec["get_hz"])
        getters = [paced(stop, hz, get)] if hz > 0 else [flat_out() for _ in range(int(spec["get_concurrency"]))]
        await asyncio.gather(*getters,
                             write_loop(rec, stop, float(spec["write_hz"]), spec["write_signal"], write))


if __name__ == "__main__":
    raise SystemExit(main(run))
