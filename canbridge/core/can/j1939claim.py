"""J1939-81 address claiming as a state machine: no bus, no clock of its own (every call takes ``now``,
monotonic seconds), frames in as (29-bit id, payload), frames out as a list of the same to send.

The procedure: send Address Claimed (PGN 60928, to global, our NAME as data) for the preferred address
and wait 250 ms; nobody contesting it, the address is ours and the bridge may transmit. A claim for
our address with another NAME is decided by the NAMEs: the lower one wins. Winning, we send our claim
again (the other must yield). Losing, an arbitrary-address-capable NAME claims the next free address of
its range; any other sends Cannot Claim (source address 254) and stops transmitting. A Request (PGN
59904) for PGN 60928, to global or to our address, is answered with our claim (or with Cannot Claim
once we lost). A lost claim is tried again after ``retry_s`` if set, and whenever the bus reopens.
"""

from __future__ import annotations

from enum import StrEnum

from canbridge.core.mapping.j1939 import (
    GLOBAL_ADDRESS,
    NULL_ADDRESS,
    PGN_REQUEST,
    destination_of,
    make_id,
    pgn_of,
    source_of,
)

PGN_ADDRESS_CLAIMED = 0xEE00  # 60928
CLAIM_WAIT_S = 0.25  # J1939-81: no other traffic until 250 ms after the claim
CLAIM_PRIORITY = 6
REQUEST_PRIORITY = 6
ARBITRARY_RANGE = (128, 247)  # J1939 addresses for self-configurable ECUs

Out = list[tuple[int, bytes]]


class ClaimState(StrEnum):
    IDLE = "idle"  # not started (bus not open yet)
    CLAIMING = "claiming"  # claim sent, waiting 250 ms
    CLAIMED = "claimed"  # the address is ours: transmission allowed
    LOST = "lost"  # cannot claim: no transmission


def claim_frame(name: int, address: int) -> tuple[int, bytes]:
    """Address Claimed (or Cannot Claim with address 254): to global, the NAME little-endian."""
    return make_id(CLAIM_PRIORITY, PGN_ADDRESS_CLAIMED, address, GLOBAL_ADDRESS), name.to_bytes(8, "little")


def request_frame(pgn: int, source: int, destination: int = GLOBAL_ADDRESS) -> tuple[int, bytes]:
    """Request (PGN 59904) for ``pgn``: 3 bytes, little-endian."""
    return make_id(REQUEST_PRIORITY, PGN_REQUEST, source, destination), pgn.to_bytes(3, "little")


class AddressClaimer:
    """One NAME claiming one address on one bus."""

    def __init__(self, name: int, preferred: int, address_range: tuple[int, int] | None = None,
                 retry_s: float | None = None) -> None:
        if not 0 <= name < 1 << 64:
            raise ValueError(f"NAME {name} is not a 64-bit number")
        if not 0 <= preferred <= 253:
            raise ValueError(f"preferred address {preferred} is not 0..253")
        self.name = name
        self.preferred = preferred
        self.arbitrary = bool(name >> 63)
        self.address_range = (address_range or ARBITRARY_RANGE) if self.arbitrary else None
        self.retry_s = retry_s
        self.state = ClaimState.IDLE
        self.address = preferred  # the address claimed or being claimed
        self.deadline: float | None = None  # when to call tick() next (end of the wait, or a retry)
        self.reason: str | None = None  # why the claim is lost (or was lost last)
        self.claims = 0  # Address Claimed frames sent
        self.contests = 0  # claims of our address by another NAME heard
        self.taken: dict[int, int] = {}  # address -> NAME of the others heard claiming it

    @property
    def can_transmit(self) -> bool:
        return self.state is ClaimState.CLAIMED

    def refusal(self) -> str | None:
        """Why the bridge may not transmit now, or None."""
        if self.state is ClaimState.CLAIMED:
            return None
        if self.state is ClaimState.CLAIMING:
            return f"claiming address 0x{self.address:02X} with NAME 0x{self.name:016X} (250 ms wait)"
        if self.state is ClaimState.LOST:
            return f"address claim lost: {self.reason}"
        return "no address claimed yet (the bus is not open)"

    def start(self, now: float) -> Out:
        """Claim the preferred address (bus opened, or a retry)."""
        self.taken.clear()
        return self._claim(self.preferred, now)

    def stop(self) -> None:
        """The bus closed: the claim must be made again when it reopens."""
        if self.state is not ClaimState.LOST:
            self.state = ClaimState.IDLE
        self.deadline = None

    def tick(self, now: float) -> Out:
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if self.state is ClaimState.CLAIMING:
            self.state = ClaimState.CLAIMED
            self.reason = None
        elif self.state is ClaimState.LOST and self.retry_s is not None:
            return self.start(now)
        return []

    def on_frame(self, can_id: int, data: bytes, now: float) -> Out:
        """A frame heard on the bus: only Address Claimed and Requests for it concern the claim."""
        pgn = pgn_of(can_id)
        if pgn == PGN_REQUEST:
            if len(data) < 3 or int.from_bytes(data[:3], "little") != PGN_ADDRESS_CLAIMED:
                return []
            if destination_of(can_id) not in (GLOBAL_ADDRESS, self.address) or self.state is ClaimState.IDLE:
                return []
            if self.state is ClaimState.LOST:
                return [claim_frame(self.name, NULL_ADDRESS)]
            self.claims += 1
            return [claim_frame(self.name, self.address)]
        if pgn != PGN_ADDRESS_CLAIMED or len(data) < 8:
            return []
        sa, other = source_of(can_id), int.from_bytes(data[:8], "little")
        if other == self.name or sa == NULL_ADDRESS:
            return []  # our own claim echoed, or someone's Cannot Claim
        self.taken[sa] = other
        if sa != self.address or self.state in (ClaimState.IDLE, ClaimState.LOST):
            return []
        self.contests += 1
        if other > self.name:  # we win: claim again so that the other yields
            self.claims += 1
            return [claim_frame(self.name, self.address)]
        return self._lose(f"NAME 0x{other:016X} (lower, so it wins) claimed address 0x{sa:02X}", now)

    # --- internals ---

    def _claim(self, address: int, now: float) -> Out:
        self.address = address
        self.state = ClaimState.CLAIMING
        self.deadline = now + CLAIM_WAIT_S
        self.claims += 1
        return [claim_frame(self.name, address)]

    def _lose(self, why: str, now: float) -> Out:
        nxt = self._next_free()
        if nxt is not None:
            return self._claim(nxt, now)
        self.state = ClaimState.LOST
        self.reason = why + ("; no free address left in its range" if self.arbitrary else
                             "; the NAME is not arbitrary address capable")
        self.deadline = now + self.retry_s if self.retry_s is not None else None
        return [claim_frame(self.name, NULL_ADDRESS)]

    def _next_free(self) -> int | None:
        """The next address of the range after the current one, skipping those others hold with a
        lower NAME (wrapping once round the range)."""
        if self.address_range is None:
            return None
        lo, hi = self.address_range
        span = hi - lo + 1
        start = self.address - lo + 1 if lo <= self.address <= hi else 0
        for i in range(span):
            a = lo + (start + i) % span
            if a == self.address:
                continue
            holder = self.taken.get(a)
            if holder is None or holder > self.name:
                return a
        return None
