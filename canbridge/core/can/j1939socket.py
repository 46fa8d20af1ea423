"""The kernel's J1939 stack as the transport protocol of a SocketCAN bus: a promiscuous ``CAN_J1939``
socket (SOCK_DGRAM) bound to the interface with no NAME, no address and no PGN, so it sees the
traffic of every source.

What the kernel delivers on such a socket (measured in the VM tier, Linux 6.1,
``tests/socketcan/test_j1939_kernel.py``):

* every single-frame message (8 bytes or fewer) again: the raw socket has them already, they are
  dropped here;
* a **reassembled** message (more than 8 bytes) for every transfer the kernel reassembles: BAM
  broadcasts always, and RTS/CTS (and ETP) transfers to or from an address a socket on this host
  uses; the TP.CM / TP.DT frames of those never reach a J1939 socket;
* the TP.CM / TP.DT frames of RTS/CTS transfers between two other ECUs, as plain 8-byte messages:
  the kernel leaves those to us, and they go to the user-space reassembler (which follows both sides);
* on the error queue (SO_J1939_ERRQUEUE with SOF_TIMESTAMPING_RX_SOFTWARE), an ``RX ABORT`` when a
  transfer it was reassembling broke (timeout, abort, bad sequence): counted, never decoded.

So on SocketCAN the raw socket keeps the single frames and ignores TP frames, and this socket gives
the multi-packet messages and the TP frames of transfers the kernel does not reassemble: nothing is
decoded twice, nothing is lost. The socket is filtered (SO_J1939_FILTER) to the PGNs that can come
as multi-packet messages on this bus (mapped messages longer than 8 bytes, DM1, TP.CM, TP.DT) so it
does not read every frame of the bus a second time.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from canbridge.core.can.linuxcan import AF_CAN, SO_TIMESTAMPNS
from canbridge.core.mapping.j1939 import GLOBAL_ADDRESS, PGN_TP_CM, PGN_TP_DT

log = logging.getLogger(__name__)

# include/uapi/linux/can/j1939.h, linux/net_tstamp.h, asm-generic/socket.h
CAN_J1939 = getattr(socket, "CAN_J1939", 7)
SOL_CAN_J1939 = 100 + CAN_J1939  # SOL_CAN_BASE + CAN_J1939
SO_J1939_FILTER = 1
SO_J1939_PROMISC = 2
SO_J1939_ERRQUEUE = 4
SCM_J1939_DEST_ADDR = 1
SCM_J1939_DEST_NAME = 2
SCM_J1939_PRIO = 3
SCM_J1939_ERRQUEUE = 4
J1939_NO_NAME = 0
J1939_NO_ADDR = 0xFF
J1939_NO_PGN = 0x40000
J1939_FILTER_MAX = 512
J1939_EE_INFO_RX_ABORT = 4
SO_TIMESTAMPING = 37
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
MSG_ERRQUEUE = 0x2000

MAX_MESSAGE = 1785  # the largest TP message; longer ones (ETP) arrive truncated and are counted
_RECV_SIZE = MAX_MESSAGE + 1  # one byte more: a longer message shows as truncated
_ANC_SIZE = 256  # timestamp, destination address and NAME, priority
MAX_READ = 256  # messages read per readable event: bounds the time one read keeps the loop busy

_FILTER = struct.Struct("=QQIIBB6x")  # struct j1939_filter: name, name_mask, pgn, pgn_mask, addr, addr_mask
_TIMESPEC = struct.Struct("=qq")
_U64 = struct.Struct("=Q")
_EXT_ERR = struct.Struct("=IBBBxII")  # struct sock_extended_err: errno, origin, type, code, pad, info, data

# Why the kernel broke a transfer (sock_extended_err.ee_errno of RX ABORT) -> the reassembler's reasons
_REASONS = {errno.ETIME: "timeout", errno.EBADMSG: "sequence", errno.EILSEQ: "sequence",
            errno.EPROTO: "sequence", errno.EMSGSIZE: "size", errno.ENOMEM: "limit",
            errno.ECONNABORTED: "abort", errno.EALREADY: "abort", errno.EBUSY: "abort",
            errno.ENOTCONN: "abort", errno.ECONNRESET: "abort", errno.EHOSTUNREACH: "abort"}


@dataclass(frozen=True, slots=True)
class J1939Message:
    """One message from the kernel's J1939 socket."""

    pgn: int
    source: int
    destination: int  # GLOBAL_ADDRESS for broadcast
    priority: int
    data: bytes
    timestamp_ns: int
    truncated: bool = False


def message_from(data: bytes, ancdata: Iterable[tuple[int, int, bytes]], addr: object, flags: int = 0,
                 now_ns: int = 0) -> J1939Message:
    """A message from what ``recvmsg`` returned: the source address and PGN are in the socket address
    (Python gives it as ``(interface, name, pgn, address)``), destination and priority in SOL_CAN_J1939
    control messages, the kernel's receive time in SO_TIMESTAMPNS."""
    if not (isinstance(addr, tuple) and len(addr) == 4):
        raise ValueError(f"not a J1939 socket address: {addr!r}")
    _ifname, _name, pgn, source = addr
    destination, priority, ts = GLOBAL_ADDRESS, 6, 0
    for level, kind, cdata in ancdata:
        if level == SOL_CAN_J1939:
            if kind == SCM_J1939_DEST_ADDR and cdata:
                destination = cdata[0]
            elif kind == SCM_J1939_PRIO and cdata:
                priority = cdata[0]
        elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(cdata)
            ts = sec * 1_000_000_000 + nsec
    truncated = bool(flags & socket.MSG_TRUNC) or len(data) > MAX_MESSAGE
    return J1939Message(int(pgn), int(source), destination, priority, bytes(data[:MAX_MESSAGE]),
                        ts or now_ns or time.time_ns(), truncated)


