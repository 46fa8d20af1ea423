"""SSE client process (aiohttp): ``GET /api/v1/stream`` of the probe signals.

Spec: ``url`` (the bridge's REST base URL), ``glob`` (fnmatch of the probe signals), ``interval_s``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp

from bench.e2e import wire
from bench.e2e.clientbase import Recorder, main


async def run(spec: dict[str, Any], rec: Recorder, ready: asyncio.Event, stop: asyncio.Event) -> None:
    params = {"name": spec["glob"], "interval": str(spec["interval_s"])}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(spec["url"] + "/api/v1/stream", params=params) as resp:
        resp.raise_for_status()

        async def read() -> None:
            event = ""
            async for raw in resp.content:
                t = time.time_ns()
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "signals":
                    for s in json.loads(line[5:])["signals"]:
                        if s["value"] is not None:
                            rec.value(s["name"], wire.seq_of_speed(float(s["value"])), int(s["timestamp_ns"] or 0), t)
                    ready.set()

        reader = asyncio.create_task(read())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in (reader, stopper):
            task.cancel()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]


if __name__ == "__main__":
    raise SystemExit(main(run))
