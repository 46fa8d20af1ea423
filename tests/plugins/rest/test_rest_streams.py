"""Live streams (SSE and WebSocket): changes with quality and timestamps, raw frames, slow clients."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest
from canbridge_rest import models
from canbridge_rest.service import RestService
from canbridge_rest.state import STATE

from tests.plugins.rest.conftest import OPEN, Api, running

SPEED = "demo.MotorStatus.MotorSpeed"
STATE_SIG = "demo.MotorStatus.MotorState"


async def next_event(resp: aiohttp.ClientResponse, want: str | None = None) -> tuple[str, dict[str, Any]]:
    """The next SSE event (of type ``want``), comments and other events skipped."""
    async with asyncio.timeout(5):
        while True:
            event, data = "message", []
            while True:
                line = (await resp.content.readline()).decode().rstrip("\n")
                if not line:
                    break
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if data and (want is None or event == want):
                return event, json.loads("\n".join(data))


async def until_event(resp: aiohttp.ClientResponse, want: str, pred: Any) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            _, data = await next_event(resp, want)
            if pred(data):
                return data


def _by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["name"]: u for u in data["signals"]}


async def test_sse_delivers_initial_state_and_changes_with_quality_and_timestamps(api: Api) -> None:
    async with api.session.get(api.u("/api/v1/stream"), params={"interval": "0.02"}) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        _, first = await next_event(r, "signals")
        assert set(_by_name(first)) == set(api.h.bridge.signals)
        assert _by_name(first)[SPEED]["quality"] == "waiting"
        api.h.inject("100#E8033C0000120000")
        data = await until_event(r, "signals", lambda d: SPEED in _by_name(d))
        got = _by_name(data)
        models.SignalUpdate.model_validate(got[SPEED])
        sv = api.h.bridge.read(SPEED)
        assert got[SPEED]["value"] == 1000 and got[SPEED]["quality"] == "good"
        assert got[SPEED]["timestamp_ns"] == sv.timestamp_ns
        assert got[SPEED]["timestamp"] == models.iso(sv.timestamp_ns)
        assert got[STATE_SIG]["choice"] == "Running"
        # the REST value carries the same timestamp and quality
        _, rest, _ = await api.get(f"/api/v1/signals/{SPEED}")
        assert (rest["timestamp_ns"], rest["quality"]) == (sv.timestamp_ns, "good")


async def test_sse_filters_by_name_pattern(api: Api) -> None:
    async with api.session.get(api.u("/api/v1/stream"), params={"name": "*.MotorSpeed"}) as r:
        _, first = await next_event(r, "signals")
        assert list(_by_name(first)) == [SPEED]
        api.h.inject("200#1027000000000000")  # BatteryStatus: not selected
        api.h.inject("100#0A00000000000000")
        data = await until_event(r, "signals", lambda d: True)
        assert list(_by_name(data)) == [SPEED] and data["signals"][0]["value"] == 10


async def test_sse_selection_that_matches_nothing_says_so(api: Api) -> None:
    async with api.session.get(api.u("/api/v1/stream"), params={"name": "nothing.*"}) as r:
        _, first = await next_event(r, "signals")
        assert first == {"signals": []}


async def test_sse_frames(api: Api) -> None:
    idle = api.h.bridge.stats().subscribers
    async with api.session.get(api.u("/api/v1/stream"), params={"frames": "1", "signals": "0"}) as r:
        await r.content.readuntil(b"retry: 2000\n\n")
        # the frame subscription is made after the response starts
        await api.h.until(lambda: api.h.bridge.stats().subscribers == idle + 1, what="the stream subscribed")
        api.h.inject("18FEF100#0011223344556677")  # VehicleInfo, 29-bit id
        data = await until_event(r, "frames", lambda d: d["frames"])
        f = data["frames"][0]
        assert f["canid"] == 0x18FEF100 and f["ext"] is True and f["data"] == list(range(0, 0x78, 0x11))
        assert f["dlc"] == 8 and f["rtr"] is False and f["bus"] == "demo" and isinstance(f["timestamp"], int)
        assert f["cansend"] == "18FEF100#0011223344556677" and data["dropped"] == 0


@pytest.mark.parametrize(
    ("params", "detail"),
    [({"interval": "0"}, "interval"), ({"frames": "maybe"}, "frames"), ({"bus": "can9"}, "unknown bus")],
)
async def test_stream_parameters_are_checked(api: Api, params: dict[str, str], detail: str) -> None:
    status, body, _ = await api.get("/api/v1/stream", params=params)
    assert status == 400 and detail in body["detail"]


async def test_websocket_initial_state_subscribe_and_frames(api: Api) -> None:
    async with api.session.ws_connect(api.u("/api/v1/ws")) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "signals" and set(_by_name(first)) == set(api.h.bridge.signals)
        await ws.send_json(
            {"type": "subscribe", "name": "demo.MotorStatus.*", "frames": True, "interval": 0.02}
        )
        ack = await ws.receive_json(timeout=5)
        assert ack == {"type": "subscribed", "signals": True, "frames": True, "count": 6}
        api.h.inject("100#E8033C0000120000")
        seen: dict[str, Any] = {}
        async with asyncio.timeout(5):
            while not (
                "frames" in seen
                and SPEED in seen.get("signals", {})
                and seen["signals"][SPEED]["value"] == 1000
            ):
                msg = await ws.receive_json()
                if msg["type"] == "signals":
                    assert all(n.startswith("demo.MotorStatus.") for n in _by_name(msg))
                    seen.setdefault("signals", {}).update(_by_name(msg))
                elif msg["type"] == "frames" and msg["frames"]:
                    seen["frames"] = msg["frames"]
        assert seen["signals"][SPEED]["quality"] == "good"
        assert seen["signals"][SPEED]["timestamp_ns"] == api.h.bridge.read(SPEED).timestamp_ns
        assert seen["frames"][0]["canid"] == 0x100

        await ws.send_json({"type": "subscribe", "interval": "soon"})
        err = await ws.receive_json(timeout=5)
        while err["type"] != "error":
            err = await ws.receive_json(timeout=5)
        assert "interval" in err["detail"]
        await ws.send_str("not json")
        err = await ws.receive_json(timeout=5)
        while err["type"] != "error":
            err = await ws.receive_json(timeout=5)
        assert err["error"] == "bad_message"


async def test_too_many_stream_clients_is_503() -> None:
    async with running({**OPEN, "max_stream_clients": 1}) as api:
        async with api.session.get(api.u("/api/v1/stream")) as r:
            await next_event(r, "signals")
            status, body, resp = await api.get("/api/v1/stream")
            assert status == 503 and body["error"] == "too_many_streams" and "Retry-After" in resp.headers
        hub = api.h.service("rest").app[STATE].hub  # type: ignore[attr-defined]
        await api.h.until(lambda: hub.clients == 0)
        async with api.session.get(api.u("/api/v1/stream")) as r:
            assert r.status == 200


_SLOW_REQUESTS = {
    "sse": "GET /api/v1/stream?frames=1&interval=0.01 HTTP/1.1\r\nHost: {host}\r\n\r\n",
    "ws": "GET /api/v1/ws?frames=1&interval=0.01 HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
}


@pytest.mark.parametrize("kind", ["sse", "ws"])
async def test_slow_client_is_dropped_without_growing_memory_or_slowing_others(kind: str) -> None:
    rest = {**OPEN, "stream_write_timeout_s": 0.5, "stream_frames_maxlen": 200}
    async with running(rest) as api:
        svc = api.h.service("rest")
        assert isinstance(svc, RestService) and svc.app is not None
        hub = svc.app[STATE].hub
        host, port = api.url.split("//")[1].strip("/").rsplit(":", 1)

        # a client that connects, asks for every frame and never reads
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(slow, (host, int(port)))
        await loop.sock_sendall(slow, _SLOW_REQUESTS[kind].format(host=host).encode())
        try:
            await api.h.until(lambda: hub.clients == 1)
            async with api.session.get(
                api.u("/api/v1/stream"), params={"name": SPEED, "interval": "0.02"}
            ) as fast:
                await next_event(fast, "signals")
                payload = bytes(8)
                n = 0
                while hub.dropped_slow == 0:
                    for _ in range(200):  # frames with changing data so every one is streamed
                        n += 1
                        api.h.inject(f"100#{(n % 8000):04X}{payload[2:].hex()}")
                    await asyncio.sleep(0.01)  # a bounded flood in bursts: the server (in this loop) streams between
                    assert n < 400_000, "the slow client was never dropped"
                # the fast client kept getting the newest value (skipping ahead)
                last = n % 8000
                want = int.from_bytes(last.to_bytes(2, "big"), "little")
                want = want - 0x10000 if want >= 0x8000 else want
                await api.h.until(lambda: api.h.bridge.read(SPEED).value == want)
                data = await until_event(fast, "signals", lambda d: _by_name(d)[SPEED]["value"] == want)
                assert data["signals"][0]["quality"] == "good"
            await api.h.until(lambda: hub.clients == 0)
            # what the server buffered for the slow client stayed bounded: the writer's 64 KiB
            # high-water mark plus one event (at most 200 frames of ~200 bytes), never the megabytes sent
            assert hub.max_write_buffer < 64 * 1024 + 200 * 250
            # the slow client's connection was closed: reading ends (after whatever the kernel held)
            async with asyncio.timeout(5):
                while await loop.sock_recv(slow, 65536):
                    pass
        finally:
            slow.close()


async def test_stream_needs_read_role_and_takes_a_query_token() -> None:
    tokens = [{"name": "viewer", "role": "read", "token": "viewer-token-0123456789"}]
    async with running({"tokens": tokens}) as api:
        status, _body, resp = await api.get("/api/v1/stream")
        assert status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        async with api.session.get(
            api.u("/api/v1/stream"), params={"access_token": "viewer-token-0123456789"}
        ) as r:
            assert r.status == 200
            await next_event(r, "signals")
        async with api.session.ws_connect(
            api.u("/api/v1/ws"), headers={"Authorization": "Bearer viewer-token-0123456789"}
        ) as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "signals"
        # the query token is for streams only: elsewhere it is not looked at
        status, _, _ = await api.get("/api/v1/signals", params={"access_token": "viewer-token-0123456789"})
        assert status == 401
