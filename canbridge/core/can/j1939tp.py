"""J1939-21 transport protocol as a listener: reassembles the multi-packet messages (BAM broadcasts and
RTS/CTS connection-mode transfers, 9 to 1,785 bytes) that it sees on a bus, for buses where no kernel
J1939 stack does it (replayed logs, python-can interfaces).

It follows an RTS/CTS transfer between two other ECUs by reading both sides. When the bridge holds a
J1939 address (``local``), it is the receiver of the transfers sent to that address: it answers their
RTS with a CTS (as many packets as the RTS allows per CTS), asks for the next window once one is in,
and sends the end-of-message acknowledgement; those frames wait in ``out`` for the bus to send. A
transfer that breaks (abort, timeout, a packet out of sequence or missing, a wrong size) is counted by
reason and never returned; a completed one is returned once, like a single frame of its PGN.

Timeouts are taken from the frames' own timestamps, so a replayed log behaves the same at any speed:
T1 750 ms (next data packet), T2 1250 ms (data after a CTS), T3 1250 ms (a CTS or end of message after
the last packet of a window, or after the RTS), T4 1050 ms (the next CTS after a "hold" CTS of 0 packets).
"""

from __future__ import annotations

from dataclasses import dataclass

from canbridge.core.mapping.j1939 import (
    GLOBAL_ADDRESS,
    PGN_TP_CM,
    PGN_TP_DT,
    destination_of,
    make_id,
    pgn_of,
    priority_of,
    source_of,
)

MAX_SIZE = 1785  # 255 packets of 7 bytes
MIN_SIZE = 9  # 8 bytes or fewer go in one frame
MAX_TRANSFERS = 256  # transfers followed at once; more are counted as "limit"

_MS = 1_000_000
T1 = 750 * _MS
T2 = 1250 * _MS
T3 = 1250 * _MS
T4 = 1050 * _MS
_TIMERS = {"t1": T1, "t2": T2, "t3": T3, "t4": T4}

RTS = 16
CTS = 17
EOMA = 19
BAM = 32
ABORT = 255

REASONS = ("abort", "timeout_t1", "timeout_t2", "timeout_t3", "timeout_t4", "sequence", "missing", "size",
           "superseded", "limit")
"""Why transfers break: an abort; a timeout (and which); a packet out of sequence or beyond the total;
end of message acknowledged with packets this listener did not see; an announced size outside 9..1,785
bytes or not matching its packet count; a new announcement from the same sender replacing an
unfinished one; more than MAX_TRANSFERS at once."""


_TP_PRIORITY = 7


def _pgn3(pgn: int) -> bytes:
    return pgn.to_bytes(3, "little")


def _first_missing(t: _Transfer) -> int:
    return next(i for i in range(1, t.packets + 1) if not t.seen[i])


@dataclass(frozen=True, slots=True)
class Completed:
    """A reassembled message: decode it like a frame of ``pgn`` from ``source``."""

    pgn: int
    source: int
    destination: int  # GLOBAL_ADDRESS for BAM
    priority: int  # of the announcement (TP.CM)
    data: bytes
    timestamp_ns: int  # of the last packet


@dataclass(slots=True)
class _Transfer:
    broadcast: bool
    pgn: int
    size: int
    packets: int
    priority: int
    buf: bytearray
    seen: bytearray  # per packet number 1..packets: 1 once received
    received: int = 0
    next: int = 1  # BAM: the packet expected next
    window: tuple[int, int] = (0, 0)  # RTS/CTS: the packets the last CTS asked for; (0, 0): no CTS yet
    deadline: int = 0
    timer: str = "t1"
    per_cts: int = 255  # RTS/CTS: packets the sender takes per CTS (RTS byte 5)


