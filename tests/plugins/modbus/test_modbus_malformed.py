"""Malformed Modbus TCP requests as raw bytes: an exception response or a closed connection,
and the server and the CAN side keep running."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from canbridge.testing import BridgeHarness, eventually
from tests.plugins.modbus.conftest import inject_received, mapped, modbus_bridge

# one bridge serves all the parametrized cases (starting one costs about a second)
shared = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Any, Any, int]]:
    async with modbus_bridge(state_dir=tmp_path_factory.mktemp("modbus")) as running:
        yield running


def mbap(tid: int, length: int, unit: int = 1, pid: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, pid, length, unit)


def request(pdu: bytes, tid: int = 1, unit: int = 1) -> bytes:
    return mbap(tid, len(pdu) + 1, unit) + pdu


async def exchange(port: int, data: bytes, quiet: float = 3.0) -> bytes:
    """Send raw bytes, return everything received until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(1024), quiet)
            except TimeoutError:
                return out + b"<open>"
            except ConnectionResetError:
                return out + b"<closed>"
            if not chunk:
                return out + b"<closed>"
            out += chunk
            if len(out) >= 9:
                quiet = 0.15  # the answer is in; wait briefly to see whether the server hangs up
    finally:
        writer.close()


async def still_serving(h: BridgeHarness, port: int, value: int) -> None:
    """The CAN side runs (a frame is decoded) and a well-formed request is answered."""
    expected = mbap(9, 5) + b"\x04\x02" + struct.pack(">H", value)

    async def poll() -> bytes:
        # MotorStatus turns stale 300 ms after a frame: send one before every poll
        await inject_received(h, "MotorStatus", MotorSpeed=value)
        return await exchange(port, request(b"\x04\x00\x00\x00\x01", tid=9), quiet=1.0)

    await eventually(poll, lambda r: r.startswith(expected))


CLOSED = [
    pytest.param(mbap(1, 6, pid=1) + b"\x03\x00\x00\x00\x01", id="protocol-id-1"),
    pytest.param(mbap(1, 6, pid=0xFFFF) + b"\x03\x00\x00\x00\x01", id="protocol-id-ffff"),
    pytest.param(mbap(1, 0) + b"\x03\x00\x00\x00\x01", id="length-0"),
    pytest.param(mbap(1, 1) + b"\x03\x00\x00\x00\x01", id="length-1-no-function"),
    pytest.param(mbap(1, 300) + b"\x03" * 300, id="length-too-large"),
    pytest.param(mbap(1, 0xFFFF) + b"\x03", id="length-ffff"),
]

ANSWERED = [
    pytest.param(request(b"\x03\x00\x00"), b"\x83\x03", id="truncated-pdu"),
    pytest.param(request(b"\x03\x00\x00\x00\x01\x00"), b"\x83\x03", id="pdu-too-long"),
    pytest.param(request(b"\x10\x00\x00\x00\x02\x04\x00"), b"\x90\x03", id="fc16-data-short"),
    pytest.param(request(b"\x0f\x00\x00\x00\x08"), b"\x8f\x03", id="fc15-no-byte-count"),
    pytest.param(request(b"\x41\x00"), b"\xc1\x01", id="unknown-function-65"),
    pytest.param(request(b"\x08\x00\x00\x12\x34"), b"\x88\x01", id="diagnostics-function"),
    pytest.param(request(b"\x17" + b"\x00" * 9), b"\x97\x01", id="read-write-multiple"),
    pytest.param(request(b"\x03\x00\x00\x00\x00"), b"\x83\x03", id="count-0"),
    pytest.param(request(b"\x06\xff\xff\x00\x01"), b"\x86\x02", id="write-address-ffff"),
]


@shared
@pytest.mark.parametrize("data", CLOSED)
async def test_bad_header_closes_the_connection(served: tuple[Any, Any, int], data: bytes) -> None:
    h, svc, port = served
    before = svc.tcp.closed_malformed
    assert await exchange(port, data) == b"<closed>"
    assert svc.tcp.closed_malformed == before + 1
    await still_serving(h, port, 300 + before)


@shared
@pytest.mark.parametrize(("data", "answer"), ANSWERED)
async def test_bad_pdu_gets_an_exception(served: tuple[Any, Any, int], data: bytes, answer: bytes) -> None:
    h, _svc, port = served
    got = await exchange(port, data + request(b"\x03\x00\x00\x00\x01", tid=2))
    # the exception, then the next request on the same connection is still answered
    assert got.startswith(mbap(1, 1 + len(answer)) + answer)
    assert got[9:].startswith(mbap(2, 5) + b"\x03\x02")
    assert got.endswith(b"<open>")
    await still_serving(h, port, len(answer) + data[7])


async def test_frame_left_half_sent_is_closed(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path, frame_timeout_s=0.3) as (h, _svc, port):
        # the header announces 6 bytes, 3 arrive
        assert await exchange(port, mbap(1, 6) + b"\x03\x00", quiet=5.0) == b"<closed>"
        await still_serving(h, port, 5)


async def test_pipelined_requests_in_one_segment(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (_h, _svc, port):
        data = b"".join(request(b"\x03\x00\x00\x00\x01", tid=t) for t in range(1, 6))
        got = await exchange(port, data)
        tids = [struct.unpack_from(">H", got, i * 11)[0] for i in range(5)]
        assert tids == [1, 2, 3, 4, 5]


async def test_write_and_reads_keep_their_order(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (_h, svc, port):
        sp = mapped(svc).placements["demo.MotorCommand.SpeedSetpoint"].address
        data = request(struct.pack(">BHH", 6, sp, 777), tid=1) + request(struct.pack(">BHH", 3, sp, 1), tid=2)
        got = await exchange(port, data)
        assert got[:12] == mbap(1, 6) + struct.pack(">BHH", 6, sp, 777)
        assert got[12:23] == mbap(2, 5) + b"\x03\x02" + struct.pack(">H", 777)


async def test_garbage_flood_does_not_stop_the_bridge(tmp_path: Path) -> None:
    async with modbus_bridge(state_dir=tmp_path) as (h, _svc, port):
        assert (await exchange(port, bytes(range(256)) * 300)).endswith(b"<closed>")
        await still_serving(h, port, 99)


async def test_shortest_frame_then_part_of_the_next(tmp_path: Path) -> None:
    # pymodbus 3.16's FramerSocket stretches a length of 2 to 3 when exactly 9 bytes are buffered,
    # swallowing the first byte of the next request; the plugin's own MBAP split must not
    async with modbus_bridge(state_dir=tmp_path) as (_h, _svc, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            second = request(b"\x03\x00\x00\x00\x01", tid=2)
            writer.write(request(b"\x41", tid=1) + second[:1])
            await writer.drain()
            first = await asyncio.wait_for(reader.readexactly(9), 3.0)
            assert first == mbap(1, 3) + b"\xc1\x01"
            writer.write(second[1:])
            await writer.drain()
            answer = await asyncio.wait_for(reader.readexactly(11), 3.0)
            assert answer.startswith(mbap(2, 5) + b"\x03\x02")
        finally:
            writer.close()
