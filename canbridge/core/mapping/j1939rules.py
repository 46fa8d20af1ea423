"""What ``canbridge check`` (and, for the hard ones, the mapping table) says about J1939 mappings: signals
outside the data length, groups too long for the transport protocol, a ``destination`` where no PDU1
group is sent, source names that mean two things on one bus (problems); PDU1 ids that carry a
destination, one PGN defined twice, J1939 messages with 11-bit ids (warnings: it runs, but likely not as
meant). Each message names the mapping file, the message and, where it is about one, the signal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from canbridge.core.mapping.codec import fits
from canbridge.core.mapping.j1939 import GLOBAL_ADDRESS, NULL_ADDRESS, is_pdu1, pgn_of, source_of

MAX_J1939_LENGTH = 1785  # 255 TP.DT packets of 7 bytes (J1939-21)


def _is_j1939(m: Any, protocol: str | None) -> bool:
    if protocol is not None:
        return protocol == "j1939"
    return getattr(m, "protocol", None) == "j1939" and bool(m.is_extended_frame)


def message_problems(file: str, messages: Iterable[Any], protocol: str | None, strict: bool) -> list[str]:
    """J1939 messages longer than 1,785 bytes, signals beyond byte 1,785 and (strict mode: lenient mode says
    so itself and leaves them out) signals outside a J1939 message's data length."""
    out = []
    for m in messages:
        if not _is_j1939(m, protocol):
            continue
        if m.length > MAX_J1939_LENGTH:
            out.append(f"{file}: J1939 message {m.name} is {m.length} bytes long; the transport protocol carries "
                       f"{MAX_J1939_LENGTH} at most")
        for s in m.signals:
            if not fits(s, m.length):  # lenient mode leaves it out, and says so
                limit = m.length if strict else None
            else:
                limit = MAX_J1939_LENGTH if not fits(s, MAX_J1939_LENGTH) else None
            if limit is not None:
                out.append(f"{file}: signal {m.name}.{s.name} (start bit {s.start}, {s.length} bits) does not fit in "
                           f"the {limit} data bytes of J1939 message {m.name}")
    return out


def destination_problem(file: str, destination: int | None, sent: Sequence[Any]) -> str | None:
    """``destination`` only means something for PDU1 groups the mapping sends."""
    if destination is None:
        return None
    if destination == NULL_ADDRESS:
        return f"destination 0x{NULL_ADDRESS:X} is the null address (an ECU without an address), not a destination"
    if not sent:
        return (f"destination 0x{destination:02X} is given but {file} has no J1939 message the bridge sends "
                "(writable, transmit): it applies only to those")
    pdu2 = [m for m in sent if not is_pdu1(pgn_of(m.frame_id))]
    if len(pdu2) == len(sent):
        names = ", ".join(f"{m.name} (PGN 0x{pgn_of(m.frame_id):X})" for m in pdu2)
        return (f"destination 0x{destination:02X} is given but {file} sends only PDU2 groups ({names}): a PDU2 "
                "group (PDU format >= 240) is broadcast and has no destination address")
    return None


def message_warnings(file: str, messages: Sequence[Any], protocol: str | None, sent: set[str],
                     has_sources: bool) -> list[str]:
    """It runs, but: PDU1 ids carrying a destination byte, one PGN defined by several messages, messages
    marked J1939 with 11-bit ids."""
    out = []
    by_pgn: dict[int, list[Any]] = {}
    for m in messages:
        if protocol is None and getattr(m, "protocol", None) == "j1939" and not m.is_extended_frame:
            out.append(f"{file}: message {m.name} is marked J1939 (VFrameFormat J1939PG) but has the 11-bit id "
                       f"0x{m.frame_id:X}: J1939 ids are extended (29 bits); it is matched as a plain frame")
            continue
        if not _is_j1939(m, protocol):
            continue
        pgn = pgn_of(m.frame_id)
        by_pgn.setdefault(pgn, []).append(m)
        ps = (m.frame_id >> 8) & 0xFF
        if is_pdu1(pgn) and ps not in (0, GLOBAL_ADDRESS) and m.name not in sent:
            out.append(f"{file}: message {m.name} (id 0x{m.frame_id:X}) is a PDU1 group: its PS byte 0x{ps:02X} is "
                       f"a destination address, not part of the PGN (0x{pgn:X}); frames of PGN 0x{pgn:X} to any "
                       "destination decode into it")
    for pgn, ms in sorted(by_pgn.items()):
        if len(ms) > 1 and not has_sources and len({source_of(m.frame_id) for m in ms}) == len(ms):
            names = ", ".join(f"{m.name} (source 0x{source_of(m.frame_id):02X})" for m in ms)
            out.append(f"{file}: PGN 0x{pgn:X} is defined by {len(ms)} messages, {names}: each decodes only the "
                       "source address of its own id; one message with 'sources' names the senders instead")
    return out


def source_name_problems(bus: str, seen: dict[int, str], names: dict[str, int], file: str,
                         sources: dict[int, str]) -> list[str]:
    """The source names of one mapping against those earlier mappings of the bus gave (``seen``: address ->
    name, ``names``: name -> address, both updated): one address, one name, on a bus."""
    out = []
    for address, name in sorted(sources.items()):
        if seen.get(address, name) != name:
            out.append(f"{file}: sources: address 0x{address:02X} is named {name!r} here and {seen[address]!r} "
                       f"by another mapping of bus {bus}: one source has one name on a bus")
        elif names.get(name, address) != address:
            out.append(f"{file}: sources: name {name!r} is given to 0x{address:02X} here and to "
                       f"0x{names[name]:02X} by another mapping of bus {bus}: one name, one source address")
        seen.setdefault(address, name)
        names.setdefault(name, address)
    return out