class Reassembler:
    """Follows every transfer on one bus, keyed by (sender, destination)."""

    def __init__(self, max_transfers: int = MAX_TRANSFERS) -> None:
        self.max_transfers = max_transfers
        self._transfers: dict[tuple[int, int], _Transfer] = {}
        self._next_deadline: int | None = None
        self.completed = 0
        self.broken: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.duplicates = 0  # packets received twice with the same data (ignored)
        self.ignored = 0  # TP frames outside any transfer, short, or with an unknown control byte
        self.last_ts = 0  # timestamp of the newest frame fed
        self.local: int | None = None  # the bridge's claimed address: transfers to it are answered
        self.out: list[tuple[int, bytes]] = []  # CTS and end-of-message frames to send

    @property
    def active(self) -> int:
        return len(self._transfers)

    def counters(self) -> dict[str, int]:
        """For the bus status: completed, each broken reason with a count, duplicates, ignored, active."""
        out = {"completed": self.completed, **{k: v for k, v in self.broken.items() if v}}
        for name, n in (("duplicates", self.duplicates), ("ignored", self.ignored), ("active", self.active)):
            if n:
                out[name] = n
        return out

    def feed(self, can_id: int, data: bytes, ts: int) -> Completed | None:
        """One TP.CM or TP.DT frame (29-bit id, payload, timestamp in ns)."""
        self.last_ts = max(self.last_ts, ts)
        if self._next_deadline is not None and ts > self._next_deadline:
            self.expire(ts)
        if len(data) < 8:  # J1939-21: TP frames always carry 8 bytes
            self.ignored += 1
            return None
        pgn = pgn_of(can_id)
        sa, da = source_of(can_id), destination_of(can_id)
        if pgn == PGN_TP_DT:
            return self._data(sa, da, data, ts)
        if pgn == PGN_TP_CM:
            self._control(can_id, sa, da, data, ts)
        else:
            self.ignored += 1
        return None

    def take_out(self) -> list[tuple[int, bytes]]:
        out, self.out = self.out, []
        return out

    def expire(self, now: int) -> None:
        """Break every transfer whose timer ran out before ``now`` (ns, the frames' clock)."""
        nearest: int | None = None
        for key, t in list(self._transfers.items()):
            if t.deadline < now:
                self._break(key, f"timeout_{t.timer}")
            elif nearest is None or t.deadline < nearest:
                nearest = t.deadline
        self._next_deadline = nearest

    # --- internals ---------------------------------------------------------------------------------

    def _arm(self, t: _Transfer, timer: str, ts: int) -> None:
        t.timer = timer
        t.deadline = ts + _TIMERS[timer]
        if self._next_deadline is None or t.deadline < self._next_deadline:
            self._next_deadline = t.deadline

    def _break(self, key: tuple[int, int], reason: str) -> None:
        del self._transfers[key]
        self.broken[reason] += 1

    def _control(self, can_id: int, sa: int, da: int, data: bytes, ts: int) -> None:
        control = data[0]
        pgn = data[5] | (data[6] << 8) | (data[7] << 16)
        if control in (BAM, RTS):
            if control == BAM and da != GLOBAL_ADDRESS:
                self.ignored += 1
                return
            size, packets = data[1] | (data[2] << 8), data[3]
            key = (sa, da)
            if key in self._transfers:
                self._break(key, "superseded")
            if not MIN_SIZE <= size <= MAX_SIZE or packets != -(-size // 7):
                self.broken["size"] += 1
                return
            if len(self._transfers) >= self.max_transfers:
                self.broken["limit"] += 1
                return
            t = _Transfer(control == BAM, pgn, size, packets, priority_of(can_id), bytearray(packets * 7),
                          bytearray(packets + 1), per_cts=data[4] or 255)
            self._transfers[key] = t
            self._arm(t, "t1" if t.broadcast else "t3", ts)
            if control == RTS and da == self.local:
                self._clear_to_send(key, t, 1, ts)
            return
        if control == ABORT:
            for key in ((sa, da), (da, sa)):  # either side may abort
                aborted = self._transfers.get(key)
                if aborted is not None and not aborted.broadcast and aborted.pgn == pgn:
                    self._break(key, "abort")
                    return
            self.ignored += 1
            return
        # CTS and end of message come from the receiver: the transfer is (their destination, them)
        key = (da, sa)
        conn = self._transfers.get(key)
        if conn is None or conn.broadcast or conn.pgn != pgn or control not in (CTS, EOMA):
            self.ignored += 1
            return
        if control == EOMA:  # we would have completed it on its last packet
            self._break(key, "missing")
            return
        count, first = data[1], data[2]
        if count == 0:
            self._arm(conn, "t4", ts)  # hold the connection open
            return
        if first < 1 or first + count - 1 > conn.packets:
            self._break(key, "sequence")
            return
        conn.window = (first, first + count - 1)
        self._arm(conn, "t2", ts)

    def _data(self, sa: int, da: int, data: bytes, ts: int) -> Completed | None:
        key = (sa, da)
        t = self._transfers.get(key)
        if t is None:
            self.ignored += 1  # a transfer joined late, or one already broken
            return None
        seq = data[0]
        if not 1 <= seq <= t.packets:
            self._break(key, "sequence")
            return None
        start = (seq - 1) * 7
        chunk = data[1:8]
        if t.seen[seq]:
            if t.buf[start:start + 7] == chunk:
                self.duplicates += 1
                return None
            if t.broadcast:  # BAM has no retransmission: different data under a seen number is wrong
                self._break(key, "sequence")
                return None
        elif t.broadcast:
            if seq != t.next:  # a packet was lost or came out of order
                self._break(key, "sequence")
                return None
            t.next += 1
        elif t.window != (0, 0) and not t.window[0] <= seq <= t.window[1]:
            self._break(key, "sequence")  # a packet the responder did not ask for
            return None
        t.buf[start:start + 7] = chunk
        if not t.seen[seq]:
            t.seen[seq] = 1
            t.received += 1
        if t.received == t.packets:
            del self._transfers[key]
            self.completed += 1
            if not t.broadcast and da == self.local:
                self.out.append((make_id(_TP_PRIORITY, PGN_TP_CM, da, sa),
                                 bytes((EOMA, t.size & 0xFF, t.size >> 8, t.packets, 0xFF)) + _pgn3(t.pgn)))
            return Completed(t.pgn, sa, da, t.priority, bytes(t.buf[:t.size]), ts)
        if not t.broadcast and da == self.local and seq == t.window[1]:
            self._clear_to_send(key, t, _first_missing(t), ts)
            return None
        self._arm(t, "t3" if not t.broadcast and seq == t.window[1] else "t1", ts)
        return None

    def _clear_to_send(self, key: tuple[int, int], t: _Transfer, first: int, ts: int) -> None:
        """As the receiver: a CTS for the next window from packet ``first``."""
        count = min(t.per_cts, t.packets - first + 1)
        t.window = (first, first + count - 1)
        self._arm(t, "t2", ts)
        self.out.append((make_id(_TP_PRIORITY, PGN_TP_CM, key[1], key[0]),
                         bytes((CTS, count, first, 0xFF, 0xFF)) + _pgn3(t.pgn)))
