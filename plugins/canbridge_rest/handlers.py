"""The route handlers of /api/v1, the streams, metrics, health and the dashboard, and the route table."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import math
import time
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import canbridge
from canbridge_rest import models
from canbridge_rest.config import Role
from canbridge_rest.errors import API, MAX_REFRESH, MAX_WRITE_ITEMS, REFUSAL_STATUS, STATIC, ApiError, json_response
from canbridge_rest.guard import (
    BodyError,
    loads,
)
from canbridge_rest.middleware import caller_of, rest_state
from canbridge_rest.state import VALUE, RestState, Route
from canbridge_rest.streams import SlowClient, StreamParamError, dumps, parse_params, run_stream

log = logging.getLogger("canbridge.rest")


async def _body(request: web.Request) -> Any:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        raise ApiError(400, "bad_request", "a JSON body is needed")
    try:
        body = loads(raw, rest_state(request).config.max_json_depth)
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
    return ApiError(status, e.reason.value, e.detail, e.target, headers, audited=True, index=index,
                    abort_code=e.abort_code)


def _static(state: RestState, info: canbridge.SignalInfo) -> dict[str, Any]:
    """The fixed part of a signal's answer, made once; signals added at run time (J1939 sources heard)
    get theirs when first asked for."""
    static = state.statics.get(info.name)
    if static is None:
        static = state.statics[info.name] = models.static_signal(info)
    return static


def _signal_info(state: RestState, name: str) -> canbridge.SignalInfo:
    info = state.bridge.signals.get(name)
    if info is None:
        raise ApiError(404, "unknown_signal", f"no signal named {name!r}", name)
    return info


# --- handlers -----------------------------------------------------------------------------------


async def list_signals(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
    q = request.query
    bus, message, pattern, quality = q.get("bus"), q.get("message"), q.get("name"), q.get("quality")
    writable, refresh = q.get("writable"), q.get("refresh")
    if refresh is not None and refresh not in ("true", "false"):
        raise ApiError(400, "bad_request", f"'refresh' must be true or false, got {refresh!r}")
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
    if refresh == "true":
        demanded = [n for n in names if infos[n].on_demand]
        if len(demanded) > MAX_REFRESH:
            raise ApiError(400, "bad_request", f"refresh=true covers {len(demanded)} on-demand signals, at most "
                           f"{MAX_REFRESH} are read from the devices per request; narrow the filters")
        await asyncio.gather(*(state.bridge.refresh(n) for n in demanded))
    now = time.time_ns()
    out = [
        models.signal(_static(state, infos[sv.name]), infos[sv.name], sv, now)
        for sv in state.bridge.read_many(names)
        if quality is None or sv.quality.value == quality
    ]
    return json_response({"count": len(out), "signals": out})


async def get_signal(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
    name = request.match_info["name"]
    info = _signal_info(state, name)
    # an on-demand signal (a CANopen object by SDO): the device is asked unless the cached value is fresh
    value = await state.bridge.refresh(name) if info.on_demand else state.bridge.read(name)
    return json_response(models.signal(_static(state, info), info, value))


def _receipt(receipt: canbridge.WriteReceipt) -> dict[str, Any]:
    return {
        "name": receipt.name,
        "value": models.finite(receipt.value),
        "raw": receipt.raw,
        "cyclic": receipt.cyclic,
        "frame": models.frame(receipt.frame),
    }


async def put_signal(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
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
        receipt = await asyncio.shield(state.bridge.write(name, body["value"], caller_of(request)))
    except canbridge.WriteRefused as e:
        if e.target is None:
            e.target = name
        raise _refused(e, state.bridge) from None
    except canbridge.UnknownSignal as e:
        raise ApiError(404, "unknown_signal", str(e), name, audited=True) from None
    return json_response(_receipt(receipt))


async def put_signals(request: web.Request) -> web.StreamResponse:
    """Several signals, all or nothing (``Bridge.write_many``): one refused item refuses them all."""
    state = rest_state(request)
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
        receipts = await asyncio.shield(state.bridge.write_many(items, caller_of(request)))
    except canbridge.WriteRefused as e:
        err = _refused(e, state.bridge)
        if e.index is not None:
            err.detail = f"item {e.index}: {e.detail}; nothing was sent"
        raise err from None
    return json_response({"writes": [_receipt(r) for r in receipts]})


def _bus_or_404(state: RestState, bus: str) -> canbridge.BusStatus:
    if bus not in state.bridge.buses:
        raise ApiError(404, "unknown_bus", f"no bus named {bus!r}", bus)
    return state.bridge.bus_status(bus)


async def list_buses(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
    b = state.bridge
    return json_response({"buses": [models.bus(info, b.bus_status(n)) for n, info in b.buses.items()]})


async def get_bus(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
    name = request.match_info["bus"]
    st = _bus_or_404(state, name)
    out = models.bus(state.bridge.buses[name], st)
    out["messages"] = [models.message_age(m) for m in state.bridge.message_status(name)]
    return json_response(out)


async def post_frame(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
    bus = request.match_info["bus"]
    body = await _body(request)
    caller = caller_of(request)
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
    return json_response({"bus": bus, "frame": models.frame(sent)})


async def post_j1939_request(request: web.Request) -> web.StreamResponse:
    """A J1939 Request (PGN 59904) from the bridge's claimed address: {"pgn": N, "destination": 0..255}."""
    state = rest_state(request)
    bus = request.match_info["bus"]
    body = await _body(request)
    caller = caller_of(request)
    target = f"{bus} (J1939 request)"
    if not isinstance(body, dict) or "pgn" not in body or set(body) - {"pgn", "destination"}:
        raise _refused(state.bridge.refuse(target, body, caller, canbridge.RefusalReason.UNSUPPORTED,
                                           'expects {"pgn": <number>, "destination": <0..255, default 255>}'),
                       state.bridge) from None
    try:
        sent = await asyncio.shield(state.bridge.request_pgn(bus, body["pgn"], caller, body.get("destination", 255)))
    except canbridge.WriteRefused as e:
        raise _refused(e, state.bridge) from None
    return json_response({"bus": bus, "pgn": body["pgn"], "destination": body.get("destination", 255),
                          "frame": models.frame(sent)})


async def openapi_json(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
    if state.openapi is None:
        from canbridge_rest.openapi import build

        state.openapi = build(state.config, ROUTES, state.bridge)
    return json_response(state.openapi)


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
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
    return json_response(body, 200 if ready else 503)


async def get_stats(request: web.Request) -> web.StreamResponse:
    return json_response(models.stats(rest_state(request).bridge.operating_stats()))


async def metrics(request: web.Request) -> web.StreamResponse:
    state = rest_state(request)
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
    state = rest_state(request)
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
    state = rest_state(request)
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
    state = rest_state(request)
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
    Route("POST", f"{API}/buses/{{bus}}/j1939/requests", post_j1939_request, Role.WRITE, "requestPgn"),
    Route("GET", f"{API}/stats", get_stats, Role.READ, "getStats"),
    Route("GET", f"{API}/stream", sse, Role.READ, "stream", token_in_query=True),
    Route("GET", f"{API}/ws", websocket, Role.READ, "websocket", token_in_query=True),
    Route("GET", f"{API}/openapi.json", openapi_json, None, "openapi"),
    Route("GET", "/healthz", healthz, None, "healthz"),
    Route("GET", "/readyz", readyz, None, "readyz"),
    Route("GET", "/metrics", metrics, Role.READ, "metrics"),
]
