"""The REST API against a running bridge on a virtual bus: every endpoint and every refusal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from canbridge_rest import models
from canbridge_rest.errors import REFUSAL_STATUS
from canbridge_rest.handlers import ROUTES

import canbridge
from tests.plugins.rest.conftest import Api, bridge_config, running

SPEED = "demo.MotorStatus.MotorSpeed"
STATE = "demo.MotorStatus.MotorState"
SETPOINT = "demo.MotorCommand.SpeedSetpoint"
JSON_TYPE = {"Content-Type": "application/json"}
MODE = "demo.MotorCommand.Mode"
MOTOR_FRAME = "100#E8033C0000120000"  # speed 1000 rpm, 20 degC, state 2 (Running), enabled


async def _no_frame(api: Api, can_id: int | None = None) -> None:
    """Nothing was sent on the bus (the harness's peer sees no frame)."""
    with pytest.raises(TimeoutError):
        await api.h.next_sent(can_id, timeout=0.3)


async def test_signal_has_value_choice_quality_and_timestamps(api: Api) -> None:
    api.h.inject(MOTOR_FRAME)
    await api.h.until(lambda: api.h.bridge.read(STATE).value == 2)
    status, body, _ = await api.get(f"/api/v1/signals/{STATE}")
    assert status == 200
    models.Signal.model_validate(body)
    sv = api.h.bridge.read(STATE)
    assert body["value"] == 2
    assert body["choice"] == "Running"
    assert body["choices"] == {"0": "Off", "1": "Ready", "2": "Running", "3": "Fault"}
    assert body["quality"] == "good"
    assert body["timestamp_ns"] == sv.timestamp_ns
    assert body["timestamp"] == models.iso(sv.timestamp_ns)
    assert body["timestamp"].endswith("Z") and body["timestamp"][:4].isdigit()
    assert body["minimum"] == 0 and body["maximum"] == 3
    assert body["writable"] is False and body["direction"] == "rx"
    assert body["comment"] == "Controller state machine."
    assert body["age_s"] is not None and body["age_s"] >= 0

    _, speed, _ = await api.get(f"/api/v1/signals/{SPEED}")
    assert speed["value"] == 1000 and speed["unit"] == "rpm" and speed["choice"] is None
    assert speed["minimum"] == -8000 and speed["maximum"] == 8000 and speed["type"] == "int"

    _, sp, _ = await api.get(f"/api/v1/signals/{SETPOINT}")
    assert sp["writable"] is True and sp["direction"] == "tx"


async def test_signal_list_and_filters(api: Api) -> None:
    status, body, _ = await api.get("/api/v1/signals")
    assert status == 200
    models.SignalList.model_validate(body)
    assert body["count"] == len(api.h.bridge.signals) == len(body["signals"])
    assert [s["name"] for s in body["signals"]] == list(api.h.bridge.signals)

    _, body, _ = await api.get("/api/v1/signals", params={"message": "MotorCommand"})
    assert {s["name"] for s in body["signals"]} == {n for n in api.h.bridge.signals if ".MotorCommand." in n}
    _, body, _ = await api.get("/api/v1/signals", params={"name": "demo.*.Motor*"})
    assert body["count"] > 0 and all(s["signal"].startswith("Motor") for s in body["signals"])
    _, body, _ = await api.get("/api/v1/signals", params={"bus": "nope"})
    assert body == {"count": 0, "signals": []}
    _, body, _ = await api.get("/api/v1/signals", params={"writable": "true"})
    assert body["count"] == 4 and all(s["writable"] for s in body["signals"])

    api.h.inject(MOTOR_FRAME)
    await api.h.until(lambda: api.h.bridge.read(SPEED).quality is canbridge.Quality.GOOD)
    _, good, _ = await api.get("/api/v1/signals", params={"quality": "good"})
    names = {s["name"] for s in good["signals"]}
    assert SPEED in names and "demo.BatteryStatus.PackVoltage" not in names
    _, waiting, _ = await api.get("/api/v1/signals", params={"quality": "waiting"})
    assert "demo.BatteryStatus.PackVoltage" in {s["name"] for s in waiting["signals"]}

    status, body, _ = await api.get("/api/v1/signals", params={"quality": "excellent"})
    assert status == 400 and body["error"] == "bad_request" and "quality" in body["detail"]


async def test_unknown_signal_is_404(api: Api) -> None:
    status, body, _ = await api.get("/api/v1/signals/demo.Nope.Nothing")
    assert status == 404
    assert body == {
        "status": 404,
        "error": "unknown_signal",
        "detail": "no signal named 'demo.Nope.Nothing'",
        "target": "demo.Nope.Nothing",
    }


async def test_write_reaches_the_bus(api: Api) -> None:
    status, body, _ = await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 1500})
    assert status == 200, body
    models.WriteResult.model_validate(body)
    sent = await api.h.next_sent(0x300)
    assert sent.data[:2] == (1500).to_bytes(2, "little")
    assert body["value"] == 1500 and body["raw"] == 1500 and body["cyclic"] is False
    assert body["frame"]["canid"] == 0x300 and bytes(body["frame"]["data"]) == sent.data
    assert body["frame"]["cansend"] == sent.to_cansend()

    # a choice text writes its raw value
    status, body, _ = await api.put(f"/api/v1/signals/{MODE}", json={"value": "Torque"})
    assert status == 200, body
    sent = await api.h.next_sent(0x300)
    assert (sent.data[2] >> 1) & 0x3 == 2
    _, mode, _ = await api.get(f"/api/v1/signals/{MODE}")
    assert mode["value"] == 2 and mode["choice"] == "Torque"


