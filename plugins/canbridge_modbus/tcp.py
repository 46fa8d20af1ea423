"""Modbus TCP: MBAP framing, the client allow-list, connection bounds, eviction and timeouts.

Everything here holds before any request is understood (Modbus has no authentication), so every
buffer is bounded per connection: the unprocessed requests (at most one read, ``MAX_INPUT``; a
partial frame never exceeds the largest ADU, its MBAP length is checked first), and the responses the client has
not taken (reading stops above ``output_buffer_bytes`` and a client that does not take them for
``output_timeout_s`` is closed). Connections are bounded per address and in total; when full, the
connection idle the longest makes room, so a flood of idle connections cannot lock out a poller.

A malformed header (wrong protocol id, a length that no frame can have) closes the connection:
after it nothing in the byte stream can be trusted to start a frame. A malformed PDU inside a
well-framed request gets an exception response, and the connection goes on.

Responses are framed here with one ``struct`` pack, the bytes of pymodbus's ``FramerSocket.encode``
(tests/plugins/modbus/test_modbus_fastpath.py compares them). Requests are split here, not by its
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

from canbridge import Caller, ListenError, RefusalReason
from canbridge_modbus.engine import WRITE_FUNCTIONS, ModbusEngine, exception_pdu

log = logging.getLogger("canbridge.modbus")

MAX_LENGTH = 254  # unit id + the largest PDU (253 bytes)
# Unprocessed request bytes of one client; more closes it. Reading stops while responses back up,
# so this holds at most one read of the transport (asyncio: 256 KiB) and a partial frame.
MAX_INPUT = 512 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_mbap_unpack = _MBAP.unpack_from
_mbap_pack = _MBAP.pack


def frame(pdu: bytes, unit: int, tid: int) -> bytes:
    """The Modbus TCP ADU of a response PDU (MBAP header, then the PDU)."""
    return _mbap_pack(tid, 0, len(pdu) + 1, unit) + pdu


def peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def host_key(host: str) -> str:
    """One text per client address (an IPv4-mapped IPv6 address counts as the IPv4 one)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


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
        max_connections_per_address: int = 4,
        evict_idle_s: float = 30.0,
        output_buffer_bytes: int = 64 * 1024,
        output_timeout_s: float = 10.0,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self.allow = list(allow)
        self.max_connections = max_connections
        self.max_per_address = max_connections_per_address
        self.evict_idle_s = evict_idle_s
        self.idle_timeout_s = idle_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.output_buffer_bytes = output_buffer_bytes
        self.output_timeout_s = output_timeout_s
        self.connections: set[_Connection] = set()
        self.refused_connections = 0
        self.evicted_connections = 0
        self.closed_malformed = 0
        self.closed_not_reading = 0
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
            raise ListenError("modbus", f"{self.host}:{self.port}", e.strerror or str(e),
                              "plugins.modbus.host/port") from e
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
        for c in list(self.connections):  # responses nobody takes must not hold the server open
            c.abort()
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
            ip = ipaddress.ip_address(host_key(host))
        except ValueError:
            return False
        return any(ip in net for net in self.allow)

    def admit(self, newcomer: _Connection) -> bool:
        """Make room for a new connection within the per-address and total bounds, evicting the
        connection idle the longest where one is idle enough; False when it must be refused."""
        same = [c for c in self.connections if c.host == newcomer.host]
        for scope, limit, key in (
            (same, self.max_per_address, "max_connections_per_address"),
            (self.connections, self.max_connections, "max_connections"),
        ):
            if len(scope) < limit:
                continue
            victim = self._evictable(scope)
            if victim is None:
                self.refused_connections += 1
                log.warning(
                    "modbus: refused connection from %s: %d connections, all active (%s)",
                    newcomer.peer,
                    len(scope),
                    key,
                )
                return False
            self.evicted_connections += 1
            log.warning(
                "modbus: closing %s, idle %.0f s, to admit %s (%s %d reached)",
                victim.peer,
                time.monotonic() - victim.idle_since,
                newcomer.peer,
                key,
                limit,
            )
            victim.abort()
            if victim in same:
                same.remove(victim)
        return True

    def _evictable(self, scope: set[_Connection] | list[_Connection]) -> _Connection | None:
        """The connection idle the longest among those that may give way: no write in flight, and
        no request for ``evict_idle_s`` (one that never sent a request has nothing to lose)."""
        now = time.monotonic()
        candidates = [
            c
            for c in scope
            if c.task is None and (c.last_request is None or now - c.last_request >= self.evict_idle_s)
        ]
        return min(candidates, key=lambda c: c.idle_since, default=None)

    async def _sweep(self) -> None:
        """Close clients that went silent, left a frame half sent, or do not take their responses."""
        timeouts = [self.frame_timeout_s, self.output_timeout_s]
        if self.idle_timeout_s is not None:
            timeouts.append(self.idle_timeout_s)
        period = max(min(timeouts) / 4, 0.05)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for c in list(self.connections):
                if c.output_paused_since is not None and now - c.output_paused_since > self.output_timeout_s:
                    self.closed_not_reading += 1
                    log.warning(
                        "modbus: closing %s: it has not taken its responses for %.0f s (%d bytes unsent)",
                        c.peer,
                        self.output_timeout_s,
                        c.buffered_output(),
                    )
                    c.abort()
                elif c.partial_since is not None and now - c.partial_since > self.frame_timeout_s:
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
        self.host = ""
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.partial_since: float | None = None
        self.output_paused_since: float | None = None  # the transport's buffer is above the high-water mark
        self.reading = True
        self.connected_at = self.last_activity = time.monotonic()
        self.last_request: float | None = None

    @property
    def idle_since(self) -> float:
        """When this client last sent a request (or connected, if it never did)."""
        return self.last_request if self.last_request is not None else self.connected_at

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer_text(peer)
        self.host = host_key(str(peer[0])) if isinstance(peer, tuple) else ""
        if not self.server.allowed(self.host):
            self.server.refused_connections += 1
            log.warning(
                "modbus: refused connection from %s: not in the allow list (plugins.modbus.allow)", self.peer
            )
            # the only way to a write here: audited like every refused write attempt (rate-bounded)
            self.engine.bridge.refuse(
                "modbus:connection",
                None,
                Caller(plugin="modbus", address=self.peer),
                RefusalReason.NOT_ALLOWED,
                f"client address {self.host} is not in plugins.modbus.allow",
            )
            self.abort()
            return
        if not self.server.admit(self):
            self.abort()
            return
        transport.set_write_buffer_limits(
            high=self.server.output_buffer_bytes, low=self.server.output_buffer_bytes // 4
        )
        self.server.connections.add(self)
        log.debug("modbus: client %s connected", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.buf.clear()
        # a write in flight completes (it was decided), only its response has nowhere to go

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent responses (close() would wait for a client that never reads)."""
        self.server.connections.discard(self)
        if self.transport is not None:
            self.transport.abort()

    def buffered_output(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def buffered(self) -> int:
        """Bytes held for this client: unprocessed requests and unsent responses."""
        return len(self.buf) + self.buffered_output()

    # flow control: the transport calls these when its buffer crosses the high/low-water marks
    def pause_writing(self) -> None:
        self.output_paused_since = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self.output_paused_since = None
        self._update_reading()
        self._process()

    def _update_reading(self) -> None:
        """Read while nothing holds the answers back: no write being decided, responses taken."""
        t = self.transport
        if t is None or t.is_closing():
            return
        want = self.task is None and self.output_paused_since is None
        if want and not self.reading:
            t.resume_reading()
        elif not want and self.reading:
            t.pause_reading()
        self.reading = want

    def _malformed(self, why: str) -> None:
        self.server.closed_malformed += 1
        log.warning("modbus: closing %s: %s", self.peer, why)
        self.buf.clear()
        self.abort()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self not in self.server.connections:
            return
        self.last_activity = now = time.monotonic()
        if not self.buf and self.task is None and self.output_paused_since is None and len(data) >= 7:
            # the poller's case: exactly one whole read request arrived, nothing before it
            tid, pid, length, unit = _mbap_unpack(data)
            if pid == 0 and 2 <= length <= MAX_LENGTH and len(data) == 6 + length and data[7] not in WRITE_FUNCTIONS:
                self.partial_since = None
                self.last_request = now
                self._answer(tid, unit, data[7:])
                return
        self.buf += data
        self._process()
        if len(self.buf) > MAX_INPUT:
            self._malformed(f"more than {MAX_INPUT} bytes of requests without taking the responses")

    def _process(self) -> None:
        buf = self.buf
        while self.task is None and self.output_paused_since is None and self.transport is not None:
            if len(buf) < 7:
                self.partial_since = (self.partial_since or time.monotonic()) if buf else None
                return
            tid, pid, length, unit = _mbap_unpack(buf)
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
            self.last_request = time.monotonic()
            pdu = bytes(buf[7 : 6 + length])
            del buf[: 6 + length]
            self._answer(tid, unit, pdu)

    def _answer(self, tid: int, unit: int, pdu: bytes) -> None:
        """Answer one request PDU: at once for reads, after the write path decided for writes."""
        target = unit if self.engine.has_unit(unit) else None
        if target is None and unit in (0, 255) and self.server.alias is not None:
            target = self.server.alias
        if target is None:
            self._send(tid, unit, exception_pdu(pdu[0], ExcCodes.GATEWAY_PATH_UNAVIABLE))
            return
        response = self.engine.handle(target, pdu, self.peer)
        if isinstance(response, bytes):
            self._send(tid, unit, response)
            return
        # a write: stop reading until it is decided, so responses keep the request order
        self.task = asyncio.create_task(self._finish(tid, unit, response), name="modbus-write")
        self._update_reading()

    async def _finish(self, tid: int, unit: int, response: Coroutine[Any, Any, bytes]) -> None:
        try:
            pdu = await response
            self._send(tid, unit, pdu)
        finally:
            self.task = None
            if self.transport is not None:
                self._update_reading()
                self._process()

    def _send(self, tid: int, unit: int, pdu: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(pdu, unit, tid))
