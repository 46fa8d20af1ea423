"""Batch reception of CAN frames with ``recvmmsg(2)``: one system call for many frames.

Python's :mod:`socket` has no ``recvmmsg``; this calls libc's through :mod:`ctypes`. Everything the kernel
writes lives in one preallocated ``bytearray`` (no allocation per call):

* ``struct mmsghdr[N]`` (64 bytes each on 64-bit Linux), each with one ``iovec`` and its own control buffer;
* ``struct iovec[N]``;
* per message a 136-byte *slot*: 64 bytes of control buffer (room for SO_TIMESTAMPNS + SO_RXQ_OVFL: 32 + 24)
  followed by 72 bytes for the frame (a ``struct canfd_frame``; a classic ``struct can_frame`` uses 16).

The control buffer and the frame sit side by side so that one ``struct`` unpack per message reads the
timestamp, the drop counter and the frame header; ``struct.iter_unpack`` over the header and slot
regions walks the batch without indexing arithmetic in Python. After each call the used headers are restored
from a template (one memcpy): the kernel overwrites their ``msg_controllen``. Control buffers are not
reset: only the first ``msg_controllen`` bytes of each are read, and those the kernel has just written.

This module is the one place that turns kernel bytes into :data:`RawFrame` tuples: the ``recvmmsg``
receiver, the ``recvmsg`` loop for where libc has no ``recvmmsg``, and :func:`parse_can_frame` (the
reference the recvmsg loop calls and the recvmmsg loop inlines for speed; ``tests/core/can/test_socketcan_parse.py``
keeps them equal).
Semantics of the two loops match (same tuples, same :class:`DrainStats`), with one difference in *when*
an error is seen: ``recvmmsg`` stops at the
first empty queue or error; an error that came after some frames is kept by the kernel (``sk_err``) and
returned by the next call, and a socket with a pending error polls readable, so the event loop calls
the driver again at once. A short batch therefore ends a drain without the extra ``EAGAIN`` call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from canbridge._model import RawFrame
from canbridge.core.can.linuxcan import BRS as _BRS
from canbridge.core.can.linuxcan import (
    CAN_EFF_FLAG,
    CAN_EFF_MASK,
    CAN_ERR_FLAG,
    CAN_ERR_MASK,
    CAN_MTU,
    CAN_RTR_FLAG,
    CAN_SFF_MASK,
    CANFD_BRS,
    CANFD_ESI,
    CANFD_MTU,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
)
from canbridge.core.can.linuxcan import ERR as _ERR
from canbridge.core.can.linuxcan import ESI as _ESI
from canbridge.core.can.linuxcan import EXT as _EXT
from canbridge.core.can.linuxcan import FD as _FD
from canbridge.core.can.linuxcan import RTR as _RTR

MSG_DONTWAIT = 0x40

# (flags, id mask) by the top three bits of a raw can_id (EFF, RTR, ERR): an error frame's id is its error
# class bits, else an extended or a standard id. One lookup in the hot path instead of a chain of tests.
_ID_KINDS: tuple[tuple[int, int], ...] = tuple(
    (_ERR, CAN_ERR_MASK) if (k << 29) & CAN_ERR_FLAG else (_EXT, CAN_EFF_MASK) if (k << 29) & CAN_EFF_FLAG
    else (0, CAN_SFF_MASK)
    for k in range(8)
)

# The layouts below are those of 64-bit Linux (LP64): pointers and size_t are 8 bytes.
_HDR_SIZE = 64  # struct mmsghdr: struct msghdr (56) + unsigned int msg_len + padding
_IOV_SIZE = 16  # struct iovec
_CTRL_SIZE = 64  # >= CMSG_SPACE(sizeof(struct timespec)) + CMSG_SPACE(sizeof(u32)) = 32 + 24
_FRAME_SIZE = 72  # CANFD_MTU
_SLOT_SIZE = _CTRL_SIZE + _FRAME_SIZE

# struct msghdr: msg_name(8) msg_namelen(4)+pad(4) msg_iov(8) msg_iovlen(8) msg_control(8)
# msg_controllen(8) msg_flags(4)+pad(4); then mmsghdr.msg_len(4)+pad(4)
_MSGHDR = struct.Struct("=QI4xQQQQi4xI4x")
# What is read back per message: msg_controllen and msg_len.
_HDR_READ = struct.Struct("=40xQ8xI4x")
# A slot: cmsg 1 (cmsg_len, level, type, timespec) | cmsg 2 (cmsg_len, level, type, u32) | pad |
# can_frame header + the 8 data bytes of a classic frame | the rest of a canfd_frame.
_SLOT_READ = struct.Struct("=8xiiqq8xiiI12xIBB2x8s56x")
_CMSG_HDR = struct.Struct("=Qii")  # struct cmsghdr: size_t cmsg_len; int cmsg_level; int cmsg_type
_TIMESPEC = struct.Struct("=qq")
_U32 = struct.Struct("=I")
_FRAME_OFF = _CTRL_SIZE  # the frame's offset in its slot
_TS_CMSG_SPACE = 32  # CMSG_SPACE(16): a control buffer holding exactly one SO_TIMESTAMPNS
_TS_OVFL_SPACE = 56  # ... followed by one SO_RXQ_OVFL

SOL_SOCKET = socket.SOL_SOCKET




def _load_recvmmsg() -> tuple[Callable[..., int] | None, str | None]:
    """libc's ``recvmmsg``, or None and why it is not used."""
    if not sys.platform.startswith("linux"):
        return None, f"recvmmsg is Linux only (platform {sys.platform})"
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return None, "recvmmsg layouts are written for 64-bit Linux"
    if os.environ.get("CANBRIDGE_RECVMMSG", "1") == "0":
        return None, "disabled by CANBRIDGE_RECVMMSG=0"
    problem = layout_problem()
    if problem is not None:
        return None, f"unexpected C struct layout: {problem}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        name = ctypes.util.find_library("c")
        if name is None:
            return None, "libc not found"
        try:
            fn = ctypes.CDLL(name, use_errno=True).recvmmsg
        except (OSError, AttributeError):
            return None, "libc has no recvmmsg"
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn, None


