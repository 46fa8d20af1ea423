"""Modbus attack classes: every refused write audited, and every buffer bounded before any request
is understood (Modbus has no authentication).

Audit tests run a real bridge and read ``<state_dir>/audit.jsonl``; transport tests use raw sockets
on 127.0.0.1 (and other 127/8 source addresses, which are loopback too).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from canbridge_modbus.rtu import MAX_INPUT as MAX_RTU_INPUT
from canbridge_modbus.rtu import MAX_OUTPUT as MAX_RTU_OUTPUT
from canbridge_modbus.service import ModbusService
from canbridge_modbus.tcp import MAX_INPUT, ModbusTcpServer
from pymodbus.framer import FramerRTU

from canbridge import Frame
from canbridge.core.app import demo_config, unique_channel
from canbridge.testing import BridgeHarness, eventually
from tests.plugins.modbus.conftest import mapped

SETPOINT = "demo.MotorCommand.SpeedSetpoint"  # uint16 0..6000 rpm
ENABLE = "demo.MotorCommand.Enable"
MODE = "demo.MotorCommand.Mode"  # 0..2
TORQUE = "demo.MotorCommand.TorqueLimit"  # 0..100 %
COMMAND_ID = 0x300


# --- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bridge(tmp_path: Path, **modbus: Any) -> AsyncIterator[tuple[BridgeHarness, ModbusService, int]]:
    """The demo mapping, MotorCommand sent only when written (so every frame is a write's)."""
    cfg = demo_config(unique_channel("mbsec"))
    mapping = cfg["mappings"][0]
    mapping.pop("transmit")
    mapping["write_rate"] = 10_000
    cfg["plugins"] = {"modbus": {"port": 0, **modbus}}
    async with BridgeHarness(config=cfg, state_dir=tmp_path) as h:
        svc = h.service("modbus")
        assert isinstance(svc, ModbusService)
        yield h, svc, int(svc.endpoints()[0].rsplit(":", 1)[1]) if svc.tcp is not None else 0


def with_crc(frame: bytes) -> bytes:
    """Test helper: the frame with its Modbus CRC-16 appended (pymodbus's CRC, in wire order)."""
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def tcp(svc: ModbusService) -> ModbusTcpServer:
    assert svc.tcp is not None
    return svc.tcp


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Client:
    """One Modbus TCP connection speaking raw PDUs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.tid = reader, writer, 0

    @classmethod
    async def connect(cls, port: int, source: str | None = None) -> Client:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0) if source else None)
        return cls(r, w)

    async def call(self, pdu: bytes, unit: int = 1) -> bytes:
        self.tid = (self.tid + 1) & 0xFFFF
        self.writer.write(struct.pack(">HHHB", self.tid, 0, len(pdu) + 1, unit) + pdu)
        head = await asyncio.wait_for(self.reader.readexactly(7), 5)
        tid, _, length, _ = struct.unpack(">HHHB", head)
        assert tid == self.tid
        return await asyncio.wait_for(self.reader.readexactly(length - 1), 5)

    async def closed_by_server(self, within: float = 10.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1 << 16), within) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


def fc6(address: int, value: int) -> bytes:
    return struct.pack(">BHH", 6, address, value)


def fc16(address: int, *words: int) -> bytes:
    return struct.pack(f">BHHB{len(words)}H", 16, address, len(words), 2 * len(words), *words)


def fc5(address: int, on: bool) -> bytes:
    return struct.pack(">BHH", 5, address, 0xFF00 if on else 0)


def fc15(address: int, *bits: bool) -> bytes:
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        packed[i // 8] |= int(b) << (i % 8)
    return struct.pack(">BHHB", 15, address, len(bits), len(packed)) + bytes(packed)


def f32(value: float, order: str = "ABCD") -> tuple[int, int]:
    hi, lo = struct.unpack(">2H", struct.pack(">f", value))
    return (lo, hi) if order == "CDAB" else (hi, lo)


async def no_frame_before(h: BridgeHarness, client: Client, barrier: bytes, check: Any) -> None:
    """Nothing was sent for the refused requests: the next frame is the barrier write's."""
    assert (await client.call(barrier))[0] == barrier[0], "the barrier write was refused"
    frame: Frame = await h.next_sent(COMMAND_ID, timeout=3)
    assert check(frame), f"a frame was sent before the barrier write's: {frame}"


# --- finding 1: every refusal decided in the plugin reaches the audit log ------------------------

# (pdu, exception code, audited target, audited result), with the encodings configured below:
# SpeedSetpoint uint32 CDAB, Mode float32 ABCD, TorqueLimit int16 x 10
ENCODED = {
    SETPOINT: {"encoding": "uint32", "word_order": "CDAB"},
    MODE: {"encoding": "float32"},
    TORQUE: {"encoding": "int16", "scale": 10},
}


def register_cases(a: dict[str, int]) -> list[tuple[str, bytes, int, str, str]]:
    sp, mode, tq = a[SETPOINT], a[MODE], a[TORQUE]
    return [
        ("int16 x10 FC 6 out of range", fc6(tq, 1010), 0x03, TORQUE, "out_of_range"),  # 101.0 %
        ("int16 x10 FC 6 fraction", fc6(tq, 1001), 0x03, TORQUE, "wrong_type"),  # 100.1 of an integer
        ("int16 x10 FC 16 negative", fc16(tq, 0xFFF6), 0x03, TORQUE, "out_of_range"),  # -1.0 %
        ("uint32 CDAB FC 16 out of range", fc16(sp, 70000 & 0xFFFF, 70000 >> 16), 0x03, SETPOINT, "out_of_range"),
        ("float32 FC 16 NaN", fc16(mode, 0x7FC0, 0), 0x03, MODE, "wrong_type"),
        ("float32 FC 16 +Inf", fc16(mode, 0x7F80, 0), 0x03, MODE, "wrong_type"),
        ("float32 FC 16 -Inf", fc16(mode, 0xFF80, 0), 0x03, MODE, "wrong_type"),
        ("float32 FC 16 out of range", fc16(mode, *f32(3.0)), 0x03, MODE, "out_of_range"),
        ("half of float32 at its start, FC 6", fc6(mode, 0x4000), 0x02, MODE, "unsupported_request"),
        ("half of float32 at its start, FC 16", fc16(mode, 0x4000), 0x02, MODE, "unsupported_request"),
        ("half of float32 at its end, FC 6", fc6(mode + 1, 0), 0x02, MODE, "unsupported_request"),
        ("half of uint32 at its end, FC 16", fc16(sp + 1, 0), 0x02, SETPOINT, "unsupported_request"),
        ("FC 16 past the last register", fc16(tq, 10, 0), 0x02, f"modbus:unit 1 holding_register {tq + 1}",
         "unknown_signal"),
        ("FC 16 malformed byte count", struct.pack(">BHHB", 16, tq, 1, 4) + b"\0\0\0\0", 0x03,
         "modbus:unit 1 FC 16", "unsupported_request"),
    ]


async def test_every_refused_register_write_is_audited_and_sends_nothing(tmp_path: Path) -> None:
    async with bridge(tmp_path, signals=ENCODED) as (h, svc, port):
        a = {n: p.address for n, p in mapped(svc).placements.items() if p.table == "holding_register"}
        c = await Client.connect(port)
        try:
            for label, pdu, code, target, result in register_cases(a):
                before = len(audit(tmp_path))
                assert await c.call(pdu) == bytes((pdu[0] | 0x80, code)), label
                new = audit(tmp_path)[before:]
                assert any(r["target"] == target and r["result"] == result for r in new), (label, new)
                assert all(r["result"] != "accepted" for r in new), label
                assert all(r["plugin"] == "modbus" and r["address"].startswith("127.0.0.1:") for r in new)
            # a FC 16 covering a good value and a refused one sends neither (all or nothing)
            before = len(audit(tmp_path))
            assert a[TORQUE] == a[MODE] + 2  # float32 Mode, then TorqueLimit
            assert await c.call(fc16(a[MODE], *f32(1.0), 1010)) == b"\x90\x03"
            new = audit(tmp_path)[before:]
            assert {(r["target"], r["result"]) for r in new} == {(TORQUE, "out_of_range"), (MODE, "out_of_range")}
            await no_frame_before(h, c, fc6(a[TORQUE], 420), lambda f: f.data[3] == 42)
            # the value is recorded as decoded: NaN and infinity as such
            values = [r["value"] for r in audit(tmp_path) if r["target"] == MODE and r["result"] == "wrong_type"]
            assert values == ["nan", "inf", "-inf"]
        finally:
            c.close()


async def test_fc16_items_of_one_message_are_one_frame(tmp_path: Path) -> None:
    async with bridge(tmp_path, signals=ENCODED) as (h, svc, port):
        a = {n: p.address for n, p in mapped(svc).placements.items() if p.table == "holding_register"}
        c = await Client.connect(port)
        try:
            assert a[TORQUE] == a[MODE] + 2
            assert (await c.call(fc16(a[MODE], *f32(2.0), 550)))[0] == 16
            frame = await h.next_sent(COMMAND_ID)
            assert (frame.data[2] >> 1) & 3 == 2 and frame.data[3] == 55  # Mode and TorqueLimit together
            with pytest.raises(TimeoutError):  # and no second frame for the second item
                await h.next_sent(COMMAND_ID, timeout=0.3)
            accepted = [r for r in audit(tmp_path) if r["result"] == "accepted"]
            assert [r["target"] for r in accepted] == [MODE, TORQUE] and accepted[0]["batch"] == 2
        finally:
            c.close()


async def test_every_refused_coil_write_is_audited_and_sends_nothing(tmp_path: Path) -> None:
    async with bridge(tmp_path) as (h, svc, port):
        coil = mapped(svc).placements[ENABLE].address
        sp = mapped(svc).placements[SETPOINT].address
        c = await Client.connect(port)
        try:
            cases = [
                ("FC 5 value 1234", struct.pack(">BHH", 5, coil, 0x1234), 0x03, "modbus:unit 1 FC 5",
                 "unsupported_request"),
                ("FC 5 no such coil", fc5(coil + 1, True), 0x02, f"modbus:unit 1 coil {coil + 1}", "unknown_signal"),
                ("FC 15 one good, one missing", fc15(coil, True, True), 0x02, f"modbus:unit 1 coil {coil + 1}",
                 "unknown_signal"),
                ("FC 15 byte count", struct.pack(">BHHB", 15, coil, 9, 1) + b"\1", 0x03, "modbus:unit 1 FC 15",
                 "unsupported_request"),
            ]
            for label, pdu, code, target, result in cases:
                before = len(audit(tmp_path))
                assert await c.call(pdu) == bytes((pdu[0] | 0x80, code)), label
                new = audit(tmp_path)[before:]
                assert any(r["target"] == target and r["result"] == result for r in new), (label, new)
                assert all(r["result"] != "accepted" for r in new), label
            # FC 15's good coil was not written either, and is recorded as not sent
            assert any(r["target"] == ENABLE and "not sent" in r["detail"] for r in audit(tmp_path))
            await no_frame_before(h, c, fc6(sp, 1500), lambda f: f.data[:2] == (1500).to_bytes(2, "little"))
        finally:
            c.close()


async def test_read_only_and_allow_list_refusals_are_audited(tmp_path: Path) -> None:
    async with bridge(tmp_path / "ro", read_only=True) as (_h, svc, port):
        sp = mapped(svc).placements[SETPOINT].address
        c = await Client.connect(port)
        try:
            assert await c.call(fc6(sp, 100)) == b"\x86\x01"
            assert await c.call(fc16(sp, 100)) == b"\x90\x01"
        finally:
            c.close()
        records = [r for r in audit(tmp_path / "ro") if r["target"] == SETPOINT]
        assert [r["result"] for r in records] == ["not_allowed", "not_allowed"]
        assert "read_only" in records[0]["detail"]
    async with bridge(tmp_path / "allow", allow=["10.0.0.0/8"]) as (_h, svc, port):
        c = await Client.connect(port)
        assert await c.closed_by_server()
        c.close()
        records = [r for r in audit(tmp_path / "allow") if r["target"] == "modbus:connection"]
        assert records and records[0]["result"] == "not_allowed" and "allow" in records[0]["detail"]


@pytest.mark.tier("modbus-interop")
async def test_mbpoll_out_of_range_write_is_audited(tmp_path: Path) -> None:
    # the example of issue #9: write 9999 to holding register 0 (SpeedSetpoint, 0..6000 rpm)
    async with bridge(tmp_path) as (h, svc, port):
        assert mapped(svc).placements[SETPOINT].address == 0
        proc = await asyncio.create_subprocess_exec(
            "mbpoll", "-m", "tcp", "-p", str(port), "-a", "1", "-0", "-1", "-t", "4", "-r", "0", "127.0.0.1",
            "9999", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode != 0 and b"Illegal data value" in out, out
        records = [r for r in audit(tmp_path) if r["target"] == SETPOINT]
        assert [(r["result"], r["value"]) for r in records] == [("out_of_range", 9999)]
        assert records[0]["plugin"] == "modbus" and records[0]["address"].startswith("127.0.0.1:")
        with pytest.raises(TimeoutError):
            await h.next_sent(COMMAND_ID, timeout=0.3)


# --- finding 4: bounded before any request is understood -----------------------------------------


def rss() -> int:
    """Resident set size of this process (the bridge runs in it), in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


DIAG_READ = struct.pack(">BHH", 4, 30000, 20)  # the bus diagnostics: always served


def mbap(pdu: bytes, tid: int = 1, unit: int = 1) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


async def flood(sock: socket.socket, blob: bytes, state: dict[str, Any]) -> None:
    """Send ``blob`` as fast as the server takes it, never reading; ``state['blocked']`` while the
    kernel buffers are full."""
    loop = asyncio.get_running_loop()
    view = memoryview(blob)
    while state["sent"] < len(blob):
        try:
            state["sent"] += sock.send(view[state["sent"] : state["sent"] + (1 << 20)])
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()

            def writable(f: asyncio.Future[None] = ready) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_writer(sock, writable)
            state["blocked"] = True
            try:
                await ready
            finally:
                loop.remove_writer(sock)
                state["blocked"] = False
        await asyncio.sleep(0)  # the server runs in this loop


def raw_socket(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


async def served(port: int, source: str = "127.0.0.1") -> bool:
    """A fresh client from ``source`` connects and gets an answer to a read."""
    try:
        c = await Client.connect(port, source)
    except OSError:
        return False
    try:
        return (await c.call(DIAG_READ))[0] == 4
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False
    finally:
        c.close()


async def test_a_pipelining_client_that_never_reads_is_bounded(tmp_path: Path) -> None:
    async with bridge(tmp_path, bad_quality="last_value", output_timeout_s=600) as (h, svc, port):
        n = min(125, len(mapped(svc).placements))  # quality registers: a 9 + 2n byte response each
        request = mbap(struct.pack(">BHH", 4, 20000, n))
        blob = request * (48_000_000 // len(request))  # ~48 MB: more than the kernel buffers hold
        before = rss()
        sock = raw_socket(port)
        state: dict[str, Any] = {"sent": 0, "blocked": False}
        sender = asyncio.create_task(flood(sock, blob, state))
        largest = 0

        def stalled() -> bool:
            nonlocal largest
            conns = list(tcp(svc).connections)
            largest = max([largest, *(c.buffered() for c in conns)])
            return any(c.output_paused_since is not None for c in conns) and state["blocked"]

        try:
            await h.until(stalled, timeout=60)
            grown = rss() - before
            (conn,) = tcp(svc).connections
            bound = MAX_INPUT + tcp(svc).output_buffer_bytes + 300
            assert conn.buffered() <= bound and largest <= bound, (conn.buffered(), largest)
            assert conn.buffered_output() <= tcp(svc).output_buffer_bytes + 300
            # answers the client never took would be 9 + 2n bytes for each request the kernel accepted
            unbounded = state["sent"] // len(request) * (9 + 2 * n)
            print(f"\nnever-reading pipeliner: {state['sent'] / 1e6:.1f} MB of requests sent, "
                  f"{conn.buffered()} bytes held (largest {largest}), RSS +{grown / 1e6:.1f} MB "
                  f"(unbounded: {unbounded / 1e6:.0f} MB of answers)")
            assert grown < 40_000_000  # wide margin: the unbounded server grew by hundreds of MB
            assert await served(port)  # everyone else is still answered
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            sock.close()


async def test_a_client_that_does_not_take_its_answers_is_closed(tmp_path: Path) -> None:
    async with bridge(tmp_path, bad_quality="last_value", output_timeout_s=1) as (h, svc, port):
        request = mbap(struct.pack(">BHH", 4, 20000, min(125, len(mapped(svc).placements))))
        sock = raw_socket(port)
        state: dict[str, Any] = {"sent": 0, "blocked": False}
        sender = asyncio.create_task(flood(sock, request * (48_000_000 // len(request)), state))
        try:
            await h.until(lambda: tcp(svc).closed_not_reading == 1, timeout=60)
            assert not tcp(svc).connections
            assert await served(port)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            sock.close()


async def poll(c: Client, times: int) -> int:
    ok = 0
    for _ in range(times):
        ok += (await c.call(DIAG_READ))[0] == 4
    return ok


async def test_idle_connections_from_one_address_do_not_lock_out_a_poller(tmp_path: Path) -> None:
    async with bridge(tmp_path) as (h, svc, port):
        server = tcp(svc)
        idle = [raw_socket(port) for _ in range(20)]
        try:
            await h.until(lambda: server.evicted_connections + len(server.connections) >= 20)
            assert len(server.connections) <= server.max_per_address
            poller = await Client.connect(port)
            try:
                assert await poll(poller, 5) == 5
                # more idle connections while it polls: they evict each other, never the poller
                idle += [raw_socket(port) for _ in range(20)]
                assert await poll(poller, 20) == 20
                await h.until(lambda: server.evicted_connections >= 36)
                assert await poll(poller, 5) == 5
                assert len(server.connections) <= server.max_per_address
            finally:
                poller.close()
        finally:
            for s in idle:
                s.close()


async def test_idle_connections_from_many_addresses_do_not_lock_out_a_poller(tmp_path: Path) -> None:
    async with bridge(tmp_path) as (h, svc, port):
        server = tcp(svc)
        idle = [raw_socket(port, f"127.0.0.{i}") for i in range(2, 42)]  # 40 addresses, 1 each
        try:
            await h.until(lambda: server.evicted_connections + len(server.connections) >= 40)
            assert len(server.connections) == server.max_connections == 16
            assert await served(port, "127.0.0.1")
            assert await served(port, "127.0.0.77")
        finally:
            for s in idle:
                s.close()


async def test_active_clients_are_not_evicted(tmp_path: Path) -> None:
    # every place taken by a client that polls: a newcomer is refused, nobody is thrown out
    async with bridge(tmp_path, max_connections=4, max_connections_per_address=4) as (_h, svc, port):
        pollers = [await Client.connect(port, f"127.0.0.{i}") for i in range(2, 6)]
        try:
            for p in pollers:
                assert await poll(p, 1) == 1
            assert not await served(port)
            assert tcp(svc).refused_connections == 1 and tcp(svc).evicted_connections == 0
            for p in pollers:
                assert await poll(p, 2) == 2
        finally:
            for p in pollers:
                p.close()


async def test_slowloris_one_byte_per_second_is_closed(tmp_path: Path) -> None:
    async with bridge(tmp_path, frame_timeout_s=2) as (_h, svc, port):
        c = await Client.connect(port)
        try:
            frame = mbap(struct.pack(">BHH", 3, 0, 1))
            for byte in frame[:-1]:  # never the whole frame
                if c.writer.is_closing() or c.reader.at_eof():
                    break
                c.writer.write(bytes((byte,)))
                try:
                    if await asyncio.wait_for(c.reader.read(1), 1.0) == b"":
                        break
                except TimeoutError:
                    continue
                except ConnectionResetError:  # a byte written after the server closed: the kernel's RST
                    break
            assert await c.closed_by_server(within=5)
            assert not tcp(svc).connections
        finally:
            c.close()
        assert await served(port)


@pytest.mark.parametrize("length", [0, 1, 255, 256, 4096, 0xFFFF])
async def test_oversized_or_impossible_mbap_length_closes(tmp_path: Path, length: int) -> None:
    async with bridge(tmp_path) as (_h, svc, port):
        c = await Client.connect(port)
        try:
            c.writer.write(struct.pack(">HHHB", 1, 0, length, 1) + b"\x03\x00\x00\x00\x01" + bytes(300))
            assert await c.closed_by_server(within=5)  # at once, without an answer
            assert tcp(svc).closed_malformed == 1
        finally:
            c.close()
        assert await served(port)


# --- RTU: the same bounds on a serial line (a pseudo-terminal) ------------------------------------


@contextlib.asynccontextmanager
async def rtu_bridge(tmp_path: Path) -> AsyncIterator[tuple[BridgeHarness, ModbusService, int]]:
    master_fd, slave_fd = os.openpty()
    tty.setraw(master_fd)
    os.set_blocking(master_fd, False)
    try:
        rtu = {"port": os.ttyname(slave_fd), "baudrate": 19200, "parity": "N"}
        async with bridge(tmp_path, rtu=rtu, tcp=False) as (h, svc, _port):
            yield h, svc, master_fd
    finally:
        os.close(slave_fd)
        os.close(master_fd)


def rtu_frame(pdu: bytes, unit: int = 1) -> bytes:
    return with_crc(bytes((unit,)) + pdu)


async def write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:  # the pty is full until the server (in this loop) reads the other end
            room: asyncio.Future[None] = loop.create_future()

            def writable(f: asyncio.Future[None] = room) -> None:
                if not f.done():
                    f.set_result(None)

            loop.add_writer(fd, writable)
            try:
                await room
            finally:
                loop.remove_writer(fd)


def drain(fd: int) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            out += chunk
    return out


async def test_rtu_input_without_a_frame_boundary_is_bounded(tmp_path: Path) -> None:
    async with rtu_bridge(tmp_path) as (h, svc, fd):
        rtu = svc.rtu
        assert rtu is not None
        largest = 0

        def watch() -> bool:
            nonlocal largest
            largest = max(largest, len(rtu.buf))
            return rtu.overruns >= 1 and not rtu._discarding  # and the silence after it

        # 64 KiB of bytes that no length delimits (an unknown function code), with no silence
        junk = (b"\x01\x41" + bytes(range(2, 256))) * 256
        for i in range(0, len(junk), 1024):
            await write_all(fd, junk[i : i + 1024])
            largest = max(largest, len(rtu.buf))
        await h.until(watch)
        assert largest <= MAX_RTU_INPUT, largest
        # after the silence the line works again
        buf = bytearray()
        await write_all(fd, rtu_frame(struct.pack(">BHH", 4, 30000, 20)))
        await h.until(lambda: len(drain_into(fd, buf)) >= 45, timeout=5)
        assert bytes(buf[:3]) == b"\x01\x04\x28" and bytes(buf) == with_crc(bytes(buf[:-2]))


def drain_into(fd: int, buf: bytearray) -> bytearray:
    buf += drain(fd)
    return buf


async def test_rtu_answers_a_master_does_not_read_are_bounded(tmp_path: Path) -> None:
    async with rtu_bridge(tmp_path) as (h, svc, fd):
        rtu = svc.rtu
        assert rtu is not None
        request = rtu_frame(struct.pack(">BHH", 4, 30000, 20))  # 45-byte answers, never read
        largest = 0
        for _ in range(100):
            await write_all(fd, request * 50)
            largest = max(largest, len(rtu._out))
            if rtu.dropped_responses:
                break
        await h.until(lambda: rtu.dropped_responses > 0, timeout=10)
        assert largest <= MAX_RTU_OUTPUT and len(rtu._out) <= MAX_RTU_OUTPUT
        drain(fd)


# --- the audit log alarm point ------------------------------------------------------------------


async def test_audit_log_alarm_point_in_the_bridge_diagnostics_registers(tmp_path: Path) -> None:
    # /dev/full: every audit write fails with ENOSPC, as on a full disk
    cfg = demo_config(unique_channel("mbaudit"))
    cfg["mappings"][0].pop("transmit")
    cfg["audit"] = {"file": "/dev/full"}
    cfg["plugins"] = {"modbus": {"port": 0, "diagnostics_interval": 0.05}}
    async with BridgeHarness(config=cfg, state_dir=tmp_path) as h:
        svc = h.service("modbus")
        assert isinstance(svc, ModbusService)
        port = int(svc.endpoints()[0].rsplit(":", 1)[1])
        block = mapped(svc).bridge[1]
        assert block.address == 30020  # after the demo bus's block
        read = struct.pack(">BHH", 4, block.address, 10)
        c = await Client.connect(port)

        async def registers() -> tuple[int, ...]:
            return struct.unpack(">10H", (await c.call(read))[2:])

        async def until(check: Any) -> tuple[int, ...]:
            """The block once ``check`` accepts it (it refreshes every diagnostics_interval)."""
            return await eventually(registers, check, interval=0.05, what="the diagnostics block")

        try:
            await until(lambda r: r[0] == 1 and r[1] == 1)  # audit available, one TCP client (this one)
            sp = mapped(svc).placements[SETPOINT].address
            assert await c.call(fc6(sp, 1500)) == b"\x86\x04"  # refused: nothing is sent unrecorded
            with pytest.raises(TimeoutError):
                await h.next_sent(COMMAND_ID, timeout=0.3)
            # the alarm: not available, the failure and the refused write counted
            await until(lambda r: r[0] == 0 and (r[2] << 16 | r[3]) >= 1 and (r[6] << 16 | r[7]) >= 1)
        finally:
            c.close()
