"""J1939 on the REST API: a not-available value is bad with its reason; the bus shows unconfigured
senders, transport-protocol counters and each source's DM1 (lamps and trouble codes)."""

from __future__ import annotations

import uuid
from pathlib import Path

from canbridge_rest import models

from tests.plugins.rest.conftest import running

DBC = Path(__file__).resolve().parents[2] / "data" / "dbc" / "j1939_test.dbc"
COOLANT = "truck.ET1.EngineCoolantTemperature"


async def test_not_available_is_bad_with_a_reason_and_the_bus_lists_unknown_senders() -> None:
    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939-{uuid.uuid4().hex[:8]}"}],
              "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["ET1"]}]}
    async with running(config=config) as api:
        api.h.inject("18FEEE00#FF50FFFFFFFFFFFF")  # coolant not available, fuel 40 degC
        api.h.inject("18FEEE21#5050FFFFFFFFFFFF")  # ET1 from a source nobody configured
        api.h.inject("1CECFF00#20270006FFE3FE00")  # a BAM announcement (EC1 is not mapped here)
        api.h.inject("18FECA00#0400BE000205FFFF")  # DM1: amber warning, SPN 190 FMI 2 seen 5 times
        await api.h.until(lambda: api.h.bridge.read("truck.ET1.FuelTemperature").value == 40)
        await api.h.until(lambda: api.h.bridge.bus_status("truck").transport.get("active") == 1)
        status, body, _ = await api.get(f"/api/v1/signals/{COOLANT}")
        assert status == 200
        models.Signal.model_validate(body)
        assert (body["value"], body["quality"], body["reason"]) == (None, "bad", "J1939 not available")
        _, fuel, _ = await api.get("/api/v1/signals/truck.ET1.FuelTemperature")
        assert (fuel["value"], fuel["quality"], fuel["reason"]) == (40, "good", None)
        _, buses, _ = await api.get("/api/v1/buses")
        models.BusList.model_validate(buses)
        [bus] = buses["buses"]
        assert bus["unconfigured_sources"] == {"ET1@0x21": 1}
        assert bus["transport"] == {"completed": 0, "active": 1}
        await api.h.until(lambda: 0 in api.h.bridge.bus_status("truck").dm1)
        _, detail, _ = await api.get("/api/v1/buses/truck")
        models.BusDetail.model_validate(detail)
        dm1 = detail["dm1"]["0x00"]
        assert dm1["lamps"] == {"mil": "off", "red_stop": "off", "amber_warning": "on", "protect": "off"}
        assert dm1["flash"]["amber_warning"] == "slow"
        assert dm1["dtcs"] == [{"spn": 190, "fmi": 2, "occurrences": 5, "conversion_method": 0}]
        assert dm1["source"] == 0 and dm1["messages"] == 1 and dm1["timestamp"].endswith("Z")
