"""``canbridge.io_turn``: sockets that are ready go before the coroutine that yields."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

import canbridge


async def _reader_ran_before_continuing(turn: Callable[[], Awaitable[None]]) -> bool:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    ran: list[bytes] = []
    try:
        a.setblocking(False)
        loop.add_reader(a.fileno(), lambda: ran.append(a.recv(16)))
        b.send(b"write request")  # ready before the turn: a client's request waiting in its socket
        await turn()
        return bool(ran)
    finally:
        loop.remove_reader(a.fileno())
        a.close()
        b.close()


async def test_a_ready_socket_is_served_before_the_coroutine_goes_on() -> None:
    assert await _reader_ran_before_continuing(canbridge.io_turn)


async def test_sleep_zero_would_not_serve_it_first() -> None:
    """Why io_turn exists: with sleep(0) the next chunk of work runs before the waiting socket."""
    assert not await _reader_ran_before_continuing(lambda: asyncio.sleep(0))


@pytest.mark.parametrize("tasks", [1, 3])
async def test_it_adds_no_wait_when_nothing_is_ready(tasks: int) -> None:
    """The selector is polled with a zero timeout for these turns: a timer due later (epoll rounds a
    timeout up to 1 ms) would add a millisecond to every chunk of work."""
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    timeouts: list[float | None] = []
    select = selector.select

    def recording(timeout: float | None = None) -> object:
        timeouts.append(timeout)
        return select(timeout)

    turns = 0

    async def spin() -> None:
        nonlocal turns
        for _ in range(50):
            await canbridge.io_turn()
            turns += 1

    selector.select = recording
    try:
        await asyncio.gather(*(spin() for _ in range(tasks)))
    finally:
        selector.select = select
    assert turns == 50 * tasks
    assert timeouts and all(t == 0 for t in timeouts), sorted({t for t in timeouts if t != 0}, key=str)
