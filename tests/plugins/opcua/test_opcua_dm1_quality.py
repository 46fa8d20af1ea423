"""The DM1 nodes' status follows the bus (canbridge_opcua/diagnostics.py against an asyncua address space
and the FakeBridge): Good with the codes, BadNoCommunication without a value while the bus is down
(Part 4, 7.7.1), Good with the codes again when it is back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from canbridge_opcua.bulk import BulkAdder
from canbridge_opcua.diagnostics import Dm1Nodes
from canbridge_opcua.nodes import Plan, generate, nodeid
from canbridge_opcua.service import notify

from canbridge import BusState, Dm1, Dtc
from canbridge.testing import FakeBridge, signal_info
from tests.plugins.opcua.uatypes import StatusCodes, dv_status, dv_value

NS = "urn:canbridge"


async def test_a_bus_that_goes_down_makes_the_codes_bad_without_a_value() -> None:
    server = Server()
    await server.init()
    idx = await server.register_namespace(NS)
    bridge = FakeBridge([signal_info("truck.ET1.Coolant")], state_dir=Path("/nonexistent"))
    plan = Plan()
    aspace = server.iserver.aspace
    BulkAdder(aspace, plan.mutable).add(generate(plan, idx, dict(bridge.buses), dict(bridge.messages),
                                                 dict(bridge.signals), 50.0))
    nodes = Dm1Nodes(bridge, aspace, idx, 3.0, notify)
    now = datetime.now(UTC)
    dm1 = Dm1(0, "off", "off", "on", "off", "none", "none", "slow", "none", (Dtc(190, 2, 5, 0),),
              int(now.timestamp() * 1e9), 1)

    def spn() -> tuple[object, int]:
        dv = aspace[nodeid("truck._J1939.0x00.DM1.Spn", idx)].attributes[AttributeIds.Value].value
        assert dv is not None
        return dv_value(dv), dv_status(dv).value

    await nodes.update("truck", bridge.set_bus_state("truck", BusState.ACTIVE, dm1={0: dm1}), now)
    assert spn() == ([190], StatusCodes.Good)
    await nodes.update("truck", bridge.set_bus_state("truck", BusState.DOWN), now)
    assert spn() == (None, StatusCodes.BadNoCommunication)
    await nodes.update("truck", bridge.set_bus_state("truck", BusState.ACTIVE), now)
    assert spn() == ([190], StatusCodes.Good)
