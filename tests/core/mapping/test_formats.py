"""Mapping file formats (canbridge.core.mapping.formats): DBC/KCD/SYM/ARXML through cantools with errors
that name file and line, lenient mode for real-world DBCs, and hand-written YAML signals."""

from __future__ import annotations

import logging
import random
import re
import textwrap
from pathlib import Path
from typing import Any

import cantools
import pytest

from canbridge import ConfigError, MappingError, MappingFormat
from canbridge.core.mapping.codec import compile_decoder, initial_payload
from canbridge.core.mapping.formats import (
    FORMATS,
    detect_format,
    lenient_dbc_fixups,
    load_dbc,
    load_kcd,
    load_signals_yaml,
    load_sym,
)


def load_mapping(path: Path, strict: bool = True, format: str | None = None) -> Any:
    """Test helper: load a mapping file with the built-in formats (by suffix unless ``format`` is given)."""
    name = format or detect_format(path)
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt.load(path, strict)
    known = ", ".join(f.name for f in FORMATS)
    raise MappingError(f"unknown mapping format {name!r} (known: {known})", file=str(path))


def choices(signal: Any) -> Any:
    assert signal.choices is not None
    return signal.choices


def decoded(message: Any, data: bytes, **kw: Any) -> dict[str, Any]:
    """cantools' decode of one message: a dict of values (its declared type is wider)."""
    out = message.decode(data, **kw)
    assert isinstance(out, dict)
    return out

ROOT = Path(__file__).resolve().parents[3]
DBC_DIR = ROOT / "tests" / "data" / "dbc"
SIGNALS_DIR = ROOT / "tests" / "data" / "signals"
EXAMPLE = ROOT / "mappings" / "examples" / "signals.yaml"
DEMO = ROOT / "mappings" / "demo" / "demo.dbc"


def line_of(path: Path, pattern: str, after: str | None = None) -> int:
    """1-based line of the first line matching ``pattern`` (after the line matching ``after``)."""
    lines = path.read_text(encoding="cp1252").split("\n")
    start = 0
    if after is not None:
        start = next(i for i, line in enumerate(lines) if re.search(after, line))
    return next(i for i in range(start, len(lines)) if re.search(pattern, lines[i])) + 1


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --- detection and registry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.dbc", "dbc"),
        ("a.DBC", "dbc"),
        ("x/a.kcd", "kcd"),
        ("a.sym", "sym"),
        ("a.arxml", "arxml"),
        ("a.yaml", "yaml"),
        ("a.yml", "yaml"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["a.txt", "dbc", "a.dbc.bak"])
def test_detect_format_unknown(name: str) -> None:
    with pytest.raises(MappingError, match="cannot tell the mapping format") as err:
        detect_format(name)
    assert err.value.file == name
    assert "format:" in str(err.value)


def test_registry() -> None:
    assert all(isinstance(f, MappingFormat) for f in FORMATS)
    assert {f.name for f in FORMATS} == {"dbc", "kcd", "sym", "arxml", "yaml"}
    suffixes = [s for f in FORMATS for s in f.suffixes]
    assert sorted(suffixes) == sorted([".dbc", ".kcd", ".sym", ".arxml", ".yaml", ".yml"])
    dbc = next(f for f in FORMATS if f.name == "dbc")
    assert [m.name for m in dbc.load(DEMO, True)][:2] == ["MotorStatus", "PowerStatus"]
    assert len(load_mapping(EXAMPLE)) == 4
    with pytest.raises(MappingError, match="unknown mapping format 'xls'"):
        load_mapping(DEMO, format="xls")


# --- file errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    for loader in (load_dbc, load_kcd, load_signals_yaml):
        with pytest.raises(MappingError, match="file not found") as err:
            loader(tmp_path / "nope.dbc")
        assert err.value.file == str(tmp_path / "nope.dbc")


def test_directory_and_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d.dbc").mkdir()
    with pytest.raises(MappingError, match="is a directory"):
        load_dbc(tmp_path / "d.dbc")
    path = tmp_path / "x.dbc"
    path.write_text(DEMO.read_text())

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)
    with pytest.raises(MappingError, match="cannot read: Permission denied") as err:
        load_dbc(path)
    assert err.value.file == str(path)


