"""What every benchmark client process shares: the spec it gets, what it records, how it is told to stop.

A client is ``python bench/e2e/client_<protocol>.py SPEC_JSON OUT_JSON``. It connects, prints ``ready``
once it receives values, records until a ``stop`` line (or EOF) on stdin, then writes OUT and exits:

* ``values``: ``[signal, seq, recv_ns, source_ns]``, the first time the client has each new sequence
  number of a probe signal (``recv_ns``: CLOCK_REALTIME when the client has the value; ``source_ns``:
  the value's source timestamp where the protocol carries one, else 0);
* ``writes``: ``[signal, seq, send_ns, done_ns, ok]`` of every write it made (``send_ns`` just before
  the request, ``done_ns`` when the answer came);
* ``samples``: named lists of extra measurements (e.g. GET latencies);
* ``cpu_s``, ``errors``.

A new protocol (MQTT) is one more module with an ``async def run(spec, rec, ready, stop)`` handed to
:func:`main`, and one entry in bench_e2e.py's client table.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


class Recorder:
    def __init__(self) -> None:
        self.values: list[tuple[str, int, int, int]] = []
        self.writes: list[tuple[str, int, int, int, bool]] = []
        self.samples: dict[str, list[Any]] = {}
        self.errors: list[str] = []
        self._last: dict[str, int] = {}

    def value(self, name: str, seq: int, source_ns: int = 0, recv_ns: int | None = None) -> None:
        """A probe value the client has now; only new sequence numbers are kept."""
        if self._last.get(name) == seq:
            return
        self._last[name] = seq
        self.values.append((name, seq, time.time_ns() if recv_ns is None else recv_ns, source_ns))

    def error(self, what: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(what)


Run = Callable[[dict[str, Any], Recorder, asyncio.Event, asyncio.Event], Awaitable[None]]


async def paced(stop: asyncio.Event, hz: float, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` ``hz`` times a second until stopped (a late step delays the next, never bunches them)."""
    if hz <= 0:
        return
    period = 1.0 / hz
    next_at = time.monotonic()
    while not stop.is_set():
        await step()
        next_at += period
        delay = next_at - time.monotonic()
        if delay < 0:
            next_at = time.monotonic()
            delay = 0
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass


async def write_loop(rec: Recorder, stop: asyncio.Event, hz: float, signal: str,
                     write: Callable[[int], Awaitable[bool]]) -> None:
    """Write Seq = 1, 2, 3 ... to ``signal`` ``hz`` times a second until stopped, recording each write."""
    seq = 0

    async def one() -> None:
        nonlocal seq
        seq = (seq + 1) & 0xFFFF
        t = time.time_ns()
        try:
            ok = await write(seq)
        except Exception as e:
            rec.error(f"write {signal}: {e!r}")
            ok = False
        rec.writes.append((signal, seq, t, time.time_ns(), ok))

    await paced(stop, hz, one)


async def _serve(run: Run, spec: dict[str, Any], out: Path) -> None:
    rec = Recorder()
    ready, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    async def announce() -> None:
        await ready.wait()
        print("ready", flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await run(spec, rec, ready, stop)
    except Exception as e:
        rec.error(f"client failed: {e!r}")
        print(f"failed {e!r}", flush=True)
    finally:
        announcer.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = json.dumps({"values": rec.values, "writes": rec.writes, "samples": rec.samples,
                               "errors": rec.errors, "cpu_s": usage.ru_utime + usage.ru_stime})
    await asyncio.to_thread(out.write_text, result)


def main(run: Run) -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(_serve(run, spec, Path(sys.argv[2])))
    return 0
