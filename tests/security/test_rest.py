"""REST attack classes (issue #9): cross-origin writes (CSRF, cross-site WebSocket hijacking, DNS
rebinding), token guessing, malformed bodies, methods, and that every refused write attempt is audited
and sends nothing."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from canbridge_rest.guard import AuthLimiter, _depth, peer_key
from canbridge_rest.handlers import ROUTES
from canbridge_rest.service import RestService
from canbridge_rest.state import STATE
from hypothesis import given
from hypothesis import strategies as st

import canbridge
from tests.plugins.rest.conftest import OPEN, Api, running

SETPOINT = "demo.MotorCommand.SpeedSetpoint"
JSON_TYPE = {"Content-Type": "application/json"}
ADMIN = "admin-token-0123456789abcdef"
READER = "read-token-0123456789abcdef"
TOKENS = [
    {"name": "ops", "role": "admin", "token": ADMIN},
    {"name": "viewer", "role": "read", "token": READER},
]

# every state-changing route with a body that would be accepted
WRITES: list[tuple[str, str, Any]] = [
    ("PUT", f"/api/v1/signals/{SETPOINT}", {"value": 1200}),
    ("PUT", "/api/v1/signals", [{"name": SETPOINT, "value": 1200}]),
    ("POST", "/api/v1/buses/demo/frames", {"cansend": "123#00"}),
    ("POST", "/api/v1/buses/demo/j1939/requests", {"pgn": 65253}),
]


def _passed_the_guard(path: str, status: int, got: Any) -> bool:
    """Accepted; a J1939 request on the demo bus (it claims no J1939 address) reaches the write path,
    which refuses it for that reason alone."""
    if path.endswith("/j1939/requests"):
        return status == 400 and "claims no J1939 address" in got["detail"]
    return status == 200


def test_every_state_changing_route_is_covered() -> None:
    assert {(r.method, r.path) for r in ROUTES if r.method != "GET"} == {
        ("PUT", "/api/v1/signals/{name}"),
        ("PUT", "/api/v1/signals"),
        ("POST", "/api/v1/buses/{bus}/frames"),
        ("POST", "/api/v1/buses/{bus}/j1939/requests"),
    }


async def _send(api: Api, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with api.session.request(method, api.u(path), data=body, headers=headers) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def _nothing_sent(api: Api) -> None:
    with pytest.raises(TimeoutError):
        await api.h.next_sent(None, timeout=0.3)


def _rest_app(api: Api) -> web.Application:
    svc = api.h.service("rest")
    assert isinstance(svc, RestService) and svc.app is not None
    return svc.app


def _refused(api: Api) -> dict[str, int]:
    return dict(api.h.bridge.stats().writes_refused)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


# --- finding 9: CSRF -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
        "application/json; charset=latin-1",
        "application/jsonx",
    ],
)
async def test_state_changing_requests_need_application_json(
    method: str, path: str, body: Any, content_type: str | None
) -> None:
    async with running(OPEN) as api:
        before = _refused(api)
        headers = {} if content_type is None else {"Content-Type": content_type}
        status, got = await _send(api, method, path, json.dumps(body).encode(), headers)
        assert status == 415 and got["error"] == "unsupported_media_type", got
        await _nothing_sent(api)
        assert _delta(before, _refused(api)) == {"unsupported_request": 1}  # audited


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Origin": "null"}, False),
        ({"Origin": "http://127.0.0.1:1"}, False),  # another port: same site, other origin
        ({"Origin": "http://evil.example"}, False),
        ({"Origin": "https://{host}"}, False),  # other scheme
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Sec-Fetch-Site": "cross-site", "Origin": "http://{host}"}, False),
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({"Sec-Fetch-Site": "none"}, True),
        ({"Origin": "http://{host}", "Sec-Fetch-Site": "same-origin"}, True),  # the dashboard
        ({}, True),  # not a browser (curl, Node-RED)
    ],
)
async def test_cross_origin_writes_are_refused(
    method: str, path: str, body: Any, headers: dict[str, str], allowed: bool
) -> None:
    async with running(OPEN) as api:
        host = api.url.split("//", 1)[1].rstrip("/")
        hdrs = {k: v.format(host=host) for k, v in headers.items()} | JSON_TYPE
        before = _refused(api)
        status, got = await _send(api, method, path, json.dumps(body).encode(), hdrs)
        if allowed:
            assert _passed_the_guard(path, status, got), got
        else:
            assert status == 403 and got["error"] == "cross_origin", got
            await _nothing_sent(api)
            assert _delta(before, _refused(api)) == {"not_allowed": 1}


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
async def test_an_origin_allowed_in_the_configuration_may_write(method: str, path: str, body: Any) -> None:
    async with running({**OPEN, "cors_origins": ["https://scada.example:8443"]}) as api:
        hdrs = {"Origin": "https://scada.example:8443", "Sec-Fetch-Site": "cross-site"} | JSON_TYPE
        status, got = await _send(api, method, path, json.dumps(body).encode(), hdrs)
        assert _passed_the_guard(path, status, got), got
        status, got = await _send(
            api, method, path, json.dumps(body).encode(), {"Origin": "https://other.example"} | JSON_TYPE
        )
        assert status == 403, got


async def test_dns_rebinding_to_an_anonymous_loopback_server_is_refused() -> None:
    """A page on evil.example whose name now resolves to 127.0.0.1 is "same origin" with itself."""
    async with running(OPEN) as api:
        port = api.url.rsplit(":", 1)[1].rstrip("/")
        hdrs = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"} | JSON_TYPE
        status, got = await _send(api, "PUT", f"/api/v1/signals/{SETPOINT}", b'{"value": 1}', hdrs)
        assert status == 403 and "DNS rebinding" in got["detail"]
        await _nothing_sent(api)
    async with running({"tokens": TOKENS}) as api:  # with a token the page cannot have: allowed
        hdrs |= {"Authorization": f"Bearer {ADMIN}"}
        status, got = await _send(api, "PUT", f"/api/v1/signals/{SETPOINT}", b'{"value": 1}', hdrs)
        assert status == 200, got


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("http://evil.example", False), ("null", False), ("http://127.0.0.1:1", False), ("own", True), (None, True)],
)
async def test_cross_site_websocket_upgrades_are_refused(origin: str | None, allowed: bool) -> None:
    async with running(OPEN) as api:
        host = api.url.split("//", 1)[1].rstrip("/")
        headers = {} if origin is None else {"Origin": f"http://{host}" if origin == "own" else origin}
        if allowed:
            async with api.session.ws_connect(api.u("/api/v1/ws"), headers=headers) as ws:
                msg = await ws.receive_json(timeout=5)
                assert msg["type"] == "signals"
        else:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                async with api.session.ws_connect(api.u("/api/v1/ws"), headers=headers):
                    pass
            assert info.value.status == 403


# --- finding 10: token guessing ------------------------------------------------------------------


async def test_token_guessing_is_refused_after_the_burst_without_comparing_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "canbridge.rest")
    rest = {"tokens": TOKENS, "auth_failures_burst": 5, "auth_failures_per_minute": 1}
    async with running(rest) as api:
        statuses = []
        for i in range(40):
            status, _, r = await api.get("/api/v1/signals", headers={"Authorization": f"Bearer guess-{i}"})
            statuses.append(status)
            if status == 429:
                assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
        # while refused, even the right token is not looked at
        status, body, _ = await api.get("/api/v1/signals", headers={"Authorization": f"Bearer {READER}"})
        assert status == 429 and body["error"] == "too_many_failed_logins"
        # public routes stay open
        assert (await api.get("/healthz"))[0] == 200
        # a write attempt refused so is audited as rate limited
        before = _refused(api)
        status, _ = await _send(
            api, "PUT", f"/api/v1/signals/{SETPOINT}", b'{"value": 1}', {"Authorization": "Bearer x"} | JSON_TYPE
        )
        assert status == 429 and _delta(before, _refused(api)) == {"rate_limited": 1}
        app = _rest_app(api)
        lim = app[STATE].limiter
        assert lim.failures == 5 and lim.refused >= 36 and lim.limited_peers == 1
    lines = [r.getMessage() for r in caplog.records if "failed authentication" in r.getMessage()]
    assert 1 <= len(lines) <= 2, lines  # one line per peer, not one per attempt


def test_auth_limiter_refills_groups_ipv6_by_64_and_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    lim = AuthLimiter(burst=3, per_minute=6, max_peers=100, clock=lambda: now[0])
    for _ in range(3):
        assert lim.retry_after("10.0.0.1") is None
        lim.failed("10.0.0.1")
    wait = lim.retry_after("10.0.0.1")
    assert wait is not None and 9 <= wait <= 10  # 6 a minute: one every 10 s
    assert lim.retry_after("10.0.0.2") is None  # another peer is not affected
    now[0] += 10.0
    assert lim.retry_after("10.0.0.1") is None  # one more try after the refill
    lim.failed("10.0.0.1")
    assert lim.retry_after("10.0.0.1") is not None
    # one host owns a /64: rotating the low bits does not buy new tries
    for i in range(3):
        lim.failed(f"2001:db8::{i + 1:x}")
    assert lim.retry_after("2001:db8::ffff") is not None
    assert lim.retry_after("2001:db8:0:1::1") is None
    assert peer_key("::ffff:10.0.0.1") == "10.0.0.1"
    for i in range(10_000):  # many addresses: memory stays bounded
        lim.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(lim._peers) <= 100


# --- finding 10: malformed bodies ----------------------------------------------------------------

MALFORMED: list[tuple[bytes, str]] = [
    (b"[" * 1000 + b"]" * 1000, "nests 1000"),
    (b'{"value": ' + b"[" * 30000 + b"]" * 30000 + b"}", "nests 30001"),
    (b'{"value": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}", "nests 5001"),
    (b'{"value": "\xff\xfe"}', "not UTF-8"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),  # a BOM
    ('{"value": 1}'.encode("utf-16"), "not UTF-8"),
    (b'{"value": NaN}', "NaN is not a number"),
    (b'{"value": -Infinity}', "-Infinity is not a number"),
    (b'{"value": 1, "value": 2}', "'value' appears twice"),
    (b'{"value": 1' + b"0" * 5000 + b"}", "not valid JSON"),  # beyond Python's int digit limit
    (b'{"value": 1', "not valid JSON"),
    (b'{"value": "' + b'\\"' * 20000, "not valid JSON"),  # an unclosed string of escaped quotes
    (b"", "a JSON body is needed"),
]


@pytest.mark.parametrize(("method", "path", "_"), WRITES)
@pytest.mark.parametrize(("body", "needle"), MALFORMED)
async def test_malformed_bodies_are_400_with_a_reason_and_no_traceback(
    method: str, path: str, _: Any, body: bytes, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(OPEN) as api:
        before = _refused(api)
        status, got = await _send(api, method, path, body, JSON_TYPE)
        assert status == 400 and needle in got["detail"], got
        await _nothing_sent(api)
        assert sum(_delta(before, _refused(api)).values()) == 1  # audited
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"[]", 400),
        (b'"1200"', 400),
        (b"1200", 400),
        (b"null", 400),
        (b'{"value": 1e999}', 422),  # infinity as Python reads it: the write path refuses it
        (b'{"value": -1e999}', 422),
        (b'{"value": 1' + b"0" * 400 + b"}", 422),
        (b'{"value": [1]}', 422),
        (b'{"value": {"a": 1}}', 422),
        (b'{"value": null}', 422),
    ],
)
async def test_other_shapes_reach_the_write_path_as_json_gave_them(
    body: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(OPEN) as api:
        before = _refused(api)
        got_status, got = await _send(api, "PUT", f"/api/v1/signals/{SETPOINT}", body, JSON_TYPE)
        assert got_status == status, got
        await _nothing_sent(api)
        assert sum(_delta(before, _refused(api)).values()) == 1
    assert not [r for r in caplog.records if r.exc_info]


# --- finding 1: refusals before the write path are audited ----------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@pytest.mark.parametrize(
    ("auth", "status", "reason"),
    [
        (None, 401, "unauthenticated"),
        ("Bearer wrong-token-0123456789", 401, "unauthenticated"),
        ("Basic YWRtaW46YWRtaW4=", 401, "unauthenticated"),
        (f"Bearer {READER}", 403, "not_allowed"),
    ],
)
async def test_authentication_refusals_of_writes_are_audited(
    method: str, path: str, body: Any, auth: str | None, status: int, reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "canbridge.audit")
    async with running({"tokens": TOKENS}) as api:
        before = _refused(api)
        headers = JSON_TYPE | ({} if auth is None else {"Authorization": auth})
        got_status, got = await _send(api, method, path, json.dumps(body).encode(), headers)
        assert got_status == status, got
        await _nothing_sent(api)
        assert _delta(before, _refused(api)) == {reason: 1}
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "canbridge.audit"]
    assert any(rec.get("result") == reason and rec.get("plugin") == "rest" for rec in records), records


@pytest.mark.parametrize(
    ("frame", "needle"),
    [
        ("123#R\u0663", "not ASCII"),
        ("12\n#00", "control character"),
        ({"cansend": "123#R\u00b2"}, "not ASCII"),
        ({"canid": 1, "err": True}, "error frames"),
        ({"id": 1, "data": [1]}, "calls it 'canid'"),
        ({"canid": 1, "data": [1], "rawData": [2]}, "different bytes"),
        ({"canid": 1, "bus": "other"}, "names bus 'other'"),
        ({"cansend": "123#00", "canid": 1}, "not both"),
        ([1, 2], "cansend string or a frame object"),
        (12, "cansend string or a frame object"),
    ],
)
async def test_malformed_frames_are_400_with_the_reason_and_audited(
    frame: Any, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(OPEN) as api:
        before = _refused(api)
        status, got = await _send(api, "POST", "/api/v1/buses/demo/frames", json.dumps(frame).encode(), JSON_TYPE)
        assert status == 400 and got["error"] == "invalid_frame" and needle in got["detail"], got
        await _nothing_sent(api)
        assert _delta(before, _refused(api)) == {"invalid_frame": 1}
    assert not [r for r in caplog.records if r.exc_info]


async def test_frames_in_the_field_forms_are_sent() -> None:
    async with running(OPEN) as api:
        for body, data in [
            ("200#16 2D AA FF", "162DAAFF"),
            ({"cansend": "200#16.2D.AA.FF"}, "162DAAFF"),
            ({"canid": 0x200, "data": "16 2D AA FF"}, "162DAAFF"),
            ({"canid": 0x200, "data": {"type": "Buffer", "data": [22, 45]}}, "162D"),
        ]:
            status, got = await _send(api, "POST", "/api/v1/buses/demo/frames", json.dumps(body).encode(), JSON_TYPE)
            assert status == 200, got
            sent = await api.h.next_sent(0x200)
            assert sent.data == bytes.fromhex(data)
            assert got["frame"]["rawData"] == {"type": "Buffer", "data": list(bytes.fromhex(data))}
        # a frame object as this API returns it can be sent back as it is
        status, again = await _send(api, "POST", "/api/v1/buses/demo/frames", json.dumps(
            {k: v for k, v in got["frame"].items() if k != "cansend"}).encode(), JSON_TYPE)
        assert status == 200, again


async def test_write_many_is_all_or_nothing() -> None:
    async with running(OPEN) as api:
        ok = [{"name": SETPOINT, "value": 1500}, {"name": "demo.MotorCommand.Enable", "value": True}]
        status, got = await _send(api, "PUT", "/api/v1/signals", json.dumps(ok).encode(), JSON_TYPE)
        assert status == 200 and [w["name"] for w in got["writes"]] == [SETPOINT, "demo.MotorCommand.Enable"]
        sent = await api.h.next_sent(0x300)
        assert sent.data[:2] == (1500).to_bytes(2, "little")
        bad = [{"name": SETPOINT, "value": 1600}, {"name": "demo.MotorCommand.Enable", "value": [1]}]
        before = _refused(api)
        status, got = await _send(api, "PUT", "/api/v1/signals", json.dumps(bad).encode(), JSON_TYPE)
        assert status == 422 and got["index"] == 1 and got["target"] == "demo.MotorCommand.Enable", got
        assert "nothing was sent" in got["detail"]
        await _nothing_sent(api)
        assert sum(_delta(before, _refused(api)).values()) >= 1
        for body, needle in [
            ([], "JSON list"),
            ({"name": SETPOINT, "value": 1}, "JSON list"),
            ([{"name": SETPOINT}], "item 0"),
            ([{"name": SETPOINT, "value": 1, "x": 2}], "item 0"),
            ([{"name": SETPOINT, "value": 1}, {"name": SETPOINT, "value": 2}], "again"),
            ([{"name": SETPOINT, "value": 1}] * 257, "at most 256"),
        ]:
            status, got = await _send(api, "PUT", "/api/v1/signals", json.dumps(body).encode(), JSON_TYPE)
            assert status == 400 and needle in got["detail"], (body, got)
        await _nothing_sent(api)


# --- finding 11: HEAD ----------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return path.replace("{name}", SETPOINT).replace("{bus}", "demo").replace("{file}", "app.js")


async def test_every_get_route_answers_head_as_get_does() -> None:
    async with running(OPEN) as api:
        app = _rest_app(api)
        paths = sorted({r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource})
        assert len(paths) == len([r for r in ROUTES if r.method == "GET"]) + 2  # + dashboard and static
        for path in paths:
            url = api.u(_concrete(path))
            async with api.session.head(url) as head:
                assert head.status != 405, path
                assert await head.read() == b""
            if path.endswith("/stream"):
                assert head.status == 200 and head.headers["Content-Type"] == "text/event-stream"
                continue
            async with api.session.get(url) as got:
                assert head.status == got.status, path
                assert head.headers.get("Content-Type") == got.headers.get("Content-Type"), path


# --- the audit alarm point -------------------------------------------------------------------------


async def test_audit_unavailable_shows_in_metrics_and_readyz(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(OPEN) as api:
        _, text, _ = await api.get("/metrics")
        assert "canbridge_audit_available 1.0" in text and "canbridge_audit_failures_total 0.0" in text
        real = api.h.bridge.stats

        def broken() -> canbridge.BridgeStats:
            import dataclasses

            return dataclasses.replace(real(), audit_available=False, audit_error="ENOSPC", audit_failures=3)

        monkeypatch.setattr(api.h.bridge, "stats", broken)
        _, text, _ = await api.get("/metrics")
        assert "canbridge_audit_available 0.0" in text and "canbridge_audit_failures_total 3.0" in text
        status, body, _ = await api.get("/readyz")
        assert status == 200 and body["ready"] is True and body["writable"] is False
        assert body["audit"] == {"available": False, "error": "ENOSPC", "failures": 3}


async def test_frame_stream_filters_by_message_and_name() -> None:
    async with running(OPEN) as api:
        idle = api.h.bridge.stats().subscribers
        for params in ({"message": "MotorStatus"}, {"name": "demo.MotorStatus.Motor*"}):
            await api.h.until(lambda: api.h.bridge.stats().subscribers == idle, what="the last stream gone")
            async with api.session.get(
                api.u("/api/v1/stream"), params={"frames": "1", "signals": "0", **params}
            ) as r:
                await r.content.readuntil(b"retry: 2000\n\n")
                # the frame subscription is made after the response starts
                await api.h.until(lambda: api.h.bridge.stats().subscribers == idle + 1, what="the stream subscribed")
                api.h.inject("200#0011223344556677")  # BatteryStatus: filtered out
                api.h.inject("100#E8033C0000120000")  # MotorStatus
                async with asyncio.timeout(5):
                    while True:
                        line = (await r.content.readline()).decode()
                        if line.startswith("data:"):
                            frames = json.loads(line[5:])["frames"]
                            break
                assert [f["canid"] for f in frames] == [0x100], frames
                assert frames[0]["rawData"]["data"] == frames[0]["data"]


def _nesting(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max((_nesting(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_nesting(x) for x in v.values()), default=0)
    return 0


_TRICKY = st.text(alphabet='[]{}"\\ab', max_size=6)
_VALUES = st.recursive(
    st.none() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=15,
)


@given(_VALUES)
def test_the_depth_scan_ignores_brackets_in_strings(value: Any) -> None:
    """The depth bound is checked before parsing, in one linear pass (a regex over whole strings took
    2.2 s for 16,000 escaped quotes: quadratic backtracking on an unclosed string)."""
    assert _depth(json.dumps(value)) == _nesting(value)
    assert _depth(json.dumps(value, ensure_ascii=False, indent=1)) == _nesting(value)