def test_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    text = DEMO.read_text().replace(" SG_ MotorState : 40|4@1+", " SG_ MotorState : 40|4@1+ junk")
    path = write(tmp_path, "bad.dbc", text)
    with pytest.raises(MappingError) as err:
        load_dbc(path)
    assert err.value.line == line_of(path, "junk")
    assert "invalid syntax at column" in err.value.detail and "junk" in err.value.detail
    assert "strict: false" not in err.value.detail  # lenient mode would not help
    assert str(err.value).startswith(f"{path}:{err.value.line}: ")


# --- strict errors on real-world DBCs, and lenient mode ------------------------------------------


def test_strict_signal_does_not_fit() -> None:
    path = DBC_DIR / "FORD_CADS_64.dbc"
    with pytest.raises(MappingError) as err:
        load_dbc(path, strict=True)
    assert err.value.line == line_of(path, r"SG_ CAN_DET_AZIMUTH_22_03 ", after=r"BO_ \d+ MRR_Detection_022:")
    assert "CAN_DET_AZIMUTH_22_03 does not fit in message MRR_Detection_022" in err.value.detail
    assert "set strict: false to load it leniently" in err.value.detail


def test_strict_overlapping_signals() -> None:
    path = DBC_DIR / "vw_mqb.dbc"
    with pytest.raises(MappingError) as err:
        load_dbc(path, strict=True)
    assert "PLA_Bremsverzoegerung and PLA_Bremsmoment are overlapping in message PLA_01" in err.value.detail
    assert err.value.line == line_of(path, r"SG_ PLA_Bremsverzoegerung ", after=r"BO_ \d+ PLA_01:")


def test_strict_frame_id() -> None:
    path = DBC_DIR / "chrysler_cusw.dbc"
    with pytest.raises(MappingError) as err:
        load_dbc(path, strict=True)
    assert "Standard frame id 0x62cc033 is more than 11 bits in message BSM_LEFT" in err.value.detail
    assert err.value.line == line_of(path, r"^BO_ \d+ BSM_LEFT:")
    assert "strict: false" in err.value.detail


def test_strict_name_starting_with_a_digit() -> None:
    path = DBC_DIR / "mazda_2017.dbc"
    with pytest.raises(MappingError) as err:
        load_dbc(path, strict=True)
    assert err.value.line == 273 == line_of(path, r"^BO_ 1275 2017_5:")
    assert "invalid syntax at column 10" in err.value.detail
    assert "set strict: false" in err.value.detail and "'2017_5' starts with a digit" in err.value.detail


@pytest.mark.parametrize("stem", ["FORD_CADS_64", "chrysler_cusw", "vw_mqb", "mazda_2017"])
def test_lenient_loads_what_strict_rejects(stem: str, caplog: pytest.LogCaptureFixture) -> None:
    path = DBC_DIR / f"{stem}.dbc"
    with caplog.at_level(logging.WARNING, logger="canbridge.mapping"):
        messages = load_dbc(path, strict=False)
    assert len(messages) > 20
    for message in messages:  # every message gets a decoder
        compile_decoder(message, {s.name: i for i, s in enumerate(message.signals)})
    warnings = [r.getMessage() for r in caplog.records if r.name == "canbridge.mapping"]
    assert warnings and all(re.match(rf"{re.escape(str(path))}:\d+: lenient mode: ", w) for w in warnings)
    if stem == "FORD_CADS_64":
        assert (
            sum(
                "does not fit in message MRR_Detection_022 (24 bytes): it is not decoded" in w
                for w in warnings
            )
            == 4
        )
    if stem == "vw_mqb":
        line = line_of(path, r"SG_ PLA_Bremsverzoegerung ", after=r"BO_ \d+ PLA_01:")
        assert (
            f"{path}:{line}: lenient mode: The signals PLA_Bremsverzoegerung and PLA_Bremsmoment are "
            "overlapping in message PLA_01: each is decoded from its own bits" in warnings
        )


