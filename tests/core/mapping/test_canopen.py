"""CANopen nodes from their EDS/DCF (canbridge/core/mapping/canopen.py): TPDOs as mapped messages, their
signals' names and metadata, configuration problems, and decoded values checked against the ``canopen``
package's LocalNode as the independent peer (its PDO encoder in-process, its TPDOs over a virtual bus)."""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import canopen
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canbridge import ConfigError
from canbridge.config import parse_config
from canbridge.core.app import DEMO_DBC, unique_channel
from canbridge.core.host import collect, make_plugin_manager
from canbridge.core.mapping.canopen import describe_node, part_name
from canbridge.core.mapping.table import MappingTable, build_table
from canbridge.testing import BridgeHarness

FORMATS = collect(make_plugin_manager(load_entry_points=False)).formats
EDS = Path(__file__).resolve().parents[2] / "data" / "eds" / "drive.eds"


def bus(nodes: list[dict[str, Any]], channel: str = "line") -> dict[str, Any]:
    return {"name": "line", "interface": "virtual", "channel": channel, "nodes": nodes}


def table(*nodes: dict[str, Any], mappings: list[dict[str, Any]] | None = None) -> MappingTable:
    data = {"buses": [bus(list(nodes))], "mappings": mappings or []}
    return build_table(parse_config(data), Path.cwd(), FORMATS, "bridge.yaml")


def drive(node_id: int = 5, name: str = "drive1", eds: Path = EDS) -> dict[str, Any]:
    return {"id": node_id, "name": name, "eds": str(eds)}


