"""The bulk-built address space is, node for node, attribute for attribute and reference for reference,
what asyncua's own add_nodes builds, while the immutable attribute values are shared between nodes."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from canbridge_opcua.bulk import BulkAdder
from canbridge_opcua.nodes import Plan, build_plan, generate, nodeid

from canbridge import SignalInfo
from canbridge.testing import FakeBridge, signal_info
from tests.plugins.opcua.uatypes import dv_value

NS = "urn:canbridge"


def mixed_signals(messages: int) -> list[SignalInfo]:
    """Eight signals per message, one of each kind of variable the plan builds."""
    out: list[SignalInfo] = []
    for m in range(messages):
        fid = 0x100 + m
        base = f"bus.Msg{m:04d}"
        kinds: list[tuple[str, dict[str, Any]]] = [
            ("Temp", {"value_type": float, "scale": 0.5, "offset": -40, "bit_length": 8, "unit": "degC"}),
            ("Speed", {"value_type": float, "scale": 0.01, "unit": "km/h", "comment": f"speed of {m}"}),
            ("Torque", {"bit_length": 8, "signed": True, "minimum": -128, "maximum": 127, "unit": "Nm",
                        "writable": m % 2 == 0}),
            ("Mode", {"bit_length": 8, "choices": {0: "Off", 1: "Idle", 2: "Run", 3: "Fault"}}),
            ("Gear", {"bit_length": 8, "choices": {1: "One", 2: "Two", 5: "Five"}, "writable": m % 3 == 0}),
            ("Enable", {"value_type": bool, "choices": {0: "Off", 1: "On"}}),
            ("Fault", {"value_type": bool, "writable": m % 2 == 1}),
            ("Counter", {"bit_length": 8, "unit": "weird unit"}),
        ]
        for name, kw in kinds:
            out.append(signal_info(f"{base}.{name}", frame_id=fid, index=len(out), **kw))
    return out


async def server_with(messages: int) -> tuple[Server, Plan]:
    server = Server()
    await server.init()
    idx = await server.register_namespace(NS)
    bridge = FakeBridge(mixed_signals(messages), state_dir=Path("/nonexistent"))  # never written here
    plan = build_plan(idx, dict(bridge.buses), dict(bridge.messages), dict(bridge.signals), 50.0)
    return server, plan


def dump(node: Any) -> tuple[list[Any], list[Any]]:
    attrs = [(k, v.value.Value, v.value.StatusCode) for k, v in node.attributes.items()]
    return attrs, list(node.references)


@pytest.mark.parametrize("messages", [1, 3, 125])  # 125 messages: 1,000 signals
async def test_bulk_address_space_equals_add_nodes(messages: int) -> None:
    plain, plan_a = await server_with(messages)
    bulk, reference = await server_with(messages)
    results = await plain.iserver.isession.add_nodes(plan_a.items)
    assert all(r.StatusCode.is_good() for r in results)
    # as the service does it: the items streamed, the plan filled while they are added
    plan_b = Plan()
    bridge = FakeBridge(mixed_signals(messages), state_dir=Path("/nonexistent"))
    idx = reference.signals["bus.Msg0000.Temp"].nodeid.NamespaceIndex
    BulkAdder(bulk.iserver.aspace, plan_b.mutable).add(
        generate(plan_b, idx, dict(bridge.buses), dict(bridge.messages), dict(bridge.signals), 50.0)
    )
    assert plan_b.mutable == reference.mutable and plan_b.signals.keys() == reference.signals.keys()

    a, b = plain.iserver.aspace, bulk.iserver.aspace
    ids = [item.RequestedNewNodeId for item in plan_a.items]
    assert set(a.keys()) == set(b.keys())  # the very same node ids, nothing more, nothing less
    for nid in [*ids, nodeid(ObjectIds.ObjectsFolder)]:
        assert dump(b[nid]) == dump(a[nid]), nid


async def test_immutable_values_are_shared_and_written_ones_are_not() -> None:
    server, plan = await server_with(20)
    aspace = server.iserver.aspace
    BulkAdder(aspace, plan.mutable).add(plan.items)
    temps = [n for name, n in plan.signals.items() if name.endswith(".Temp")]
    datatypes = {id(aspace[n.nodeid].attributes[AttributeIds.DataType]) for n in temps}
    values = {id(aspace[n.nodeid].attributes[AttributeIds.Value]) for n in temps}
    ranges = {id(aspace[nodeid(f"{n.info.name}.EURange", plan.signals[n.info.name].nodeid.NamespaceIndex)]
                 .attributes[AttributeIds.Value]) for n in temps}
    # one object for 20 nodes (the first EURange, the prototype, keeps the one add_nodes made it)
    assert len(datatypes) == 1 and len(ranges) == 2
    assert len(values) == len(temps)  # each signal's value is its own
    texts = {id(aspace[n.choice_text_nodeid].attributes[AttributeIds.Value])
             for n in plan.signals.values() if n.choice_text_nodeid is not None}
    assert len(texts) == 20


async def test_a_client_cannot_write_a_shared_value() -> None:
    """Sharing is safe because no session canbridge opens may write a property or a non-Value
    attribute: asyncua refuses it for every role but admin (the plugin never grants admin)."""
    server, plan = await server_with(3)
    aspace = server.iserver.aspace
    BulkAdder(aspace, plan.mutable).add(plan.items)
    idx = plan.signals["bus.Msg0000.Temp"].nodeid.NamespaceIndex
    target = nodeid("bus.Msg0000.Temp.EURange", idx)
    other = aspace[nodeid("bus.Msg0001.Temp.EURange", idx)].attributes[AttributeIds.Value]
    assert other.value is not None
    before = dv_value(other.value)
    rng = ua.Range()
    rng.Low, rng.High = 0.0, 1.0
    writes = []
    for attr in (AttributeIds.Value, AttributeIds.DisplayName):
        wv = ua.WriteValue()
        wv.NodeId = target
        wv.AttributeId = attr
        wv.Value = ua.DataValue(ua.Variant(rng) if attr == AttributeIds.Value else ua.Variant(ua.LocalizedText("x")))
        writes.append(wv)
    params = ua.WriteParameters()
    params.NodesToWrite = writes
    for role in (UserRole.User, UserRole.Anonymous):
        codes = await server.iserver.attribute_service.write(params, User(role=role))
        assert not any(c.is_good() for c in codes)
    assert other.value is not None
    assert dv_value(other.value) == before


async def test_1000_signals_stay_well_under_the_old_memory() -> None:
    """Measured: 8.0 MB traced for the 1,000-signal address space in bulk, 22.3 MB through add_nodes
    (one object per attribute per node). The bound leaves 2x room and still fails for the old way."""
    server = Server()
    await server.init()
    idx = await server.register_namespace(NS)
    bridge = FakeBridge(mixed_signals(125), state_dir=Path("/nonexistent"))
    gc.collect()
    tracemalloc.start()
    try:
        plan = Plan()
        BulkAdder(server.iserver.aspace, plan.mutable).add(
            generate(plan, idx, dict(bridge.buses), dict(bridge.messages), dict(bridge.signals), 50.0)
        )
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(plan.signals) == 1000
    assert retained < 16 * 2**20 and peak < 18 * 2**20