def test_lenient_fixups_on_real_files(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="canbridge.mapping"):
        chrysler = {m.name: m for m in load_dbc(DBC_DIR / "chrysler_cusw.dbc", strict=False)}
        mazda = {m.name: m for m in load_dbc(DBC_DIR / "mazda_2017.dbc", strict=False)}
    assert chrysler["BSM_LEFT"].is_extended_frame and chrysler["BSM_LEFT"].frame_id == 0x62CC033
    assert not chrysler[next(n for n in chrysler if n != "BSM_LEFT" and n != "BSM_RIGHT")].is_extended_frame
    assert mazda["_2017_5"].frame_id == 1275
    assert any(s.name == "_5_SEC_DISABLE_TIMER" for m in mazda.values() for s in m.signals)
    bsm = next(m for m in mazda.values() if m.frame_id == 1143)
    assert choices(bsm.get_signal_by_name("RIGHT_BS_STATUS"))[1] == "Object detected in right blindspot"
    text = caplog.text
    assert (
        "mazda_2017.dbc:273: lenient mode: message name '2017_5' starts with a digit: renamed to '_2017_5'"
        in text
    )
    assert "mazda_2017.dbc:791: lenient mode: value table (VAL_) without its closing ';'" in text
    assert "chrysler_cusw.dbc:182: lenient mode: frame id 0x62cc033 of message BSM_LEFT" in text


FIXUPS = """\
VERSION ""

BO_ 1000 3Wheel: 8 ECU
 SG_ 1st : 0|32@1- (1,0) [0|0] "" X
 SG_ Other : 32|8@1+ (1,0) [0|255] "" X

BO_ 103596083 Long: 8 ECU
 SG_ 2nd : 0|8@1+ (1,0) [0|255] "" X

CM_ BO_ 1000 "three wheels";
CM_ SG_ 1000 1st "first";
CM_ SG_ 103596083 2nd "second";
BA_DEF_ BO_  "GenMsgCycleTime" INT 0 65535;
BA_DEF_ SG_  "GenSigStartValue" INT 0 100000000;
BA_ "GenMsgCycleTime" BO_ 103596083 50;
BA_ "GenSigStartValue" SG_ 103596083 2nd 7;
VAL_ 103596083 2nd 0 "zero" 1 "one"
SIG_VALTYPE_ 1000 1st : 1;
"""


def test_lenient_fixups_rewrite_every_reference(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "fix.dbc", FIXUPS)
    with pytest.raises(MappingError, match="starts with a digit"):
        load_dbc(path, strict=True)
    with caplog.at_level(logging.WARNING, logger="canbridge.mapping"):
        messages = {m.name: m for m in load_dbc(path, strict=False)}
    three, long = messages["_3Wheel"], messages["Long"]
    assert three.comment == "three wheels"
    first = three.get_signal_by_name("_1st")
    assert first.comment == "first" and first.is_float
    assert long.is_extended_frame and long.frame_id == 103596083 and long.cycle_time == 50
    second = long.get_signal_by_name("_2nd")
    assert second.comment == "second" and second.raw_initial == 7 and choices(second)[1] == "one"
    assert initial_payload(long) == bytes([7, 0, 0, 0, 0, 0, 0, 0])
    assert len([r for r in caplog.records if r.name == "canbridge.mapping"]) == 5
    assert lenient_dbc_fixups(DEMO.read_text()) == (DEMO.read_text(), [])


# --- KCD, SYM, ARXML ------------------------------------------------------------------------------

KCD = """\
<?xml version="1.0" encoding="UTF-8"?>
<NetworkDefinition xmlns="http://kayak.2codeornot2code.org/1.0">
  <Document name="t"/>
  <Bus name="B">
    <Message id="0x100" name="Status" length="8" interval="100">
      <Signal name="Speed" offset="0" length="16">
        <Value slope="0.5" unit="rpm"/>
      </Signal>
      <Signal name="Temp" offset="16" length="8" endianess="little">
        <Value intercept="-40"/>
      </Signal>
    </Message>
  </Bus>
</NetworkDefinition>
"""

SYM = """\
FormatVersion=6.0 // Do not edit this line!
Title="t"

{SENDRECEIVE}

[Status]
ID=100h
Len=8
Var=Speed unsigned 0,16 /f:0.5 /u:rpm
Var=Temp unsigned 16,8 /o:-40
"""


@pytest.mark.parametrize(("name", "text", "loader"), [("a.kcd", KCD, load_kcd), ("a.sym", SYM, load_sym)])
def test_kcd_and_sym(tmp_path: Path, name: str, text: str, loader: object) -> None:
    path = write(tmp_path, name, text)
    messages = load_mapping(path)
    assert [(m.name, m.frame_id, m.length) for m in messages] == [("Status", 0x100, 8)]
    message = messages[0]
    indices = {"Speed": 0, "Temp": 1}
    values: list[object] = [None, None]
    compile_decoder(message, indices)(bytes([10, 0, 60, 0, 0, 0, 0, 0]), values, [])
    assert values == [5.0, 20]


