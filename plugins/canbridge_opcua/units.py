"""DBC unit strings to UNECE Recommendation 20 common codes, as OPC UA EUInformation (Part 8, 5.6.3)."""

from __future__ import annotations

from dataclasses import dataclass

UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True, slots=True)
class Unit:
    code: str  # UNECE common code
    display: str  # what clients show
    description: str

    @property
    def unit_id(self) -> int:
        """The UnitId of OPC UA Part 8: the common code's ASCII bytes packed into an Int32."""
        uid = 0
        for c in self.code:
            uid = (uid << 8) | ord(c)
        return uid


def _u(code: str, display: str, description: str, *aliases: str) -> list[tuple[str, Unit]]:
    unit = Unit(code, display, description)
    return [(a, unit) for a in (display, *aliases)]


# Keys are compared case-sensitively first (m vs M matters for milli/mega), then case-insensitively.
_TABLE: dict[str, Unit] = dict(
    pair
    for group in (
        _u("RPM", "r/min", "revolutions per minute", "rpm", "RPM", "1/min", "U/min"),
        _u("CEL", "°C", "degree Celsius", "degC", "C", "deg C", "°C", "Celsius", "degreeC"),
        _u("FAH", "°F", "degree Fahrenheit", "degF", "°F", "F"),
        _u("KEL", "K", "kelvin"),
        _u("AMP", "A", "ampere", "Amp", "amps"),
        _u("4K", "mA", "milliampere"),
        _u("VLT", "V", "volt", "Volt", "volts"),
        _u("2Z", "mV", "millivolt"),
        _u("P1", "%", "percent", "pct", "percent"),
        _u("WTT", "W", "watt"),
        _u("KWT", "kW", "kilowatt", "KW"),
        _u("KWH", "kWh", "kilowatt hour", "kW.h", "KWh"),
        _u("WHR", "Wh", "watt hour"),
        _u("AMH", "Ah", "ampere hour"),
        _u("OHM", "Ω", "ohm", "Ohm", "ohm", "Ohms"),
        _u("MTR", "m", "metre"),
        _u("KMT", "km", "kilometre"),
        _u("MMT", "mm", "millimetre"),
        _u("CMT", "cm", "centimetre"),
        _u("KMH", "km/h", "kilometre per hour", "kph", "kmh", "km/hr"),
        _u("MTS", "m/s", "metre per second"),
        _u("HM", "mile/h", "mile per hour", "mph"),
        _u("MSK", "m/s²", "metre per second squared", "m/s^2", "m/s2"),
        _u("SEC", "s", "second", "sec"),
        _u("C26", "ms", "millisecond"),
        _u("MIN", "min", "minute"),
        _u("HUR", "h", "hour", "hr"),
        _u("HTZ", "Hz", "hertz"),
        _u("KHZ", "kHz", "kilohertz"),
        _u("PAL", "Pa", "pascal"),
        _u("KPA", "kPa", "kilopascal"),
        _u("BAR", "bar", "bar"),
        _u("MBR", "mbar", "millibar"),
        _u("PS", "psi", "pound-force per square inch"),
        _u("NU", "N·m", "newton metre", "Nm", "N.m", "N*m"),
        _u("NEW", "N", "newton"),
        _u("KGM", "kg", "kilogram"),
        _u("GRM", "g", "gram"),
        _u("LTR", "l", "litre", "L"),
        _u("E32", "l/h", "litre per hour", "L/h"),
        _u("DD", "°", "degree (angle)", "deg", "degree", "°"),
        _u("C81", "rad", "radian"),
        _u("2A", "rad/s", "radian per second"),
        _u("E01", "N/cm²", "newton per square centimetre"),
    )
    for pair in group
)
# Only longer strings are folded: for one or two letters the case is the meaning (S is siemens, not s).
_FOLDED = {k.casefold(): v for k, v in reversed(list(_TABLE.items())) if len(k) > 2}


def unece_unit(unit: str | None) -> Unit | None:
    """The UNECE unit for a DBC unit string, or None when there is none (or no unit)."""
    if not unit or not unit.strip():
        return None
    text = unit.strip()
    return _TABLE.get(text) or _FOLDED.get(text.casefold())
