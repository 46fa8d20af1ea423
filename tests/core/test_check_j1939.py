"""``canbridge check`` on J1939 mappings (canbridge/core/mapping/j1939rules.py): variants of the example J1939
DBC with one problem each, and the real-world DBCs mapped as J1939."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from canbridge.cli import main
from canbridge.core.host import load_registry
from canbridge.core.mapping.j1939rules import message_problems

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "mappings" / "examples" / "j1939.dbc"
REAL = sorted((ROOT / "tests" / "data" / "dbc").glob("*.dbc"))  # opendbc's and two J1939 test files
CLAIM = "j1939: {name: 0x9000810000A0001E, address: 0x80}"


def variant(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = EXAMPLE.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new)
    p = tmp_path / "truck.dbc"
    p.write_text(text)
    return p


def check(tmp_path: Path, capsys: pytest.CaptureFixture[str], mappings: str, bus: str = "") -> tuple[int, str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("buses:\n  - {name: truck, interface: virtual, channel: x" + (f", {bus}" if bus else "") + "}\n"
                   "mappings:\n" + textwrap.indent(textwrap.dedent(mappings), "  "))
    rc = main(["check", "--no-ports", "--no-interfaces", str(cfg)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out + err


def test_the_example_is_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {EXAMPLE}, sources: {{0: engine, 3: transmission}}}}\n")
    assert rc == 0, text
    assert "PDU1" not in text and "PGN" not in text


def test_one_pgn_and_source_twice_is_a_clash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # EEC1 again at priority 6: another id (0x98F00400), the same PGN 0xF004 from the same source 0x00
    dbc = variant(tmp_path, ("BO_ 2566843904 ET1:", "BO_ 2565866496 EEC1_B: 8 Engine\n SG_ X : 0|8@1+ (1,0) "
                             "[0|250] \"\" Vector__XXX\n\nBO_ 2566843904 ET1:"),
                  ("BA_ \"VFrameFormat\" BO_ 2566843904 3;", "BA_ \"VFrameFormat\" BO_ 2566843904 3;\n"
                   "BA_ \"VFrameFormat\" BO_ 2565866496 3;"))
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}}}\n")
    assert rc == 1
    assert "truck.dbc: PGN 0xF004 from source 0x00 of EEC1_B (id 0x18F00400) is already mapped by truck.EEC1" in text
    # with sources, every source of both: the first source's clash names its message
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, sources: {{0: engine, 3: transmission}}}}\n")
    assert rc == 1
    assert "PGN 0xF004 from source 0x03 of EEC1_B (id 0x18F00400) is already mapped by truck.transmission.EEC1" \
        in text


def test_one_pgn_defined_twice_with_its_own_sources_is_a_warning(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    dbc = variant(tmp_path, ("BO_ 2566843904 ET1:", "BO_ 2364539908 EEC1_B: 8 Engine\n SG_ X : 0|8@1+ (1,0) "
                             "[0|250] \"\" Vector__XXX\n\nBO_ 2566843904 ET1:"),
                  ("BA_ \"VFrameFormat\" BO_ 2566843904 3;", "BA_ \"VFrameFormat\" BO_ 2566843904 3;\n"
                   "BA_ \"VFrameFormat\" BO_ 2364539908 3;"))
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, stale_after_ms: {{'*': 1000}}}}\n")
    assert rc == 0, text
    assert "truck.dbc: PGN 0xF004 is defined by 2 messages, EEC1 (source 0x00), EEC1_B (source 0x04)" in text


def test_a_pdu1_id_carries_a_destination_not_a_pgn_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbc = variant(tmp_path, ("2348810243", "2348814851"))  # every mention of TSC1's id
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, messages: [TSC1]}}\n")
    assert rc == 0, text
    assert "truck.dbc: message TSC1 (id 0xC001203) is a PDU1 group: its PS byte 0x12 is a destination address, " \
           "not part of the PGN (0x0)" in text


def test_a_destination_for_pdu2_groups_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text = check(tmp_path, capsys, f"""\
        - {{bus: truck, dbc: {EXAMPLE}, messages: [ET1], writable: ["ET1.*"], destination: 0}}
        """, bus=CLAIM)
    assert rc == 1
    assert "c.yaml:4 mappings[0].destination: destination 0x00 is given but j1939.dbc sends only PDU2 groups " \
           "(ET1 (PGN 0xFEEE))" in text
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {EXAMPLE}, messages: [TSC1], writable: "
                                       f"['TSC1.*'], destination: 0}}\n", bus=CLAIM)
    assert rc == 0, text
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {EXAMPLE}, messages: [TSC1], destination: 0xFE}}\n")
    assert rc == 1 and "destination 0xFE is the null address" in text
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {EXAMPLE}, messages: [TSC1], destination: 0}}\n")
    assert rc == 1 and "has no J1939 message the bridge sends" in text


def test_longer_than_the_transport_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbc = variant(tmp_path, ("EC1: 39 Engine", "EC1: 1800 Engine"),
                  ("EngineMaxMomentaryOverrideTime : 304|8", "EngineMaxMomentaryOverrideTime : 14300|8"))
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}}}\n")
    assert rc == 1
    assert "truck.dbc: J1939 message EC1 is 1800 bytes long; the transport protocol carries 1785 at most" in text
    assert "truck.dbc: signal EC1.EngineMaxMomentaryOverrideTime (start bit 14300, 8 bits) does not fit in the " \
           "1785 data bytes of J1939 message EC1" in text
    assert "EngineSpeedAtIdlePoint1" not in text


def test_a_signal_outside_the_data_length() -> None:
    eec1 = next(m for m in load_registry()[1].formats["dbc"].load(EXAMPLE, False) if m.name == "EEC1")
    eec1.signals[-1].start = 60  # byte 8 and 9 of an 8-byte message (strict loading would refuse the file)
    assert message_problems("j1939.dbc", [eec1], None, strict=True) == [
        "j1939.dbc: signal EEC1.SourceAddressOfController (start bit 60, 8 bits) does not fit in the 8 data bytes "
        "of J1939 message EEC1"]
    assert message_problems("j1939.dbc", [eec1], None, strict=False) == []  # lenient: left out, and said so
    assert message_problems("j1939.dbc", [eec1], "plain", strict=True) == []  # not J1939: not these rules


def test_a_j1939_message_with_an_11_bit_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dbc = variant(tmp_path, ("2566843904", "1262"))  # every mention of ET1's id
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, messages: [ET1]}}\n")
    assert rc == 0, text
    assert "truck.dbc: message ET1 is marked J1939 (VFrameFormat J1939PG) but has the 11-bit id 0x4EE" in text
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, messages: [ET1], protocol: j1939}}\n")
    assert rc == 1 and "protocol j1939 needs 29-bit frame ids; standard: ET1" in text


def test_source_names_clash_between_mappings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, text = check(tmp_path, capsys, f"""\
        - {{bus: truck, dbc: {EXAMPLE}, messages: [EEC1], sources: {{0: engine, 1: aux}}}}
        - {{bus: truck, dbc: {EXAMPLE}, messages: [ET1], sources: {{1: retarder, 3: engine}}}}
        """)
    assert rc == 1
    assert "c.yaml:5 mappings[1].sources: j1939.dbc: sources: address 0x01 is named 'retarder' here and 'aux' " \
           "by another mapping of bus truck" in text
    assert "name 'engine' is given to 0x03 here and to 0x00 by another mapping of bus truck" in text
    rc, text = check(tmp_path, capsys, f"""\
        - {{bus: truck, dbc: {EXAMPLE}, messages: [EEC1], sources: {{0: engine, 3: transmission}}}}
        - {{bus: truck, dbc: {EXAMPLE}, messages: [ET1], sources: {{0: engine, 3: transmission}}}}
        """)
    assert rc == 0, text


@pytest.mark.parametrize("dbc", REAL, ids=lambda p: p.name)
def test_real_world_dbcs_mapped_as_j1939(tmp_path: Path, capsys: pytest.CaptureFixture[str], dbc: Path) -> None:
    """Passenger-car DBCs are not J1939, but mapped as J1939 check must say why, never crash: 11-bit ids are
    a problem; their 29-bit messages alone are checked by the J1939 rules."""
    messages = load_registry()[1].formats["dbc"].load(dbc, False)  # as the bridge loads it (lenient)
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, strict: false, protocol: j1939}}\n")
    standard = [m.name for m in messages if not m.is_extended_frame]
    if standard:
        assert rc == 1 and f"protocol j1939 needs 29-bit frame ids; standard: {standard[0]}" in text
    extended = [m.name for m in messages if m.is_extended_frame]
    if not extended:
        return
    rc, text = check(tmp_path, capsys, f"- {{bus: truck, dbc: {dbc}, strict: false, protocol: j1939, "
                                       f"messages: {extended}}}\n")
    found = [ln for ln in text.splitlines() if f"{dbc.name}: " in ln]  # the J1939 rules' problems and warnings
    assert rc == (1 if " found:" in text else 0), text
    for ln in found:  # each names the file and a message of it
        assert any(n in ln for n in extended), ln
    if dbc.name == "chrysler_cusw.dbc":  # two blind-spot monitors, one PGN from two source addresses
        assert "PGN 0x22C00 is defined by 2 messages, BSM_LEFT (source 0x33), BSM_RIGHT (source 0x34)" in text