class MmsgReceiver:
    """Preallocated buffers for ``recvmmsg`` of up to ``capacity`` CAN frames per call.

    Not thread-safe: one receiver per reading thread (the frames it returns are copies).
    """

    def __init__(self, capacity: int = 1024) -> None:
        if _recvmmsg is None:
            raise OSError(errno.ENOSYS, f"recvmmsg unavailable: {UNAVAILABLE}")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._recvmmsg = _recvmmsg
        hdr_bytes = capacity * _HDR_SIZE
        iov_bytes = capacity * _IOV_SIZE
        self._iov_off = hdr_bytes
        self._slot_off = hdr_bytes + iov_bytes
        total = self._slot_off + capacity * _SLOT_SIZE
        self._buf = bytearray(total)
        # The kernel writes through these addresses: the bytearray must never be resized.
        self._cbuf = (ctypes.c_char * total).from_buffer(self._buf)
        base = ctypes.addressof(self._cbuf)
        self._base = base
        for i in range(capacity):
            slot = base + self._slot_off + i * _SLOT_SIZE
            iov = base + self._iov_off + i * _IOV_SIZE
            struct.pack_into("=QQ", self._buf, self._iov_off + i * _IOV_SIZE, slot + _FRAME_OFF, _FRAME_SIZE)
            _MSGHDR.pack_into(self._buf, i * _HDR_SIZE, 0, 0, iov, 1, slot, _CTRL_SIZE, 0, 0)
        self._template = bytes(self._buf)
        self._template_mv = memoryview(self._template)
        self._mv = memoryview(self._buf)
        self.calls = 0  # recvmmsg system calls made (for tests and diagnostics)

    def _restore(self, n: int) -> None:
        # The kernel rewrote msg_controllen (and msg_len, msg_flags) of the used headers: back to the
        # template's values (one memcpy). Control buffers need no reset: only the first msg_controllen
        # bytes of each are ever read, and the kernel has just written those.
        end = n * _HDR_SIZE
        self._buf[:end] = self._template_mv[:end]

    def receive(self, fd: int, vlen: int) -> int:
        """One ``recvmmsg`` of up to ``vlen`` messages; the count, or -errno."""
        n: int = self._recvmmsg(fd, self._base, vlen, MSG_DONTWAIT, None)
        self.calls += 1
        if n < 0:
            return -ctypes.get_errno()
        return n

    def drain(
        self, sock: socket.socket | int, max_frames: int, stats: DrainStats | None
    ) -> tuple[list[RawFrame], OSError | None]:
        """Read up to ``max_frames`` frames, as :func:`canbridge.core.can.socketcan._drain` does."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        out: list[RawFrame] = []
        err: OSError | None = None
        overflow = -1
        now_ns = 0
        cap = self.capacity
        mv = self._mv
        slot_off = self._slot_off
        read = 0  # datagrams read: the bound, as in the recvmsg loop (a non-CAN datagram counts too)
        while read < max_frames:
            vlen = min(cap, max_frames - read)
            n = self.receive(fd, vlen)
            if n < 0:
                code = -n
                if code == errno.EINTR:
                    continue
                if code not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    err = OSError(code, os.strerror(code))
                break
            if n == 0:
                break
            read += n
            try:
                now_ns, overflow = self._parse(n, mv, slot_off, out, now_ns, overflow)
            finally:
                self._restore(n)
            if n < vlen:  # the queue ran empty (or an error follows: the next call reports it)
                break
        if stats is not None:
            stats.drained(len(out), overflow)
        return out, err

    @staticmethod
    def _parse(
        n: int, mv: memoryview, slot_off: int, out: list[RawFrame], now_ns: int, overflow: int
    ) -> tuple[int, int]:
        append = out.append
        kinds = _ID_KINDS
        hdrs = _HDR_READ.iter_unpack(mv[: n * _HDR_SIZE])
        slots = _SLOT_READ.iter_unpack(mv[slot_off : slot_off + n * _SLOT_SIZE])
        off = slot_off + _FRAME_OFF - _SLOT_SIZE
        for (ctrllen, size), (lvl1, typ1, sec, nsec, lvl2, typ2, ovfl, raw_id, length, fd_flags, data8) in zip(
            hdrs, slots, strict=True
        ):
            off += _SLOT_SIZE
            if ctrllen == _TS_CMSG_SPACE and typ1 == SO_TIMESTAMPNS and lvl1 == SOL_SOCKET:
                ts = sec * 1_000_000_000 + nsec
            elif ctrllen == _TS_OVFL_SPACE and typ1 == SO_TIMESTAMPNS and lvl1 == SOL_SOCKET:
                ts = sec * 1_000_000_000 + nsec
                if typ2 == SO_RXQ_OVFL and lvl2 == SOL_SOCKET:
                    overflow = ovfl
            elif ctrllen:  # any other arrangement: walk the control messages
                ts, ov = _walk_cmsgs(mv, off - _FRAME_OFF, ctrllen)
                if ov >= 0:
                    overflow = ov
            else:
                ts = 0
            if not ts:  # sockets without kernel timestamps: one clock read per drain
                if not now_ns:
                    now_ns = time.time_ns()
                ts = now_ns
            flags, mask = kinds[raw_id >> 29]
            can_id = raw_id & mask
            if size == CAN_MTU:
                if raw_id & CAN_RTR_FLAG:  # a remote request carries no data
                    append((can_id, flags | _RTR, b"", ts))
                else:  # data8 is the frame's 8 data bytes: no copy when all are used
                    append((can_id, flags, data8[:length] if length < 8 else data8, ts))
            elif size == CANFD_MTU:
                flags |= _FD | (_BRS if fd_flags & CANFD_BRS else 0) | (_ESI if fd_flags & CANFD_ESI else 0)
                append((can_id, flags, mv[off + 8 : off + 8 + min(length, 64)].tobytes(), ts))
            # any other size is not a CAN frame: ignored rather than misparsed
        return now_ns, overflow


def _walk_cmsgs(mv: memoryview, off: int, ctrllen: int) -> tuple[int, int]:
    """(timestamp ns or 0, SO_RXQ_OVFL count or -1) from the control messages at ``off``."""
    ts = 0
    overflow = -1
    pos = 0
    while pos + _CMSG_HDR.size <= ctrllen:
        clen, level, kind = _CMSG_HDR.unpack_from(mv, off + pos)
        if clen < _CMSG_HDR.size:
            break
        data = off + pos + _CMSG_HDR.size
        dlen = clen - _CMSG_HDR.size
        if level == SOL_SOCKET:
            if kind == SO_TIMESTAMPNS and dlen >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(mv, data)
                ts = sec * 1_000_000_000 + nsec
            elif kind == SO_RXQ_OVFL and dlen >= _U32.size:
                overflow = _U32.unpack_from(mv, data)[0]
        pos += (clen + 7) & ~7  # CMSG_ALIGN
    return ts, overflow


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def layout_problem() -> str | None:
    """None when the C layouts (as ctypes computes them here) are the ones the struct formats assume."""
    expect = {
        "sizeof(struct mmsghdr)": (ctypes.sizeof(_Mmsghdr), _HDR_SIZE),
        "sizeof(struct iovec)": (ctypes.sizeof(_Iovec), _IOV_SIZE),
        "offsetof(msg_controllen)": (_Msghdr.msg_controllen.offset, 40),
        "offsetof(msg_len)": (_Mmsghdr.msg_len.offset, 56),
        "struct msghdr format": (_MSGHDR.size, _HDR_SIZE),
    }
    for what, (got, want) in expect.items():
        if got != want:
            return f"{what} is {got}, {want} assumed"
    return None


# Loaded once at import: where it is None, callers use the recvmsg loop (UNAVAILABLE says why).
_recvmmsg, UNAVAILABLE = _load_recvmmsg()
AVAILABLE = _recvmmsg is not None


_HEADER = struct.Struct("=IBB")  # can_id, len, flags (flags only meaningful in canfd_frame)
_TIMESPEC = struct.Struct("=qq")  # struct timespec on 64-bit Linux
_U32 = struct.Struct("=I")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size)
DEFAULT_DRAIN = 1024  # frames read per readable event: bounds the time one drain keeps the loop busy


@dataclass
class DrainStats:
    """What :func:`drain` learned from ancillary data besides frames."""

    overflow_drops: int = 0  # SO_RXQ_OVFL: frames the kernel dropped for a full receive queue (cumulative)
    frames: int = 0
    drains: int = 0

    def drained(self, frames: int, overflow: int) -> None:
        """One drain that read ``frames`` frames and saw the SO_RXQ_OVFL count ``overflow`` (-1: none)."""
        self.frames += frames
        self.drains += 1
        if overflow >= 0:
            self.overflow_drops = overflow


def parse_can_frame(buf: bytes, timestamp_ns: int) -> RawFrame:
    """Parse one ``struct can_frame`` (16 bytes) or ``struct canfd_frame`` (72 bytes)."""
    raw_id, length, fd_flags = _HEADER.unpack_from(buf)
    flags, mask = _ID_KINDS[raw_id >> 29]
    can_id = raw_id & mask
    if len(buf) == CANFD_MTU:
        flags |= _FD
        if fd_flags & CANFD_BRS:
            flags |= _BRS
        if fd_flags & CANFD_ESI:
            flags |= _ESI
        data = buf[8 : 8 + min(length, 64)]
    elif raw_id & CAN_RTR_FLAG:
        flags |= _RTR
        data = b""  # a remote request carries no data; its length field is the requested size
    else:
        data = buf[8 : 8 + min(length, 8)]
    return (can_id, flags, data, timestamp_ns)


@dataclass(slots=True)
class SocketReader:
    """The event loop's readable handler of a CAN_RAW socket: one drain (recvmmsg when there is a
    receiver, else recvmsg), the batch to ``on_frames``, then a read error to ``on_error`` (the driver
    says what it means). Frames go from here straight to the core, not back through the driver."""

    sock: socket.socket
    receiver: MmsgReceiver | None
    max_frames: int
    stats: DrainStats
    on_frames: Callable[[list[RawFrame]], None]
    on_error: Callable[[OSError], None]

    def __call__(self) -> None:
        rx = self.receiver
        if rx is not None:
            frames, err = rx.drain(self.sock, self.max_frames, self.stats)
        else:
            frames, err = drain_recvmsg(self.sock, self.max_frames, self.stats)
        if frames:
            self.on_frames(frames)
        if err is not None:
            self.on_error(err)


def drain_recvmsg(sock: socket.socket, max_frames: int,
                  stats: DrainStats | None) -> tuple[list[RawFrame], OSError | None]:
    """One ``recvmsg`` per frame: where libc has no ``recvmmsg``."""
    out: list[RawFrame] = []
    append = out.append
    recvmsg = sock.recvmsg
    unpack_ts = _TIMESPEC.unpack_from
    now_ns = 0
    overflow = -1
    err: OSError | None = None
    for _ in range(max_frames):
        try:
            buf, ancdata, _flags, _addr = recvmsg(CANFD_MTU, _ANC_SIZE)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as e:
            err = e
            break
        if not buf:
            break
        ts = 0
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET:
                if kind == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = unpack_ts(cdata)
                    ts = sec * 1_000_000_000 + nsec
                elif kind == SO_RXQ_OVFL and len(cdata) >= 4:
                    overflow = _U32.unpack_from(cdata)[0]
        if not ts:  # sockets without kernel timestamps (tests over socketpair): one clock read per drain
            if not now_ns:
                now_ns = time.time_ns()
            ts = now_ns
        size = len(buf)
        if size != CAN_MTU and size != CANFD_MTU:
            continue  # not a CAN frame: ignore rather than misparse
        # the fallback path: one system call per frame already, so the parse is the reference one
        append(parse_can_frame(buf, ts))
    if stats is not None:
        stats.drained(len(out), overflow)
    return out, err


_local = threading.local()  # one recvmmsg receiver (its buffers) per thread calling drain()


def _thread_receiver() -> MmsgReceiver | None:
    rx: MmsgReceiver | None = getattr(_local, "rx", None)
    if rx is None and AVAILABLE:
        rx = _local.rx = MmsgReceiver(DEFAULT_DRAIN)
    return rx


def drain(
    sock: socket.socket,
    max_frames: int = DEFAULT_DRAIN,
    stats: DrainStats | None = None,
    *,
    batch: bool = True,
) -> list[RawFrame]:
    """Read up to ``max_frames`` waiting frames from a non-blocking datagram socket without blocking.

    Works on a CAN_RAW socket and on any datagram socket carrying the same bytes (the benchmark uses a
    ``socketpair(AF_UNIX, SOCK_DGRAM)``). With ``batch`` (and where libc has it) one ``recvmmsg`` reads
    up to 1024 frames; otherwise one ``recvmsg`` per frame. A socket error other than "nothing
    waiting" is raised; the frames read before it are on the exception as ``frames``.
    """
    rx = _thread_receiver() if batch and isinstance(sock, socket.socket) else None
    frames, err = rx.drain(sock, max_frames, stats) if rx is not None else drain_recvmsg(sock, max_frames, stats)
    if err is not None:
        err.frames = frames  # type: ignore[attr-defined]
        raise err
    return frames
