"""Configuration of the OPC UA plugin and the password hashes it stores.

Everything that would make the server unusable or unsafe (a secure policy with no way to get a
certificate, an unknown role, a listen address that is not an ``opc.tcp://host:port`` URL, a
password stored in clear) is a validation error here, not a warning at run time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from canbridge import Strict

Role = Literal["read", "operator"]
PolicyName = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
ModeName = Literal["Sign", "SignAndEncrypt"]

SECURE_MODES: tuple[ModeName, ...] = ("Sign", "SignAndEncrypt")
SECURE_POLICIES: tuple[PolicyName, ...] = ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")

# --- password hashes ------------------------------------------------------------------------------

HASH_SCHEME = "pbkdf2_sha256"
HASH_ITERATIONS = 600_000  # OWASP 2023 figure for PBKDF2-HMAC-SHA256
_HASH_RE = re.compile(r"^pbkdf2_sha256\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    """The one place a password is hashed (tests count the calls)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def hash_password(password: str, iterations: int = HASH_ITERATIONS, salt: bytes | None = None) -> str:
    """A hash to put in ``users: {name: {password_hash: ...}}`` (what ``canbridge opcua-passwd`` prints)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _pbkdf2(password, salt, iterations)
    b64 = base64.b64encode
    return f"{HASH_SCHEME}${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def hash_iterations(stored: str) -> int:
    m = _HASH_RE.match(stored)
    return int(m.group(1)) if m else HASH_ITERATIONS


def verify_password(password: str, stored: str) -> bool:
    """Check a password against a stored hash, in constant time. Blocking (PBKDF2): call it off the
    event loop."""
    m = _HASH_RE.match(stored)
    if m is None:
        return False
    iterations = int(m.group(1))
    salt = base64.b64decode(m.group(2))
    expected = base64.b64decode(m.group(3))
    digest = _pbkdf2(password, salt, iterations)
    return hmac.compare_digest(digest, expected)


# --- configuration models -------------------------------------------------------------------------


class UserConfig(Strict):
    """One username/password login."""

    password_hash: str = Field(description="pbkdf2_sha256$<iterations>$<salt>$<hash>, from `canbridge opcua-passwd`")
    role: Role = Field("read", description="read: browse, read, subscribe; operator: also write and SendFrame")

    @field_validator("password_hash")
    @classmethod
    def _hash_format(cls, v: str) -> str:
        m = _HASH_RE.match(v)
        if m is None:
            raise ValueError(
                "password_hash must be 'pbkdf2_sha256$<iterations>$<salt>$<hash>' "
                "(generate one with `canbridge opcua-passwd`); clear-text passwords are not accepted"
            )
        if int(m.group(1)) < 10_000:
            raise ValueError("password_hash uses fewer than 10000 PBKDF2 iterations")
        return v


class OpcUaLimits(Strict):
    """``plugins.opcua.limits``: what one peer can make the server hold before and after login.

    The transport limits apply before a session exists (they protect the bridge from anyone who can
    reach the port); the session limits bound what one login can take.
    """

    max_chunk_size: int = Field(
        65535, ge=8192, le=16 * 1024 * 1024,
        description="bytes of one message chunk (receive buffer); a header announcing more is refused "
        "before its body is read and the connection closed",
    )
    max_message_size: int = Field(
        4 * 1024 * 1024, ge=65536, description="bytes of one request (all its chunks)"
    )
    max_chunk_count: int = Field(128, ge=1, description="chunks of one request")
    max_queued_messages: int = Field(
        32, ge=4, description="received chunks of one connection waiting to be processed; more closes it"
    )
    max_connections: int = Field(100, ge=1, description="TCP connections in total")
    max_connections_per_address: int = Field(20, ge=1, description="TCP connections from one IP address")
    max_pending_per_address: int = Field(
        8, ge=1,
        description="connections of one IP address that have not activated a session yet; the oldest is "
        "closed when a new one comes",
    )
    handshake_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds a connection may take from connect to ActivateSession"
    )
    max_subscriptions: int = Field(500, ge=1, description="subscriptions in total")
    max_subscriptions_per_session: int = Field(10, ge=1)
    max_subscriptions_per_user: int = Field(
        50, ge=1, description="over all sessions of one user (anonymous: of one IP address)"
    )
    max_monitored_items_per_session: int = Field(20_000, ge=1)
    max_monitored_items_per_user: int = Field(50_000, ge=1, description="over all sessions of one user")
    login_concurrency: int = Field(2, ge=1, le=64, description="password checks running at once (threads)")
    login_failures_per_window: int = Field(
        10, ge=1, description="failed logins of one IP address per window; more are refused without a check"
    )
    login_failure_window: float = Field(60.0, gt=0, description="seconds")
    login_backoff_base: float = Field(
        0.1, ge=0, description="seconds the answer to a failed login waits, doubled per failure in the window"
    )
    login_backoff_max: float = Field(2.0, ge=0, description="upper bound of that wait")
    max_rejected_certificates: int = Field(100, ge=0, description="files kept in pki/rejected/ (oldest removed)")
    max_rejected_certificate_size: int = Field(
        16384, ge=1024, description="bytes; larger refused certificates are not written to pki/rejected/"
    )
    refusal_log_interval: float = Field(
        60.0, gt=0, description="seconds between log lines about refused input from one IP address"
    )

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaLimits:
        if self.max_message_size < self.max_chunk_size:
            raise ValueError("max_message_size is smaller than max_chunk_size")
        if self.max_connections_per_address > self.max_connections:
            raise ValueError("max_connections_per_address is larger than max_connections")
        return self


class OpcUaConfig(Strict):
    """``plugins: {opcua: {...}}``."""

    listen: str = Field("opc.tcp://127.0.0.1:4840", description="opc.tcp://<address>:<port>; port 0: any free port")
    namespace_uri: str = Field("urn:canbridge", description="namespace of the signal nodes")
    application_uri: str = Field("urn:canbridge:opcua", description="ApplicationUri, also in the certificate")
    server_name: str = Field("canbridge OPC UA server")
    security_policies: list[PolicyName] = Field(
        default_factory=lambda: list(SECURE_POLICIES),
        min_length=1,
        description="None is only offered when listed here",
    )
    security_modes: list[ModeName] = Field(
        default_factory=lambda: list(SECURE_MODES), min_length=1, description="for the secure policies"
    )
    certificate: Path | None = Field(
        None, description="application instance certificate (DER or PEM); default: generated in the state dir"
    )
    private_key: Path | None = Field(None, description="its private key (PEM); required with 'certificate'")
    generate_certificate: bool = Field(True, description="create a self-signed certificate on first start")
    pki_dir: Path | None = Field(
        None, description="trusted/, rejected/ and own/ folders; default <state_dir>/opcua/pki"
    )
    hostname: str | None = Field(None, description="DNS name put in a generated certificate; default: this host")
    trust_all_clients: bool = Field(
        False, description="accept any client certificate (testing only): no trust list check"
    )
    allow_anonymous: bool = Field(False, description="accept sessions without a login")
    anonymous_role: Role = Field("read", description="role of anonymous sessions when allowed")
    users: dict[str, UserConfig] = Field(default_factory=dict, description="username -> hash and role")
    # 5 ms: the bridge's share of a value's latency stays small beside the publishing interval (bench_e2e)
    update_interval: float = Field(0.005, gt=0, le=10, description="seconds between value batches from the bridge")
    min_publishing_interval_ms: float = Field(
        50.0, ge=0, description="requested publishing intervals below this are revised up"
    )
    diagnostics_interval: float = Field(1.0, gt=0, description="seconds between bus diagnostics updates")
    dm1_stale_after_s: float = Field(
        3.0, gt=0, description="a J1939 source with no DM1 for this long: its trouble code values turn uncertain"
    )
    max_monitored_item_queue: int = Field(100, ge=1, description="upper bound of a monitored item's queue")
    allow_cleartext_passwords: bool = Field(
        False,
        description="accept a UserNameIdentityToken whose password is neither encrypted itself nor sent "
        "over a SignAndEncrypt channel (anyone on the network can read it)",
    )
    limits: OpcUaLimits = Field(default_factory=OpcUaLimits, description="resource limits, see docs/opcua.md")

    @field_validator("listen")
    @classmethod
    def _listen_url(cls, v: str) -> str:
        split = urlsplit(v)
        if split.scheme != "opc.tcp":
            raise ValueError(f"listen must be an opc.tcp://<address>:<port> URL, not {v!r}")
        try:
            port = split.port
        except ValueError:
            raise ValueError(f"listen {v!r}: the port is not a number from 0 to 65535") from None
        if port is None:
            raise ValueError(f"listen {v!r} has no port (opc.tcp://127.0.0.1:4840)")
        host = split.hostname
        if not host:
            raise ValueError(f"listen {v!r} has no address")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?", host):
                raise ValueError(f"listen {v!r}: {host!r} is neither an IP address nor a host name") from None
        return v

    @field_validator("users")
    @classmethod
    def _user_names(cls, v: dict[str, UserConfig]) -> dict[str, UserConfig]:
        for name in v:
            if not name or name.strip() != name:
                raise ValueError(f"user name {name!r} is empty or has surrounding blanks")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaConfig:
        secure = [p for p in self.security_policies if p != "None"]
        if len(set(self.security_policies)) != len(self.security_policies):
            raise ValueError("a security policy is listed twice")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("give both 'certificate' and 'private_key', or neither")
        if secure and self.certificate is None and not self.generate_certificate:
            raise ValueError(
                f"security policies {', '.join(secure)} need a certificate: set 'certificate' and "
                "'private_key', or 'generate_certificate: true'"
            )
        if not self.users and not self.allow_anonymous:
            raise ValueError("no one can log in: add 'users' or set 'allow_anonymous: true'")
        if self.users and not secure and not self.allow_cleartext_passwords:
            raise ValueError(
                "users cannot log in: with only the None policy their passwords would travel in clear text; "
                "add a secure policy (its certificate also encrypts passwords sent on the None endpoint) or "
                "set 'allow_cleartext_passwords: true'"
            )
        return self

    def listen_endpoints(self) -> list[tuple[str, str, int]]:
        """``(key, host, port)`` it listens on (``canbridge check`` tests that the port is free)."""
        return [("listen", self.host, self.port)]

    @property
    def host(self) -> str:
        host = urlsplit(self.listen).hostname
        assert host is not None
        return host

    @property
    def port(self) -> int:
        port = urlsplit(self.listen).port
        assert port is not None
        return port