def test_xml_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.kcd", KCD.replace('<Document name="t"/>', '<Document name="t">'))
    with pytest.raises(MappingError) as err:
        load_kcd(path)
    assert err.value.file == str(path) and err.value.line is not None
    arxml = write(tmp_path, "bad.arxml", "<AUTOSAR>\n<AR-PACKAGES>\n</AUTOSAR>\n")
    with pytest.raises(MappingError) as err:
        load_mapping(arxml)
    assert err.value.file == str(arxml) and err.value.line == 3


# --- YAML signals ---------------------------------------------------------------------------------


def test_example_signals_file() -> None:
    messages = {m.name: m for m in load_signals_yaml(EXAMPLE)}
    assert list(messages) == ["PumpStatus", "PumpPower", "PumpCommand", "PumpDiagnostics"]
    status = messages["PumpStatus"]
    assert status.frame_id == 0x180 and status.cycle_time == 100 and status.senders == ["PumpECU"]
    assert status.comment == "Status of the coolant pump, every 100 ms."
    assert choices(status.get_signal_by_name("State"))[2] == "Running"
    assert status.get_signal_by_name("Pressure").is_signed
    assert messages["PumpPower"].get_signal_by_name("ElectricalPower").is_float
    assert messages["PumpPower"].get_signal_by_name("BusVoltage").byte_order == "big_endian"
    assert initial_payload(messages["PumpCommand"]) == bytes([0, 0, 0x02, 0])  # Mode 1 at bit 17
    assert messages["PumpDiagnostics"].signal_tree == [
        {"Page": {0: ["OperatingHours"], 1: ["ErrorCode", "ErrorCount"]}}
    ]


EXAMPLE_AS_DBC = """\
VERSION ""
BO_ 384 PumpStatus: 8 PumpECU
 SG_ Speed : 0|16@1+ (0.5,0) [0|6000] "rpm" X
 SG_ InletTemperature : 16|8@1+ (1,-40) [-40|215] "degC" X
 SG_ Pressure : 24|16@1- (0.01,0) [-327.68|327.67] "bar" X
 SG_ State : 40|3@1+ (1,0) [0|0] "" X
 SG_ Running : 43|1@1+ (1,0) [0|0] "" X
BO_ 385 PumpPower: 8 X
 SG_ ElectricalPower : 0|32@1- (1,0) [0|0] "W" X
 SG_ BusVoltage : 39|16@0+ (0.1,0) [0|0] "V" X
SIG_VALTYPE_ 385 ElectricalPower : 1;
"""


def test_yaml_decodes_like_the_equivalent_dbc() -> None:
    db = cantools.database.can.Database()
    db.add_dbc_string(EXAMPLE_AS_DBC)
    rng = random.Random(2)
    for message in load_signals_yaml(EXAMPLE)[:2]:
        dbc = db.get_message_by_name(message.name)
        for _ in range(200):
            data = rng.randbytes(8)
            ours, theirs = decoded(message, data, decode_choices=False), decoded(dbc, data, decode_choices=False)
            assert {k: (type(v), v) for k, v in ours.items() if v == v} == {
                k: (type(v), v) for k, v in theirs.items() if v == v
            }


