"""What the REST service checks before a request reaches a handler: failed-authentication rate per
address, cross-origin state-changing requests (CSRF, cross-site WebSocket hijacking, DNS rebinding)
and the JSON body's shape (depth, duplicate keys, encoding)."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from canbridge_rest.config import RestConfig, is_loopback

log = logging.getLogger("canbridge.rest")

# --- failed authentication ------------------------------------------------------------------------


def peer_key(address: str | None) -> str:
    """The unit of the limit: an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class _Peer:
    tokens: float
    at: float  # monotonic time of the last refill
    refused: int = 0  # requests refused (429) since the last log line
    logged: float = -math.inf


class AuthLimiter:
    """A token bucket of failed authentications per peer: ``burst`` failures at once, then
    ``per_minute``. While a peer's bucket is empty every request of it that needs a token is refused
    (429) before any token is looked at. At most ``max_peers`` peers are remembered (oldest first out)."""

    LOG_EVERY_S = 60.0

    def __init__(
        self,
        burst: int,
        per_minute: float,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.max_peers = max_peers
        self.clock = clock
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self.failures = 0
        self.refused = 0

    def _peer(self, key: str, now: float) -> _Peer | None:
        p = self._peers.get(key)
        if p is not None:
            p.tokens = min(self.burst, p.tokens + (now - p.at) * self.rate)
            p.at = now
        return p

    def retry_after(self, address: str | None) -> float | None:
        """Seconds until this peer may try again, or None when it may try now."""
        key = peer_key(address)
        now = self.clock()
        p = self._peer(key, now)
        if p is None or p.tokens >= 1.0:
            return None
        self.refused += 1
        p.refused += 1
        if now - p.logged >= self.LOG_EVERY_S:  # one line per peer and minute, however hard it tries
            log.warning(
                "REST: refusing %s (429): too many failed authentications; %d request(s) refused since "
                "the last report",
                key,
                p.refused,
            )
            p.logged, p.refused = now, 0
        return (1.0 - p.tokens) / self.rate

    def failed(self, address: str | None) -> None:
        key = peer_key(address)
        now = self.clock()
        self.failures += 1
        p = self._peer(key, now)
        if p is None:
            p = _Peer(self.burst, now)
            self._peers[key] = p
            if len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        self._peers.move_to_end(key)
        p.tokens = max(0.0, p.tokens - 1.0)
        if p.tokens < 1.0 and now - p.logged >= self.LOG_EVERY_S:
            log.warning(
                "REST: %s failed authentication %d times in a row; its requests are refused for %.0f s",
                key,
                int(self.burst),
                (1.0 - p.tokens) / self.rate,
            )
            p.logged = now

    @property
    def limited_peers(self) -> int:
        now = self.clock()
        return sum(1 for p in self._peers.values() if min(self.burst, p.tokens + (now - p.at) * self.rate) < 1)


# --- cross-origin requests ------------------------------------------------------------------------

STATE_CHANGING = frozenset({"PUT", "POST", "PATCH", "DELETE"})
_SAME = frozenset({"same-origin", "none"})  # none: typed by the user, a bookmark


def origin_allowed(config: RestConfig, origin: str) -> bool:
    """An origin configured in ``cors_origins`` (``*`` allows every origin except ``null``)."""
    if origin == "null":
        return False
    return "*" in config.cors_origins or origin.lower() in (o.lower() for o in config.cors_origins)


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _trusted_host(host: str, config: RestConfig) -> bool:
    """A Host header that names this server, not a DNS name an attacker pointed at 127.0.0.1."""
    name = _hostname(host).lower()
    if is_loopback(name) or name == config.host.lower():
        return True
    return any(_hostname(o.split("://", 1)[-1]).lower() == name for o in config.cors_origins if o != "*")


def cross_origin_problem(
    method: str,
    headers: Any,
    scheme: str,
    host: str,
    config: RestConfig,
    anonymous: bool,
) -> str | None:
    """Why a state-changing request (or a WebSocket upgrade) must be refused as cross-origin, or None.

    Browsers say where a request comes from (``Origin``, ``Sec-Fetch-Site``); a client that sends
    neither (curl, a PLC, Node-RED) is not a browser and passes. ``anonymous``: no token is needed for
    this route, so a page reaching the server under another host name (DNS rebinding) is refused too.
    """
    origin = headers.get("Origin")
    site = headers.get("Sec-Fetch-Site")
    if origin is not None and origin_allowed(config, origin):
        return None  # explicitly allowed in the configuration
    if site is not None and site.lower() not in _SAME:
        return f"the browser says this {method} request is {site} (Sec-Fetch-Site); allow its origin in cors_origins"
    if origin is None:
        return None
    if origin == "null":
        return f"{method} from an opaque origin (Origin: null, e.g. a sandboxed frame or a file) is not allowed"
    own = f"{scheme}://{host}".lower()
    if origin.lower() != own:
        return f"{method} from origin {origin} is not allowed: this server is {own}; add it to cors_origins"
    if anonymous and not _trusted_host(host, config):
        return (
            f"{method} to host {host!r} without a token is refused: that name is not this server's "
            f"(DNS rebinding?); add the origin to cors_origins"
        )
    return None


def content_type_problem(headers: Any, content_type: str, charset: str | None) -> str | None:
    """State-changing requests must say application/json: a form or text/plain needs no CORS
    preflight, so a cross-site page could send it."""
    if headers.get("Content-Type") is None:
        return "the request has no Content-Type; send Content-Type: application/json"
    if content_type != "application/json":
        return f"Content-Type {content_type} is not accepted; send application/json"
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return f"charset {charset} is not accepted; JSON is UTF-8"
    return None


# --- JSON bodies ----------------------------------------------------------------------------------

_SPECIAL = re.compile(r'[\[\]{}"\\]')


class BodyError(ValueError):
    """The body is not acceptable JSON; the message says why."""


def _depth(text: str) -> int:
    """The deepest nesting of arrays/objects, outside strings. One pass over the special characters
    (linear: a pattern matching whole strings backtracks quadratically on unclosed ones)."""
    depth = deepest = 0
    in_string = False
    escaped_at = -1  # the character after a backslash inside a string
    for m in _SPECIAL.finditer(text):
        i = m.start()
        if i == escaped_at:
            continue
        c = m.group()
        if in_string:
            if c == "\\":
                escaped_at = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BodyError(f"the key {k!r} appears twice in one object")
        out[k] = v
    return out


def _reject_constant(c: str) -> Any:
    raise BodyError(f"the body is not valid JSON: {c} is not a number JSON allows")


def loads(raw: bytes, max_depth: int) -> Any:
    """Parse a request body as strict JSON: UTF-8, no NaN/Infinity literals, no duplicate keys, at most
    ``max_depth`` nested arrays/objects. Numbers are as Python reads them (1e999 is infinity: the write
    path refuses it with its reason)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(f"the body is not UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r})") from None
    depth = _depth(text)
    if depth > max_depth:
        raise BodyError(f"the body nests {depth} arrays/objects deep; at most {max_depth}")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(f"the body nests too deep; at most {max_depth}") from None
    except ValueError as e:  # JSONDecodeError, and int() beyond Python's digit limit
        raise BodyError(f"the body is not valid JSON: {e}") from None
