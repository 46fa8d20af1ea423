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
    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939-{uuid.uuid4().hex[:8]}",
                         "j1939_max_unknown_sources": 0}],  # unknown senders only counted (test_rest_heard.py)
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


async def test_a_j1939_request_through_rest_is_answered_as_signals_and_refused_without_an_address() -> None:
    name = 0x0000_1000_0000_0050
    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939-{uuid.uuid4().hex[:8]}",
                         "j1939": {"name": name, "address": 0x80}}],
              "mappings": [{"bus": "truck", "dbc": str(DBC.parent / "j1939_hours.dbc")}]}
    async with running(config=config) as api:
        await api.h.until(lambda: api.h.bridge.bus_status("truck").address_claim.get("state") == "claimed")
        _, detail, _ = await api.get("/api/v1/buses/truck")
        models.BusDetail.model_validate(detail)
        assert detail["address_claim"]["address"] == 0x80 and detail["address_claim"]["state"] == "claimed"
        status, body, _ = await api.post("/api/v1/buses/truck/j1939/requests", json={"pgn": 65253, "destination": 0})
        assert status == 200, body
        assert body["frame"]["cansend"] == "18EA0080#E5FE00" and body["pgn"] == 65253
        assert (await api.h.next_sent(0x18EA0080)).data == bytes((0xE5, 0xFE, 0x00))
        api.h.inject("18FEE500#40420F0010270000")
        await api.h.until(lambda: api.h.bridge.read("truck.HOURS.EngineTotalHoursOfOperation").value == 50000)
        for bad, code, reason in (({"pgn": 65253, "to": 1}, 400, "unsupported_request"),
                                  ({"pgn": 1 << 18}, 422, "out_of_range"),
                                  ({"pgn": 65253, "destination": "x"}, 422, "wrong_type")):
            status, err, _ = await api.post("/api/v1/buses/truck/j1939/requests", json=bad)
            assert (status, err["error"]) == (code, reason), err
        status, err, _ = await api.post("/api/v1/buses/nope/j1939/requests", json={"pgn": 65253})
        assert status == 404
        # a lower NAME takes the address: the bridge may not transmit, the bus warns
        api.h.inject(f"18EEFF80#{(1).to_bytes(8, 'little').hex()}")
        await api.h.until(lambda: api.h.bridge.bus_status("truck").address_claim.get("state") == "lost")
        status, err, resp = await api.post("/api/v1/buses/truck/j1939/requests", json={"pgn": 65253})
        assert (status, err["error"]) == (503, "no_address") and resp.headers["Retry-After"] == "1"
        _, detail, _ = await api.get("/api/v1/buses/truck")
        assert detail["state"] == "warning" and "address claim lost" in detail["last_error"]
