"""``canbridge check`` on CANopen node lists (issue #13 item 5): each problem names the bus, the node, the
file and the object, and one check lists them all. The EDS variants are tests/data/eds/drive.eds edited
by the tests (written for the project, same licence as canbridge)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from canbridge.cli import check_file, main
from canbridge.core.app import DEMO_DBC
from canbridge.core.host import load_registry
from canbridge.core.mapping.canopen import restricted_use

EDS = Path(__file__).resolve().parents[2] / "data" / "eds" / "drive.eds"
REGISTRY = load_registry(load_entry_points=False)[1]


def edited(tmp_path: Path, name: str, *edits: tuple[str, str]) -> Path:
    text = EDS.read_text()
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text)
    return path


def check(tmp_path: Path, nodes: str, mappings: str = "") -> list[str]:
    config = tmp_path / "bridge.yaml"
    config.write_text(textwrap.dedent("""\
        buses:
          - name: line
            interface: virtual
            channel: x
            nodes:
        """) + textwrap.indent(textwrap.dedent(nodes), "      ") + textwrap.dedent(mappings))
    report = check_file(config, REGISTRY, interfaces=False, ports=False)
    return [str(p) for p in report.problems]


def one(problems: list[str], needle: str) -> str:
    hits = [p for p in problems if needle in p]
    assert len(hits) == 1, f"{needle!r} in {problems}"
    return hits[0]


def test_a_clean_node_list_has_no_problem(tmp_path: Path) -> None:
    assert check(tmp_path, f"""\
        - {{id: 5, name: drive1, eds: {EDS}}}
        - {{id: 6, name: drive2, eds: {EDS}}}
        """) == []


@pytest.mark.parametrize("ids, needle", [((5, 5), "duplicate node id 5 on bus line"),
                                         ((0, 6), "buses[0].nodes[0].id"), ((5, 128), "buses[0].nodes[1].id")])
def test_duplicate_ids_and_ids_outside_1_to_127(tmp_path: Path, ids: tuple[int, int], needle: str) -> None:
    problems = check(tmp_path, f"""\
        - {{id: {ids[0]}, name: drive1, eds: {EDS}}}
        - {{id: {ids[1]}, name: drive2, eds: {EDS}}}
        """)
    text = one(problems, needle)
    if "duplicate" in needle:
        assert "drive1" in text and "drive2" in text and "drive.eds" in text


def test_a_pdo_on_another_nodes_pdo_names_bus_node_file_and_object(tmp_path: Path) -> None:
    moved = edited(tmp_path, "moved.eds", ("DefaultValue=$NODEID+0x180", "DefaultValue=0x186"))
    problems = check(tmp_path, f"""\
        - {{id: 6, name: drive2, eds: {EDS}}}
        - {{id: 5, name: drive1, eds: {moved}}}
        """)
    text = one(problems, "frame id 0x186")
    assert "bus line, node drive1 (id 5" in text and "moved.eds" in text and "0x1800sub1" in text
    assert "already mapped by line.drive2.TPDO1" in text and "buses[0].nodes[1]" in text


def test_a_pdo_on_a_dbc_message_is_a_problem(tmp_path: Path) -> None:
    moved = edited(tmp_path, "moved.eds", ("DefaultValue=$NODEID+0x280", "DefaultValue=0x100"))
    problems = check(tmp_path, f"- {{id: 5, name: drive1, eds: {moved}}}\n",
                     f"mappings: [{{bus: line, dbc: {DEMO_DBC}}}]\n")
    text = one(problems, "frame id 0x100")
    assert "node drive1" in text and "0x1801sub1" in text and "already mapped by line.MotorStatus" in text


@pytest.mark.parametrize("cob, use", [
    ("0x000", "NMT"), ("0x080", "SYNC"), ("0x0A0", "EMCY"), ("0x585", "SDO server to client"),
    ("0x605", "SDO client to server"), ("0x705", "heartbeat"), ("0x7E5", "LSS")])
def test_a_pdo_on_a_reserved_canopen_id_is_a_problem(tmp_path: Path, cob: str, use: str) -> None:
    bad = edited(tmp_path, "reserved.eds", ("DefaultValue=$NODEID+0x180", f"DefaultValue={cob}"))
    problems = check(tmp_path, f"- {{id: 5, name: drive1, eds: {bad}}}\n")
    text = one(problems, "reserved by CiA 301")
    assert f"TPDO1 COB-ID 0x{int(cob, 16):03X} (0x1800sub1)" in text and use in text
    assert text.startswith(f"{tmp_path / 'bridge.yaml'}:") and "bus line, node drive1 (id 5)" in text
    assert "reserved.eds" in text


@pytest.mark.parametrize("cob, ok", [(0x181, True), (0x57F, True), (0x580, True), (0x581, False), (0x6DF, True),
                                     (0x6E0, False), (0x700, True), (0x77F, False), (0x101, False)])
def test_the_restricted_ranges_end_where_cia_301_says(cob: int, ok: bool) -> None:
    assert (restricted_use(cob) is None) is ok


@pytest.mark.parametrize("frame_id, use", [(0x000, "CANopen NMT id"), (0x080, "CANopen SYNC id"),
                                           (0x585, "SDO answer id of CANopen node drive1"),
                                           (0x605, "SDO request id of CANopen node drive1")])
def test_a_dbc_message_on_a_canopen_id_is_a_problem(tmp_path: Path, frame_id: int, use: str) -> None:
    dbc = tmp_path / "clash.dbc"
    dbc.write_text(f'VERSION ""\n\nBU_: ECU\n\nBO_ {frame_id} Clash: 1 ECU\n SG_ Value : 0|8@1+ (1,0) [0|0] "" ECU\n')
    problems = check(tmp_path, f"- {{id: 5, name: drive1, eds: {EDS}}}\n", f"mappings: [{{bus: line, dbc: {dbc}}}]\n")
    assert one(problems, "frame id").endswith(f"frame id 0x{frame_id:X} of Clash is the {use} on bus line")


def test_the_same_dbc_message_on_a_bus_without_nodes_is_fine(tmp_path: Path) -> None:
    dbc = tmp_path / "free.dbc"
    dbc.write_text('VERSION ""\n\nBU_: ECU\n\nBO_ 1413 Free: 1 ECU\n SG_ Value : 0|8@1+ (1,0) [0|0] "" ECU\n')
    config = tmp_path / "bridge.yaml"
    config.write_text(f"buses: [{{name: line, interface: virtual, channel: x}}]\n"
                      f"mappings: [{{bus: line, dbc: {dbc}}}]\n")
    assert check_file(config, REGISTRY, interfaces=False, ports=False).problems == []


def test_every_bad_pdo_of_a_file_is_listed_at_once(tmp_path: Path) -> None:
    bad = edited(tmp_path, "bad.eds",
                 ("DefaultValue=0x60410010", "DefaultValue=0x10010008"),  # Error register: PDOMapping=1, fine
                 ("DefaultValue=0x20000220", "DefaultValue=0x00070040"),  # TPDO2: 96 bits
                 ("DefaultValue=$NODEID+0x180", "DefaultValue=0x0605"))  # TPDO1 on the SDO request id
    problems = check(tmp_path, f"- {{id: 5, name: drive1, eds: {bad}}}\n")
    assert len(problems) == 2, problems
    one(problems, "TPDO1 COB-ID 0x605")
    assert "TPDO2 (0x1A01): maps 96 bits, more than the 64 of a PDO" in one(problems, "96 bits")
    assert all("bus line, node drive1 (id 5)" in p and "bad.eds" in p for p in problems)


def test_an_object_the_dictionary_keeps_out_of_pdos_is_a_problem(tmp_path: Path) -> None:
    bad = edited(tmp_path, "nomap.eds", ("DefaultValue=0x60410010", "DefaultValue=0x10000020"))  # Device type
    text = one(check(tmp_path, f"- {{id: 5, name: drive1, eds: {bad}}}\n"), "PDOMapping=0")
    assert "TPDO1 (0x1A00): maps 0x1000sub0 (Device type), which the dictionary does not allow in a PDO" in text


def test_an_object_the_dictionary_lacks_is_a_problem(tmp_path: Path) -> None:
    bad = edited(tmp_path, "lacks.eds", ("DefaultValue=0x60640020", "DefaultValue=0x60990020"))
    assert "maps 0x6099sub0, which is not in the dictionary" in one(
        check(tmp_path, f"- {{id: 5, name: drive1, eds: {bad}}}\n"), "node drive1")


@pytest.mark.parametrize("old, new, line", [
    ("[FileInfo]", "[FileInfo\n", 1),  # no section header before line 1's text
    ("[1000]", "[1001]", 31),  # the file's own [1001] on line 31 is now the second one
])
def test_an_eds_that_does_not_parse_names_file_and_line(tmp_path: Path, old: str, new: str, line: int) -> None:
    bad = edited(tmp_path, "broken.eds", (old, new))
    text = one(check(tmp_path, f"- {{id: 5, name: drive1, eds: {bad}}}\n"), "cannot read EDS/DCF")
    assert "bus line, node drive1 (id 5)" in text
    assert text.endswith(f"{bad}:{line}"), text


def test_check_command_prints_them_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = edited(tmp_path, "reserved.eds", ("DefaultValue=$NODEID+0x180", "DefaultValue=0x705"))
    config = tmp_path / "bridge.yaml"
    node = f"{{id: 5, name: d, eds: {bad}}}"
    config.write_text(f"buses: [{{name: line, interface: virtual, channel: x, nodes: [{node}]}}]\n")
    assert main(["check", "--no-interfaces", str(config)]) == 1
    err = capsys.readouterr().err
    assert "1 problem found:" in err and "reserved by CiA 301 for heartbeat / boot-up" in err


def test_check_warned_about_canopen_messages_as_the_dbcs(tmp_path: Path) -> None:
    """Regression: the staleness warning of a DBC mapping counted the CANopen nodes' heartbeat, EMCY and SDO
    messages as the DBC's own ("demo.dbc gives them no cycle time")."""
    dbc = tmp_path / "plain.dbc"
    dbc.write_text('VERSION ""\n\nBU_: ECU\n\nBO_ 256 Plain: 1 ECU\n SG_ Value : 0|8@1+ (1,0) [0|0] "" ECU\n')
    config = tmp_path / "bridge.yaml"
    node = f"{{id: 5, name: d, eds: {EDS}}}"
    config.write_text(f"buses: [{{name: line, interface: virtual, channel: x, nodes: [{node}]}}]\n"
                      f"mappings: [{{bus: line, dbc: {dbc}}}]\n")
    report = check_file(config, REGISTRY, interfaces=False, ports=False)
    assert report.problems == []
    (warning,) = [str(w) for w in report.warnings]
    assert "staleness is off for 1 of 1 received messages (Plain)" in warning