@pytest.mark.parametrize(
    ("name", "value", "status", "reason"),
    [
        ("demo.Nope.Nothing", 1, 404, "unknown_signal"),
        (SPEED, 100, 403, "not_writable"),
        (MODE, "Warp", 422, "wrong_type"),
        (SETPOINT, "fast", 422, "wrong_type"),
        (SETPOINT, [1, 2], 422, "wrong_type"),
        (SETPOINT, 15000, 422, "out_of_range"),
        (SETPOINT, -1, 422, "out_of_range"),
        (MODE, 3, 422, "out_of_range"),
    ],
)
async def test_write_refusals(api: Api, name: str, value: Any, status: int, reason: str) -> None:
    got, body, _ = await api.put(f"/api/v1/signals/{name}", json={"value": value})
    assert got == status, body
    assert body["error"] == reason and body["status"] == status and body["detail"]
    assert body["target"] == name
    models.Error.model_validate(body)
    await _no_frame(api)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "a JSON body is needed"),
        (b"[1]", '{"value": ...}'),
        (b'{"val": 1}', '{"value": ...}'),
        (b'{"value": 1, "extra": 2}', "unknown key(s) extra"),
        (b'{"value": NaN}', "not valid JSON"),
    ],
)
async def test_malformed_write_is_400(api: Api, body: bytes, detail: str) -> None:
    status, got, _ = await api.put(f"/api/v1/signals/{SETPOINT}", data=body, headers=JSON_TYPE)
    assert status == 400 and detail in got["detail"]
    await _no_frame(api)


async def test_rate_limit_is_429_with_retry_after() -> None:
    async with running(config=bridge_config(write_rate=1.0)) as api:
        status, _, _ = await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 10})
        assert status == 200
        await api.h.next_sent(0x300)
        status, body, resp = await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 11})
        assert status == 429 and body["error"] == "rate_limited"
        assert resp.headers["Retry-After"] == "1"
        await _no_frame(api)


async def test_waiting_for_initial_data_is_503() -> None:
    async with running(config=bridge_config(seed="received")) as api:
        status, body, resp = await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 10})
        assert status == 503 and body["error"] == "waiting_for_initial_data"
        assert resp.headers["Retry-After"] == "1"
        await _no_frame(api)


