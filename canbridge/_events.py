"""Diagnostic events as plugins see them: a J1939 trouble code appeared or cleared, a CANopen EMCY."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DiagnosticEvent:
    """One diagnostic event of a bus.

    ``kind``: ``dtc_appeared`` / ``dtc_cleared`` (J1939 DM1, ``source`` the source address; ``detail``
    holds spn, fmi, occurrences, conversion_method and the lamps), ``lamps_changed`` (DM1 lamps alone),
    ``emcy`` / ``emcy_reset`` (CANopen, ``source`` the node id; ``detail`` holds code, error_class,
    error_register, register_bits, manufacturer as hex) or ``suppressed`` (``detail["count"]`` events of
    this source above the rate bound were dropped).
    """

    timestamp_ns: int
    bus: str
    source: int
    kind: str
    detail: dict[str, object] = field(default_factory=dict)
