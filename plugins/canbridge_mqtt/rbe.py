"""Report by exception: which of a batch of changes to publish (deadband, quality change, maximum age).

One ``ReportFilter`` per output (Sparkplug, JSON): each remembers what it last reported per signal.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from canbridge import Quality, SignalInfo, SignalValue

Change = tuple[str, object, Quality, int | None]
"""One reported change: ``(signal name, value, quality, source timestamp in ms since the epoch)``."""


def deadbands(signals: Iterable[SignalInfo], config: Mapping[str, str | float]) -> dict[str, float]:
    """The absolute deadband of each signal that has one: the last matching glob wins; ``'N%'`` is that
    percentage of the signal's range (maximum - minimum)."""
    out: dict[str, float] = {}
    for info in signals:
        band: str | float | None = None
        for glob, b in config.items():
            if fnmatch.fnmatchcase(info.name, glob):
                band = b
        if band is None or info.value_type is bool:
            continue
        if isinstance(band, str):
            text = band.strip()
            pct = text.endswith("%")
            value = float(text[:-1]) * (info.maximum - info.minimum) / 100.0 if pct else float(text)
        else:
            value = float(band)
        if value > 0:
            out[info.name] = value
    return out


@dataclass(slots=True)
class _Last:
    value: object
    quality: Quality
    sent_ns: int


class ReportFilter:
    """Keeps the last reported value of each signal and decides what a new batch must report."""

    def __init__(self, bands: Mapping[str, float], max_age_s: float | None) -> None:
        self.bands = dict(bands)
        self.max_age_ns = None if max_age_s is None else int(max_age_s * 1e9)
        self.last: dict[str, _Last] = {}
        self.suppressed = 0  # changes inside their deadband, not reported

    def reset(self) -> None:
        """Forget what was reported (after a birth: the birth carries every value)."""
        self.last.clear()

    def mark(self, values: Iterable[SignalValue], now_ns: int | None = None) -> None:
        """Record values as reported without reporting them (what a birth certificate carried)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        for v in values:
            self.last[v.name] = _Last(v.value, v.quality, now)

    def select(self, batch: Iterable[SignalValue], now_ns: int | None = None) -> list[Change]:
        """The changes of ``batch`` to report: a new quality, a value outside the deadband around the last
        reported one, or any new value of a signal without a deadband."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        out: list[Change] = []
        for v in batch:
            last = self.last.get(v.name)
            if last is not None and last.quality is v.quality:
                if v.value == last.value and type(v.value) is type(last.value):
                    continue
                band = self.bands.get(v.name)
                if (band is not None and isinstance(v.value, int | float) and isinstance(last.value, int | float)
                        and abs(v.value - last.value) < band):
                    self.suppressed += 1
                    continue
            self.last[v.name] = _Last(v.value, v.quality, now)
            out.append(_change(v))
        return out

    def expired(self, now_ns: int | None = None) -> list[str]:
        """Signals whose last report is older than the maximum age (to be sent again unchanged)."""
        if self.max_age_ns is None:
            return []
        now = time.monotonic_ns() if now_ns is None else now_ns
        limit = now - self.max_age_ns
        return [name for name, last in self.last.items() if last.sent_ns <= limit]

    def refresh(self, values: Iterable[SignalValue], now_ns: int | None = None) -> list[Change]:
        """Report ``values`` (the expired signals' current values) whatever changed, and restart their age."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        out: list[Change] = []
        for v in values:
            self.last[v.name] = _Last(v.value, v.quality, now)
            out.append(_change(v))
        return out


def _change(v: SignalValue) -> Change:
    return (v.name, v.value, v.quality, None if v.timestamp_ns is None else v.timestamp_ns // 1_000_000)
