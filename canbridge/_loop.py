"""Giving the event loop a turn in which sockets go first."""

from __future__ import annotations

import asyncio


async def io_turn() -> None:
    """Let every socket that is ready now be served before this coroutine goes on.

    ``await asyncio.sleep(0)`` is not that: the task's next step is queued at once, ahead of the I/O
    callbacks the next turn finds, so a long piece of work cut into chunks still runs chunk after chunk
    while a write request waits in its socket. A timer due now is taken only after the turn's I/O events
    (asyncio's ``_run_once`` polls with a zero timeout, queues the ready sockets' callbacks, then the due
    timers), and adds no delay of its own.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_at(loop.time(), _wake, done)
    await done


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
