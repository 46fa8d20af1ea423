"""J1939 diagnostics as plugins see them: the active trouble codes (DM1) an ECU broadcasts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dtc:
    """One diagnostic trouble code: a suspect parameter (SPN) and its failure mode (FMI)."""

    spn: int  # suspect parameter number, 19 bits
    fmi: int  # failure mode identifier, 5 bits
    occurrences: int  # occurrence count, 7 bits (127: not available)
    conversion_method: int  # 0: the SPN layout of J1939-73 version 4 (the one decoded); 1: an older one


@dataclass(frozen=True, slots=True)
class Dm1:
    """The latest DM1 (PGN 65226, active diagnostic trouble codes) of one source address; also the
    latest DM2 (PGN 65227, previously active codes: the same layout) in ``BusStatus.dm2``.

    Lamps are ``off``, ``on``, ``reserved`` or ``not_available``; their flash ``slow`` (1 Hz),
    ``fast`` (2 Hz), ``reserved`` or ``none``.
    """

    source: int
    mil: str  # malfunction indicator lamp
    red_stop: str
    amber_warning: str
    protect: str
    mil_flash: str
    red_stop_flash: str
    amber_warning_flash: str
    protect_flash: str
    dtcs: tuple[Dtc, ...]
    timestamp_ns: int  # of the frame (or the last packet of the transfer) that carried it
    messages: int  # DM1 messages received from this source
