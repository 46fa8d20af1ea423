"""OPC UA nodes for J1939 senders heard but not configured, created at run time: a client browses them
under the bus folder, reads them and subscribes to them with the node ids of the usual scheme."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from asyncua.common.subscription import DataChangeNotif
from asyncua.ua.uaerrors import UaStatusCodeError

from canbridge.testing import BridgeHarness, eventually
from tests.plugins.opcua.conftest import connect, ns_index
from tests.plugins.opcua.uatypes import dv_status, dv_value, nid

DBC = Path(__file__).resolve().parents[2] / "data" / "dbc" / "j1939_test.dbc"
FUEL = "truck.sa0x21.ET1.FuelTemperature"


async def test_a_heard_source_gets_nodes_that_browse_read_and_subscribe(opcua_config: Any) -> None:
    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939-{uuid.uuid4().hex[:8]}"}],
              "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["ET1", "EEC1"]}]}
    async with BridgeHarness(config=config, plugins={"opcua": opcua_config()}) as h, \
            connect(h.service("opcua").endpoints()[0]) as c:
        idx = await ns_index(c)
        bus = c.get_node(nid("truck", idx))

        async def browsed(node: Any = bus) -> set[str]:
            return {(await n.read_browse_name()).Name for n in await node.get_children()}

        assert "sa0x21.ET1" not in await browsed()
        h.inject("18FEEE21#5050FFFFFFFFFFFF")  # ET1 from 0x21, which no mapping configures
        await eventually(browsed, lambda names: "sa0x21.ET1" in names, what="the message object")
        assert await browsed(c.get_node(nid("truck.sa0x21.ET1", idx))) == {
            "EngineCoolantTemperature", "FuelTemperature", "EngineOilTemperature"}
        fuel = c.get_node(nid(FUEL, idx))
        dv = await eventually(lambda: fuel.read_data_value(raise_on_bad_status=False),
                              lambda dv: dv_value(dv) == 40, what="the first value")
        assert dv_status(dv).is_good()
        frames = c.get_node(nid("truck._Diagnostics.Messages.sa0x21.ET1.Frames", idx))
        assert (await frames.read_browse_name()).Name == "Frames"

        got: list[Any] = []

        class Handler:
            def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
                got.append(val)

        sub = await c.create_subscription(50, Handler())
        assert await sub.subscribe_data_change(fuel, queuesize=0)
        await h.until(lambda: 40 in got, what="the current value notified")
        h.inject("18FEEE21#5064FFFFFFFFFFFF")  # fuel 60 degC
        await h.until(lambda: 60 in got, what="the change notified")
        # a second unknown sender of the same PGN: nodes of its own, nothing overwritten
        h.inject("18FEEE22#5046FFFFFFFFFFFF")
        other = c.get_node(nid("truck.sa0x22.ET1.FuelTemperature", idx))

        async def read_other() -> Any:
            try:
                return dv_value(await other.read_data_value(raise_on_bad_status=False))
            except UaStatusCodeError:  # BadNodeIdUnknown until it is added
                return None

        await eventually(read_other, lambda v: v == 30, what="the second source's node")
        assert await fuel.read_value() == 60
        await sub.delete()
