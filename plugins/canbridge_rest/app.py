"""The aiohttp application: routes, authentication, errors as JSON, CORS, streams and the dashboard."""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import canbridge
from canbridge_rest import models
from canbridge_rest.config import RestConfig, Role
from canbridge_rest.guard import (
    STATE_CHANGING,
    AuthLimiter,
    BodyError,
    content_type_problem,
    cross_origin_problem,
    loads,
    origin_allowed,
)
from canbridge_rest.state import IDENTITY, STATE, VALUE, Handler, Identity, RestState, Route
from canbridge_rest.streams import SlowClient, StreamHub, StreamParamError, dumps, parse_params, run_stream

log = logging.getLogger("canbridge.rest")

STATIC = Path(__file__).resolve().parent / "static"
API = "/api/v1"

class ApiError(Exception):
    """An error response: the error middleware turns it into a JSON body."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        target: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        audited: bool = False,
        reason: canbridge.RefusalReason | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.target = target
        self.headers = headers or {}
        self.audited = audited  # the bridge already recorded this refusal
        self.reason = reason  # the reason to audit it with (else derived from the status)
        self.index = index


MAX_WRITE_ITEMS = 256

REFUSAL_STATUS = {
    canbridge.RefusalReason.UNKNOWN_SIGNAL: 404,
    canbridge.RefusalReason.UNKNOWN_BUS: 404,
    canbridge.RefusalReason.NOT_WRITABLE: 403,
    canbridge.RefusalReason.NOT_ALLOWED: 403,
    canbridge.RefusalReason.WRONG_TYPE: 422,
    canbridge.RefusalReason.OUT_OF_RANGE: 422,
    canbridge.RefusalReason.RATE_LIMITED: 429,
    canbridge.RefusalReason.BUS_DOWN: 503,
    canbridge.RefusalReason.WAITING: 503,
    canbridge.RefusalReason.INVALID_FRAME: 400,
    canbridge.RefusalReason.UNAUTHENTICATED: 401,
    canbridge.RefusalReason.UNSUPPORTED: 400,
    canbridge.RefusalReason.AUDIT_UNAVAILABLE: 503,
}

_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", headers=headers)


def _state(request: web.Request) -> RestState:
    return request.app[STATE]


# --- middlewares --------------------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON body ``{status, error, detail}``, 404/405/413 from aiohttp included."""
    state = _state(request)
    route = state.routes.get(request.match_info.route)
    try:
        resp = await handler(request)
    except ApiError as e:
        if not e.audited:
            _audit_refusal(request, route, e.status, e.detail, e.reason)
        resp = _json(models.error(e.status, e.code, e.detail, e.target, e.index), e.status, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        detail = e.text or e.reason
        if e.status == 404:
            detail = f"nothing at {request.path}"
        elif e.status == 405:
            detail = (
                f"{request.method} is not allowed on {request.path}; allowed: {e.headers.get('Allow', '')}"
            )
        elif e.status == 413:
            detail = f"the request body is larger than {state.config.max_body_bytes} bytes"
        _audit_refusal(request, route, e.status, detail, None)
        headers = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
        resp = _json(models.error(e.status, _STATUS_CODES.get(e.status, "error"), detail), e.status, headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("REST %s %s failed", request.method, request.path)
        resp = _json(models.error(500, "internal_error", "the server failed; see its log"), 500)
    # labels from a fixed set only: a client must not grow the metrics with made-up methods or paths
    method = request.method if request.method in _METHODS else "other"
    state.requests[(method, route.path if route else "other", resp.status)] += 1
    return resp


_REASON_BY_STATUS = {
    401: canbridge.RefusalReason.UNAUTHENTICATED,
    403: canbridge.RefusalReason.NOT_ALLOWED,
    429: canbridge.RefusalReason.RATE_LIMITED,
}


def _is_write(request: web.Request, route: Route | None) -> bool:
    return route is not None and route.method in STATE_CHANGING and request.method == route.method


def _write_target(request: web.Request, route: Route) -> str:
    """The audit log's target: the signal, the bus's raw frames (as the write path names them), or
    the operation for a multi-signal write."""
    info = request.match_info
    if "name" in info:
        return info["name"]
    if "bus" in info:
        return f"{info['bus']} (raw frame)"
    return f"rest:{route.method} {route.path}"


def _audit_refusal(
    request: web.Request,
    route: Route | None,
    status: int,
    detail: str,
    reason: canbridge.RefusalReason | None,
) -> None:
    """A write attempt refused here (authentication, cross-origin, body form) is audited like one the
    write path refused; the audit log rate-limits these records per peer."""
    if route is None or not _is_write(request, route) or status < 400:
        return
    state = _state(request)
    why = reason or _REASON_BY_STATUS.get(status, canbridge.RefusalReason.UNSUPPORTED)
    ident = request.get(IDENTITY)
    caller = (
        _caller(request)
        if ident is not None
        else canbridge.Caller(plugin="rest", user=None, address=request.remote, permissions=frozenset())
    )
    try:
        state.bridge.refuse(_write_target(request, route), request.get(VALUE), caller, why, detail)
    except Exception:  # never turn a refusal into a 500; the bridge reports its audit state itself
        state.refusals_unaudited += 1
        log.exception("REST: could not audit a refused %s %s", request.method, request.path)


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Before authentication: a state-changing request or a WebSocket upgrade from another origin is
    refused (403), and a state-changing request must be application/json (415): a cross-site form or
    text/plain POST needs no CORS preflight."""
    state = _state(request)
    route = state.routes.get(request.match_info.route)
    if route is None:
        return await handler(request)
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method in STATE_CHANGING or upgrade:
        anon = state.config.anonymous_role()
        open_route = route.role is None or (anon is not None and anon.includes(route.role))
        problem = cross_origin_problem(
            request.method if not upgrade else "WebSocket upgrade",
            request.headers,
            request.scheme,
            request.host,
            state.config,
            open_route,
        )
        if problem is not None:
            log.info("REST: refused %s %s from %s: %s", request.method, request.path, request.remote, problem)
            raise ApiError(403, "cross_origin", problem, reason=canbridge.RefusalReason.NOT_ALLOWED)
    if request.method in STATE_CHANGING:
        problem = content_type_problem(request.headers, request.content_type, request.charset)
        if problem is not None:
            raise ApiError(415, "unsupported_media_type", problem, reason=canbridge.RefusalReason.UNSUPPORTED)
    return await handler(request)


def _failed_auth(request: web.Request, error: str, detail: str) -> ApiError:
    state = _state(request)
    state.limiter.failed(request.remote)
    return ApiError(
        401,
        error,
        detail,
        headers={"WWW-Authenticate": f'Bearer error="{error if error == "invalid_token" else "invalid_request"}"'},
        reason=canbridge.RefusalReason.UNAUTHENTICATED,
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens with roles; the route table says which role each route needs. An address that
    failed too often is refused (429) before its token is looked at."""
    state = _state(request)
    route = state.routes.get(request.match_info.route)
    need = route.role if route is not None else None
    if need is None:  # public (health, OpenAPI, dashboard files) or no route: a token is not looked at
        request[IDENTITY] = Identity(None, state.config.anonymous_role())
        return await handler(request)
    header = request.headers.get("Authorization")
    token: str | None = None
    if header is not None or (route is not None and route.token_in_query and "access_token" in request.query):
        wait = state.limiter.retry_after(request.remote)
        if wait is not None:
            raise ApiError(
                429,
                "too_many_failed_logins",
                f"too many failed authentications from {request.remote}; try again in {math.ceil(wait)} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                reason=canbridge.RefusalReason.RATE_LIMITED,
            )
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _failed_auth(request, "invalid_request", "use 'Authorization: Bearer <token>'")
        token = value.strip()
    elif route is not None and route.token_in_query:
        token = request.query.get("access_token")
    if token is not None:
        found = state.tokens.get(hashlib.sha256(token.encode("utf-8")).hexdigest())
        if found is None:
            raise _failed_auth(request, "invalid_token", "the bearer token is not known")
        identity = Identity(found[0], found[1])
    else:
        identity = Identity(None, state.config.anonymous_role())
    request[IDENTITY] = identity
    if identity.role is None or not identity.role.includes(need):
        if token is None:
            raise ApiError(
                401,
                "unauthorized",
                f"this needs a bearer token with the {need.value} role",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raise ApiError(
            403,
            "insufficient_role",
            f"token {identity.name!r} has role {identity.role.value if identity.role else None}; "
            f"this needs {need.value}",
        )
    return await handler(request)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for configured origins; other requests pass (headers: on_prepare)."""
    origin = request.headers.get("Origin")
    if (
        request.method == "OPTIONS"
        and origin is not None
        and "Access-Control-Request-Method" in request.headers
        and _origin_allowed(_state(request).config, origin)
    ):
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, HEAD, PUT, POST",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )
    return await handler(request)


def _origin_allowed(config: RestConfig, origin: str) -> bool:
    return origin_allowed(config, origin)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    config = _state(request).config
    origin = request.headers.get("Origin")
    if origin is not None and _origin_allowed(config, origin):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in config.cors_origins else origin
        response.headers["Vary"] = "Origin"
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path.startswith(API) or request.path in ("/metrics", "/healthz", "/readyz"):
        response.headers.setdefault("Cache-Control", "no-store")
    else:  # the dashboard: no inline code, no other origin
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'",
        )


# --- request helpers ----------------------------------------------------------------------------


def _caller(request: web.Request) -> canbridge.Caller:
    ident = request[IDENTITY]
    perms = {canbridge.Permission.WRITE}
    if ident.role is Role.ADMIN:
        perms.add(canbridge.Permission.RAW)
    return canbridge.Caller(
        plugin="rest", user=ident.name, address=request.remote, permissions=frozenset(perms)
    )


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        raise ApiError(400, "bad_request", "a JSON body is needed")
    try:
        body = loads(raw, _state(request).config.max_json_depth)
    except BodyError as e:
        raise ApiError(400, "bad_json", str(e)) from None
    request[VALUE] = body
    return body


def _refused(e: canbridge.WriteRefused, bridge: canbridge.Bridge) -> ApiError:
    """A refusal of the write path (already audited there) as an error response."""
    status = REFUSAL_STATUS.get(e.reason, 400)
    headers: dict[str, str] = {}
    if status == 429:
        info = bridge.signals.get(e.target or "")
        rate = info.max_write_rate if info is not None else None
        headers["Retry-After"] = str(max(1, math.ceil(1 / rate)) if rate else 1)
    elif status == 503:
        headers["Retry-After"] = "1"
    index = getattr(e, "index", None)
    return ApiError(status, e.reason.value, e.detail, e.target, headers, audited=True, index=index)


def _signal_info(state: RestState, name: str) -> canbridge.SignalInfo:
    info = state.bridge.signals.get(name)
    if info is None:
        raise ApiError(404, "unknown_signal", f"no signal named {name!r}", name)
    return info


# --- handlers -----------------------------------------------------------------------------------


async def list_signals(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    q = request.query
    bus, message, pattern, quality = q.get("bus"), q.get("message"), q.get("name"), q.get("quality")
    writable = q.get("writable")
    if quality is not None and quality not in {m.value for m in canbridge.Quality}:
        raise ApiError(400, "bad_request", f"'quality' must be good, stale, bad or waiting, got {quality!r}")
    if writable is not None and writable not in ("true", "false"):
        raise ApiError(400, "bad_request", f"'writable' must be true or false, got {writable!r}")
    infos = state.bridge.signals
    names = [
        n
        for n, info in infos.items()
        if (bus is None or info.bus == bus)
        and (message is None or info.message == message)
        and (pattern is None or fnmatch.fnmatchcase(n, pattern))
        and (writable is None or info.writable == (writable == "true"))
    ]
    now = time.time_ns()
    out = [
        models.signal(state.statics[sv.name], infos[sv.name], sv, now)
        for sv in state.bridge.read_many(names)
        if quality is None or sv.quality.value == quality
    ]
    return _json({"count": len(out), "signals": out})


async def get_signal(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    name = request.match_info["name"]
    info = _signal_info(state, name)
    return _json(models.signal(state.statics[name], info, state.bridge.read(name)))


def _receipt(receipt: canbridge.WriteReceipt) -> dict[str, Any]:
    return {
        "name": receipt.name,
        "value": models.finite(receipt.value),
        "raw": receipt.raw,
        "cyclic": receipt.cyclic,
        "frame": models.frame(receipt.frame),
    }


async def put_signal(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    name = request.match_info["name"]
    body = await _body(request)
    if not isinstance(body, dict) or "value" not in body:
        raise ApiError(400, "bad_request", 'the body must be a JSON object {"value": ...}', name)
    extra = sorted(set(body) - {"value"})
    if extra:
        raise ApiError(
            400, "bad_request", f"unknown key(s) {', '.join(extra)}; only 'value' is allowed", name
        )
    request[VALUE] = body["value"]
    try:
        # the value as JSON gave it: judging it (type, finiteness, limits) is the write path's job.
        # shielded: a client that hangs up must not cut an accepted write short
        receipt = await asyncio.shield(state.bridge.write(name, body["value"], _caller(request)))
    except canbridge.WriteRefused as e:
        if e.target is None:
            e.target = name
        raise _refused(e, state.bridge) from None
    except canbridge.UnknownSignal as e:
        raise ApiError(404, "unknown_signal", str(e), name, audited=True) from None
    return _json(_receipt(receipt))


async def put_signals(request: web.Request) -> web.StreamResponse:
    """Several signals, all or nothing (``Bridge.write_many``): one refused item refuses them all."""
    state = _state(request)
    body = await _body(request)
    form = 'the body must be a JSON list [{"name": "<bus>.<message>.<signal>", "value": ...}, ...]'
    if not isinstance(body, list) or not body:
        raise ApiError(400, "bad_request", form)
    if len(body) > MAX_WRITE_ITEMS:
        raise ApiError(400, "bad_request", f"{len(body)} writes in one request; at most {MAX_WRITE_ITEMS}")
    items: list[tuple[str, object]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(body):
        if not isinstance(item, dict) or set(item) != {"name", "value"} or not isinstance(item["name"], str):
            raise ApiError(400, "bad_request", f"item {i}: {form}", index=i)
        name = item["name"]
        if name in seen:
            raise ApiError(
                400, "bad_request", f"item {i} writes {name} again (item {seen[name]}); give each signal once",
                name, index=i,
            )
        seen[name] = i
        items.append((name, item["value"]))
    try:
        receipts = await asyncio.shield(state.bridge.write_many(items, _caller(request)))
    except canbridge.WriteRefused as e:
        err = _refused(e, state.bridge)
        if e.index is not None:
            err.detail = f"item {e.index}: {e.detail}; nothing was sent"
        raise err from None
    return _json({"writes": [_receipt(r) for r in receipts]})


def _bus_or_404(state: RestState, bus: str) -> canbridge.BusStatus:
    if bus not in state.bridge.buses:
        raise ApiError(404, "unknown_bus", f"no bus named {bus!r}", bus)
    return state.bridge.bus_status(bus)


async def list_buses(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    b = state.bridge
    return _json({"buses": [models.bus(info, b.bus_status(n)) for n, info in b.buses.items()]})


async def get_bus(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    name = request.match_info["bus"]
    st = _bus_or_404(state, name)
    out = models.bus(state.bridge.buses[name], st)
    out["messages"] = [models.message_age(m) for m in state.bridge.message_status(name)]
    return _json(out)


async def post_frame(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    bus = request.match_info["bus"]
    body = await _body(request)
    caller = _caller(request)
    try:
        if isinstance(body, dict) and body.get("bus") is not None and body["bus"] != bus:
            raise state.bridge.refuse(
                f"{bus} (raw frame)",
                body,
                caller,
                canbridge.RefusalReason.INVALID_FRAME,
                f"the frame object names bus {body['bus']!r} but was posted to bus {bus!r}",
            )
        # the frame as JSON gave it (cansend string, {"cansend": ...} or frame object): the write path
        # parses it, and audits a malformed one
        sent = await asyncio.shield(state.bridge.send_frame(bus, body, caller))
    except canbridge.FrameFormatError as e:
        raise ApiError(400, canbridge.RefusalReason.INVALID_FRAME.value, str(e), bus, audited=True) from None
    except canbridge.WriteRefused as e:
        if e.target is None:
            e.target = bus
        raise _refused(e, state.bridge) from None
    return _json({"bus": bus, "frame": models.frame(sent)})


async def openapi_json(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    if state.openapi is None:
        from canbridge_rest.openapi import build

        state.openapi = build(state.config, ROUTES, state.bridge)
    return _json(state.openapi)


async def healthz(request: web.Request) -> web.StreamResponse:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    problems: list[str] = []
    buses: dict[str, str] = {}
    for name in state.bridge.buses:
        st = state.bridge.bus_status(name)
        buses[name] = st.state.value
        # bus-off and error-passive buses are open (the bridge reports on them); these are not
        if st.state in (canbridge.BusState.STARTING, canbridge.BusState.DOWN, canbridge.BusState.STOPPED):
            problems.append(
                f"bus {name} is {st.state.value}" + (f": {st.last_error}" if st.last_error else "")
            )
    if not state.started:
        problems.append("the REST service is still starting")
    if not state.bridge.ready:
        problems.append("the bridge is starting or stopping (not every plugin has started)")
    ready = not problems
    stats = state.bridge.stats()
    audit = {"available": stats.audit_available, "error": stats.audit_error, "failures": stats.audit_failures}
    # the audit log does not make the service unready (reads go on), it makes it unwritable
    body = {
        "ready": ready,
        "writable": ready and stats.audit_available,
        "audit": audit,
        "buses": buses,
        "problems": problems,
    }
    return _json(body, 200 if ready else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    assert state.registry is not None
    # in the event loop, not a thread: the collector reads the bridge's live (unlocked) state
    body = generate_latest(state.registry)
    resp = web.Response(body=body)
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


_STATIC_FILES = frozenset(p.name for p in STATIC.iterdir() if p.is_file())


async def static_file(request: web.Request) -> web.StreamResponse:
    # a fixed list of files, not a directory: no path ever reaches the file system from a client
    name = request.match_info["file"]
    if name not in _STATIC_FILES:
        raise ApiError(404, "not_found", f"nothing at {request.path}")
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


async def dashboard(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


# --- streams ------------------------------------------------------------------------------------


def _stream_params(request: web.Request) -> Any:
    state = _state(request)
    try:
        return parse_params(request.query, state.bridge, state.config.stream_interval_s)
    except StreamParamError as e:
        raise ApiError(400, "bad_request", str(e)) from None


def _slots(state: RestState) -> asyncio.Event:
    closing = state.hub.try_acquire()
    if closing is None:
        raise ApiError(
            503,
            "too_many_streams",
            f"{state.config.max_stream_clients} stream clients are connected already",
            headers={"Retry-After": "5"},
        )
    return closing


def _buffered(request: web.Request) -> int:
    t = request.transport
    return t.get_write_buffer_size() if t is not None else 0


async def sse(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    params = _stream_params(request)
    if request.method == "HEAD":  # what GET would start, without starting an endless stream
        return web.Response(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    closing = _slots(state)
    cfg = state.config
    try:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")

        async def send(event: str, data: dict[str, Any]) -> None:
            state.hub.max_write_buffer = max(state.hub.max_write_buffer, _buffered(request))
            chunk = f"event: {event}\ndata: {dumps(data)}\n\n".encode()
            try:
                await asyncio.wait_for(resp.write(chunk), cfg.stream_write_timeout_s)
            except TimeoutError:
                raise SlowClient from None
            state.hub.events_sent += 1

        async def heartbeat() -> None:
            try:
                await asyncio.wait_for(resp.write(b": keep-alive\n\n"), cfg.stream_write_timeout_s)
            except TimeoutError:
                raise SlowClient from None

        await _run(request, state, params, send, heartbeat, closing)
        return resp
    finally:
        state.hub.release(closing)


async def _run(
    request: web.Request,
    state: RestState,
    params: Any,
    send: Any,
    heartbeat: Any,
    closing: asyncio.Event,
) -> None:
    cfg = state.config
    try:
        why = await run_stream(
            state.bridge,
            params,
            send,
            heartbeat,
            closing,
            state.bridge.signals,
            cfg.stream_heartbeat_s,
            cfg.stream_frames_maxlen,
        )
        log.debug("stream to %s ended: %s", request.remote, why)
    except SlowClient:
        state.hub.dropped_slow += 1
        log.warning(
            "dropped stream client %s: it read nothing for %.1f s", request.remote, cfg.stream_write_timeout_s
        )
        if request.transport is not None:
            request.transport.abort()  # discard what is buffered for it
    except (ConnectionResetError, ConnectionError):
        log.debug("stream client %s went away", request.remote)


async def websocket(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    cfg = state.config
    params = _stream_params(request)
    if request.method == "HEAD" or request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(400, "bad_request", "this is a WebSocket endpoint: connect with an Upgrade: websocket request")
    closing = _slots(state)
    try:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=cfg.max_body_bytes, writer_limit=2**16)
        await ws.prepare(request)
        lock = asyncio.Lock()

        async def send(event: str, data: dict[str, Any]) -> None:
            state.hub.max_write_buffer = max(state.hub.max_write_buffer, _buffered(request))
            msg = dumps({"type": event, **data})
            try:
                async with asyncio.timeout(cfg.stream_write_timeout_s), lock:
                    await ws.send_str(msg)
            except TimeoutError:
                raise SlowClient from None
            state.hub.events_sent += 1

        feeder = asyncio.create_task(_run(request, state, params, send, None, closing))
        stop_wait = asyncio.create_task(closing.wait())
        try:
            while True:
                recv = asyncio.create_task(ws.receive())
                done, _ = await asyncio.wait({recv, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if stop_wait in done:
                    recv.cancel()
                    break
                msg = recv.result()
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    break
                if msg.type != WSMsgType.TEXT:
                    await send("error", {"error": "bad_message", "detail": "send JSON text messages"})
                    continue
                try:
                    cmd = json.loads(msg.data)
                    if not isinstance(cmd, dict) or cmd.get("type") != "subscribe":
                        raise StreamParamError(
                            'send {"type": "subscribe", "name": "glob", "bus": ..., "frames": true, '
                            '"signals": true, "interval": 0.1}'
                        )
                    new = parse_params(cmd, state.bridge, cfg.stream_interval_s)
                except (ValueError, StreamParamError) as e:
                    await send("error", {"error": "bad_message", "detail": str(e)})
                    continue
                feeder.cancel()
                await asyncio.wait({feeder}, timeout=2.0)
                await send(
                    "subscribed",
                    {
                        "signals": new.signals,
                        "frames": new.frames,
                        "count": len(new.names) if new.names is not None else len(state.bridge.signals),
                    },
                )
                feeder = asyncio.create_task(_run(request, state, new, send, None, closing))
        except SlowClient:
            state.hub.dropped_slow += 1
            if request.transport is not None:
                request.transport.abort()
        finally:
            stop_wait.cancel()
            feeder.cancel()
            await asyncio.wait({feeder}, timeout=2.0)
            if not ws.closed:
                try:
                    async with asyncio.timeout(1.0):
                        await ws.close(
                            code=1001, message=b"server shutting down" if closing.is_set() else b""
                        )
                except (TimeoutError, ConnectionError):
                    pass
        return ws
    finally:
        state.hub.release(closing)


# --- the application ----------------------------------------------------------------------------

ROUTES: list[Route] = [
    Route("GET", f"{API}/signals", list_signals, Role.READ, "listSignals"),
    Route("GET", f"{API}/signals/{{name}}", get_signal, Role.READ, "getSignal"),
    Route("PUT", f"{API}/signals", put_signals, Role.WRITE, "writeSignals"),
    Route("PUT", f"{API}/signals/{{name}}", put_signal, Role.WRITE, "writeSignal"),
    Route("GET", f"{API}/buses", list_buses, Role.READ, "listBuses"),
    Route("GET", f"{API}/buses/{{bus}}", get_bus, Role.READ, "getBus"),
    Route("POST", f"{API}/buses/{{bus}}/frames", post_frame, Role.ADMIN, "sendFrame"),
    Route("GET", f"{API}/stream", sse, Role.READ, "stream", token_in_query=True),
    Route("GET", f"{API}/ws", websocket, Role.READ, "websocket", token_in_query=True),
    Route("GET", f"{API}/openapi.json", openapi_json, None, "openapi"),
    Route("GET", "/healthz", healthz, None, "healthz"),
    Route("GET", "/readyz", readyz, None, "readyz"),
    Route("GET", "/metrics", metrics, Role.READ, "metrics"),
]


def make_app(bridge: canbridge.Bridge, config: RestConfig) -> web.Application:
    """Build the application; its cleanup context owns the metrics registry and the stream hub."""
    from canbridge_rest.metrics import make_registry

    tokens = {t.digest: (t.name, t.role) for t in config.tokens}
    state = RestState(
        bridge=bridge,
        config=config,
        hub=StreamHub(config.max_stream_clients),
        statics={n: models.static_signal(i) for n, i in bridge.signals.items()},
        tokens=tokens,
        limiter=AuthLimiter(config.auth_failures_burst, config.auth_failures_per_minute),
    )
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[cors_middleware, error_middleware, guard_middleware, auth_middleware],
    )
    app[STATE] = state
    routes = list(ROUTES)
    if config.dashboard:
        routes += [
            Route("GET", "/", dashboard, None, "dashboard"),
            Route("GET", "/static/{file}", static_file, None, "static"),
        ]
    for r in routes:
        state.routes[app.router.add_route(r.method, r.path, r.handler, name=r.name)] = r
        if r.method == "GET":  # monitoring tools probe with HEAD: every GET route answers it
            state.routes[app.router.add_route("HEAD", r.path, r.handler)] = r
    app.on_response_prepare.append(_on_prepare)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # runs only when start-up finished, so the registry and streams always exist here
        st = app[STATE]
        st.registry = make_registry(st)
        st.started = True
        yield
        st.started = False
        st.hub.close_all()

    async def on_shutdown(app: web.Application) -> None:
        # before aiohttp waits for handlers: end the long-lived streams so stop() is quick
        app[STATE].hub.close_all()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(on_shutdown)
    return app
