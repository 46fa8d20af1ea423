"""Modbus RTU on a pseudo-terminal pair made by socat, on the same register map as TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import struct
import termios
import time
import tty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from canbridge_modbus.rtu import expected_length
from pymodbus.framer import FramerRTU

from canbridge.testing import eventually, until
from tests.plugins.modbus.conftest import inject_received, mapped, modbus_bridge, sent_matching


def with_crc(frame: bytes) -> bytes:
    """Test helper: the frame with its Modbus CRC-16 appended (pymodbus's CRC, in wire order)."""
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def crc(data: bytes) -> bytes:
    """Modbus CRC-16, written out independently of the plugin's."""
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            lsb = value & 1
            value >>= 1
            if lsb:
                value ^= 0xA001
    return struct.pack("<H", value)


def test_crc_reference_vector() -> None:
    # the read-holding-registers example of the Modbus serial line guide
    assert crc(bytes.fromhex("01030000000A")) == bytes.fromhex("C5CD")
    assert with_crc(bytes.fromhex("01030000000A")) == bytes.fromhex("01030000000AC5CD")


def test_request_lengths() -> None:
    assert expected_length(b"\x01") is None
    assert expected_length(b"\x01\x03") == 8
    assert expected_length(b"\x01\x10\x00\x00\x00\x02") is None  # byte count not here yet
    assert expected_length(b"\x01\x10\x00\x00\x00\x02\x04") == 13
    assert expected_length(b"\x01\x0f\x00\x00\x00\x0a\x02") == 11
    assert expected_length(b"\x01\x41") is None  # unknown: the silence ends it
    # lengths pymodbus knows for functions the server answers with 01
    assert expected_length(b"\x01\x07") == 4  # read exception status
    assert expected_length(b"\x01\x17\x00\x00\x00\x01\x00\x00\x00\x01\x02") == 15  # read/write multiple
    assert expected_length(b"\x01\x2b") is None  # MEI type not here yet
    assert expected_length(b"\x02\x83\x02") == 5  # another server's exception response


@contextlib.asynccontextmanager
async def pty_pair(tmp_path: Path) -> AsyncIterator[tuple[Path, Path]]:
    server, client = tmp_path / "server", tmp_path / "client"
    proc = await asyncio.create_subprocess_exec(
        "socat",
        f"pty,raw,echo=0,link={server}",
        f"pty,raw,echo=0,link={client}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await until(lambda: (server.exists() and client.exists()) or proc.returncode is not None,
                    what="socat's pty pair")
        assert proc.returncode is None, "socat exited"
        yield server, client
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 5)