@pytest.mark.parametrize("reason", list(canbridge.RefusalReason))
async def test_every_refusal_reason_has_its_status(
    api: Api, reason: canbridge.RefusalReason, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reasons the bus cannot produce on demand (bus down) go through the same mapping."""

    async def refuse(name: str, value: object, caller: canbridge.Caller) -> canbridge.WriteReceipt:
        raise canbridge.WriteRefused(reason, f"refused: {reason.value}", name)

    monkeypatch.setattr(api.h.bridge, "write", refuse)
    status, body, resp = await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 1})
    assert status == REFUSAL_STATUS[reason]
    assert body == {
        "status": status,
        "error": reason.value,
        "detail": f"refused: {reason.value}",
        "target": SETPOINT,
    }
    if status in (429, 503):
        assert resp.headers["Retry-After"].isdigit()
    expected = {
        "bus_down": 503,
        "waiting_for_initial_data": 503,
        "rate_limited": 429,
        "not_allowed": 403,
        "not_writable": 403,
        "wrong_type": 422,
        "out_of_range": 422,
        "unknown_signal": 404,
    }
    if reason.value in expected:
        assert status == expected[reason.value]


async def test_caller_identity_reaches_the_write_path(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = [
        {"name": "alice", "role": "write", "token": "alice-secret-token-1"},
        {"name": "root", "role": "admin", "token": "admin-secret-token-1"},
    ]
    async with running({"tokens": tokens}) as api:
        callers: list[canbridge.Caller] = []
        real = api.h.bridge.write

        async def spy(name: str, value: object, caller: canbridge.Caller) -> canbridge.WriteReceipt:
            callers.append(caller)
            return await real(name, value, caller)  # type: ignore[arg-type]

        monkeypatch.setattr(api.h.bridge, "write", spy)
        for tok in ("alice-secret-token-1", "admin-secret-token-1"):
            status, _, _ = await api.put(
                f"/api/v1/signals/{SETPOINT}", json={"value": 5}, headers={"Authorization": f"Bearer {tok}"}
            )
            assert status == 200
        assert [(c.plugin, c.user, c.address) for c in callers] == [
            ("rest", "alice", "127.0.0.1"),
            ("rest", "root", "127.0.0.1"),
        ]
        assert callers[0].permissions == frozenset({canbridge.Permission.WRITE})
        assert canbridge.Permission.RAW in callers[1].permissions


async def test_buses(api: Api) -> None:
    api.h.inject(MOTOR_FRAME)
    await api.h.until(lambda: api.h.bridge.bus_status("demo").rx_frames >= 1)
    status, body, _ = await api.get("/api/v1/buses")
    assert status == 200
    models.BusList.model_validate(body)
    (bus,) = body["buses"]
    assert bus["name"] == "demo" and bus["state"] == "active" and bus["state_code"] == 0
    assert bus["interface"] == "virtual" and bus["rx_frames"] >= 1 and "bus_load" in bus

    status, body, _ = await api.get("/api/v1/buses/demo")
    assert status == 200
    models.BusDetail.model_validate(body)
    by_name = {m["name"]: m for m in body["messages"]}
    assert by_name["demo.MotorStatus"]["frames"] >= 1 and by_name["demo.MotorStatus"]["quality"] == "good"
    assert by_name["demo.MotorStatus"]["age_s"] >= 0
    assert by_name["demo.BatteryStatus"]["age_s"] is None

    status, body, _ = await api.get("/api/v1/buses/can9")
    assert status == 404 and body["error"] == "unknown_bus"


@pytest.mark.parametrize(
    ("frame", "can_id", "data", "extended"),
    [
        ({"cansend": "123#DEADBEEF"}, 0x123, b"\xde\xad\xbe\xef", False),
        ({"canid": 512, "data": [22, 45, 170, 255], "ext": False}, 512, bytes([22, 45, 170, 255]), False),
        ({"canid": 0x1ABCDEF0, "data": "0011", "ext": True}, 0x1ABCDEF0, b"\x00\x11", True),
    ],
)
async def test_raw_frame_is_sent(
    api: Api, frame: dict[str, Any], can_id: int, data: bytes, extended: bool
) -> None:
    status, body, _ = await api.post("/api/v1/buses/demo/frames", json=frame)
    assert status == 200, body
    models.FrameSent.model_validate(body)
    sent = await api.h.next_sent(can_id)
    assert sent.data == data and sent.extended is extended
    assert body["frame"]["canid"] == can_id and body["frame"]["cansend"] == sent.to_cansend()


@pytest.mark.parametrize(
    "frame",
    [
        {"cansend": "123#DEADBEE"},
        {"cansend": "1234#00"},
        {"cansend": "800#00"},
        {"canid": 2048, "data": [1]},
        {"canid": 1, "data": [256]},
        {"canid": 1, "data": [1, 2, 3, 4, 5, 6, 7, 8, 9]},
        {"canid": 1, "colour": "red"},
        {"data": [1]},
    ],
)
async def test_malformed_frame_is_400_with_the_precise_message(api: Api, frame: dict[str, Any]) -> None:
    payload: object = frame.get("cansend", frame)
    with pytest.raises(canbridge.FrameFormatError) as expected:
        canbridge.parse_frame(payload)
    status, body, _ = await api.post("/api/v1/buses/demo/frames", json=frame)
    assert status == 400
    assert body["error"] == "invalid_frame" and body["detail"] == str(expected.value)
    await _no_frame(api)


async def test_frame_to_unknown_bus_is_404(api: Api) -> None:
    status, body, _ = await api.post("/api/v1/buses/can9/frames", json={"cansend": "123#00"})
    assert status == 404 and body["error"] == "unknown_bus"
    status, body, _ = await api.post("/api/v1/buses/demo/frames", json={"cansend": "123#00", "canid": 1})
    assert status == 400 and "not both" in body["detail"]
    await _no_frame(api)


async def test_errors_are_json_for_404_405_413() -> None:
    async with running({**_open(), "max_body_bytes": 1024}) as api:
        status, body, _ = await api.get("/nothing/here")
        assert status == 404 and body["error"] == "not_found"
        async with api.session.delete(api.u(f"/api/v1/signals/{SETPOINT}")) as r:
            body = await r.json()
            assert r.status == 405 and body["error"] == "method_not_allowed"
            assert "PUT" in r.headers["Allow"] and "PUT" in body["detail"]
        status, body, _ = await api.put(
            f"/api/v1/signals/{SETPOINT}", data=b'{"value": 1, "pad": "' + b"x" * 4096 + b'"}', headers=JSON_TYPE
        )
        assert status == 413 and body["error"] == "body_too_large" and "1024" in body["detail"]
        await _no_frame(api)


def _open() -> dict[str, Any]:
    return {"anonymous_read": True, "anonymous_write": True, "anonymous_admin": True}


async def test_health_ready_and_readiness_problems(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    status, body, _ = await api.get("/healthz")
    assert status == 200 and body == {"status": "ok"}
    status, body, _ = await api.get("/readyz")
    assert status == 200 and body == {
        "ready": True,
        "writable": True,
        "audit": {"available": True, "error": None, "failures": 0},
        "buses": {"demo": "active"},
        "problems": [],
    }

    real = api.h.bridge.bus_status

    def down(name: str) -> canbridge.BusStatus:
        st = real(name)
        return canbridge.BusStatus(name=st.name, state=canbridge.BusState.DOWN, last_error="vcan0 is down")

    monkeypatch.setattr(api.h.bridge, "bus_status", down)
    status, body, _ = await api.get("/readyz")
    assert status == 503 and body["ready"] is False
    assert body["problems"] == ["bus demo is down: vcan0 is down"]
    status, _, _ = await api.get("/healthz")
    assert status == 200


async def test_metrics(api: Api) -> None:
    api.h.inject(MOTOR_FRAME)
    await api.h.until(lambda: api.h.bridge.bus_status("demo").rx_frames >= 1)
    assert (await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 1}))[0] == 200
    assert (await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 99999}))[0] == 422
    status, text, resp = await api.get("/metrics")
    assert status == 200 and resp.headers["Content-Type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("canbridge_bus_frames_received_total", (("bus", "demo"),))] >= 1
    assert samples[("canbridge_bus_frames_sent_total", (("bus", "demo"),))] >= 1
    assert samples[("canbridge_writes_accepted_total", ())] >= 1
    assert samples[("canbridge_writes_refused_total", (("reason", "out_of_range"),))] >= 1
    assert samples[("canbridge_bus_state", (("bus", "demo"), ("state", "active")))] == 1
    assert samples[("canbridge_bus_state", (("bus", "demo"), ("state", "bus_off")))] == 0
    assert samples[("canbridge_bus_state_code", (("bus", "demo"),))] == 0
    for name in (
        "canbridge_bus_decode_errors_total",
        "canbridge_store_update_seconds_total",
        "canbridge_subscriber_lag_max_seconds",
        "canbridge_bus_load_percent",
    ):
        assert any(k[0] == name for k in samples), name
    assert (
        samples[
            (
                "canbridge_rest_requests_total",
                (("method", "PUT"), ("route", "/api/v1/signals/{name}"), ("status", "422")),
            )
        ]
        == 1
    )


async def test_openapi_document_covers_every_route(api: Api) -> None:
    status, doc, _ = await api.get("/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    for r in ROUTES:
        op = doc["paths"][r.path][r.method.lower()]
        assert op["operationId"] == r.name
        if r.role is not None:
            assert {} in op["security"]  # anonymous_* opened every role in this configuration
    for ref in ("Signal", "SignalList", "WriteResult", "Error", "BusDetail"):
        assert ref in doc["components"]["schemas"]


async def test_port_in_use_is_a_plugin_error(api: Api) -> None:
    from canbridge_rest.config import RestConfig
    from canbridge_rest.service import RestService

    port = int(api.url.rsplit(":", 1)[1].strip("/"))
    svc = RestService(api.h.bridge, RestConfig.model_validate({"port": port}))
    with pytest.raises(canbridge.ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
        await svc.start()
    await svc.stop()


async def test_stop_is_bounded_with_open_streams() -> None:
    async with running() as api:
        svc = api.h.service("rest")
        r = await api.session.get(api.u("/api/v1/stream"))
        assert r.status == 200
        await r.content.readuntil(b"event: signals")
        ws = await api.session.ws_connect(api.u("/api/v1/ws"))
        await ws.receive_json(timeout=5)
        async with asyncio.timeout(8):  # shutdown_timeout 3 s plus margin: never hangs
            await svc.stop()
        assert svc.endpoints()  # the addresses stay readable after stop
        msg = await ws.receive(timeout=5)
        assert msg.type.name in ("CLOSE", "CLOSED", "CLOSING")
        r.close()
        await ws.close()


async def test_dashboard_files_are_served() -> None:
    async with running() as api:
        status, html, resp = await api.get("/")
        assert status == 200 and resp.content_type == "text/html" and '<canvas id="plot"' in html
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
            status, _, resp = await api.get(path)
            assert status == 200 and kind in resp.content_type, path
        status, body, _ = await api.get("/static/missing.js")
        assert status == 404 and body["error"] == "not_found"
    async with running({**_open(), "dashboard": False}) as api:
        status, body, _ = await api.get("/")
        assert status == 404 and body["error"] == "not_found"
