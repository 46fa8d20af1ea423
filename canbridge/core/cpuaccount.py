"""Per-plugin CPU time: every event-loop callback is charged to the plugin whose context it runs in.

A plugin's ``start()`` (and ``stop()``) runs with :data:`CURRENT` set to its :class:`CpuMeter`. asyncio
copies the context into every task, future callback, timer and protocol callback created from there
(a transport registers its reader in the context of the ``create_server`` call), so everything the
plugin causes, directly or not, runs in a context that names it. While a bridge runs,
``asyncio.Handle._run`` (through which the loop runs every callback and every task step) is wrapped
to add the callback's ``time.thread_time()`` to that meter; callbacks of the core carry no meter and
pay one ``Context.get``. Measured cost: see docs/performance.md ("Operating a large gateway").

A task factory wrapping coroutines would miss protocol callbacks (Modbus TCP and asyncua answer
requests in ``data_received``), so the wrap is at the one place both pass through. With an event
loop whose handles are not ``asyncio.Handle`` (uvloop) nothing is charged and the shares read 0.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

_thread_time = time.thread_time


class CpuMeter:
    """CPU seconds charged to one name (a plugin, or the bridge's own loop-lag sampler)."""

    __slots__ = ("cpu_s", "name", "steps")

    def __init__(self, name: str) -> None:
        self.name = name
        self.cpu_s = 0.0
        self.steps = 0


CURRENT: contextvars.ContextVar[CpuMeter | None] = contextvars.ContextVar("canbridge_cpu_meter", default=None)

_original_run: Any = None
_users = 0
_lock = threading.Lock()


def _timed_run(self: asyncio.Handle) -> None:
    meter = self._context.get(CURRENT)  # type: ignore[attr-defined]
    if meter is None:
        return _original_run(self)  # type: ignore[no-any-return]
    t0 = _thread_time()
    try:
        _original_run(self)
    finally:
        meter.cpu_s += _thread_time() - t0
        meter.steps += 1


def install() -> None:
    """Start charging callbacks to meters (reference-counted: several bridges in one process)."""
    global _original_run, _users
    with _lock:
        _users += 1
        if _users == 1:
            _original_run = asyncio.Handle._run
            asyncio.Handle._run = _timed_run  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo one :func:`install`; the last one restores asyncio's own ``Handle._run``."""
    global _users
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            asyncio.Handle._run = _original_run  # type: ignore[method-assign]


def current_name() -> str | None:
    """The plugin (meter) the calling code runs on behalf of, if any."""
    meter = CURRENT.get()
    return None if meter is None else meter.name


def context_for(meter: CpuMeter) -> contextvars.Context:
    """A copy of the current context that charges to ``meter`` (for ``create_task(context=...)``)."""
    ctx = contextvars.copy_context()
    ctx.run(CURRENT.set, meter)
    return ctx
