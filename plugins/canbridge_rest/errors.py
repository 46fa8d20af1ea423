"""Errors as JSON: ApiError, the HTTP status of each refusal reason, and JSON responses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

import canbridge
from canbridge_rest.streams import dumps

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
        abort_code: int | None = None,
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
        self.abort_code = abort_code  # a CANopen SDO abort code behind the refusal


MAX_WRITE_ITEMS = 256
MAX_REFRESH = 64  # on-demand signals one GET /signals?refresh=true reads from the devices (SDO queues, bus)

REFUSAL_STATUS = {
    canbridge.RefusalReason.UNKNOWN_SIGNAL: 404,
    canbridge.RefusalReason.UNKNOWN_BUS: 404,
    canbridge.RefusalReason.NOT_WRITABLE: 403,
    canbridge.RefusalReason.NOT_ALLOWED: 403,
    canbridge.RefusalReason.WRONG_TYPE: 422,
    canbridge.RefusalReason.OUT_OF_RANGE: 422,
    canbridge.RefusalReason.RATE_LIMITED: 429,
    canbridge.RefusalReason.BUS_DOWN: 503,
    canbridge.RefusalReason.NO_ADDRESS: 503,
    canbridge.RefusalReason.WAITING: 503,
    canbridge.RefusalReason.INVALID_FRAME: 400,
    canbridge.RefusalReason.UNAUTHENTICATED: 401,
    canbridge.RefusalReason.UNSUPPORTED: 400,
    canbridge.RefusalReason.AUDIT_UNAVAILABLE: 503,
    canbridge.RefusalReason.DEVICE_REFUSED: 409,  # the device refused in its present state (SDO abort)
    canbridge.RefusalReason.DEVICE_TIMEOUT: 504,  # the device behind the gateway did not answer
}

METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"})

STATUS_CODES = {
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


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json", headers=headers)
