"""The middlewares every request passes, in order: errors as JSON, the cross-site guard (before
authentication), authentication with its failure limit, CORS; and the audit of refused write attempts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math

from aiohttp import web

import canbridge
from canbridge_rest import models
from canbridge_rest.config import RestConfig, Role
from canbridge_rest.errors import API, METHODS, STATUS_CODES, ApiError, json_response
from canbridge_rest.guard import (
    STATE_CHANGING,
    content_type_problem,
    cross_origin_problem,
    origin_allowed,
)
from canbridge_rest.state import IDENTITY, STATE, VALUE, Handler, Identity, RestState, Route

log = logging.getLogger("canbridge.rest")


def rest_state(request: web.Request) -> RestState:
    return request.app[STATE]


# --- middlewares --------------------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON body ``{status, error, detail}``, 404/405/413 from aiohttp included."""
    state = rest_state(request)
    route = state.routes.get(request.match_info.route)
    try:
        resp = await handler(request)
    except ApiError as e:
        if not e.audited:
            _audit_refusal(request, route, e.status, e.detail, e.reason)
        body = models.error(e.status, e.code, e.detail, e.target, e.index, e.abort_code)
        resp = json_response(body, e.status, e.headers)
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
        resp = json_response(models.error(e.status, STATUS_CODES.get(e.status, "error"), detail), e.status, headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("REST %s %s failed", request.method, request.path)
        resp = json_response(models.error(500, "internal_error", "the server failed; see its log"), 500)
    # labels from a fixed set only: a client must not grow the metrics with made-up methods or paths
    method = request.method if request.method in METHODS else "other"
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
    state = rest_state(request)
    why = reason or _REASON_BY_STATUS.get(status, canbridge.RefusalReason.UNSUPPORTED)
    ident = request.get(IDENTITY)
    caller = (
        caller_of(request)
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
    state = rest_state(request)
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
    state = rest_state(request)
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
    state = rest_state(request)
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
        and _origin_allowed(rest_state(request).config, origin)
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


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    config = rest_state(request).config
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


def caller_of(request: web.Request) -> canbridge.Caller:
    ident = request[IDENTITY]
    perms = {canbridge.Permission.WRITE}
    if ident.role is Role.ADMIN:
        perms.add(canbridge.Permission.RAW)
    return canbridge.Caller(
        plugin="rest", user=ident.name, address=request.remote, permissions=frozenset(perms)
    )
