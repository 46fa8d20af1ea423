"""REST shows the signals of J1939 senders heard but not configured as soon as they are heard: in the
signal list and under ``GET /api/v1/signals/{name}``."""

from __future__ import annotations

import uuid
from pathlib import Path

from canbridge_rest import models

from tests.plugins.rest.conftest import running

DBC = Path(__file__).resolve().parents[2] / "data" / "dbc" / "j1939_test.dbc"


async def test_a_heard_source_appears_in_the_signal_list_and_reads() -> None:
    config = {"buses": [{"name": "truck", "interface": "virtual", "channel": f"j1939-{uuid.uuid4().hex[:8]}"}],
              "mappings": [{"bus": "truck", "dbc": str(DBC), "messages": ["ET1"]}]}
    async with running(config=config) as api:
        status, body, _ = await api.get("/api/v1/signals/truck.sa0x21.ET1.FuelTemperature")
        assert status == 404  # nothing heard yet
        _, before, _ = await api.get("/api/v1/signals")
        api.h.inject("18FEEE21#5050FFFFFFFFFFFF")  # ET1 from a source nobody configured
        await api.h.until(lambda: "truck.sa0x21.ET1.FuelTemperature" in api.h.bridge.signals)
        status, body, _ = await api.get("/api/v1/signals/truck.sa0x21.ET1.FuelTemperature")
        assert status == 200
        models.Signal.model_validate(body)
        assert (body["value"], body["quality"], body["unit"]) == (40, "good", "degC")
        status, listed, _ = await api.get("/api/v1/signals", params={"message": "sa0x21.ET1"})
        assert status == 200
        models.SignalList.model_validate(listed)
        assert [s["name"] for s in listed["signals"]] == [
            "truck.sa0x21.ET1.EngineCoolantTemperature", "truck.sa0x21.ET1.FuelTemperature",
            "truck.sa0x21.ET1.EngineOilTemperature"]
        _, after, _ = await api.get("/api/v1/signals")
        assert after["count"] == before["count"] + 3
        _, buses, _ = await api.get("/api/v1/buses")
        assert buses["buses"][0]["unconfigured_sources"] == {}
