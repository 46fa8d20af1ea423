"""Sparkplug B payload rules: datatypes, value encoding, birth and data metrics, seq and bdSeq."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from canbridge_mqtt import sparkplug as sp
from canbridge_mqtt.session import BDSEQ, REBIRTH, BdSeqStore, EdgeNode
from canbridge_mqtt.sparkplug import DataType
from canbridge_mqtt.sparkplug_b_pb2 import Payload

from canbridge import Quality, SignalValue
from canbridge.testing import signal_info


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"value_type": bool}, DataType.BOOLEAN),
        ({"bit_length": 8}, DataType.UINT8),
        ({"bit_length": 16}, DataType.UINT16),
        ({"bit_length": 12, "minimum": -2048, "signed": True}, DataType.INT16),
        ({"bit_length": 8, "signed": True, "minimum": -128}, DataType.INT8),
        ({"bit_length": 32}, DataType.UINT32),
        ({"bit_length": 64}, DataType.UINT64),
        ({"bit_length": 64, "signed": True, "minimum": -1}, DataType.INT64),
        # an offset moves the physical range out of the raw width: the type follows the physical range
        ({"bit_length": 8, "offset": -40.0, "signed": False}, DataType.INT16),
        ({"bit_length": 8, "offset": 200.0}, DataType.UINT16),
        ({"value_type": float, "scale": 0.1}, DataType.DOUBLE),
        ({"value_type": float, "is_float": True}, DataType.FLOAT),
        ({"value_type": float, "is_float": True, "bit_length": 64}, DataType.DOUBLE),
    ],
)
def test_datatype_follows_the_signal(overrides: dict[str, object], expected: DataType) -> None:
    assert sp.datatype_for(signal_info("b.M.S", **overrides)) is expected


def test_choices_are_strings_only_where_configured() -> None:
    info = signal_info("b.M.Mode", bit_length=2, choices={0: "Off", 1: "On"})
    assert sp.datatype_for(info) is DataType.UINT8
    assert sp.datatype_for(info, choices_as_text=True) is DataType.STRING


@pytest.mark.parametrize(
    ("dt", "value"),
    [(DataType.INT8, -5), (DataType.INT16, -32768), (DataType.INT32, -1), (DataType.INT64, -(1 << 63)),
     (DataType.UINT8, 255), (DataType.UINT32, (1 << 32) - 1), (DataType.UINT64, (1 << 64) - 1),
     (DataType.BOOLEAN, True), (DataType.STRING, "On"), (DataType.DOUBLE, 12.5), (DataType.FLOAT, 0.5)],
)
def test_tck_id_payloads_metric_value_round_trips_through_the_wire(dt: DataType, value: object) -> None:
    p = Payload()
    m = p.metrics.add()
    m.datatype = int(dt)
    sp.set_value(m, dt, value)
    back = sp.decode(sp.encode(p)).metrics[0]
    assert sp.get_value(back) == value
    if dt in (DataType.INT8, DataType.INT16, DataType.INT32):
        assert back.WhichOneof("value") == "int_value" and back.int_value >= 0  # two's complement, unsigned field


def test_null_values_are_is_null() -> None:
    p = Payload()
    for dt, value in ((DataType.UINT16, None), (DataType.INT32, math.nan)):
        m = p.metrics.add()
        sp.set_value(m, dt, value)
    assert [m.is_null for m in sp.decode(sp.encode(p)).metrics] == [True, True]
    assert sp.get_value(p.metrics[0]) is None


def test_decode_refuses_garbage() -> None:
    with pytest.raises(ValueError, match="not a Sparkplug B payload"):
        sp.decode(b"\xff\xff\xff\xff")


def _node() -> EdgeNode:
    signals = [
        signal_info("can0.Motor.Speed", index=0, unit="rpm", minimum=-8000, maximum=8000, bit_length=16, signed=True),
        signal_info("can0.Motor.Run", index=1, value_type=bool),
        signal_info("can1.Cmd.Mode", index=2, bit_length=2, choices={0: "Off", 1: "On"}, writable=True),
    ]
    return EdgeNode("plant1", "gw7", signals, [("Buses/can0/State", DataType.STRING)], choices_as_text=True)


def test_tck_id_payloads_ndeath_bdseq_only() -> None:
    node = _node()
    p = sp.decode(node.death(17))
    assert [(m.name, sp.get_value(m)) for m in p.metrics] == [(BDSEQ, 17)]
    assert not p.HasField("seq")


def test_tck_id_payloads_nbirth_seq_zero_bdseq_and_rebirth() -> None:
    node = _node()
    node.bdseq = 3
    node.next_seq()
    p = sp.decode(node.nbirth({"Buses/can0/State": "active"}))
    assert p.seq == 0 and p.timestamp > 0
    by_name = {m.name: m for m in p.metrics}
    assert sp.get_value(by_name[BDSEQ]) == 3
    assert sp.get_value(by_name[REBIRTH]) is False and not by_name[REBIRTH].HasField("alias")
    assert by_name["Buses/can0/State"].string_value == "active" and by_name["Buses/can0/State"].alias == 1


def test_tck_id_payloads_sequence_num_wraps_after_255() -> None:
    node = _node()
    node.nbirth({})
    seqs = [sp.decode(node.ddeath()).seq for _ in range(300)]
    assert seqs[0] == 1 and seqs[254] == 255 and seqs[255] == 0 and seqs[256] == 1


def test_tck_id_payloads_dbirth_metrics_carry_name_alias_datatype_and_properties() -> None:
    node = _node()
    values = {"can0.Motor.Speed": SignalValue("can0.Motor.Speed", -1200, Quality.GOOD, 5_000_000_000)}
    p = sp.decode(node.dbirth("can0", values))
    speed, run = p.metrics
    assert (speed.name, speed.datatype, speed.timestamp) == ("Motor/Speed", DataType.INT16, 5000)
    assert sp.get_value(speed) == -1200
    props = sp.properties(speed)
    assert props["Quality"] == 192 and props["engUnit"] == "rpm"
    assert props["engLow"] == -8000 and props["engHigh"] == 8000 and props["readOnly"] is True
    # nothing received yet: null value and bad quality
    assert run.is_null and sp.properties(run)["Quality"] == 0 and run.datatype == DataType.BOOLEAN
    aliases = [m.alias for m in p.metrics] + [m.alias for m in sp.decode(node.dbirth("can1", {})).metrics]
    assert len(set(aliases)) == 3 and 1 not in aliases  # unique per node, none shared with node metrics


def test_tck_id_payloads_ddata_by_alias_only_with_quality_on_change() -> None:
    node = _node()
    qualities: dict[str, Quality] = {}
    batch = [("can0.Motor.Speed", 10, Quality.GOOD, 1), ("can0.Motor.Run", True, Quality.STALE, 2)]
    p = sp.decode(node.ddata("can0", batch, qualities=qualities))
    assert all(not m.name and m.HasField("alias") for m in p.metrics)
    assert "Quality" not in sp.properties(p.metrics[0]) and sp.properties(p.metrics[1])["Quality"] == 500
    p = sp.decode(node.ddata("can0", [("can0.Motor.Run", True, Quality.GOOD, 3)], qualities=qualities))
    assert sp.properties(p.metrics[0])["Quality"] == 192  # back to good is news too
    hist = sp.decode(node.ddata("can0", [("can0.Motor.Speed", 11, Quality.GOOD, 4)], historical=True))
    assert hist.metrics[0].is_historical and hist.metrics[0].timestamp == 4


def test_choice_text_metric_shows_and_takes_text() -> None:
    node = _node()
    p = sp.decode(node.ddata("can1", [("can1.Cmd.Mode", 1, Quality.GOOD, 1)]))
    assert p.metrics[0].string_value == "On"
    cmd = Payload()
    m = cmd.metrics.add()
    m.name = "Cmd/Mode"
    m.datatype = DataType.STRING
    m.string_value = "Off"
    (c,) = node.parse_command(cmd, "can1")
    assert c.metric is not None and c.metric.signal == "can1.Cmd.Mode" and c.value == "Off"
    # the same name on another device does not resolve
    (c,) = node.parse_command(cmd, "can0")
    assert c.metric is None


def test_bdseq_increments_per_connect_and_survives_restarts(tmp_path: Path) -> None:
    path = tmp_path / "mqtt" / "bdseq.json"
    assert [BdSeqStore(path).next() for _ in range(3)] == [0, 1, 2]
    assert BdSeqStore(path).next() == 3  # a new store object: as after a restart
    path.write_text('{"next": 255}')
    store = BdSeqStore(path)
    assert (store.next(), store.next()) == (255, 0)
    path.write_text("garbage")
    assert BdSeqStore(path).next() == 0
