"""The transport protocol with the bridge as the receiver (canbridge/core/can/j1939tp.py, ``local``): an RTS
to the bridge's address is answered with a CTS per window of the size the RTS allows, and the end of
message is acknowledged; transfers to other addresses are only followed."""

from __future__ import annotations

import pytest

from canbridge.core.can import j1939tp as tp
from canbridge.core.mapping.j1939 import PGN_TP_CM, make_id
from tests.core.can.test_j1939tp import EC1, MS, cm, dt, packets, pgn3

US, PEER = 0x80, 0x00


def cts(count: int, first: int) -> tuple[int, bytes]:
    return make_id(7, PGN_TP_CM, US, PEER), bytes((tp.CTS, count, first, 0xFF, 0xFF)) + pgn3(EC1)


@pytest.mark.parametrize(("size", "per_cts"), [(39, 3), (39, 255), (20, 1), (1785, 16)])
def test_an_rts_to_our_address_is_answered_window_by_window(size: int, per_cts: int) -> None:
    r = tp.Reassembler()
    r.local = US
    payload = bytes(i % 251 for i in range(size))
    n = packets(size)
    f = cm(PEER, US, bytes((tp.RTS, size & 0xFF, size >> 8, n, per_cts)) + pgn3(EC1), 0)
    assert r.feed(f.can_id, f.data, f.ts) is None
    expected = [cts(min(per_cts, n), 1)]
    assert r.take_out() == expected
    done = None
    for seq in range(1, n + 1):
        d = dt(PEER, US, seq, payload, seq * MS)
        done = r.feed(d.can_id, d.data, d.ts)
        out = r.take_out()
        if seq == n:
            assert out == [(make_id(7, PGN_TP_CM, US, PEER),
                            bytes((tp.EOMA, size & 0xFF, size >> 8, n, 0xFF)) + pgn3(EC1))]
        elif seq % per_cts == 0:
            assert out == [cts(min(per_cts, n - seq), seq + 1)]
        else:
            assert out == []
    assert done is not None and done.data == payload and done.destination == US


def test_transfers_to_other_addresses_and_broadcasts_are_not_answered() -> None:
    r = tp.Reassembler()
    r.local = US
    for da, control in ((0x33, tp.RTS), (0xFF, tp.BAM)):
        f = cm(PEER, da, bytes((control, 39, 0, 6, 0xFF)) + pgn3(EC1), 0)
        r.feed(f.can_id, f.data, f.ts)
    assert r.take_out() == [] and r.active == 2


def test_without_an_address_nothing_is_answered() -> None:
    r = tp.Reassembler()
    f = cm(PEER, US, bytes((tp.RTS, 39, 0, 6, 3)) + pgn3(EC1), 0)
    r.feed(f.can_id, f.data, f.ts)
    assert r.take_out() == []
