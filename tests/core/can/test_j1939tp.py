"""The J1939-21 transport-protocol listener (canbridge/core/can/j1939tp.py): BAM and RTS/CTS transfers as
another ECU sends them, with the ways they break."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge.core.can import j1939tp as tp
from canbridge.core.mapping.j1939 import PGN_TP_CM, PGN_TP_DT, make_id

MS = 1_000_000
EC1 = 0xFEE3


@dataclass(frozen=True)
class F:
    can_id: int
    data: bytes
    ts: int


def cm(sa: int, da: int, data: bytes, ts: int, priority: int = 7) -> F:
    return F(make_id(priority, PGN_TP_CM, sa, da), data, ts)


def dt(sa: int, da: int, seq: int, payload: bytes, ts: int) -> F:
    chunk = payload[(seq - 1) * 7:seq * 7]
    return F(make_id(7, PGN_TP_DT, sa, da), bytes([seq]) + chunk + b"\xff" * (7 - len(chunk)), ts)


def pgn3(pgn: int) -> bytes:
    return pgn.to_bytes(3, "little")


def packets(size: int) -> int:
    return -(-size // 7)


def bam(sa: int, payload: bytes, pgn: int = EC1, t0: int = 0, gap: int = 50 * MS, priority: int = 6) -> list[F]:
    n = packets(len(payload))
    out = [cm(sa, 0xFF, bytes([tp.BAM]) + len(payload).to_bytes(2, "little") + bytes([n, 0xFF]) + pgn3(pgn), t0,
              priority)]
    out += [dt(sa, 0xFF, i, payload, t0 + i * gap) for i in range(1, n + 1)]
    return out


def rts_cts(sa: int, da: int, payload: bytes, window: int = 16, pgn: int = EC1, t0: int = 0,
            hold: bool = False) -> list[F]:
    """The frames of a whole connection-mode transfer: RTS, then per window a CTS and its packets, EoMA."""
    n = packets(len(payload))
    ts = t0
    out = [cm(sa, da, bytes([tp.RTS]) + len(payload).to_bytes(2, "little") + bytes([n, window]) + pgn3(pgn), ts)]
    first = 1
    while first <= n:
        count = min(window, n - first + 1)
        if hold:
            ts += 10 * MS
            out.append(cm(da, sa, bytes([tp.CTS, 0, 0xFF, 0xFF, 0xFF]) + pgn3(pgn), ts))
        ts += 10 * MS
        out.append(cm(da, sa, bytes([tp.CTS, count, first, 0xFF, 0xFF]) + pgn3(pgn), ts))
        for seq in range(first, first + count):
            ts += 5 * MS
            out.append(dt(sa, da, seq, payload, ts))
        first += count
    ts += 10 * MS
    out.append(cm(da, sa, bytes([tp.EOMA]) + len(payload).to_bytes(2, "little") + bytes([n, 0xFF]) + pgn3(pgn), ts))
    return out


def run(frames: list[F], r: tp.Reassembler | None = None) -> tuple[tp.Reassembler, list[tp.Completed]]:
    r = r or tp.Reassembler()
    done = [c for f in frames if (c := r.feed(f.can_id, f.data, f.ts)) is not None]
    return r, done


def broken(r: tp.Reassembler) -> dict[str, int]:
    return {k: v for k, v in r.broken.items() if v}


payloads = st.integers(tp.MIN_SIZE, tp.MAX_SIZE).flatmap(lambda n: st.binary(min_size=n, max_size=n))


# --- complete transfers --------------------------------------------------------------------------------


@given(payloads, st.integers(0, 253), st.integers(0, 7))
def test_a_bam_of_any_size_is_reassembled(payload: bytes, sa: int, priority: int) -> None:
    r, done = run(bam(sa, payload, priority=priority))
    assert done == [tp.Completed(EC1, sa, 0xFF, priority, payload, done[0].timestamp_ns)]
    assert r.completed == 1 and r.active == 0 and not broken(r)


@given(payloads, st.integers(1, 255), st.booleans())
def test_an_rts_cts_transfer_between_two_other_ecus_is_reassembled(payload: bytes, window: int, hold: bool) -> None:
    r, done = run(rts_cts(0x03, 0x00, payload, window=window, hold=hold))
    assert [(c.pgn, c.source, c.destination, c.data) for c in done] == [(EC1, 0x03, 0x00, payload)]
    assert not broken(r) and r.active == 0
    assert r.ignored == 1  # the end-of-message acknowledgement of a transfer already complete


def test_the_largest_transfer() -> None:
    payload = bytes(range(256)) * 6 + bytes(249)
    assert len(payload) == tp.MAX_SIZE
    assert run(bam(0, payload))[1][0].data == payload
    assert run(rts_cts(1, 2, payload, window=255))[1][0].data == payload


def test_two_concurrent_transfers_from_different_sources() -> None:
    a, b = bytes(range(40)), bytes(range(100, 160))
    fa, fb = bam(0x00, a), bam(0x17, b, t0=3 * MS)
    fc = rts_cts(0x03, 0x00, bytes(range(200, 230)), window=2, t0=1 * MS)
    merged = sorted(fa + fb + fc, key=lambda f: f.ts)
    r, done = run(merged)
    assert sorted((c.source, c.data) for c in done) == [(0x00, a), (0x03, bytes(range(200, 230))), (0x17, b)]
    assert not broken(r)


def test_a_bam_and_a_connection_from_one_sender_run_side_by_side() -> None:
    a, b = bytes(range(20)), bytes(range(50, 80))
    merged = sorted(bam(0x05, a) + rts_cts(0x05, 0x00, b, window=1, t0=2 * MS), key=lambda f: f.ts)
    assert sorted(c.data for c in run(merged)[1]) == sorted([a, b])


# --- broken transfers ------------------------------------------------------------------------------------


def test_out_of_order_bam_packets_break_it() -> None:
    frames = bam(0, bytes(30))
    frames[2], frames[3] = frames[3], frames[2]
    r, done = run(frames)
    assert done == [] and broken(r) == {"sequence": 1} and r.ignored >= 1


@pytest.mark.parametrize("kind", ["bam", "rts"])
def test_a_duplicate_packet_is_ignored(kind: str) -> None:
    payload = bytes(range(30))
    frames = bam(0, payload) if kind == "bam" else rts_cts(3, 0, payload)
    i = next(k for k, f in enumerate(frames) if f.data[0] == 2 and f.can_id >> 8 & 0x3FF00 == PGN_TP_DT)
    frames.insert(i + 1, frames[i])
    r, done = run(frames)
    assert [c.data for c in done] == [payload] and r.duplicates == 1 and not broken(r)


def test_a_missing_bam_packet_breaks_it() -> None:
    frames = bam(0, bytes(30))
    del frames[2]
    r, done = run(frames)
    assert done == [] and broken(r) == {"sequence": 1}


def test_a_missing_last_packet_times_out() -> None:
    frames = bam(0, bytes(30))
    del frames[-1]
    r, done = run(frames)
    assert done == [] and r.active == 1
    r.expire(frames[-1].ts + tp.T1 - 1)
    assert r.active == 1, "not before T1"
    r.expire(frames[-1].ts + tp.T1 + 1)
    assert r.active == 0 and broken(r) == {"timeout_t1": 1}


def test_a_slow_bam_times_out_when_the_next_frame_comes() -> None:
    frames = bam(0, bytes(30), gap=tp.T1 + MS)
    r, done = run(frames)
    assert done == [] and broken(r) == {"timeout_t1": 1}


@pytest.mark.parametrize(("cut", "timer", "after"), [
    ("rts", "timeout_t3", tp.T3),  # no CTS after the RTS
    ("cts", "timeout_t2", tp.T2),  # no data after a CTS
    ("window", "timeout_t3", tp.T3),  # no CTS or EoMA after the last packet of a window
    ("hold", "timeout_t4", tp.T4),  # no CTS after a hold
])
def test_connection_timers(cut: str, timer: str, after: int) -> None:
    frames = rts_cts(3, 0, bytes(30), window=2, hold=cut == "hold")
    end = {"rts": 1, "cts": 2, "window": 4, "hold": 2}[cut]
    r, done = run(frames[:end])
    assert done == [] and r.active == 1
    r.expire(frames[end - 1].ts + after - 1)
    assert r.active == 1
    r.expire(frames[end - 1].ts + after + 1)
    assert broken(r) == {timer: 1}


@pytest.mark.parametrize("by", ["sender", "receiver"])
def test_an_abort_from_either_side_breaks_the_transfer(by: str) -> None:
    frames = rts_cts(3, 0, bytes(30), window=2)
    sa, da = (3, 0) if by == "sender" else (0, 3)
    frames.insert(4, cm(sa, da, bytes([tp.ABORT, 3, 0xFF, 0xFF, 0xFF]) + pgn3(EC1), frames[3].ts + 1))
    r, done = run(frames)
    assert done == [] and broken(r) == {"abort": 1}


def test_a_retransmitted_packet_completes_the_transfer() -> None:
    payload = bytes(range(21))  # 3 packets
    frames = rts_cts(3, 0, payload, window=3)
    lost = frames.pop(3)  # packet 2 never reached the responder (nor us)
    t = frames[-2].ts
    retry = [cm(0, 3, bytes([tp.CTS, 1, 2, 0xFF, 0xFF]) + pgn3(EC1), t + 1), F(lost.can_id, lost.data, t + 2)]
    r, done = run(frames[:-1] + retry)
    assert [c.data for c in done] == [payload] and not broken(r)


def test_end_of_message_with_packets_we_did_not_see_is_missing() -> None:
    frames = rts_cts(3, 0, bytes(30), window=5)
    del frames[3]
    r, done = run(frames)
    assert done == [] and broken(r) == {"missing": 1}


def test_a_packet_outside_the_window_breaks_the_connection() -> None:
    frames = rts_cts(3, 0, bytes(30), window=2)
    frames.insert(3, dt(3, 0, 4, bytes(30), frames[2].ts + 1))
    assert broken(run(frames)[0]) == {"sequence": 1}


@pytest.mark.parametrize(("size", "n"), [(1786, 0), (1786, 255), (8, 2), (30, 6), (30, 4), (0, 0)])
def test_a_wrong_total_size_is_refused(size: int, n: int) -> None:
    frames = bam(0, bytes(30))
    frames[0] = cm(0, 0xFF, bytes([tp.BAM]) + size.to_bytes(2, "little") + bytes([n, 0xFF]) + pgn3(EC1), 0)
    r, done = run(frames)
    assert done == [] and broken(r) == {"size": 1} and r.ignored == len(frames) - 1


def test_a_new_announcement_supersedes_an_unfinished_one() -> None:
    a, b = bytes(range(30)), bytes(range(40, 60))
    first = bam(0, a)[:3]
    r, done = run(first + bam(0, b, t0=first[-1].ts + 1))
    assert [c.data for c in done] == [b] and broken(r) == {"superseded": 1}


def test_transfers_at_once_are_bounded() -> None:
    r = tp.Reassembler(max_transfers=4)
    for sa in range(6):
        run(bam(sa, bytes(30))[:1], r)
    assert r.active == 4 and broken(r) == {"limit": 2}


def test_short_and_unknown_tp_frames_are_ignored() -> None:
    r, done = run([cm(0, 0xFF, b"\x20\x1e\x00", 0), cm(0, 0xFF, bytes([99]) + bytes(7), 0),
                   dt(0, 0xFF, 1, bytes(30), 0)])
    assert done == [] and r.ignored == 3 and r.counters() == {"completed": 0, "ignored": 3}


# --- every variant, one transfer: it completes or breaks, exactly once ------------------------------------


@settings(max_examples=200)
@given(payloads.filter(lambda p: len(p) <= 200), st.sampled_from(["bam", "rts"]),
       st.sampled_from(["none", "swap", "duplicate", "drop", "abort", "delay", "truncate_announce"]),
       st.data())
def test_each_transfer_is_completed_or_counted_broken_once(payload: bytes, kind: str, variant: str,
                                                           data: st.DataObject) -> None:
    frames = bam(9, payload) if kind == "bam" else rts_cts(9, 0x20, payload, window=data.draw(st.integers(1, 8)))
    dts = [i for i, f in enumerate(frames) if (f.can_id >> 8) & 0x3FF00 == PGN_TP_DT]
    i = data.draw(st.sampled_from(dts))
    if variant == "swap" and i + 1 < len(frames):
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
    elif variant == "duplicate":
        frames.insert(i + 1, frames[i])
    elif variant == "drop":
        del frames[i]
    elif variant == "abort" and kind == "rts":
        frames.insert(i, cm(0x20, 9, bytes([tp.ABORT, 1, 0xFF, 0xFF, 0xFF]) + pgn3(EC1), frames[i].ts))
    elif variant == "delay":
        frames = frames[:i] + [F(f.can_id, f.data, f.ts + 2 * tp.T3) for f in frames[i:]]
    elif variant == "truncate_announce":
        frames[0] = F(frames[0].can_id, frames[0].data[:7], frames[0].ts)
    r, done = run(frames)
    r.expire(frames[-1].ts + 10 * tp.T3)
    assert r.completed + sum(r.broken.values()) + (variant == "truncate_announce") == 1
    assert r.active == 0
    if done:
        assert len(done) == 1 and done[0].data == payload
