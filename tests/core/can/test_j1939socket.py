"""The kernel J1939 socket's parsing (addresses, control messages, error queue) from bytes, its filters,
and the fallback to the user-space reassembler when no CAN_J1939 socket can be opened."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from canbridge.core.can import j1939socket as js
from canbridge.core.can.j1939socket import (
    SCM_J1939_DEST_ADDR,
    SCM_J1939_ERRQUEUE,
    SCM_J1939_PRIO,
    SOL_CAN_J1939,
    abort_reason,
    message_from,
    open_j1939,
    pack_filters,
)
from canbridge.core.can.linuxcan import SO_TIMESTAMPNS

TS = struct.pack("=qq", 1_700_000_000, 123)


def test_message_from_address_and_cmsgs() -> None:
    anc = [(SOL_CAN_J1939, SCM_J1939_DEST_ADDR, b"\x80"), (SOL_CAN_J1939, SCM_J1939_PRIO, b"\x03"),
           (socket.SOL_SOCKET, SO_TIMESTAMPNS, TS)]
    m = message_from(b"x" * 20, anc, ("vcan0", 0, 0xFECA, 0x21))
    assert (m.pgn, m.source, m.destination, m.priority) == (0xFECA, 0x21, 0x80, 3)
    assert m.timestamp_ns == 1_700_000_000_000_000_123 and m.data == b"x" * 20 and not m.truncated


def test_message_without_cmsgs_is_broadcast_with_the_clock() -> None:
    m = message_from(b"y" * 9, [], ("vcan0", 0, 0xF004, 0x00), now_ns=42)
    assert (m.destination, m.priority, m.timestamp_ns) == (0xFF, 6, 42)


def test_longer_than_tp_or_msg_trunc_is_truncated() -> None:
    assert message_from(b"z" * 1786, [], ("c", 0, 1, 2)).truncated
    assert message_from(b"z" * 10, [], ("c", 0, 1, 2), flags=socket.MSG_TRUNC).truncated
    with pytest.raises(ValueError, match="not a J1939 socket address"):
        message_from(b"", [], ("vcan0",))


@pytest.mark.parametrize(("code", "reason"), [(errno.ETIME, "timeout"), (-errno.ETIME, "timeout"),
                                               (errno.ECONNABORTED, "abort"), (errno.EBADMSG, "sequence"),
                                               (errno.ENOSPC, "kernel_ENOSPC")])
def test_rx_abort_reason(code: int, reason: str) -> None:
    err = struct.pack("=iBBBxII", code, 1, 0, 0, js.J1939_EE_INFO_RX_ABORT, 0)
    assert abort_reason([(SOL_CAN_J1939, SCM_J1939_ERRQUEUE, err)]) == reason


def test_other_error_queue_notices_are_not_aborts() -> None:
    rts = struct.pack("=IBBBxII", errno.ENOMSG, 1, 0, 0, 2, 0)  # J1939_EE_INFO_RX_RTS
    assert abort_reason([(SOL_CAN_J1939, SCM_J1939_ERRQUEUE, rts)]) is None
    assert abort_reason([]) is None


def test_filters() -> None:
    raw = pack_filters([0xFECA, 0xEC00, 0xFECA])
    assert raw is not None and len(raw) == 2 * 32
    assert struct.unpack_from("=QQIIBB", raw)[2:4] == (0xEC00, 0x3FFFF)
    assert pack_filters(None) is None and pack_filters(list(range(513))) is None


def test_fallback_when_the_kernel_has_no_j1939(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_j1939(*_a: object, **_k: object) -> socket.socket:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
    monkeypatch.setattr(socket, "socket", no_j1939)
    sock, why = open_j1939("vcan0", None, lambda _m: None, lambda _r: None)
    assert sock is None and why is not None and "modprobe can-j1939" in why
