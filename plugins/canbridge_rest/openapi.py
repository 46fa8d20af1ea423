"""The OpenAPI 3.1 document, generated from the route table and the pydantic models.

It is built for the running configuration: which operations need a token (and which accept none) follows
from the roles configured, so the document never promises access the server refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import canbridge
from canbridge_rest import models
from canbridge_rest.config import RestConfig
from canbridge_rest.errors import MAX_REFRESH

if TYPE_CHECKING:
    from canbridge_rest.state import Route

_MODELS: list[type[BaseModel]] = [
    models.Signal,
    models.SignalList,
    models.SignalUpdate,
    models.WriteRequest,
    models.WriteResult,
    models.WriteItem,
    models.WriteManyRequest,
    models.WriteManyResult,
    models.FrameOut,
    models.FrameObjectIn,
    models.CansendIn,
    models.FrameSent,
    models.Bus,
    models.BusDetail,
    models.BusList,
    models.MessageAge,
    models.Error,
    models.Health,
    models.Audit,
    models.Ready,
    models.Stats,
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _err(description: str, retry_after: bool = False) -> dict[str, Any]:
    headers = None
    if retry_after:
        headers = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
    return _json(_ref("Error"), description, headers)


def _q(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_QUALITY = {"type": "string", "enum": [q.value for q in canbridge.Quality]}
_BOOL_Q = {"type": "string", "enum": ["true", "false"]}
_FLAG_Q = {"type": "string", "enum": ["0", "1", "true", "false"]}

_STREAM_PARAMS = [
    _q("name", "only signals whose name matches this glob pattern (fnmatch: *, ?, [...])"),
    _q("bus", "only this bus (signals and frames)"),
    _q("message", "only signals of this message"),
    _q("signals", "send signal changes (default 1)", _FLAG_Q),
    _q("frames", "also send raw received frames (default 0)", _FLAG_Q),
    _q("events", "also send diagnostic events: J1939 DTC appeared/cleared, CANopen EMCY (default 0)", _FLAG_Q),
    _q(
        "interval",
        "least seconds between two batches of changes",
        {"type": "number", "minimum": 0.01, "maximum": 60},
    ),
    _q("access_token", "a bearer token, for clients that cannot send headers (EventSource)"),
]

_WRITE_ERRORS = {
    "403": _err(
        "not writable, not allowed for this token, or a cross-origin request (Origin / Sec-Fetch-Site of "
        "another site; allow it in cors_origins)"
    ),
    "413": _err("the body is too large"),
    "415": _err("the body is not Content-Type: application/json"),
}

# Operation details by route name; responses for authentication are added from the route's role.
_OPS: dict[str, dict[str, Any]] = {
    "listSignals": {
        "summary": "Every signal with value, quality, timestamps and description",
        "tags": ["signals"],
        "parameters": [
            _q("bus", "only signals of this bus"),
            _q("message", "only signals of this message (name without the bus)"),
            _q("name", "only signals whose full name matches this glob pattern, e.g. demo.Motor*"),
            _q("quality", "only signals of this quality", _QUALITY),
            _q("writable", "only writable (true) or read-only (false) signals", _BOOL_Q),
            _q("refresh", "true: ask the devices for the on-demand signals of the answer first (CANopen "
               f"objects by SDO; at most {MAX_REFRESH}, else 400); default: their cached values", _BOOL_Q),
        ],
        "responses": {
            "200": _json(_ref("SignalList"), "the signals, in mapping-table order"),
            "400": _err("a filter is invalid, or refresh=true covers too many on-demand signals"),
        },
    },
    "getSignal": {
        "summary": "One signal",
        "tags": ["signals"],
        "parameters": [_path("name", "<bus>.<message>.<signal>")],
        "responses": {"200": _json(_ref("Signal"), "the signal"), "404": _err("no such signal")},
    },
    "writeSignal": {
        "summary": "Write a signal through the bridge's write path (range checks, rate limit, audit log)",
        "tags": ["signals"],
        "parameters": [_path("name", "<bus>.<message>.<signal>")],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("WriteRequest")}}},
        "responses": {
            "200": _json(_ref("WriteResult"), "written; the frame as sent"),
            "400": _err('the body is not {"value": ...}, or not JSON (the detail says why)'),
            **_WRITE_ERRORS,
            "404": _err("no such signal"),
            "422": _err("wrong type (e.g. an unknown choice text, NaN, a list) or out of range"),
            "429": _err("written too often; see Retry-After", retry_after=True),
            "503": _err(
                "the bus is down, the frame waits for its first reception, or the audit log cannot be "
                "written (audit_unavailable: nothing is sent while it cannot)",
                retry_after=True,
            ),
        },
    },
    "writeSignals": {
        "summary": "Write several signals all or nothing: when one is refused, none is sent",
        "description": "Every item is judged as a single write would be; the first refused item is named "
        "by 'index' (and 'target'). Items of one message go out as one frame.",
        "tags": ["signals"],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("WriteManyRequest")}},
        },
        "responses": {
            "200": _json(_ref("WriteManyResult"), "all written, in the order given"),
            "400": _err("the body is not a list of {name, value}, a signal appears twice, or not JSON"),
            **_WRITE_ERRORS,
            "404": _err("an item names no signal; 'index' says which"),
            "422": _err("an item has the wrong type or is out of range; 'index' says which"),
            "429": _err("an item's signal is written too often; see Retry-After", retry_after=True),
            "503": _err("a bus is down or the audit log cannot be written", retry_after=True),
        },
    },
    "listBuses": {
        "summary": "Every bus with state, counters and load",
        "tags": ["buses"],
        "responses": {"200": _json(_ref("BusList"), "the buses")},
    },
    "getBus": {
        "summary": "One bus with per-message reception ages",
        "tags": ["buses"],
        "parameters": [_path("bus", "bus name")],
        "responses": {"200": _json(_ref("BusDetail"), "the bus"), "404": _err("no such bus")},
    },
    "sendFrame": {
        "summary": "Send one raw frame (node-red-contrib-socketcan object or cansend string)",
        "tags": ["buses"],
        "parameters": [_path("bus", "bus name")],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            _ref("FrameObjectIn"),
                            _ref("CansendIn"),
                            {"type": "string", "description": "a cansend string", "examples": ["123#DEADBEEF"]},
                        ]
                    }
                }
            },
        },
        "responses": {
            "200": _json(_ref("FrameSent"), "sent"),
            "400": _err("the frame is malformed (the detail says how), or the body is not JSON"),
            **_WRITE_ERRORS,
            "404": _err("no such bus"),
            "429": _err("sent too often", retry_after=True),
            "503": _err("the bus is down or the audit log cannot be written", retry_after=True),
        },
    },
    "requestPgn": {
        "summary": "Send a J1939 Request (PGN 59904) from the bridge's claimed address; the answer arrives "
        "as the signals of that PGN's mapping",
        "tags": ["buses"],
        "parameters": [_path("bus", "bus name (with j1939 settings: NAME and address)")],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": False, "required": ["pgn"],
                "properties": {
                    "pgn": {"type": "integer", "minimum": 0, "maximum": 262143, "examples": [65253]},
                    "destination": {"type": "integer", "minimum": 0, "maximum": 255, "default": 255,
                                    "description": "255: every ECU"},
                },
            }}},
        },
        "responses": {
            "200": _json(_ref("FrameSent"), "sent"),
            "400": _err("not a request object, or the bus claims no J1939 address"),
            "422": _err("pgn or destination is not an integer in its range"),
            **_WRITE_ERRORS,
            "404": _err("no such bus"),
            "429": _err("more requests than the bus's request_rate", retry_after=True),
            "503": _err("the bus is down, no J1939 address is claimed (no_address), or the audit log cannot "
                        "be written", retry_after=True),
        },
    },
    "getStats": {
        "summary": "Operating statistics: loop lag, CPU per plugin, queues, coalesced updates, per-bus counters",
        "description": "Alarm on loop_lag.stalls growing (a callback held the event loop over 20 ms), on "
        "buses.*.lost growing, and on the rate of coalesced.total (values no consumer saw). The same "
        "figures are Prometheus metrics on /metrics.",
        "tags": ["operations"],
        "responses": {"200": _json(_ref("Stats"), "the statistics")},
    },
    "stream": {
        "summary": "Server-Sent Events: signal changes (event 'signals'), raw frames (event 'frames') and "
        "diagnostic events (event 'events')",
        "description": "The first 'signals' event holds every selected signal; later ones the signals that "
        "changed since, newest value only (a slow client skips ahead). 'frames' events carry frames in "
        "node-red-contrib-socketcan format and the count of frames dropped for this client.",
        "tags": ["streams"],
        "parameters": _STREAM_PARAMS,
        "responses": {
            "200": {
                "description": "an endless event stream",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": _err("a parameter is invalid"),
            "503": _err("too many stream clients", retry_after=True),
        },
    },
    "websocket": {
        "summary": "WebSocket: the same messages as the SSE stream, as JSON with a 'type' field",
        "description": 'Send {"type": "subscribe", "name": "demo.*", "frames": true, "interval": 0.1} to '
        "change the selection; query parameters give the initial one.",
        "tags": ["streams"],
        "parameters": _STREAM_PARAMS,
        "responses": {
            "101": {"description": "switching to the WebSocket protocol"},
            "400": _err("not a WebSocket upgrade, or a parameter is invalid"),
            "403": _err("an upgrade from another origin (cross-site WebSocket hijacking); see cors_origins"),
            "503": _err("too many stream clients", retry_after=True),
        },
    },
    "openapi": {
        "summary": "This document",
        "tags": ["operations"],
        "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
    },
    "healthz": {
        "summary": "The process is up",
        "tags": ["operations"],
        "responses": {"200": _json(_ref("Health"), "up")},
    },
    "readyz": {
        "summary": "Buses open and the service started",
        "tags": ["operations"],
        "description": "Stays ready (200) while the audit log cannot be written (reads go on); then "
        "'writable' is false and 'audit' says why.",
        "responses": {"200": _json(_ref("Ready"), "ready"), "503": _json(_ref("Ready"), "not ready")},
    },
    "metrics": {
        "summary": "Prometheus metrics",
        "tags": ["operations"],
        "responses": {
            "200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    },
}


def _with_examples(op: dict[str, Any], bridge: canbridge.Bridge | None) -> dict[str, Any]:
    """Path parameters get this bridge's real names as examples (clients and fuzzers start there)."""
    if bridge is None or "parameters" not in op:
        return op
    writable = [n for n, i in bridge.signals.items() if i.writable]
    names = (writable if op["operationId"] == "writeSignal" else list(bridge.signals))[:5]
    params = []
    for p in op["parameters"]:
        if p["in"] == "path":
            p = dict(p)
            ex = names if p["name"] == "name" else list(bridge.buses)[:5]
            if ex:
                p["examples"] = {f"e{i}": {"value": v} for i, v in enumerate(ex)}
        params.append(p)
    return {**op, "parameters": params}


