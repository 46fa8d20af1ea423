"""The SocketCAN bus driver: a raw CAN socket drained in batches for reception, python-can for sending.

Reception does not go through python-can: a non-blocking ``CAN_RAW`` socket is registered with the event
loop, and when it is readable everything waiting is read with one ``recvmmsg`` per batch of up to 1024
frames (canbridge.core.can.receive; ``recvmsg`` per frame where libc has no recvmmsg) and parsed from the kernel's
16-byte ``struct can_frame`` / 72-byte ``struct canfd_frame`` into :data:`canbridge.RawFrame` tuples,
with the kernel's receive timestamp (SO_TIMESTAMPNS). That is several times cheaper per frame than
``can.Message`` objects and a ``Notifier`` (docs/socketcan.md, bench/), and it lets the bridge own the
error handling of the read path (python-can's asyncio reader does not handle ENETDOWN).

Transmission uses python-can's :class:`~can.interfaces.socketcan.SocketcanBus` (its socket receives
nothing: a zero-length filter) and the kernel's broadcast manager for cyclic frames.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from canbridge import (
    BusDriver,
    BusError,
    BusState,
    BusUnavailable,
    Frame,
    PeriodicHandle,
    RawFrame,
)
from canbridge.config import BusConfig
from canbridge.core.can import netlink, receive
from canbridge.core.can.linuxcan import (
    AF_CAN,
    CAN_EFF_FLAG,
    CAN_EFF_MASK,
    CAN_ERR_MASK,
    CAN_RAW,
    CAN_RAW_ERR_FILTER,
    CAN_RAW_FD_FRAMES,
    CAN_RAW_FILTER,
    CAN_RAW_FILTER_MAX,
    CAN_RTR_FLAG,
    CAN_SFF_MASK,
    CANFD_BRS,
    SO_MEMINFO,
    SO_RCVBUFFORCE,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    SOL_CAN_RAW,
)
from canbridge.core.can.pycan import frame_to_message
from canbridge.core.can.receive import DEFAULT_DRAIN, DrainStats, MmsgReceiver, SocketReader

log = logging.getLogger(__name__)

# --- linux/can.h, linux/can/raw.h, asm-generic/socket.h -----------------------------------------
_SK_MEMINFO_DROPS = 8



_FILTER = struct.Struct("=II")
_U32 = struct.Struct("=I")
_CAN_FRAME = struct.Struct("=IBBxx8s")  # struct can_frame: can_id, len, __pad, __res0, len8_dlc=0, data[8]
_CANFD_FRAME = struct.Struct("=IBBxx64s")  # struct canfd_frame: can_id, len, flags, __res0, __res1, data[64]

# Errors on the read path that end reception: the interface went down, was deleted, or the socket closed.
FATAL_ERRNOS = frozenset({errno.ENETDOWN, errno.ENODEV, errno.EBADF, errno.ENXIO, errno.ENOTCONN})

_DRIVER_OPTIONS = frozenset({"max_drain", "recvmmsg"})  # options for this driver, not for python-can






def pack_filters(ids: Sequence[tuple[int, bool]] | None) -> bytes:
    """CAN_RAW_FILTER bytes: None receives everything, an empty list nothing, else exactly these ids."""
    if ids is None:
        return _FILTER.pack(0, 0)
    out = bytearray()
    for can_id, extended in ids:
        if extended:
            out += _FILTER.pack((can_id & CAN_EFF_MASK) | CAN_EFF_FLAG, CAN_EFF_MASK | CAN_EFF_FLAG)
        else:
            # EFF in the mask: a standard id never matches the extended id of the same number
            out += _FILTER.pack(can_id & CAN_SFF_MASK, CAN_SFF_MASK | CAN_EFF_FLAG)
    return bytes(out)


def _errno_of(e: BaseException) -> int | None:
    code = getattr(e, "error_code", None)  # can.CanOperationError
    if isinstance(code, int):
        return code
    code = getattr(e, "errno", None)
    if isinstance(code, int):
        return code
    cause = e.__cause__
    return _errno_of(cause) if cause is not None and cause is not e else None


class _BcmHandle(PeriodicHandle):
    """A cyclic transmission in the kernel's broadcast manager (python-can's CyclicSendTask)."""

    def __init__(self, driver: SocketcanDriver, task: Any, frame: Frame, period_s: float) -> None:
        self._driver = driver
        self._task = task
        self.frame = frame
        self.period_s = period_s
        self.stopped = False

    def modify(self, frame: Frame) -> None:
        if self.stopped:
            raise BusError(f"{self._driver.channel}: periodic transmission of 0x{frame.can_id:X} is stopped")
        if frame.can_id != self.frame.can_id or frame.extended != self.frame.extended:
            raise BusError("a periodic transmission keeps its CAN id; stop it and start a new one")
        try:
            # One TX_SETUP without SETTIMER: the kernel swaps the data between two periods.
            self._task.modify_data(frame_to_message(frame, self._driver.channel))
        except Exception as e:
            raise BusError(f"{self._driver.channel}: cannot modify periodic frame: {e}") from e
        self.frame = frame

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        try:
            self._task.stop()
        except Exception as e:  # the BCM socket is gone with the interface: nothing is sent anyway
            log.debug("%s: stopping periodic 0x%X: %s", self._driver.channel, self.frame.can_id, e)


class SocketcanDriver(BusDriver):
    """A Linux SocketCAN interface (can0, vcan0, ...)."""

    def __init__(
        self, config: BusConfig, loop: asyncio.AbstractEventLoop | None = None, sock: socket.socket | None = None
    ) -> None:
        self.config = config
        # A socket opened elsewhere (canbridge.socketcan_on_socket): received from and sent on as is,
        # no interface, netlink or broadcast manager behind it.
        self._given = sock
        self.channel = config.channel
        self._loop = loop
        self._sock: socket.socket | None = None
        self._bus: Any = None  # can.interfaces.socketcan.SocketcanBus
        self._reading = False
        self._filters: Sequence[tuple[int, bool]] | None = None
        self._on_frames: Callable[[list[RawFrame]], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self._periodic: list[_BcmHandle] = []
        self.stats = DrainStats()
        self._overflow_base = 0  # drops counted by sockets closed before (SO_RXQ_OVFL is per socket)
        self.rcvbuf: int | None = None
        self._kind: str | None = None  # the link's kind (can, vcan, ...) once netlink told it
        self.max_drain = int(config.options.get("max_drain", DEFAULT_DRAIN))
        # recvmmsg: one system call per batch of frames (options.recvmmsg: false forces recvmsg per frame)
        self._use_mmsg = bool(config.options.get("recvmmsg", True)) and receive.AVAILABLE
        self._receiver: MmsgReceiver | None = None

    # --- opening ---------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def _unavailable(self, what: str) -> BusUnavailable:
        return BusUnavailable(f"SocketCAN interface {self.channel} {what}", netlink.missing_hint(self.channel))

    def _check_link(self) -> None:
        link = netlink.sysfs_link(self.channel)
        if not link["exists"]:
            raise self._unavailable("does not exist")
        if link.get("up") is False:
            raise BusUnavailable(f"SocketCAN interface {self.channel} is down", f"sudo ip link set {self.channel} up")

    def _open_raw(self) -> socket.socket:
        try:
            sock = socket.socket(AF_CAN, socket.SOCK_RAW, CAN_RAW)
        except OSError as e:
            if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                raise BusUnavailable(
                    f"this kernel has no CAN support (socket(AF_CAN) failed: {e.strerror}); cannot open {self.channel}",
                    "load the can and can-raw modules (sudo modprobe can-raw), or run the real-kernel "
                    "tests in a VM with `make test-socketcan`",
                ) from e
            if e.errno in (errno.EPERM, errno.EACCES):
                raise BusError(f"{self.channel}: opening a CAN socket needs CAP_NET_RAW") from e
            raise BusError(f"{self.channel}: cannot create a CAN socket: {e}") from e
        try:
            self._configure_raw(sock)
            sock.bind((self.channel,))
        except OSError as e:
            sock.close()
            if e.errno == errno.ENODEV:
                raise self._unavailable("does not exist") from e
            if e.errno == errno.ENETDOWN:
                raise BusUnavailable(
                    f"SocketCAN interface {self.channel} is down", f"sudo ip link set {self.channel} up"
                ) from e
            raise BusError(f"{self.channel}: cannot bind the CAN socket: {e}") from e
        sock.setblocking(False)
        return sock

    def _configure_raw(self, sock: socket.socket) -> None:
        size = self.config.receive_buffer
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)  # root: beyond net.core.rmem_max
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        self.rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if self.rcvbuf < size:  # the kernel doubles what it is given; less than asked means capped
            log.warning(
                "%s: receive buffer is %d bytes, %d asked (raise net.core.rmem_max or grant CAP_NET_ADMIN)",
                self.channel,
                self.rcvbuf,
                size,
            )
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        if sock.family != AF_CAN:
            return
        sock.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, CAN_ERR_MASK)
        if self.config.fd:
            sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1)
        self._apply_filters(sock)

    def _open_tx(self) -> Any:
        from can.interfaces.socketcan import SocketcanBus

        options = {k: v for k, v in self.config.options.items() if k not in _DRIVER_OPTIONS}
        try:
            bus = SocketcanBus(
                channel=self.channel,
                fd=self.config.fd,
                receive_own_messages=False,
                ignore_rx_error_frames=True,
                **options,
            )
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise self._unavailable("does not exist") from e
            raise BusError(f"{self.channel}: cannot open the transmit socket: {e}") from e
        # The transmit socket receives nothing: a zero-length filter list (reception is ours).
        bus.socket.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, b"")
        return bus

    async def open(self) -> None:
        if self._sock is not None:
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        if self._given is not None:
            self._open_given(self._given)
            return
        if self.config.netlink is not None:
            netlink.configure_interface(self.channel, self.config.netlink)
        sock = self._open_raw()  # first: says clearly when the kernel has no CAN at all
        try:
            self._check_link()
            bus = self._open_tx()
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._bus = bus
        if self._use_mmsg and self._receiver is None:
            self._receiver = MmsgReceiver(max(1, min(self.max_drain, DEFAULT_DRAIN)))
        log.debug("%s: open (receive buffer %s bytes, %s)", self.channel, self.rcvbuf, self.receive_path)

    def _open_given(self, sock: socket.socket) -> None:
        if sock.fileno() < 0:  # close() closed it: a reopen needs a new socket
            raise BusUnavailable(f"{self.channel}: the given socket is closed", "open the bus on a new socket")
        if sock.type != socket.SOCK_DGRAM and sock.family != AF_CAN:
            raise BusError(f"{self.channel}: the given socket must carry datagrams (CAN_RAW or SOCK_DGRAM)")
        try:
            self._configure_raw(sock)
        except OSError as e:
            raise BusError(f"{self.channel}: cannot configure the given socket: {e}") from e
        sock.setblocking(False)
        self._sock = sock
        if self._use_mmsg and self._receiver is None:
            self._receiver = MmsgReceiver(max(1, min(self.max_drain, DEFAULT_DRAIN)))
        log.debug("%s: open on a given socket (receive buffer %s bytes, %s)", self.channel, self.rcvbuf,
                  self.receive_path)

    @property
    def _on_given_socket(self) -> bool:
        return self._bus is None and self._sock is not None

    def _send_raw(self, sock: socket.socket, frame: Frame) -> None:
        """The frame as kernel bytes on the receiving socket itself (a given socket has no python-can bus)."""
        can_id = frame.can_id | (CAN_EFF_FLAG if frame.extended else 0) | (CAN_RTR_FLAG if frame.rtr else 0)
        try:
            if frame.fd:
                sock.send(_CANFD_FRAME.pack(can_id, len(frame.data), CANFD_BRS if frame.brs else 0, frame.data))
            else:
                sock.send(_CAN_FRAME.pack(can_id, frame.length, 0, frame.data))
        except BlockingIOError as e:
            raise BusError(f"{self.channel}: transmit queue full: the peer is not reading") from e
        except OSError as e:
            if e.errno in FATAL_ERRNOS or e.errno in (errno.ECONNREFUSED, errno.EPIPE):
                raise BusUnavailable(f"{self.channel}: cannot send: {e.strerror or e}", None) from e
            raise BusError(f"{self.channel}: cannot send 0x{frame.can_id:X}: {e}") from e

    @property
    def j1939_channel(self) -> str | None:
        """The interface a CAN_J1939 socket can be bound to (None on a given socket: no interface)."""
        return None if self._given is not None else self.channel

    @property
    def receive_path(self) -> str:
        """``recvmmsg`` (one system call per batch) or ``recvmsg`` (one per frame)."""
        return "recvmmsg" if self._receiver is not None else "recvmsg"

    # --- reception ----------------------------------------------------------------------------------
    def start_reading(
        self, on_frames: Callable[[list[RawFrame]], None], on_error: Callable[[BaseException], None]
    ) -> None:
        if self._sock is None:
            raise BusError(f"{self.channel}: start_reading before open")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._on_frames = on_frames
        self._on_error = on_error
        self._loop.add_reader(self._sock.fileno(), self._reader())
        self._reading = True

    def _reader(self) -> SocketReader:
        """The readable handler: batches go from the receive module straight to ``on_frames``."""
        assert self._sock is not None and self._on_frames is not None
        return SocketReader(self._sock, self._receiver, self.max_drain, self.stats, self._on_frames,
                            self._read_error)

    def _stop_reading(self) -> None:
        if self._reading and self._sock is not None and self._loop is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())
            except (ValueError, OSError):  # fd already closed
                pass
        self._reading = False

    def _read_error(self, err: OSError) -> None:
        if self._sock is None:  # closed meanwhile: nothing to report
            return
        if err.errno in FATAL_ERRNOS:
            self._stop_reading()  # no more callbacks: the core closes and reopens us
            exc = BusUnavailable(f"SocketCAN interface {self.channel}: {err.strerror or err}", self._down_hint(err))
            exc.__cause__ = err
            if self._on_error is not None:
                self._on_error(exc)
        else:
            log.warning("%s: receive error (ignored): %s", self.channel, err)

    def _down_hint(self, err: OSError) -> str:
        if err.errno == errno.ENETDOWN:
            return f"sudo ip link set {self.channel} up"
        return netlink.missing_hint(self.channel)

    # --- filters ------------------------------------------------------------------------------------
    def set_filters(self, ids: Sequence[tuple[int, bool]] | None) -> None:
        if ids is not None and len(ids) > CAN_RAW_FILTER_MAX:
            log.info(
                "%s: %d mapped ids is more than the kernel's %d filters; receiving all ids",
                self.channel,
                len(ids),
                CAN_RAW_FILTER_MAX,
            )
            ids = None
        self._filters = None if ids is None else list(ids)
        if self._sock is not None:
            self._apply_filters(self._sock)

    def _apply_filters(self, sock: socket.socket) -> None:
        if sock.family != AF_CAN:  # a given non-CAN socket (a socketpair stand-in) has no kernel filters
            return
        sock.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, pack_filters(self._filters))

    # --- transmission ------------------------------------------------------------------------------
    def send(self, frame: Frame) -> None:
        bus = self._bus
        if bus is None and self._sock is not None:
            self._send_raw(self._sock, frame)
            return
        if bus is None:
            raise BusUnavailable(f"SocketCAN interface {self.channel} is not open", None)
        msg = frame_to_message(frame, self.channel)
        for attempt in (1, 2):
            try:
                bus.send(msg)
                return
            except Exception as e:
                code = _errno_of(e)
                # After down/up, a socket that never read its pending ENETDOWN reports it once on the
                # next send even though the interface is up again: retry once.
                if attempt == 1 and code == errno.ENETDOWN and netlink.sysfs_link(self.channel).get("up"):
                    continue
                if code in (errno.ENETDOWN, errno.ENODEV, errno.ENXIO):
                    raise BusUnavailable(
                        f"SocketCAN interface {self.channel}: cannot send: {os.strerror(code)}",
                        self._down_hint(OSError(code, os.strerror(code))),
                    ) from e
                if code == errno.ENOBUFS:
                    raise BusError(
                        f"{self.channel}: transmit queue full (ENOBUFS): the bus is saturated, "
                        "bus-off, or no other node acknowledges"
                    ) from e
                raise BusError(f"{self.channel}: cannot send 0x{frame.can_id:X}: {e}") from e

    def send_periodic(self, frame: Frame, period_s: float) -> PeriodicHandle:
        bus = self._bus
        if bus is None and self._sock is not None:
            raise BusError(f"{self.channel}: cyclic frames need the kernel's broadcast manager, which a given "
                           "socket does not have")
        if bus is None:
            raise BusUnavailable(f"SocketCAN interface {self.channel} is not open", None)
        if period_s <= 0:
            raise BusError(f"period must be positive, got {period_s}")
        try:
            task = bus.send_periodic(frame_to_message(frame, self.channel), period_s, store_task=True)
        except Exception as e:
            raise BusError(f"{self.channel}: cannot start periodic 0x{frame.can_id:X}: {e}") from e
        handle = _BcmHandle(self, task, frame, period_s)
        self._periodic.append(handle)
        return handle

    # --- closing ---------------------------------------------------------------------------------------
    async def close(self) -> None:
        self._stop_reading()
        for handle in self._periodic:
            handle.stop()
        self._periodic.clear()
        sock, self._sock = self._sock, None
        bus, self._bus = self._bus, None
        if sock is not None:
            self._overflow_base += self._socket_drops(sock)
            self.stats.overflow_drops = 0
            sock.close()
        if bus is not None:
            try:
                bus.shutdown()  # closes the BCM socket too: the kernel deletes its tasks
            except Exception as e:
                log.debug("%s: shutdown: %s", self.channel, e)

    # --- diagnostics -------------------------------------------------------------------------------
    def _socket_drops(self, sock: socket.socket | None) -> int:
        # SO_RXQ_OVFL tells the count with the next frame received; SO_MEMINFO tells it now.
        drops = self.stats.overflow_drops
        if sock is not None:
            try:
                info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1))
            except OSError:
                return drops
            if len(info) >= 4 * (_SK_MEMINFO_DROPS + 1):
                drops = max(drops, _U32.unpack_from(info, 4 * _SK_MEMINFO_DROPS)[0])
        return drops

    @property
    def overflow_drops(self) -> int:
        """Frames the kernel dropped because this driver's receive queue was full (all sockets so far)."""
        return self._overflow_base + self._socket_drops(self._sock)

    def kernel_status(self) -> dict[str, Any]:
        if self._on_given_socket:  # no interface behind it: only what the socket itself tells
            drops = self.overflow_drops
            return {"channel": self.channel, "receive_buffer": self.rcvbuf, "receive_path": self.receive_path,
                    "overflow_drops": drops, "dropped_frames": drops}
        link = netlink.sysfs_link(self.channel)
        out: dict[str, Any] = {
            "channel": self.channel,
            "exists": link["exists"],
            "link": link.get("operstate"),
            "up": link.get("up"),
            "mtu": link.get("mtu"),
            "receive_buffer": self.rcvbuf,
            "receive_path": self.receive_path,
            "overflow_drops": self.overflow_drops,
            "dropped_frames": self.overflow_drops,  # BusStatus.dropped_frames: full receive queue
        }
        stats = link.get("statistics") or {}
        out.update(stats)
        if link["exists"] and self._kind in (None, "can"):
            # vcan & co. have no controller: after the first look, netlink has nothing more to say
            can = netlink.can_link(self.channel)
            self._kind = can.get("kind")
        else:
            can = {"kind": self._kind}
        if link["exists"]:
            out["kind"] = can.get("kind")
            for key in (
                "can_state",
                "tx_error_counter",
                "rx_error_counter",
                "restart_ms",
                "bitrate",
                "sample_point",
                "data_bitrate",
                "fd",
            ):
                if key in can:
                    out[key] = can[key]
            state = _BUS_STATES.get(can.get("can_state", ""))
            if state is not None:
                out["bus_state"] = state
            ctrl = can.get("controller_stats")
            if ctrl:
                out["bus_off_count"] = ctrl["bus_off"]
                out["restarts"] = ctrl["restarts"]
                out["bus_errors"] = ctrl["bus_error"]
                out["error_warning_count"] = ctrl["error_warning"]
                out["error_passive_count"] = ctrl["error_passive"]
                out["arbitration_lost"] = ctrl["arbitration_lost"]
        return out


_BUS_STATES = {
    "error-active": BusState.ACTIVE,
    "error-warning": BusState.WARNING,
    "error-passive": BusState.PASSIVE,
    "bus-off": BusState.BUS_OFF,
    "stopped": BusState.DOWN,
}


def can_available() -> str | None:
    """None when this kernel has CAN raw sockets; otherwise why not."""
    try:
        s = socket.socket(AF_CAN, socket.SOCK_RAW, CAN_RAW)
    except OSError as e:
        return f"socket(AF_CAN, SOCK_RAW, CAN_RAW) failed: {e.strerror}"
    s.close()
    return None
