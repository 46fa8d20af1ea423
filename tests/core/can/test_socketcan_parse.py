"""The SocketCAN driver's parts that need no CAN kernel: frame parsing over a socketpair carrying the
kernel's struct can_frame/canfd_frame bytes, frame building, filters, and the errors of open()."""

from __future__ import annotations

import errno
import logging
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from canbridge import BusError, BusUnavailable, Frame, FrameFlags
from canbridge.config import BusConfig
from canbridge.core.can import linuxcan as lc
from canbridge.core.can import receive as recv
from canbridge.core.can import socketcan as sc
from canbridge.core.can.receive import DrainStats, MmsgReceiver, drain
from canbridge.core.can.socketcan import SocketcanDriver, pack_filters

EXT, RTR, FD, BRS, ESI, ERR = (
    int(f)
    for f in (
        FrameFlags.EXTENDED,
        FrameFlags.RTR,
        FrameFlags.FD,
        FrameFlags.BRS,
        FrameFlags.ESI,
        FrameFlags.ERROR,
    )
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def can_frame(can_id: int, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("=IBBBB8s", can_id, len(data) if length is None else length, 0, 0, 0, data)


def canfd_frame(can_id: int, data: bytes, flags: int = 0) -> bytes:
    return struct.pack("=IBBBB64s", can_id, len(data), flags, 0, 0, data)



def build_can_frame(frame: Frame) -> bytes:
    """Test helper: the kernel's ``struct can_frame`` / ``struct canfd_frame`` bytes for a frame."""
    can_id = frame.can_id | (lc.CAN_EFF_FLAG if frame.extended else 0)
    if frame.rtr:
        can_id |= lc.CAN_RTR_FLAG
    if frame.error:
        can_id |= lc.CAN_ERR_FLAG
    if frame.fd:
        fd_flags = lc.CANFD_BRS if frame.brs else 0
        return struct.pack("=IBBBB64s", can_id, len(frame.data), fd_flags, 0, 0, frame.data)
    length = frame.length if frame.rtr else len(frame.data)
    return struct.pack("=IBBBB8s", can_id, length, 0, 0, 0, frame.data)


def test_struct_sizes_match_the_kernel() -> None:
    assert len(can_frame(0, b"")) == lc.CAN_MTU == 16
    assert len(canfd_frame(0, b"")) == lc.CANFD_MTU == 72


def test_drain_parses_every_kind(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.send(can_frame(0x123, bytes.fromhex("DEADBEEF")))
    a.send(can_frame(lc.CAN_EFF_FLAG | 0x18FEF100, b"\x01\x02"))
    a.send(can_frame(lc.CAN_RTR_FLAG | 0x124, b"", length=4))
    a.send(can_frame(lc.CAN_ERR_FLAG | 0x40, bytes(8)))
    a.send(canfd_frame(0x321, bytes(range(64)), flags=lc.CANFD_BRS | lc.CANFD_ESI))
    a.send(canfd_frame(lc.CAN_EFF_FLAG | 0x1ABCDEF0, b"\xaa" * 12))
    a.send(can_frame(0x7FF, b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    a.send(b"\x00" * 5)  # not a CAN frame: ignored
    frames = drain(b, 100)
    assert [(i, f, d) for i, f, d, _ in frames] == [
        (0x123, 0, bytes.fromhex("DEADBEEF")),
        (0x18FEF100, EXT, b"\x01\x02"),
        (0x124, RTR, b""),
        (0x40, ERR, bytes(8)),
        (0x321, FD | BRS | ESI, bytes(range(64))),
        (0x1ABCDEF0, EXT | FD, b"\xaa" * 12),
        (0x7FF, 0, bytes(range(1, 9))),
    ]
    # no kernel timestamps on a socketpair: one clock read for the batch
    assert len({t for *_, t in frames}) == 1 and frames[0][3] > 0


def test_drain_is_bounded_and_counts(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for i in range(10):
        a.send(can_frame(i, b""))
    stats = DrainStats()
    assert [f[0] for f in drain(b, 4, stats)] == [0, 1, 2, 3]
    assert [f[0] for f in drain(b, 100, stats)] == [4, 5, 6, 7, 8, 9]
    assert drain(b, 100, stats) == []
    assert (stats.frames, stats.drains) == (10, 3)


def test_drain_raises_errors_with_frames_read_before(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.send(can_frame(0x1, b""))
    a.close()
    frames = drain(b, 10)
    assert [f[0] for f in frames] == [1]
    b.close()
    with pytest.raises(OSError) as exc:
        drain(b, 10)
    assert exc.value.errno == errno.EBADF
    assert exc.value.frames == []  # type: ignore[attr-defined]


def test_parse_can_frame_matches_drain() -> None:
    assert recv.parse_can_frame(can_frame(lc.CAN_EFF_FLAG | 5, b"\x09"), 7) == (5, EXT, b"\x09", 7)
    assert recv.parse_can_frame(canfd_frame(6, b"\x01" * 8, lc.CANFD_BRS), 8) == (6, FD | BRS, b"\x01" * 8, 8)
    assert recv.parse_can_frame(can_frame(lc.CAN_RTR_FLAG | 7, b"", 2), 9) == (7, RTR, b"", 9)


def test_build_can_frame_round_trips() -> None:
    cases = [
        Frame(0x123, b"\x01\x02"),
        Frame(0x18FEF100, b"\xff" * 8, extended=True),
        Frame(0x321, bytes(range(48)), fd=True, brs=True),
        Frame(0x124, b"", rtr=True, dlc=3),
    ]
    out = [recv.parse_can_frame(build_can_frame(f), 0) for f in cases]
    assert out == [
        (0x123, 0, b"\x01\x02", 0),
        (0x18FEF100, EXT, b"\xff" * 8, 0),
        (0x321, FD | BRS, bytes(range(48)), 0),
        (0x124, RTR, b"", 0),
    ]
    assert build_can_frame(Frame(0x124, b"", rtr=True, dlc=3))[4] == 3


def test_pack_filters() -> None:
    assert pack_filters(None) == struct.pack("=II", 0, 0)  # everything
    assert pack_filters([]) == b""  # zero-length: nothing
    std, ext = (
        struct.unpack("=4I", pack_filters([(0x100, False), (0x18FEF100, True)]))[:2],
        struct.unpack("=4I", pack_filters([(0x100, False), (0x18FEF100, True)]))[2:],
    )
    assert std == (0x100, 0x7FF | lc.CAN_EFF_FLAG)
    assert ext == (0x18FEF100 | lc.CAN_EFF_FLAG, 0x1FFFFFFF | lc.CAN_EFF_FLAG)


def _matches(filters: bytes, raw_id: int) -> bool:
    """The kernel's rule: (received & mask) == (filter_id & mask), for any filter."""
    pairs = struct.unpack(f"={len(filters) // 4}I", filters)
    return any((raw_id & m) == (i & m) for i, m in zip(pairs[::2], pairs[1::2], strict=True))


def test_filters_keep_standard_and_extended_apart() -> None:
    f = pack_filters([(0x100, False), (0x18FEF100, True)])
    assert _matches(f, 0x100)
    assert not _matches(f, lc.CAN_EFF_FLAG | 0x100)  # extended 0x100 is another id
    assert _matches(f, lc.CAN_EFF_FLAG | 0x18FEF100)
    assert not _matches(f, 0x101)
    assert _matches(f, lc.CAN_RTR_FLAG | 0x100)  # remote requests for a mapped id pass


def test_set_filters_over_the_kernel_limit_receives_all(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="canbridge.core.can.socketcan")
    drv = SocketcanDriver(BusConfig(name="b", channel="vcan0"))
    drv.set_filters([(i, False) for i in range(513)])
    assert drv._filters is None
    assert "receiving all ids" in caplog.text
    drv.set_filters([])
    assert drv._filters == []


async def test_open_without_kernel_can_support_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    real_socket = socket.socket

    def no_can(family: int = -1, *a: object, **k: object) -> socket.socket:
        if family == lc.AF_CAN:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_can)
    drv = SocketcanDriver(BusConfig(name="b", channel="can0"))
    with pytest.raises(BusUnavailable) as exc:
        await drv.open()
    assert "kernel has no CAN support" in str(exc.value)
    assert exc.value.hint is not None and "make test-socketcan" in exc.value.hint
    assert not drv.is_open


async def test_send_before_open_raises() -> None:
    drv = SocketcanDriver(BusConfig(name="b", channel="vcan0"))
    with pytest.raises(BusError, match="not open"):
        drv.send(Frame(0x1))
    with pytest.raises(BusError):
        drv.start_reading(lambda b: None, lambda e: None)


def test_missing_hints() -> None:
    from canbridge.core.can.netlink import missing_hint

    assert missing_hint("vcan3") == "sudo ip link add dev vcan3 type vcan && sudo ip link set up vcan3"
    assert missing_hint("can1") == "sudo ip link set can1 up type can bitrate 500000 restart-ms 100"


def test_netlink_errors_are_explained() -> None:
    from canbridge.config import NetlinkSettings
    from canbridge.core.can.netlink import _translate, _wanted, _xstats

    class NlErr(Exception):
        def __init__(self, code: int) -> None:
            self.code = code

    assert "vcan has no bitrate" in str(_translate("vcan0", "vcan", NlErr(errno.EOPNOTSUPP)))
    assert "CAP_NET_ADMIN" in str(_translate("can0", "can", NlErr(errno.EPERM)))
    assert "rejected" in str(_translate("can0", "can", NlErr(errno.EINVAL)))
    assert isinstance(_translate("can9", None, NlErr(errno.ENODEV)), BusUnavailable)
    args = _wanted(NetlinkSettings(bitrate=500000, sample_point=0.875, restart_ms=100, fd=True, data_bitrate=2000000))
    assert args == {
        "can_bittiming": {"bitrate": 500000, "sample_point": 875},
        "can_data_bittiming": {"bitrate": 2000000},
        "can_restart_ms": 100,
        "can_ctrlmode": {"fd": "on"},
    }
    raw = struct.pack("=6I", 1, 2, 3, 4, 5, 6)
    assert _xstats(raw.hex(":")) == {
        "bus_error": 1,
        "error_warning": 2,
        "error_passive": 3,
        "bus_off": 4,
        "arbitration_lost": 5,
        "restarts": 6,
    }


class _Nla(dict):  # type: ignore[type-arg]
    """Stands in for a pyroute2 message: attributes by name, fields by key."""

    def __init__(self, attrs: dict[str, object] | None = None, **fields: object) -> None:
        super().__init__(**fields)
        self.attrs = attrs or {}

    def get_attr(self, name: str) -> object:
        return self.attrs.get(name)


def test_can_link_reads_controller_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a real `can` device reports over netlink (vcan has none of it), mapped to status keys."""
    import pyroute2

    from canbridge.core.can import netlink

    data = _Nla(
        {
            "IFLA_CAN_STATE": "ERROR_PASSIVE",
            "IFLA_CAN_BERR_COUNTER": _Nla(txerr=130, rxerr=7),
            "IFLA_CAN_RESTART_MS": 100,
            "IFLA_CAN_BITTIMING": _Nla(bitrate=500000, sample_point=875),
            "IFLA_CAN_CTRLMODE": _Nla(fd="off"),
        }
    )
    xstats = struct.pack("=6I", 12, 3, 2, 1, 0, 1).hex(":")
    link = _Nla({"IFLA_LINKINFO": _Nla({"IFLA_INFO_KIND": "can", "IFLA_INFO_DATA": data, "IFLA_INFO_XSTATS": xstats})})

    class FakeIPRoute:
        def __enter__(self) -> FakeIPRoute:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def link(self, cmd: str, ifname: str) -> list[_Nla]:
            assert (cmd, ifname) == ("get", "can0")
            return [link]

    monkeypatch.setattr(pyroute2, "IPRoute", FakeIPRoute)
    info = netlink.can_link("can0")
    assert info == {
        "kind": "can",
        "can_state": "error-passive",
        "tx_error_counter": 130,
        "rx_error_counter": 7,
        "restart_ms": 100,
        "bitrate": 500000,
        "sample_point": 0.875,
        "fd": False,
        "controller_stats": {
            "bus_error": 12,
            "error_warning": 3,
            "error_passive": 2,
            "bus_off": 1,
            "arbitration_lost": 0,
            "restarts": 1,
        },
    }
    # and the driver turns it into the keys the core reads
    monkeypatch.setattr(
        netlink,
        "sysfs_link",
        lambda ch: {"exists": True, "up": True, "operstate": "up", "statistics": {"rx_dropped": 0}},
    )
    from canbridge import BusState

    status = SocketcanDriver(BusConfig(name="b", channel="can0")).kernel_status()
    assert status["bus_state"] is BusState.PASSIVE
    assert (status["tx_error_counter"], status["rx_error_counter"]) == (130, 7)
    assert (status["bus_off_count"], status["restarts"], status["bus_errors"]) == (1, 1, 12)
    assert status["bitrate"] == 500000
    assert status["dropped_frames"] == 0


class _DyingSocket:
    """A socket that delivers one frame, then the error the kernel reports when the link goes down."""

    def __init__(self, err: int) -> None:
        self.calls = 0
        self.err = err
        self.closed = False

    def recvmsg(self, bufsize: int, ancbufsize: int) -> tuple[bytes, list[object], int, object]:
        self.calls += 1
        if self.calls == 1:
            return can_frame(0x100, b"\x01"), [], 0, None
        raise OSError(self.err, "Network is down" if self.err == errno.ENETDOWN else "No such device")

    def fileno(self) -> int:
        return 999

    def close(self) -> None:
        self.closed = True


class _Loop:
    def __init__(self) -> None:
        self.removed: list[int] = []

    def remove_reader(self, fd: int) -> None:
        self.removed.append(fd)


@pytest.mark.parametrize("err", [errno.ENETDOWN, errno.ENODEV, errno.EBADF])
def test_read_path_error_delivers_frames_then_reports_once_and_stops(err: int) -> None:
    drv = SocketcanDriver(BusConfig(name="b", channel="vcan0"))
    sock = _DyingSocket(err)
    loop = _Loop()
    drv._sock = sock  # type: ignore[assignment]
    drv._loop = loop  # type: ignore[assignment]
    drv._reading = True
    batches: list[list[tuple[int, int, bytes, int]]] = []
    errors: list[BaseException] = []
    drv._on_frames = batches.append
    drv._on_error = errors.append
    drv._reader()()
    assert [[f[0] for f in b] for b in batches] == [[0x100]]  # what came before the error is kept
    assert len(errors) == 1 and isinstance(errors[0], BusUnavailable)
    assert isinstance(errors[0].__cause__, OSError) and errors[0].__cause__.errno == err
    assert loop.removed == [999]  # no more callbacks: the core closes and reopens the driver
    assert not drv._reading


def test_read_path_transient_error_is_not_fatal() -> None:
    drv = SocketcanDriver(BusConfig(name="b", channel="vcan0"))
    sock = _DyingSocket(errno.ENOBUFS)
    drv._sock = sock  # type: ignore[assignment]
    drv._loop = _Loop()  # type: ignore[assignment]
    drv._reading = True
    errors: list[BaseException] = []
    drv._on_frames = lambda b: None
    drv._on_error = errors.append
    drv._reader()()
    assert errors == [] and drv._reading


# --- recvmmsg: one system call per batch ------------------------------------------------------------
needs_mmsg = pytest.mark.skipif(not recv.AVAILABLE, reason=f"recvmmsg unavailable: {recv.UNAVAILABLE}")

EVERY_KIND = [
    can_frame(0x123, bytes.fromhex("DEADBEEF")),
    can_frame(lc.CAN_EFF_FLAG | 0x18FEF100, b"\x01\x02"),
    can_frame(lc.CAN_RTR_FLAG | 0x124, b"", length=4),
    can_frame(lc.CAN_RTR_FLAG | lc.CAN_EFF_FLAG | 0x1234567, b"", length=8),
    can_frame(lc.CAN_ERR_FLAG | 0x40, bytes(8)),
    canfd_frame(0x321, bytes(range(64)), flags=lc.CANFD_BRS | lc.CANFD_ESI),
    canfd_frame(lc.CAN_EFF_FLAG | 0x1ABCDEF0, b"\xaa" * 12),
    canfd_frame(0x322, b""),
    b"\x00" * 5,  # not a CAN frame: ignored by both paths
    can_frame(0x7FF, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
    can_frame(0x10, b"\x01\x02\x03\x04\x05\x06\x07\x08", length=15),  # a bogus length: 8 bytes at most
    can_frame(0x11, b""),
]


@pytest.fixture
def stamped_pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """Two socketpairs whose reading ends get kernel receive timestamps (SO_TIMESTAMPNS)."""
    pairs = []
    for _ in range(2):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.setblocking(False)
        b.setsockopt(socket.SOL_SOCKET, lc.SO_TIMESTAMPNS, 1)
        pairs.append((a, b))
    yield pairs
    for a, b in pairs:
        a.close()
        b.close()


def test_frame_flag_values_match_the_enum() -> None:
    assert (lc.EXT, lc.RTR, lc.FD, lc.BRS, lc.ESI, lc.ERR) == (EXT, RTR, FD, BRS, ESI, ERR)


@needs_mmsg
def test_c_layouts_are_the_assumed_ones() -> None:
    assert recv.layout_problem() is None


@needs_mmsg
def test_recvmmsg_and_recvmsg_give_the_same_frames(stamped_pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    (a1, b1), (a2, b2) = stamped_pairs
    before = time.time_ns()
    for raw in EVERY_KIND:
        a1.send(raw)
        a2.send(raw)
    after = time.time_ns()
    rx = MmsgReceiver(64)
    s1, s2 = DrainStats(), DrainStats()
    batched, err1 = rx.drain(b1, 100, s1)
    single, err2 = recv.drain_recvmsg(b2, 100, s2)
    assert err1 is None and err2 is None
    assert rx.calls == 1  # every frame in one system call
    assert (
        [f[:3] for f in batched]
        == [f[:3] for f in single]
        == [
            (0x123, 0, bytes.fromhex("DEADBEEF")),
            (0x18FEF100, EXT, b"\x01\x02"),
            (0x124, RTR, b""),
            (0x1234567, EXT | RTR, b""),
            (0x40, ERR, bytes(8)),
            (0x321, FD | BRS | ESI, bytes(range(64))),
            (0x1ABCDEF0, EXT | FD, b"\xaa" * 12),
            (0x322, FD, b""),
            (0x7FF, 0, bytes(range(1, 9))),
            (0x10, 0, bytes(range(1, 9))),
            (0x11, 0, b""),
        ]
    )
    assert all(type(f[2]) is bytes for f in batched)
    # kernel timestamps, one per frame, in order and taken while the frames were sent
    stamps = [f[3] for f in batched]
    assert stamps == sorted(stamps) and len(set(stamps)) > 1
    assert before <= stamps[0] and stamps[-1] <= after
    assert (s1.frames, s1.drains) == (s2.frames, s2.drains) == (11, 1)


@needs_mmsg
def test_recvmmsg_partial_batches_and_bounds(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for i in range(11):
        a.send(can_frame(i, bytes([i])))
    rx = MmsgReceiver(4)
    stats = DrainStats()
    frames, err = rx.drain(b, 6, stats)  # 4, then 2: never more than asked
    assert err is None and [f[0] for f in frames] == [0, 1, 2, 3, 4, 5] and rx.calls == 2
    frames, err = rx.drain(b, 100, stats)  # 5 left: 4, then a short batch of 1 ends the drain (no EAGAIN call)
    assert err is None and [f[:3] for f in frames] == [(i, 0, bytes([i])) for i in range(6, 11)]
    assert rx.calls == 4
    frames, err = rx.drain(b, 100, stats)  # nothing waiting: EAGAIN ends it quietly
    assert (frames, err, rx.calls) == ([], None, 5)
    assert (stats.frames, stats.drains) == (11, 3)
    # the buffers are reused: a frame after a longer one carries none of the earlier bytes
    a.send(canfd_frame(0x1, b"\xff" * 64))
    a.send(can_frame(0x2, b"\x01"))
    a.send(canfd_frame(0x3, b"\x02" * 3))
    frames, _ = rx.drain(b, 100, stats)
    assert [f[:3] for f in frames] == [(1, FD, b"\xff" * 64), (2, 0, b"\x01"), (3, FD, b"\x02" * 3)]


@needs_mmsg
def test_recvmmsg_without_kernel_timestamps_reads_the_clock_once(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    for i in range(3):
        a.send(can_frame(i, b""))
    frames, _ = MmsgReceiver(8).drain(b, 100, None)
    assert len(frames) == 3 and len({f[3] for f in frames}) == 1 and frames[0][3] > 0


@needs_mmsg
def test_recvmmsg_walks_other_control_messages(pair: tuple[socket.socket, socket.socket]) -> None:
    # SO_PASSCRED adds SCM_CREDENTIALS next to the timestamp: not the usual layout, so the cmsg walk reads it
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, lc.SO_TIMESTAMPNS, 1)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    before = time.time_ns()
    a.send(can_frame(0x55, b"\x01"))
    sent = time.time_ns()
    frames, err = MmsgReceiver(2).drain(b, 10, None)
    assert err is None and [f[:3] for f in frames] == [(0x55, 0, b"\x01")]
    assert before <= frames[0][3] <= sent  # the kernel's stamp, not a clock read during the drain


@needs_mmsg
def test_recvmmsg_reads_the_drop_counter() -> None:
    # What the kernel writes for a CAN_RAW socket with SO_TIMESTAMPNS and SO_RXQ_OVFL (unix sockets
    # have no SO_RXQ_OVFL): the usual layout, and a counter alone through the cmsg walk.
    rx = MmsgReceiver(2)
    ts_cmsg = struct.pack("=Qiiqq", 32, socket.SOL_SOCKET, lc.SO_TIMESTAMPNS, 12, 345)
    ovfl_cmsg = struct.pack("=QiiI4x", 20, socket.SOL_SOCKET, lc.SO_RXQ_OVFL, 7)
    for i, (ctrl, frame) in enumerate(
        [(ts_cmsg + ovfl_cmsg, can_frame(0x1, b"\x09")), (struct.pack("=QiiI4x", 20, 1, lc.SO_RXQ_OVFL, 9), b"")]
    ):
        frame = frame or can_frame(0x2, b"\x08")
        struct.pack_into("=Q", rx._buf, i * 64 + 40, len(ctrl))  # msg_controllen
        struct.pack_into("=I", rx._buf, i * 64 + 56, len(frame))  # msg_len
        slot = rx._slot_off + i * (64 + 72)
        rx._buf[slot : slot + len(ctrl)] = ctrl
        rx._buf[slot + 64 : slot + 64 + len(frame)] = frame
    out: list[tuple[int, int, bytes, int]] = []
    now, overflow = rx._parse(1, rx._mv, rx._slot_off, out, 0, -1)
    assert out == [(1, 0, b"\x09", 12 * 1_000_000_000 + 345)] and overflow == 7 and now == 0
    out.clear()
    now, overflow = rx._parse(2, rx._mv, rx._slot_off, out, 0, -1)
    assert overflow == 9  # the later message's counter wins
    assert out[1][:3] == (2, 0, b"\x08") and out[1][3] == now > 0  # no timestamp: the clock
    rx._restore(2)  # the headers are ready for the next call: msg_controllen back to the buffer's size
    assert bytes(rx._buf[: 2 * 64]) == rx._template[: 2 * 64]
    assert struct.unpack_from("=Q", rx._buf, 40) == (64,)
    # a later message with only a timestamp: the stale SO_RXQ_OVFL behind it in the buffer is not read
    struct.pack_into("=Q", rx._buf, 40, 32)
    struct.pack_into("=I", rx._buf, 56, 16)
    out.clear()
    assert rx._parse(1, rx._mv, rx._slot_off, out, 0, -1) == (0, -1)
    assert out == [(1, 0, b"\x09", 12 * 1_000_000_000 + 345)]


@needs_mmsg
def test_recvmmsg_errors(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair

    class Failing(MmsgReceiver):
        def __init__(self, codes: list[int]) -> None:
            super().__init__(4)
            self.codes = codes

        def receive(self, fd: int, vlen: int) -> int:
            return -self.codes.pop(0) if self.codes else super().receive(fd, vlen)

    a.send(can_frame(0x1, b""))
    frames, err = Failing([errno.EINTR]).drain(b, 10, None)  # interrupted: tried again
    assert [f[0] for f in frames] == [1] and err is None
    frames, err = Failing([errno.ENETDOWN]).drain(b, 10, None)
    assert frames == [] and isinstance(err, OSError) and err.errno == errno.ENETDOWN
    b.close()
    with pytest.raises(OSError) as exc:
        drain(b, 10)  # the batch path, on a closed socket
    assert exc.value.errno == errno.EBADF and exc.value.frames == []  # type: ignore[attr-defined]


def test_drain_without_batch_uses_recvmsg(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.send(can_frame(0x9, b"\x01"))
    assert [f[:3] for f in drain(b, 10, batch=False)] == [(0x9, 0, b"\x01")]


@needs_mmsg
def test_driver_reads_through_recvmmsg(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    drv = SocketcanDriver(BusConfig(name="b", channel="vcan0"))
    assert drv.receive_path == "recvmsg"  # until open() allocates the buffers
    drv._receiver = MmsgReceiver(16)
    assert drv.receive_path == "recvmmsg"
    drv._sock = b
    drv._reading = True
    batches: list[list[tuple[int, int, bytes, int]]] = []
    drv._on_frames = batches.append
    drv._on_error = lambda e: pytest.fail(f"unexpected error {e!r}")
    for i in range(20):
        a.send(can_frame(i, b""))
    drv._reader()()
    assert [[f[0] for f in batch] for batch in batches] == [list(range(20))]
    assert drv._receiver.calls == 2 and drv.stats.frames == 20  # 16 + 4: two system calls for 20 frames
    drv._sock = None


def test_recvmmsg_can_be_turned_off() -> None:
    drv = SocketcanDriver(BusConfig(name="b", channel="vcan0", options={"recvmmsg": False}))
    assert drv._use_mmsg is False
    assert "recvmmsg" in sc._DRIVER_OPTIONS  # not handed to python-can
