"""Modbus TCP: MBAP framing, the client allow-list, the connection bound and timeouts.

A malformed header (wrong protocol id, a length that no frame can have) closes the connection:
after it nothing in the byte stream can be trusted to start a frame. A malformed PDU inside a
well-framed request gets an exception response, and the connection goes on.

Responses are framed by pymodbus's ``FramerSocket.encode``. Requests are split here, not by its
``decode`` (pymodbus 3.16.1): on a protocol id other than 0 it reports "need more data" and the
connection waits forever; an MBAP length of 0 or 1 makes it consume the header and lose the frame
boundary; and with exactly 9 bytes buffered it stretches a length of 2 to 3.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU

from canbridge import PluginError
from canbridge_modbus.engine import ModbusEngine, exception_pdu

log = logging.getLogger("canbridge.modbus")

MAX_LENGTH = 254  # unit id + the largest PDU (253 bytes)
MAX_BUFFER = 64 * 1024  # never hold more than this for one client

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FRAMER = FramerSocket(DecodePDU(is_server=True))  # only its encode (MBAP header + PDU) is used


def peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


class ModbusTcpServer:
    """Listens on one address and serves every connection from the engine."""

    def __init__(
        self,
        engine: ModbusEngine,
        host: str,
        port: int,
        *,
        allow: Sequence[Network],
        max_connections: int,
        idle_timeout_s: float | None,
        frame_timeout_s: float,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.allow = list(allow)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.connections: set[_Connection] = set()
        self.refused_connections = 0
        self.closed_malformed = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # one unit id: TCP clients may also address it as 0 or 255 ("this server")
        units = list(engine.units)
        self.alias = units[0] if len(units) == 1 else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port)
        except OSError as e:
            raise PluginError(
                f"modbus: cannot listen on {self.host}:{self.port}: {e.strerror or e} "
                "(plugins.modbus.host/port)"
            ) from e
        self._sweeper = asyncio.create_task(self._sweep(), name="modbus-tcp-sweeper")

    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for c in list(self.connections):
            c.close()
        pending = [c.task for c in self.connections if c.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=self.engine.write_timeout_s + 0.5)
        if self._server is not None:
            # wait_closed also waits for clients; every one was closed above
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=2.0)
            except TimeoutError:
                log.warning("modbus: TCP server did not close within 2 s")
        if self._sweeper is not None:
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass

    def allowed(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)

    async def _sweep(self) -> None:
        """Close clients that went silent or left a frame half sent."""
        period = min(self.frame_timeout_s, self.idle_timeout_s or self.frame_timeout_s) / 4
        while True:
            await asyncio.sleep(max(period, 0.05))
            now = time.monotonic()
            for c in list(self.connections):
                if c.partial_since is not None and now - c.partial_since > self.frame_timeout_s:
                    log.info("modbus: closing %s: frame incomplete for %.0f s", c.peer, self.frame_timeout_s)
                    c.close()
                elif (
                    self.idle_timeout_s is not None
                    and c.task is None
                    and now - c.last_activity > self.idle_timeout_s
                ):
                    log.info("modbus: closing %s: idle for %.0f s", c.peer, self.idle_timeout_s)
                    c.close()


class _Connection(asyncio.Protocol):
    def __init__(self, server: ModbusTcpServer) -> None:
        self.server = server
        self.engine = server.engine
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.partial_since: float | None = None
        self.last_activity = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer_text(peer)
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        if not self.server.allowed(host):
            self.server.refused_connections += 1
            log.warning(
                "modbus: refused connection from %s: not in the allow list (plugins.modbus.allow)", self.peer
            )
            transport.abort()
            return
        if len(self.server.connections) >= self.server.max_connections:
            self.server.refused_connections += 1
            log.warning(
                "modbus: refused connection from %s: %d clients connected (max_connections)",
                self.peer,
                len(self.server.connections),
            )
            transport.abort()
            return
        self.server.connections.add(self)
        log.debug("modbus: client %s connected", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        # a write in flight completes (it was decided), only its response has nowhere to go

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _malformed(self, why: str) -> None:
        self.server.closed_malformed += 1
        log.warning("modbus: closing %s: %s", self.peer, why)
        self.buf.clear()
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self not in self.server.connections:
            return
        self.last_activity = time.monotonic()
        self.buf += data
        if len(self.buf) > MAX_BUFFER:
            self._malformed("too much data without reading the responses")
            return
        self._process()

    def _process(self) -> None:
        buf = self.buf
        while self.task is None and self.transport is not None:
            if len(buf) < 7:
                self.partial_since = (self.partial_since or time.monotonic()) if buf else None
                return
            tid, pid, length, unit = struct.unpack_from(">HHHB", buf)
            if pid != 0:
                self._malformed(f"protocol id {pid} is not Modbus (0)")
                return
            if length < 2 or length > MAX_LENGTH:
                self._malformed(f"MBAP length {length} is outside 2 to {MAX_LENGTH}")
                return
            if len(buf) < 6 + length:
                self.partial_since = self.partial_since or time.monotonic()
                return
            self.partial_since = None
            pdu = bytes(buf[7 : 6 + length])
            del buf[: 6 + length]
            target = unit if self.engine.has_unit(unit) else None
            if target is None and unit in (0, 255) and self.server.alias is not None:
                target = self.server.alias
            if target is None:
                self._send(tid, unit, exception_pdu(pdu[0], ExcCodes.GATEWAY_PATH_UNAVIABLE))
                continue
            response = self.engine.handle(target, pdu, self.peer)
            if isinstance(response, bytes):
                self._send(tid, unit, response)
                continue
            # a write: stop reading until it is decided, so responses keep the request order
            self.transport.pause_reading()
            self.task = asyncio.create_task(self._finish(tid, unit, response), name="modbus-write")

    async def _finish(self, tid: int, unit: int, response: Coroutine[Any, Any, bytes]) -> None:
        try:
            pdu = await response
            self._send(tid, unit, pdu)
        finally:
            self.task = None
            if self.transport is not None:
                self.transport.resume_reading()
                self._process()

    def _send(self, tid: int, unit: int, pdu: bytes) -> None:
        if self.transport is not None:
            self.transport.write(_FRAMER.encode(pdu, unit, tid))
