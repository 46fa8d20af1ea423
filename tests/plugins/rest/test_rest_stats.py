"""GET /api/v1/stats and the operating metrics on /metrics: loop lag, CPU per plugin, queues, coalescing."""

from __future__ import annotations

from canbridge_rest import models
from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.rest.conftest import Api, running
from tests.plugins.rest.test_rest_security import READ, TOKENS, _auth

MOTOR = "100#E803000000000000"


def motor(speed: int) -> str:
    return "100#" + speed.to_bytes(2, "little").hex().upper() + "000000000000"


async def test_stats_has_the_documented_shape(api: Api) -> None:
    api.h.inject(MOTOR)
    api.h.inject(MOTOR)  # the same payload again: a frame, not a decode
    await api.h.until(lambda: api.h.bridge.bus_status("demo").rx_frames >= 2)
    await api.h.until(lambda: api.h.bridge.operating_stats().loop_lag.samples >= 2)
    status, body, _ = await api.get("/api/v1/stats")
    assert status == 200
    models.Stats.model_validate(body)
    assert set(body) >= {"loop_lag", "plugins", "queues", "coalesced", "buses"}
    assert body["buses"]["demo"]["frames"] >= 2 and body["buses"]["demo"]["decoded"] == 1
    assert set(body["plugins"]) == {"rest"} and body["plugins"]["rest"]["cpu_seconds"] > 0
    assert body["loop_lag"]["samples"] >= 2 and body["loop_lag"]["stall_threshold_s"] == 0.02
    bounds = [b[0] for b in body["loop_lag"]["buckets"]]
    assert bounds[:4] == [0.001, 0.005, 0.01, 0.02] and bounds == sorted(bounds)
    assert body["queues"]["write_path"] == 0


async def test_stats_count_what_a_slow_stream_client_never_saw() -> None:
    async with running() as api:
        r = await api.session.get(api.u("/api/v1/stream?name=demo.MotorStatus.MotorSpeed&interval=5"))
        assert r.status == 200
        await r.content.readuntil(b"event: signals")  # the initial batch; the next one is 5 s away

        def waiting() -> bool:
            subs = api.h.bridge.operating_stats().subscriptions
            return any(s.plugin == "rest" and s.pending for s in subs)

        rx = api.h.bridge.bus_status("demo").rx_frames
        for speed in range(1, 12):  # one frame per receive batch: each one a change of its own
            api.h.inject(motor(speed))
            seen = rx + speed
            await api.h.until(lambda: api.h.bridge.bus_status("demo").rx_frames >= seen)  # noqa: B023
        await api.h.until(waiting)
        await api.h.until(lambda: api.h.bridge.operating_stats().coalesced_total >= 10)
        status, body, _ = await api.get("/api/v1/stats")
        assert status == 200
        (sub,) = [s for s in body["queues"]["subscriptions"] if s["plugin"] == "rest"]
        assert sub["signals"] == 1 and sub["pending"] == 1 and sub["coalesced"] >= 10
        assert body["coalesced"]["by_plugin"]["rest"] >= 10 and body["coalesced"]["total"] >= 10
        r.close()


async def test_stats_needs_the_read_role() -> None:
    async with running({"tokens": TOKENS}) as api:
        status, body, _ = await api.get("/api/v1/stats")
        assert status == 401 and body["error"] == "unauthorized"
        assert (await api.get("/api/v1/stats", headers=_auth(READ)))[0] == 200
        status, doc, _ = await api.get("/api/v1/openapi.json")
        op = doc["paths"]["/api/v1/stats"]["get"]
        assert op["x-canbridge-role"] == "read" and "Stats" in doc["components"]["schemas"]


async def test_metrics_carry_the_loop_lag_histogram_and_the_plugins(api: Api) -> None:
    await api.h.until(lambda: api.h.bridge.operating_stats().loop_lag.samples >= 2)
    status, text, _ = await api.get("/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    hist = fams["canbridge_event_loop_lag_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert {"0.001", "0.02", "1.0", "+Inf"} <= set(buckets)
    assert buckets["0.001"] <= buckets["0.02"] <= buckets["+Inf"]
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    assert count == buckets["+Inf"] >= 2
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("canbridge_plugin_cpu_seconds_total", (("plugin", "rest"),))] > 0
    for name in ("canbridge_event_loop_stalls_total", "canbridge_event_loop_lag_max_seconds",
                 "canbridge_core_cpu_seconds_total", "canbridge_frame_subscription_dropped_total"):
        assert any(k[0] == name for k in samples), name
    assert ("canbridge_bus_frames_decoded_total", (("bus", "demo"),)) in samples