class Master:
    """A minimal RTU master on the client end of the pty pair."""

    def __init__(self, path: Path | None = None, fd: int | None = None) -> None:
        self.fd = fd if fd is not None else os.open(path or "", os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        os.set_blocking(self.fd, False)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def close(self) -> None:
        os.close(self.fd)

    async def transact(self, frame: bytes, quiet: float = 0.5) -> bytes:
        """Send a frame, return what comes back until the line is quiet."""
        os.write(self.fd, frame)
        out = b""
        deadline = time.monotonic() + quiet
        while time.monotonic() < deadline:
            try:
                chunk = os.read(self.fd, 512)
            except BlockingIOError:
                chunk = b""
            if chunk:
                out += chunk
                deadline = time.monotonic() + 0.1  # the rest of the frame follows at once
            await asyncio.sleep(0.005)  # a silent line ends an RTU reply: the quiet time is the point
        return out

    async def request(self, unit: int, pdu: bytes) -> bytes:
        reply = await self.transact(bytes((unit,)) + pdu + crc(bytes((unit,)) + pdu))
        if reply:
            assert reply[-2:] == crc(reply[:-2]), f"bad CRC in {reply.hex()}"
            assert reply[0] == unit
            return reply[1:-2]
        return b""


async def test_rtu_on_a_python_pty(tmp_path: Path) -> None:
    """The RTU path without socat: a pseudo-terminal from os.openpty()."""
    master_fd, slave_fd = os.openpty()
    port = os.ttyname(slave_fd)
    try:
        rtu = {"port": port, "baudrate": 9600, "parity": "N"}
        async with modbus_bridge(state_dir=tmp_path, rtu=rtu, tcp=False) as (h, svc, _port):
            master = Master(fd=master_fd)

            async def speed() -> bytes:
                await inject_received(h, "MotorStatus", MotorSpeed=77)
                return await master.request(1, struct.pack(">BHH", 4, 0, 1))

            await eventually(speed, lambda r: r == b"\x04\x02\x00\x4d")
            assert await master.transact(b"\x01\x04\x00\x00\x00\x01\xff\xff") == b""  # wrong CRC
            assert svc.rtu is not None and svc.rtu.crc_errors == 1
            # a function pymodbus has no request class for is answered with 01 after the silence
            assert await master.request(1, b"\x41\x00\x00") == b"\xc1\x01"
            # a request for another server and one for us in one burst: both framed, only ours answered
            # (pymodbus 3.16's FramerRTU.decode would report the whole buffer used after the first)
            read = struct.pack(">BHH", 4, 0, 1)
            other, ours = with_crc(b"\x07" + read), with_crc(b"\x01" + read)
            answer = with_crc(b"\x01\x04\x02\x00\x4e")

            async def burst(data: bytes) -> bytes:
                # MotorStatus turns stale 300 ms after a frame: send one before every burst
                await inject_received(h, "MotorStatus", MotorSpeed=78)
                return await master.transact(data)

            await eventually(lambda: burst(other + ours), lambda r: r == answer)
            # two requests for us in one burst get two answers, in order
            not_mapped = with_crc(b"\x01" + struct.pack(">BHH", 4, 900, 1))
            await eventually(lambda: burst(ours + not_mapped), lambda r: r == answer + with_crc(b"\x01\x84\x02"))
    finally:
        os.close(slave_fd)
        os.close(master_fd)


@pytest.mark.tier("modbus-rtu")
async def test_rtu_reads_writes_and_line_discipline(tmp_path: Path) -> None:
    async with pty_pair(tmp_path) as (server, client):
        rtu = {"port": str(server), "baudrate": 19200, "parity": "N"}
        async with modbus_bridge(state_dir=tmp_path, rtu=rtu, tcp=False) as (h, svc, _port):
            assert svc.endpoints() == [f"modbus-rtu://{server}?baudrate=19200&parity=N&stopbits=1"]
            master = Master(client)
            try:

                async def speed() -> bytes:
                    await inject_received(h, "MotorStatus", MotorSpeed=-1234)
                    return await master.request(1, struct.pack(">BHH", 4, 0, 1))

                await eventually(speed, lambda r: r == b"\x04\x02" + struct.pack(">h", -1234))
                sp = mapped(svc).placements["demo.MotorCommand.SpeedSetpoint"].address
                write = struct.pack(">BHH", 6, sp, 2500)
                assert await master.request(1, write) == write
                await sent_matching(h, 0x300, lambda f: int.from_bytes(f.data[0:2], "little") == 2500)
                assert await master.request(1, struct.pack(">BHH", 4, 900, 1)) == b"\x84\x02"
                assert await master.request(1, b"\x41\x00\x00") == b"\xc1\x01"  # unknown function
                # a wrong CRC and another unit id get no answer at all
                bad = b"\x01\x04\x00\x00\x00\x01\x00\x00"
                assert await master.transact(bad) == b""
                assert await master.request(7, struct.pack(">BHH", 4, 0, 1)) == b""
                assert svc.rtu is not None and svc.rtu.crc_errors == 1
                # a broadcast write is carried out without an answer
                assert await master.request(0, struct.pack(">BHH", 6, sp, 3000)) == b""
                await sent_matching(h, 0x300, lambda f: int.from_bytes(f.data[0:2], "little") == 3000)
                # and the line still works
                r = await master.request(1, struct.pack(">BHH", 3, sp, 1))
                assert r == b"\x03\x02" + struct.pack(">H", 3000)
            finally:
                master.close()


@pytest.mark.tier("modbus-rtu")
@pytest.mark.tier("modbus-interop")
async def test_mbpoll_over_rtu(tmp_path: Path) -> None:
    assert shutil.which("mbpoll")
    async with pty_pair(tmp_path) as (server, client):
        rtu = {"port": str(server), "baudrate": 19200, "parity": "E"}
        async with modbus_bridge(state_dir=tmp_path, rtu=rtu) as (h, svc, _port):
            torque = mapped(svc).placements["demo.MotorCommand.TorqueLimit"].address
            args = [
                "-m",
                "rtu",
                "-b",
                "19200",
                "-P",
                "even",
                "-a",
                "1",
                "-0",
                "-1",
                "-o",
                "2",
                "-t",
                "4",
                "-r",
                str(torque),
                str(client),
            ]
            proc = await asyncio.create_subprocess_exec(
                "mbpoll", *args, "77", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, out.decode()
            await sent_matching(h, 0x300, lambda f: f.data[3] == 77)
            proc = await asyncio.create_subprocess_exec(
                "mbpoll", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, out.decode()
            assert f"[{torque}]: \t77" in out.decode()