def yaml_problems(tmp_path: Path, text: str, strict: bool = True) -> list[str]:
    path = write(tmp_path, "s.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_signals_yaml(path, strict=strict)
    for problem in err.value.problems:
        assert problem.file == str(path)
    return [str(p).replace(str(path), "F") for p in err.value.problems]


def test_yaml_unknown_key_and_missing(tmp_path: Path) -> None:
    problems = yaml_problems(
        tmp_path,
        """\
        messages:
          - name: A
            id: 0x10
            signals:
              - name: X
                start: 0
                lenght: 8
        """,
    )
    assert "F:7 messages[0].signals[0].lenght: unknown key 'lenght'" in problems
    assert "F:5 messages[0].signals[0].length: required key is missing" in problems


def test_yaml_schema_checks(tmp_path: Path) -> None:
    problems = yaml_problems(
        tmp_path,
        """\
        messages:
          - name: A
            id: 0x800
            signals:
              - {name: F, start: 0, length: 8, type: float}
              - {name: S, start: 8, length: 8, scale: 0}
              - {name: T, start: 16, length: 8, byte_order: middle}
          - name: B
            id: 0x10
            length: 12
          - name: C
            id: 0x800
        """,
    )
    joined = "\n".join(problems)
    assert "F:11 messages[2]: id 0x800 does not fit a standard frame (11 bits)" in joined
    assert "F:5 messages[0].signals[0]: a float signal is 16, 32 or 64 bits long" in joined
    assert "F:6 messages[0].signals[1].scale: scale must not be 0" in joined
    assert "F:7 messages[0].signals[2].byte_order:" in joined
    assert "F:8 messages[1]: length 12: a classic CAN frame has at most 8 bytes (set fd: true)" in joined


def test_yaml_duplicates_and_multiplexers(tmp_path: Path) -> None:
    problems = yaml_problems(
        tmp_path,
        """\
        messages:
          - name: A
            id: 0x10
            signals:
              - {name: X, start: 0, length: 8}
              - {name: X, start: 8, length: 8}
          - name: A
            id: 0x10
            signals:
              - {name: Y, start: 0, length: 8, multiplexer_ids: [1]}
        """,
    )
    assert "F:6 messages[0].signals[1].name: signal name 'X' is used twice in message A" in problems
    assert "F:7 messages[1].name: message name 'A' is used twice (also messages[0])" in problems
    assert "F:8 messages[1].id: id 0x10 is used twice (also message A)" in problems
    assert any(
        p.startswith("F:10 messages[1].signals[0].multiplexer_ids: multiplexer_ids given") for p in problems
    )


OVERLAP = """\
messages:
  - name: A
    id: 0x10
    length: 2
    signals:
      - {name: X, start: 0, length: 8}
      - {name: Y, start: 4, length: 8}
"""


def test_yaml_overlap_is_an_error_unless_lenient(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    problems = yaml_problems(tmp_path, OVERLAP)
    assert len(problems) == 1
    assert problems[0].startswith(
        "F:7 messages[0].signals[1]: The signals Y and X are overlapping in message A"
    )
    assert "strict: false" in problems[0]
    path = tmp_path / "s.yaml"
    with caplog.at_level(logging.WARNING, logger="canbridge.mapping"):
        (message,) = load_signals_yaml(path, strict=False)
    assert f"{path}:7: lenient mode: The signals Y and X are overlapping" in caplog.text
    values: list[object] = [None, None]
    compile_decoder(message, {"X": 0, "Y": 1})(bytes([0x21, 0x43]), values, [])
    assert values == [0x21, 0x32]


def test_yaml_does_not_fit(tmp_path: Path) -> None:
    problems = yaml_problems(
        tmp_path,
        """\
        messages:
          - name: A
            id: 0x10
            length: 2
            signals:
              - {name: X, start: 8, length: 16}
        """,
    )
    assert problems[0].startswith("F:6 messages[0].signals[0]: The signal X does not fit in message A")


def test_yaml_initial_out_of_range(tmp_path: Path) -> None:
    problems = yaml_problems(
        tmp_path,
        """\
        messages:
          - name: A
            id: 0x10
            signals:
              - {name: X, start: 0, length: 4, scale: 0.5, initial: 10}
        """,
    )
    assert problems == ["F:5 messages[0].signals[0].initial: initial 10.0 is raw 20, outside 0..15"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("messages: [\n", "F:2: YAML syntax"),
        ("", "F messages: required key is missing"),
        ("- 1\n", "F:1: a signals file is a mapping with 'messages:'"),
        ("messages: []\n", "F:1 messages: List should have at least 1 item"),
        (
            "messages:\n  - name: A\n    id: 1\n    signals:\n      - {name: B, start: 0, length: 2, "
            "choices: {0: Off}}\n",
            "F:5 messages[0].signals[0].choices[0]: Input should be a valid string",
        ),
    ],
)
def test_yaml_file_errors(tmp_path: Path, text: str, expected: str) -> None:
    problems = yaml_problems(tmp_path, text)
    assert any(p.startswith(expected) for p in problems), problems


def test_yaml_test_data_examples() -> None:
    files = sorted(SIGNALS_DIR.glob("*.yaml"))
    assert files
    for path in files:
        assert load_signals_yaml(path)
