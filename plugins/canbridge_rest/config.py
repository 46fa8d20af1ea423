"""Configuration of the REST plugin (``plugins: {rest: {...}}``)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import ssl
from enum import StrEnum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from canbridge import Strict


class Role(StrEnum):
    """What a bearer token may do. Each role includes the ones before it."""

    READ = "read"  # signals, buses, streams, metrics
    WRITE = "write"  # PUT /api/v1/signals/{name}
    ADMIN = "admin"  # POST /api/v1/buses/{bus}/frames (raw frames)

    @property
    def rank(self) -> int:
        return _RANK[self]

    def includes(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as ``token_sha256`` expects (``canbridge-rest-token`` prints it)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenConfig(Strict):
    """One bearer token: give its SHA-256 (recommended) or, for tests and demos, the token itself."""

    name: str = Field(min_length=1, description="who holds the token; recorded in the audit log")
    role: Role = Field(Role.READ, description="read, write or admin (each includes the ones before)")
    token_sha256: str | None = Field(None, description="hex SHA-256 of the token")
    token: str | None = Field(None, min_length=16, description="the token in clear text (discouraged)")

    @field_validator("token_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v.lower()):
            raise ValueError("token_sha256 must be 64 hex digits (sha256sum of the token)")
        return v.lower() if v is not None else None

    @model_validator(mode="after")
    def _one(self) -> TokenConfig:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError(f"token {self.name!r}: give exactly one of 'token_sha256' or 'token'")
        return self

    @property
    def digest(self) -> str:
        return self.token_sha256 if self.token_sha256 is not None else hash_token(self.token or "")


class TlsConfig(Strict):
    """Serve HTTPS with this certificate chain and private key (PEM files)."""

    cert: Path = Field(description="certificate chain, PEM")
    key: Path = Field(description="private key, PEM (unencrypted)")

    @model_validator(mode="after")
    def _loadable(self) -> TlsConfig:
        for what, p in (("cert", self.cert), ("key", self.key)):
            if not p.is_file():
                raise ValueError(f"tls.{what}: {p} is not a readable file")
        self.context()  # fail at configuration time, not when the first client connects
        return self

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except ssl.SSLError as e:
            raise ValueError(f"tls: cannot use {self.cert} with {self.key}: {e.reason or e}") from None
        except OSError as e:
            raise ValueError(f"tls: cannot read {e.filename}: {e.strerror}") from None
        return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RestConfig(Strict):
    """The REST API, live streams, metrics and dashboard."""

    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 or :: for every interface")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one")
    tokens: list[TokenConfig] = Field(default_factory=list, description="bearer tokens and their roles")
    anonymous_read: bool = Field(False, description="reads (and streams, metrics) need no token")
    anonymous_write: bool = Field(False, description="signal writes need no token (loopback only)")
    anonymous_admin: bool = Field(False, description="raw frames need no token (loopback only)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024, description="request body limit")
    max_json_depth: int = Field(
        32, ge=2, le=200, description="deepest nesting of arrays/objects a JSON body may have (400 beyond)"
    )
    auth_failures_burst: int = Field(
        10,
        ge=1,
        le=100_000,
        description="failed authentications one address (IPv6: one /64) may make at once before it is "
        "refused with 429",
    )
    auth_failures_per_minute: float = Field(
        6.0, gt=0, le=100_000, description="failed authentications per minute an address regains after the burst"
    )
    tls: TlsConfig | None = Field(None, description="serve HTTPS")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser, writes and WebSocket upgrades included "
        "('*' for any); the server's own origin is always allowed",
    )
    dashboard: bool = Field(True, description="serve the web dashboard at /")
    max_stream_clients: int = Field(100, ge=1, description="SSE and WebSocket clients at once")
    stream_interval_s: float = Field(0.1, ge=0.01, le=60, description="default batch interval of a stream")
    stream_write_timeout_s: float = Field(
        5.0, gt=0, le=300, description="a stream client that does not read for this long is dropped"
    )
    stream_heartbeat_s: float = Field(15.0, gt=0, le=300, description="keep-alive comment interval (SSE)")
    stream_frames_maxlen: int = Field(1000, ge=10, le=100_000, description="raw frames buffered per client")
    shutdown_timeout_s: float = Field(3.0, gt=0, le=60, description="how long stop() waits for requests")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if o != "*" and not re.match(r"^https?://[^/\s]+$", o):
                raise ValueError(f"CORS origin {o!r} must look like https://host[:port] (no path) or '*'")
        return v

    @field_validator("tokens")
    @classmethod
    def _unique(cls, v: list[TokenConfig]) -> list[TokenConfig]:
        digests = [t.digest for t in v]
        if len(set(digests)) != len(digests):
            raise ValueError("two tokens are the same")
        return v

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> RestConfig:
        # Anyone who reaches the port could drive the CAN bus: never allow that on a network address.
        if (self.anonymous_write or self.anonymous_admin) and not is_loopback(self.host):
            raise ValueError(
                f"anonymous_write/anonymous_admin are only allowed on a loopback host, not {self.host!r}; "
                "configure tokens with the write or admin role instead"
            )
        return self

    def listen_endpoints(self) -> list[tuple[str, str, int]]:
        """``(key, host, port)`` it listens on (``canbridge check`` tests that the port is free)."""
        return [("port", self.host, self.port)]

    def anonymous_role(self) -> Role | None:
        if self.anonymous_admin:
            return Role.ADMIN
        if self.anonymous_write:
            return Role.WRITE
        if self.anonymous_read:
            return Role.READ
        return None
