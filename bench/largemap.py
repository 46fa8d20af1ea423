"""A large synthetic mapping for scale benchmarks: N messages of 8 signals, as a real DBC file.

Real mappings are large (a full J1939 DBC has more than 12,000 signals), and the figures of issue #14 are
taken at 10,000 signals: 1,250 messages of 8 signals, 100 ms cycle. The signal mix is what vehicle DBCs
hold: scaled temperatures and speeds with units and limits, signed values, a choice (enumeration), plain
counters and one-bit flags, so every plugin builds every kind of node/register it has.

    from largemap import write_dbc
    write_dbc(path, messages=1250)            # 10,000 signals

or from the shell: ``python bench/largemap.py out.dbc 1250``.
"""

from __future__ import annotations

import sys
from pathlib import Path

FIRST_ID = 0x100
CYCLE_MS = 100

# (name, start bit, length, signed, factor, offset, minimum, maximum, unit): eight signals filling 8 bytes.
SIGNALS: tuple[tuple[str, int, int, bool, float, float, float, float, str], ...] = (
    ("Temp", 0, 8, False, 0.5, -40, -40, 87.5, "degC"),
    ("Speed", 8, 16, False, 0.01, 0, 0, 655.35, "km/h"),
    ("Torque", 24, 8, True, 2, 0, -256, 254, "Nm"),
    ("Mode", 32, 8, False, 1, 0, 0, 3, ""),
    ("Counter", 40, 8, False, 1, 0, 0, 255, ""),
    ("Level", 48, 6, False, 2, 0, 0, 126, "%"),
    ("Enable", 54, 1, False, 1, 0, 0, 1, ""),
    ("Fault", 55, 1, False, 1, 0, 0, 1, ""),
)
MODE_CHOICES = {0: "Off", 1: "Idle", 2: "Run", 3: "Fault"}


def message_id(i: int) -> int:
    """The CAN id of message ``i`` (11-bit ids while they last, then 29-bit)."""
    return FIRST_ID + i if FIRST_ID + i <= 0x7FF else 0x80000000 | (0x1000000 + i)


def message_name(i: int) -> str:
    return f"Msg{i:04d}"


def dbc_text(messages: int) -> str:
    """The DBC source of ``messages`` messages of eight signals each."""
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU GW", ""]
    for i in range(messages):
        lines.append(f"BO_ {message_id(i)} {message_name(i)}: 8 ECU")
        for name, start, length, signed, factor, offset, lo, hi, unit in SIGNALS:
            sign = "-" if signed else "+"
            lines.append(f' SG_ {name} : {start}|{length}@1{sign} ({factor:g},{offset:g}) [{lo:g}|{hi:g}] "{unit}" GW')
        lines.append("")
    lines.append('BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;')
    lines.append('BA_DEF_DEF_ "GenMsgCycleTime" 0;')
    for i in range(messages):
        lines.append(f'BA_ "GenMsgCycleTime" BO_ {message_id(i)} {CYCLE_MS};')
    choices = " ".join(f'{k} "{v}"' for k, v in MODE_CHOICES.items())
    for i in range(messages):
        lines.append(f"VAL_ {message_id(i)} Mode {choices} ;")
    return "\n".join(lines) + "\n"


def write_dbc(path: Path, messages: int) -> Path:
    """Write the DBC of ``messages`` messages (8 signals each) to ``path`` and return it."""
    path.write_text(dbc_text(messages))
    return path


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: largemap.py OUT.dbc MESSAGES", file=sys.stderr)
        return 2
    write_dbc(Path(sys.argv[1]), int(sys.argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
