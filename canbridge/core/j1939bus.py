"""The J1939 side of one bus's receive path: frames whose exact id is not in the bus's lookup are
matched by (PGN, source address), counted per (PGN, source) when the PGN is mapped but the source is
not, and handed to the transport-protocol reassembler when they are TP.CM / TP.DT frames; DM1 (active
trouble codes) of every source is kept decoded.

It runs only for frames the exact-id lookup missed, on buses with J1939 mappings, so plain DBC traffic
never reaches it. A matched id is added to the exact-id lookup, so the next frame with that id is an
exact hit again: the per-frame cost of PGN matching is paid once per distinct id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from canbridge._j1939 import Dm1
from canbridge._model import FrameFlags, RawFrame
from canbridge.core.can.j1939socket import J1939Message, transport_pgns
from canbridge.core.can.j1939tp import Reassembler
from canbridge.core.mapping.codec import Decoder
from canbridge.core.mapping.j1939 import (
    NULL_ADDRESS,
    PGN_DM1,
    PGN_TP_CM,
    PGN_TP_DT,
    decode_dm1,
    make_id,
    match_key,
)
from canbridge.core.mapping.table import EXT_KEY, MessageEntry

log = logging.getLogger("canbridge.bus")

MAX_DM1_SOURCES = 254  # every source address
MAX_UNCONFIGURED = 1024  # distinct (PGN, source) pairs counted; more are counted together
_ID_MASK = 0x1FFFFFFF
_EXT = int(FrameFlags.EXTENDED)


@dataclass(frozen=True, slots=True)
class HeardSource:
    """A mapped PGN heard from a source address the mapping does not decode."""

    pgn: int
    source: int
    message: str  # the DBC message of that PGN
    frames: int


class J1939Receiver:
    """PGN matching, unconfigured sources and the transport protocol of one bus."""

    def __init__(self, index: Mapping[int, MessageEntry], lookup: dict[int, tuple[int, Decoder]],
                 last: dict[int, bytes], bus: str = "", max_heard: int = 0) -> None:
        self.bus = bus
        self._index = {k: (e.index, e.decoder) for k, e in index.items()}
        self._message_of_pgn = {k >> 8: str(e.db_message.name) for k, e in index.items()}
        self._template: dict[int, MessageEntry] = {}  # PGN -> an entry of it, for heard sources' signals
        for k, e in index.items():
            self._template.setdefault(k >> 8, e)
        # Sources heard but not configured get signals at run time through ``grow`` (core/heard.py), at
        # most ``max_heard`` addresses per bus: a flood of forged source addresses must not grow the table.
        self.grow: Callable[[MessageEntry, int], MessageEntry | None] | None = None
        self.max_heard = max_heard
        self.heard_sources: set[int] = set()
        self._limit_logged = False
        self._lookup = lookup
        self._last = last
        self._keys: dict[int, list[int]] = {}  # message index -> its frame keys in the lookup
        self._holders: dict[int, list[int]] = {}  # message index -> [the key its values were decoded from]
        self._decoders = {e.index: e.decoder for e in index.values()}
        self.unconfigured: dict[int, int] = {}  # match key -> frames
        self.unconfigured_other = 0  # frames of pairs beyond MAX_UNCONFIGURED
        self.tp = Reassembler()
        self.tp_frames = 0  # TP.CM and TP.DT frames consumed (they are not unmapped frames)
        self.completed: list[RawFrame] = []  # reassembled messages waiting to be decoded
        self.dm1: dict[int, Dm1] = {}  # source address -> its latest DM1 (any source, configured or not)
        self._tp_mono = 0.0  # monotonic time of the newest TP frame, to run the frames' clock on
        self.on_dm1: Callable[[Dm1 | None, Dm1], None] | None = None  # the diagnostic events' hook
        # The kernel's J1939 socket reassembles (core/can/j1939socket.py): TP frames of the raw socket
        # are then ignored, and those the kernel leaves to us come from that socket instead.
        self.kernel = False
        self.kernel_completed = 0
        self.kernel_broken: dict[str, int] = {}
        self.long_pgns = sorted({k >> 8 for k, e in index.items() if e.db_message.length > 8})
        for e in index.values():
            self._bind(e.key, e.index)

    def _bind(self, key: int, mi: int) -> tuple[int, Decoder]:
        """Put a frame key of a message into the exact-id lookup.

        The store skips decoding a payload equal to the last one *of that key*; when one message is
        reached through several keys (another priority or destination), a decode through one key must
        forget the others' last payloads, or a payload seen before under another key would be skipped
        although the values now hold a different one's.
        """
        keys = self._keys.setdefault(mi, [])
        keys.append(key)
        dec = self._decoders[mi]
        if len(keys) == 1:
            hit = self._lookup[key] = (mi, dec)
            return hit
        holder = self._holders.setdefault(mi, [keys[0]])  # the first key decoded alone until now
        for k in keys:
            self._lookup[k] = (mi, _forgetting(dec, k, holder, self._last))
        return self._lookup[key]

    def resolve(self, key: int, data: bytes, ts: int) -> tuple[int, Decoder] | None:
        """The lookup entry of a frame the exact-id lookup missed, or None (not mapped)."""
        if not key & EXT_KEY:
            return None
        can_id = key & _ID_MASK
        mk = match_key(can_id)
        hit = self._index.get(mk)
        pgn = mk >> 8
        if pgn == PGN_DM1:  # never bound to the exact-id lookup, so that every DM1 comes through here
            self._dm1(mk & 0xFF, data, ts)
            if hit is not None:
                self._last.pop(key, None)
                return hit
        elif hit is not None:
            return self._bind(key, hit[0])
        if pgn in (PGN_TP_CM, PGN_TP_DT):
            self.tp_frames += 1
            if self.kernel:
                return None
            self._tp_mono = time.monotonic()
            done = self.tp.feed(can_id, data, ts)
            if done is not None:  # decoded like a single frame of its PGN, right after this batch
                self.completed.append(
                    (make_id(done.priority, done.pgn, done.source, done.destination), _EXT, done.data, ts))
            return None
        if pgn in self._message_of_pgn:
            if self.grow is not None and mk not in self.unconfigured:
                entry = self._heard(mk)
                if entry is not None:
                    if pgn == PGN_DM1:  # DM1 stays out of the exact-id lookup (above)
                        self._last.pop(key, None)
                        return entry.index, entry.decoder
                    return self._bind(key, entry.index)
            n = self.unconfigured.get(mk)
            if n is None and len(self.unconfigured) >= MAX_UNCONFIGURED:
                self.unconfigured_other += 1
            else:
                self.unconfigured[mk] = (n or 0) + 1
        return None

    def _heard(self, mk: int) -> MessageEntry | None:
        """Signals for a mapped PGN from a source nobody configured, within the bound of sources."""
        assert self.grow is not None
        source = mk & 0xFF
        if source >= NULL_ADDRESS:  # 254 (cannot claim) and 255 are not senders of parameter groups
            return None
        if source not in self.heard_sources and len(self.heard_sources) >= self.max_heard:
            if not self._limit_logged and self.max_heard:
                self._limit_logged = True
                log.warning("bus %s: more than %d J1939 source addresses heard that no mapping configures "
                            "(j1939_max_unknown_sources): frames of further ones (first 0x%02X) are only "
                            "counted in unconfigured_sources", self.bus, self.max_heard, source)
            return None
        entry = self.grow(self._template[mk >> 8], source)
        if entry is None:
            return None
        self.heard_sources.add(source)
        self._index[mk] = (entry.index, entry.decoder)
        self._decoders[entry.index] = entry.decoder
        return entry

    def _dm1(self, source: int, data: bytes, ts: int) -> None:
        old = self.dm1.get(source)
        if old is None and len(self.dm1) >= MAX_DM1_SOURCES:
            return
        dm1 = decode_dm1(data, source, ts, 1 if old is None else old.messages + 1)
        if dm1 is not None:
            self.dm1[source] = dm1
            if self.on_dm1 is not None:
                self.on_dm1(old, dm1)

    def socket_pgns(self) -> list[int]:
        """The PGNs the kernel's J1939 socket is filtered to: what can come multi-packet, and TP."""
        return transport_pgns(self.long_pgns, (PGN_DM1,))

    def kernel_messages(self, messages: list[J1939Message]) -> None:
        """From the kernel's J1939 socket: reassembled messages are decoded after this batch; TP frames
        of transfers the kernel does not reassemble (between two other ECUs) go to the reassembler."""
        for m in messages:
            if m.truncated:
                self.kernel_broken["size"] = self.kernel_broken.get("size", 0) + 1
            elif len(m.data) <= 8:  # only TP.CM / TP.DT come this short
                self._tp_mono = time.monotonic()
                done = self.tp.feed(make_id(m.priority, m.pgn, m.source, m.destination), m.data,
                                    m.timestamp_ns)
                if done is not None:
                    self.completed.append((make_id(done.priority, done.pgn, done.source, done.destination),
                                           _EXT, done.data, done.timestamp_ns))
            else:
                self.kernel_completed += 1
                self.completed.append((make_id(m.priority, m.pgn, m.source, m.destination), _EXT, m.data,
                                       m.timestamp_ns))

    def kernel_transfer_broken(self, reason: str) -> None:
        """The kernel broke a transfer it was reassembling (RX ABORT on its error queue)."""
        if reason == "timeout":  # the kernel does not say which timer: its BAM/RTS timers are T1..T4
            reason = "timeout_kernel"
        self.kernel_broken[reason] = self.kernel_broken.get(reason, 0) + 1

    def transport_counters(self) -> dict[str, int]:
        """The reassembler's counters with the kernel's added: ``completed`` is both, ``kernel`` the
        part the kernel reassembled (present while the kernel's socket is in use)."""
        out = self.tp.counters()
        if self.kernel or self.kernel_completed or self.kernel_broken:
            out["completed"] += self.kernel_completed
            out["kernel"] = self.kernel_completed
            for reason, n in self.kernel_broken.items():
                out[reason] = out.get(reason, 0) + n
        return out

    def take_completed(self) -> list[RawFrame]:
        done, self.completed = self.completed, []
        return done

    def expire(self, mono: float) -> None:
        """Transfers that wait for a frame that never comes time out on the frames' clock, moved on by
        the time since the newest TP frame (a replayed log's timestamps are not the wall clock)."""
        if self.tp.active:
            self.tp.expire(self.tp.last_ts + int((mono - self._tp_mono) * 1e9))

    def unconfigured_summary(self) -> dict[str, int]:
        """``heard()`` for BusStatus: "<message>@0x<SA>" -> frames ("*": pairs beyond the bound)."""
        out = {f"{h.message}@0x{h.source:02X}": h.frames for h in self.heard()}
        if self.unconfigured_other:
            out["*"] = self.unconfigured_other
        return out

    def heard(self) -> list[HeardSource]:
        """Mapped PGNs heard from unconfigured sources, by PGN then source."""
        return [HeardSource(k >> 8, k & 0xFF, self._message_of_pgn[k >> 8], n)
                for k, n in sorted(self.unconfigured.items())]


def _forgetting(dec: Decoder, key: int, holder: list[int], last: dict[int, bytes]) -> Decoder:
    """``dec`` that also drops the last payload of the key decoded before it (``holder[0]``): only the
    key whose payload the values hold may skip an equal payload."""
    def decode(data: bytes, values: list[object], changed: list[int]) -> None:
        dec(data, values, changed)
        prev = holder[0]
        if prev != key:
            last.pop(prev, None)
            holder[0] = key
    return decode