def problems(*nodes: dict[str, Any], mappings: list[dict[str, Any]] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        table(*nodes, mappings=mappings)
    return str(e.value)


# --- the table ---------------------------------------------------------------------------------------


def pdo_side(t: MappingTable) -> list[str]:
    """The signals of frames (TPDOs, heartbeat, EMCY), not the objects served by SDO."""
    return [s.name for s in t.signal_list if t.message_list[t.signal_message[s.index]].sdo is None]


def test_every_tpdo_mapped_object_is_a_signal_named_bus_node_object_subobject() -> None:
    t = table({**drive(), "sdo": []})
    assert [s.name for s in t.signal_list] == pdo_side(t) == [
        "line.drive1.Statusword", "line.drive1.Drive_status.Temperature",
        "line.drive1.Position_actual_value", "line.drive1.Drive_status.Current", "line.drive1.NMT_state",
        "line.drive1.EMCY.error_code", "line.drive1.EMCY.error_register", "line.drive1.EMCY.manufacturer"]
    assert {m.info.name: m.info.frame_id for m in t.message_list} == {
        "line.drive1.TPDO1": 0x185, "line.drive1.TPDO2": 0x285, "line.drive1.Heartbeat": 0x705,
        "line.drive1.EMCY": 0x85}
    assert all(s.direction == "rx" and not s.writable and s.max_write_rate is None for s in t.signal_list)
    assert all(m.transmit is None and not m.encoders for m in t.message_list)


def test_types_limits_units_and_index_come_from_the_file() -> None:
    t = table(drive())
    pos = t.signals["line.drive1.Position_actual_value"]
    assert (pos.value_type, pos.bit_length, pos.signed, pos.minimum, pos.maximum, pos.unit) == (
        int, 32, True, -1000000, 1000000, "inc")
    assert pos.comment == "CANopen 0x6064sub0 (ro)"
    temp = t.signals["line.drive1.Drive_status.Temperature"]
    assert (temp.bit_length, temp.signed, temp.minimum, temp.maximum, temp.unit) == (8, True, -40, 125, "degC")
    assert temp.comment == "CANopen 0x2000sub1 (ro)"
    cur = t.signals["line.drive1.Drive_status.Current"]
    assert (cur.value_type, cur.is_float, cur.bit_length, cur.unit) == (float, True, 32, "A")
    sw = t.signals["line.drive1.Statusword"]
    assert (sw.value_type, sw.signed, sw.minimum, sw.maximum) == (int, False, 0, 65535)


def test_the_node_id_sets_the_cob_ids() -> None:
    t = table(drive(5), drive(0x21, "drive2"))
    assert t.messages["line.drive2.TPDO1"].info.frame_id == 0x1A1
    assert t.messages["line.drive2.TPDO2"].info.frame_id == 0x2A1


@pytest.mark.parametrize("text, name", [
    ("Position actual value", "Position_actual_value"), ("Digital Inputs 1-8", "Digital_Inputs_1_8"),
    ("  (x)  ", "x"), ("---", "unnamed"), ("Temp.", "Temp")])
def test_part_names_keep_letters_and_digits(text: str, name: str) -> None:
    assert part_name(text) == name


def test_the_producer_heartbeat_time_is_read() -> None:
    assert describe_node(EDS, 5, "drive1").heartbeat_ms == 100


def test_the_nmt_state_is_a_signal_with_the_state_names() -> None:
    nmt = table(drive()).signals["line.drive1.NMT_state"]
    assert (nmt.frame_id, nmt.bit_length, nmt.writable) == (0x705, 7, False)
    assert nmt.choices == {0: "boot_up", 4: "stopped", 5: "operational", 127: "pre_operational"}


# --- configuration problems ---------------------------------------------------------------------------


@pytest.mark.parametrize("node_id", [0, 128, -1])
def test_node_ids_outside_1_to_127_are_refused(node_id: int) -> None:
    with pytest.raises(ConfigError, match=r"buses\[0\]\.nodes\[0\]\.id"):
        parse_config({"buses": [bus([drive(node_id)])]})


@pytest.mark.parametrize("second, needle", [
    (drive(5, "drive2"), "duplicate node id 5"), (drive(6, "drive1"), "duplicate node name drive1")])
def test_duplicate_node_ids_and_names_are_refused(second: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config({"buses": [bus([drive(), second])]})


@pytest.mark.parametrize("key", ["transmit", "rpdo"])
def test_write_and_transmit_options_on_nodes_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"buses\[0\]\.nodes\[0\]\.{key}"):
        parse_config({"buses": [bus([{**drive(), key: ["*"]}])]})


def test_a_missing_file_names_the_node_and_the_file(tmp_path: Path) -> None:
    text = problems(drive(eds=tmp_path / "nope.eds"))
    assert "bus line, node drive1 (id 5): EDS/DCF file not found" in text and "nope.eds" in text
    assert "buses[0].nodes[0].eds" in text


def edit(tmp_path: Path, old: str, new: str) -> Path:
    text = EDS.read_text()
    assert old in text
    path = tmp_path / "edited.eds"
    path.write_text(text.replace(old, new))
    return path


def test_tpdo_cob_id_clashes_between_nodes_are_problems(tmp_path: Path) -> None:
    fixed = edit(tmp_path, "DefaultValue=$NODEID+0x280", "DefaultValue=0x186")
    text = problems(drive(5, eds=fixed), drive(6, "drive2"))
    assert "frame id 0x186 of drive2.TPDO1 is already mapped by line.drive1.TPDO2" in text
    assert "buses[0].nodes[1]" in text


def test_a_tpdo_clashing_with_a_dbc_message_is_a_problem(tmp_path: Path) -> None:
    clash = edit(tmp_path, "DefaultValue=$NODEID+0x180", "DefaultValue=0x100")  # the demo DBC's 0x100
    text = problems(drive(eds=clash), mappings=[{"bus": "line", "dbc": str(DEMO_DBC)}])
    assert "frame id 0x100 of drive1.TPDO1 is already mapped by line." in text


@pytest.mark.parametrize("old, new, needle", [
    ("DefaultValue=0x60640020", "DefaultValue=0x60990020", "maps 0x6099sub0, which is not in the dictionary"),
    ("DefaultValue=0x60640020", "DefaultValue=0x60640010", "mapped with 16 bits, its data type has 32"),
    ("DefaultValue=0x20000220", "DefaultValue=0x60410010",
     "object Statusword (0x6041sub0) is already mapped by TPDO1"),
    ("DefaultValue=0x20000220", "DefaultValue=0x00070040", "maps 96 bits, more than the 64 of a PDO"),
    ("[FileInfo]", "[FileInfo\n", "cannot read EDS/DCF"),
])
def test_bad_pdo_mappings_are_problems_naming_the_pdo(tmp_path: Path, old: str, new: str, needle: str) -> None:
    assert needle in problems(drive(eds=edit(tmp_path, old, new)))


def test_dummy_entries_leave_gaps_and_invalid_pdos_are_skipped(tmp_path: Path) -> None:
    gap = edit(tmp_path, "DefaultValue=0x60410010", "DefaultValue=0x00060010")  # dummy UNSIGNED16
    off = tmp_path / "off.eds"
    off.write_text(gap.read_text().replace("DefaultValue=$NODEID+0x280", "DefaultValue=0x80000285"))
    t = table({**drive(eds=off), "sdo": []})
    assert list(t.messages) == ["line.drive1.TPDO1", "line.drive1.Heartbeat", "line.drive1.EMCY"]
    (temp,) = (t.signals[n] for n in t.messages["line.drive1.TPDO1"].info.signals)
    assert temp.name == "line.drive1.Drive_status.Temperature"
    values: list[Any] = [None] * len(t.signal_list)
    t.messages["line.drive1.TPDO1"].decoder(b"\xff\xff\xf6", values, [])
    assert values[temp.index] == -10


# --- values against the canopen package's LocalNode -----------------------------------------------------


def local_node(network: canopen.Network, node_id: int = 5) -> canopen.LocalNode:
    """A slave from the EDS, its TPDOs set up from the file (they subscribe through the network)."""
    node = canopen.LocalNode(node_id, str(EDS))
    network.add_node(node)
    node.tpdo.read(from_od=True)  # type: ignore[no-untyped-call]
    return node


@functools.cache
def peer_and_table() -> tuple[canopen.LocalNode, MappingTable]:
    return local_node(canopen.Network()), table(drive())  # an unconnected network: encoding only


def decode(t: MappingTable, message: str, data: bytes) -> dict[str, Any]:
    values: list[Any] = [None] * len(t.signal_list)
    changed: list[int] = []
    t.messages[message].decoder(data, values, changed)
    return {t.signal_list[i].name: values[i] for i in t.messages[message].signal_indices}


f32 = st.floats(width=32, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(sw=st.integers(0, 0xFFFF), temp=st.integers(-128, 127), pos=st.integers(-2**31, 2**31 - 1), cur=f32)
def test_decoded_tpdo_values_equal_what_the_local_node_encoded(sw: int, temp: int, pos: int, cur: float) -> None:
    node, t = peer_and_table()
    for idx, sub, v, pdo in ((0x6041, 0, sw, 1), (0x2000, 1, temp, 1), (0x6064, 0, pos, 2), (0x2000, 2, cur, 2)):
        for mv in node.tpdo[pdo].map:
            if (mv.index, mv.subindex) == (idx, sub):
                mv.raw = v
    got1 = decode(t, "line.drive1.TPDO1", bytes(node.tpdo[1].data))
    got2 = decode(t, "line.drive1.TPDO2", bytes(node.tpdo[2].data))
    assert got1 == {"line.drive1.Statusword": sw, "line.drive1.Drive_status.Temperature": temp}
    assert got2["line.drive1.Position_actual_value"] == pos
    assert struct.pack("<f", got2["line.drive1.Drive_status.Current"]) == struct.pack("<f", cur)


async def test_live_tpdos_from_a_local_node_on_a_virtual_bus() -> None:
    channel = unique_channel("canopen")
    config = {"buses": [bus([drive()], channel)], "mappings": []}
    async with BridgeHarness(config) as h:
        network = canopen.Network()
        network.connect(interface="virtual", channel=channel, receive_own_messages=False)
        try:
            node = local_node(network)
            for pos, cur, sw in ((123456, 1.5, 0x0237), (-7, -0.25, 0x0631)):
                for pdo, idx, sub, v in ((2, 0x6064, 0, pos), (2, 0x2000, 2, cur), (1, 0x6041, 0, sw),
                                         (1, 0x2000, 1, -12)):
                    for mv in node.tpdo[pdo].map:
                        if (mv.index, mv.subindex) == (idx, sub):
                            mv.raw = v
                node.tpdo[1].transmit()
                node.tpdo[2].transmit()
                expect = {"line.drive1.Position_actual_value": pos, "line.drive1.Drive_status.Current": cur,
                          "line.drive1.Statusword": sw, "line.drive1.Drive_status.Temperature": -12}

                def arrived(e: Mapping[str, object] = expect) -> bool:
                    return all(h.bridge.read(n).value == v for n, v in e.items())

                await h.until(arrived, what="TPDO values")
            assert all(h.bridge.read(n).quality.value == "good" for n in expect)
            assert not h.bridge.signals["line.drive1.Statusword"].writable
        finally:
            network.disconnect()
