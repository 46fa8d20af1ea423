"""Pieces of the end-to-end benchmark that decide what its report says (no timing is asserted)."""

from __future__ import annotations

import asyncio
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.e2e import stats
from bench.e2e.client_modbus import NOT_GOOD, ModbusException, ModbusTcp


def test_longest_send_gap_is_per_message_and_inside_the_window() -> None:
    sent = {"can0": [[0, 100, 400, 500], [0, 50, 100, 150]], "can1": [[0, 10, 20, 2000]]}
    assert stats.longest_send_gap(sent, (0, 600)) == pytest.approx(300e-9)  # 100 -> 400 on can0's first
    assert stats.longest_send_gap(sent, (0, 3000)) == pytest.approx(1980e-9)  # can1's 20 -> 2000
    assert stats.longest_send_gap(sent, (450, 600)) == 0.0  # one send inside: no gap


@pytest.mark.parametrize("code", [NOT_GOOD, 0x02, 0x04])
async def test_modbus_client_names_the_exception_code(code: int) -> None:
    """Regression: exception 0B (a stale probe on a busy CI machine) was a client error that failed the
    idle scenario; the client now tells the bridge's not-good answer from every other exception."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
        function = (await reader.readexactly(length - 1))[0]
        writer.write(struct.pack(">HHHBBB", tid, 0, 3, unit, function | 0x80, code))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await ModbusTcp.connect("127.0.0.1", port)
    try:
        with pytest.raises(ModbusException) as caught:
            await client.read(1, 4, 0, 2)
        assert (caught.value.function, caught.value.code) == (4, code)
    finally:
        client.close()
        server.close()
        await server.wait_closed()