def build(
    config: RestConfig, routes: Sequence[Route], bridge: canbridge.Bridge | None = None
) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "serialization") for m in _MODELS], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    anonymous = config.anonymous_role()
    for r in routes:
        op = dict(_OPS[r.name])
        op["operationId"] = r.name
        op["responses"] = dict(op["responses"])
        if r.role is None:
            op["security"] = []
        else:
            schemes: list[dict[str, list[str]]] = [{"bearer": []}]
            if r.token_in_query:
                schemes.append({"accessToken": []})
            if anonymous is not None and anonymous.includes(r.role):
                schemes.append({})  # no token needed
            op["security"] = schemes
            op["x-canbridge-role"] = r.role.value
            op["responses"]["401"] = _err("no token, or an unknown token")
            op["responses"].setdefault("403", _err(f"the token's role is below {r.role.value}"))
            limited = "too many failed authentications from this address; see Retry-After"
            if "429" in op["responses"]:
                limited = op["responses"]["429"]["description"] + "; or " + limited
            op["responses"]["429"] = _err(limited, retry_after=True)
        paths.setdefault(r.path, {})[r.method.lower()] = _with_examples(op, bridge)
    scheme = "https" if config.tls else "http"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "canbridge REST API",
            "version": canbridge.__version__,
            "description": "CAN signals (DBC) with quality and source timestamps, bus health, writes "
            "through the bridge's write path, raw frames and live streams.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": "/", "description": f"this server ({scheme})"}],
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from the configuration; roles read < write < admin",
                },
                "accessToken": {"type": "apiKey", "in": "query", "name": "access_token"},
            },
        },
    }
