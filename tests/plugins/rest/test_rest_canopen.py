"""CANopen on the REST API: TPDO signals with their object's index in the description, read-only; the bus
shows each node's NMT state, heartbeat and boot-up counters and its last EMCY."""

from __future__ import annotations

import uuid
from pathlib import Path

from canbridge_rest import models

from tests.plugins.rest.conftest import running

EDS = Path(__file__).resolve().parents[2] / "data" / "eds" / "drive.eds"


async def test_tpdo_signals_and_node_state_on_rest() -> None:
    config = {"buses": [{"name": "line", "interface": "virtual", "channel": f"canopen-{uuid.uuid4().hex[:8]}",
                         "nodes": [{"id": 5, "name": "drive1", "eds": str(EDS)}]}], "mappings": []}
    async with running(config=config) as api:
        api.h.inject("705#00")  # boot-up
        api.h.inject("705#05")
        api.h.inject("285#40E20100CDCC4C3E")  # position 123456, current 0.2 A
        api.h.inject("085#104209AABBCCDDEE")  # EMCY: device temperature
        await api.h.until(lambda: api.h.bridge.bus_status("line").canopen["drive1"].last_emcy is not None)
        status, body, _ = await api.get("/api/v1/signals/line.drive1.Position_actual_value")
        assert status == 200
        models.Signal.model_validate(body)
        assert (body["value"], body["quality"], body["unit"], body["writable"]) == (123456, "good", "inc", False)
        assert (body["minimum"], body["maximum"], body["comment"]) == (-1000000, 1000000, "CANopen 0x6064sub0 (ro)")
        _, nmt, _ = await api.get("/api/v1/signals/line.drive1.NMT_state")
        assert (nmt["value"], nmt["choice"]) == (5, "operational")
        status, refused, _ = await api.put("/api/v1/signals/line.drive1.Position_actual_value", json={"value": 1})
        assert status in (403, 409), refused
        _, detail, _ = await api.get("/api/v1/buses/line")
        models.BusDetail.model_validate(detail)
        assert detail["canopen"]["drive1"] == {
            "node_id": 5, "nmt_state": "operational", "heartbeats": 2, "boot_ups": 1, "lost": False,
            "emcy_count": 1, "sdo_transfers": 0, "sdo_aborts": 0, "sdo_timeouts": 0, "last_emcy": {
                "code": 0x4210, "error_class": "temperature / device", "error_register": 9,
                "register_bits": ["generic", "temperature"], "manufacturer": "aabbccddee",
                "timestamp": detail["canopen"]["drive1"]["last_emcy"]["timestamp"]}}


SERVO = EDS.parent / "servo.eds"


async def test_an_sdo_abort_is_its_refusal_status_with_the_abort_code() -> None:
    """The node's abort keeps its code in the error body; its reason sets the status (docs/rest.md)."""
    import canopen
    from canopen.sdo.exceptions import SdoAbortedError

    channel = f"canopen-{uuid.uuid4().hex[:8]}"
    config = {"buses": [{"name": "line", "interface": "virtual", "channel": channel, "nodes": [
        {"id": 5, "name": "servo", "eds": str(SERVO), "writable": ["Target_*"], "write_rate": None,
         "sdo_timeout_ms": 100}]}], "mappings": []}
    async with running(config=config) as api:
        url = "/api/v1/signals/line.servo.Target_position"
        status, body, _ = await api.put(url, json={"value": 5})  # no node on the bus yet
        assert (status, body["error"], body["abort_code"]) == (504, "device_timeout", "0x05040000"), body
        network = canopen.Network()
        network.connect(interface="virtual", channel=channel, receive_own_messages=False)
        try:
            node = canopen.LocalNode(5, str(SERVO))
            network.add_node(node)
            codes = iter([0x06090030, 0x08000022])

            def refuse(index: int, subindex: int, od: object, data: bytes) -> None:
                raise SdoAbortedError(next(codes))

            node.add_write_callback(refuse)  # type: ignore[no-untyped-call]
            status, body, _ = await api.put(url, json={"value": 5})
            models.Error.model_validate(body)
            assert (status, body["error"], body["abort_code"]) == (422, "out_of_range", "0x06090030"), body
            assert "value range of parameter exceeded" in body["detail"]
            status, body, _ = await api.put(url, json={"value": 5})
            assert (status, body["error"], body["abort_code"]) == (409, "device_refused", "0x08000022"), body
        finally:
            network.disconnect()