def abort_reason(ancdata: Iterable[tuple[int, int, bytes]]) -> str | None:
    """The reason of an RX ABORT on the error queue (None: another notification, such as RX RTS)."""
    for level, kind, cdata in ancdata:
        if level == SOL_CAN_J1939 and kind == SCM_J1939_ERRQUEUE and len(cdata) >= _EXT_ERR.size:
            code, _origin, _type, _code, info, _data = _EXT_ERR.unpack_from(cdata)
            if info != J1939_EE_INFO_RX_ABORT:
                return None
            if code >= 1 << 31:  # the kernel passes session->err, which is negative in some versions
                code = (1 << 32) - code
            return _REASONS.get(code, f"kernel_{errno.errorcode.get(code, code)}")
    return None


def pack_filters(pgns: Sequence[int] | None) -> bytes | None:
    """SO_J1939_FILTER bytes receiving exactly these PGNs from any source; None: no filter (all)."""
    if pgns is None or len(pgns) > J1939_FILTER_MAX:
        return None
    return b"".join(_FILTER.pack(0, 0, pgn, 0x3FFFF, 0, 0) for pgn in sorted(set(pgns)))


def transport_pgns(long_pgns: Iterable[int], extra: Iterable[int] = ()) -> list[int]:
    """The PGNs the socket must hear: those that come multi-packet, and the TP frames it passes on."""
    return sorted({*long_pgns, *extra, PGN_TP_CM, PGN_TP_DT})


class J1939Socket:
    """A promiscuous CAN_J1939 socket on one interface, read from the event loop."""

    def __init__(self, channel: str, pgns: Sequence[int] | None,
                 on_messages: Callable[[list[J1939Message]], None], on_broken: Callable[[str], None],
                 sock: socket.socket | None = None) -> None:
        self.channel = channel
        self._on_messages = on_messages
        self._on_broken = on_broken
        self._loop: asyncio.AbstractEventLoop | None = None
        self.messages = 0  # messages read (all kinds, before dropping single frames)
        self.sock = sock if sock is not None else self._open(channel, pgns)

    @staticmethod
    def _open(channel: str, pgns: Sequence[int] | None) -> socket.socket:
        sock = socket.socket(AF_CAN, socket.SOCK_DGRAM, CAN_J1939)  # OSError: no can-j1939 module
        try:
            sock.setsockopt(SOL_CAN_J1939, SO_J1939_PROMISC, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            filters = pack_filters(pgns)
            if filters is not None:
                sock.setsockopt(SOL_CAN_J1939, SO_J1939_FILTER, filters)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            # RX ABORT notifications of broken transfers need the error queue and RX timestamping
            sock.setsockopt(SOL_CAN_J1939, SO_J1939_ERRQUEUE, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_TIMESTAMPING_RX_SOFTWARE)
            sock.bind((channel, J1939_NO_NAME, J1939_NO_PGN, J1939_NO_ADDR))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self.read)

    def read(self) -> None:
        """Everything waiting (bounded): error-queue notices first, then messages."""
        sock = self.sock
        for _ in range(MAX_READ):
            try:
                _data, anc, _flags, _addr = sock.recvmsg(64, _ANC_SIZE, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                log.debug("%s: J1939 error queue: %s", self.channel, e)
                break
            reason = abort_reason(anc)
            if reason is not None:
                self._on_broken(reason)
        out: list[J1939Message] = []
        now_ns = 0
        for _ in range(MAX_READ):
            try:
                data, anc, flags, addr = sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # the interface went away: the raw socket's reader reports it
                log.debug("%s: J1939 socket: %s", self.channel, e)
                self.stop()
                break
            self.messages += 1
            if len(data) <= 8 and ((addr[2] if isinstance(addr, tuple) and len(addr) == 4 else None)
                                   not in (PGN_TP_CM, PGN_TP_DT)):
                continue  # a single frame: the raw socket has it
            if not now_ns:
                now_ns = time.time_ns()
            out.append(message_from(data, anc, addr, flags, now_ns))
        if out:
            self._on_messages(out)

    def stop(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
            self._loop = None

    def close(self) -> None:
        self.stop()
        self.sock.close()


def open_j1939(channel: str, pgns: Sequence[int] | None, on_messages: Callable[[list[J1939Message]], None],
               on_broken: Callable[[str], None]) -> tuple[J1939Socket | None, str | None]:
    """The kernel's J1939 socket on ``channel``, or None and why not (the caller falls back to the
    user-space reassembler)."""
    try:
        return J1939Socket(channel, pgns, on_messages, on_broken), None
    except OSError as e:
        if e.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT, errno.ESOCKTNOSUPPORT):
            return None, f"the kernel has no CAN_J1939 sockets ({e.strerror}; sudo modprobe can-j1939)"
        return None, f"cannot open a CAN_J1939 socket on {channel}: {e.strerror or e}"
