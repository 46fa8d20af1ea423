"""Certificates, the client trust list, logins and roles.

Layout of the PKI folder (default ``<state_dir>/opcua/pki``)::

    own/cert.der        the server's application instance certificate (created on first start)
    private/key.pem     its private key (mode 0600)
    trusted/            client certificates (DER or PEM) the server accepts
    rejected/           client certificates that tried to connect and were refused (at most
                        limits.max_rejected_certificates, oldest removed, none over 16 KiB);
                        an administrator approves one by moving it into trusted/
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from canbridge_opcua.asyncua_compat import checked_login, current_processor, peer_host
from canbridge_opcua.config import OpcUaConfig, Role, hash_iterations, hash_password, verify_password
from canbridge_opcua.nodes import nodeid, status

log = logging.getLogger("canbridge.opcua")


@dataclass
class RoleUser(User):
    """An asyncua user with the canbridge role it logged in with."""

    opc_role: Role = "read"


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def cert(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key(self) -> Path:
        return self.root / "private" / "key.pem"

    @property
    def trusted(self) -> Path:
        return self.root / "trusted"

    @property
    def rejected(self) -> Path:
        return self.root / "rejected"

    @property
    def crl(self) -> Path:
        return self.root / "crl"

    def make_dirs(self) -> None:
        for d in (self.root / "own", self.root / "private", self.trusted, self.rejected, self.crl):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "private", 0o700)


async def ensure_certificate(cfg: OpcUaConfig, pki: Pki, base: Path) -> tuple[Path, Path]:
    """The certificate and key to load: the configured ones (relative to ``base``, the configuration
    file's folder), or a self-signed pair kept in the PKI folder (created on first start, renewed when
    it no longer matches the URI or host, or has expired)."""
    if cfg.certificate is not None and cfg.private_key is not None:
        cert, key = base / cfg.certificate, base / cfg.private_key
        for p, what in ((cert, "certificate"), (key, "private_key")):
            if not p.is_file():
                raise FileNotFoundError(f"opcua {what} {p} does not exist")
        return cert, key
    host = cfg.hostname or socket.gethostname()
    created = await setup_self_signed_certificate(
        pki.key,
        pki.cert,
        cfg.application_uri,
        host,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "canbridge", "organizationName": "canbridge"},
    )
    os.chmod(pki.key, 0o600)
    if created:
        log.info("opcua: created the application instance certificate %s", pki.cert)
    return pki.cert, pki.key


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(Encoding.DER)).hexdigest()


def _cert_file_name(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else "client"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cn)[:40] or "client"
    return f"{safe}[{thumbprint(cert)}].der"


def certificate_uris(cert: x509.Certificate) -> list[str]:
    """The URIs in a certificate's subjectAltName (where OPC UA puts the ApplicationUri)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


class TrustListValidator:
    """Checks client certificates against ``trusted/``; a refused one is copied into ``rejected/``.

    The trust list is read again for every new session, so approving a certificate (moving it from
    rejected/ to trusted/) takes effect without a restart. rejected/ keeps at most
    ``max_rejected`` files (the oldest go) and no certificate larger than ``max_size`` bytes.
    """

    def __init__(self, pki: Pki, trust_all: bool, max_rejected: int = 100, max_size: int = 16384,
                 peer_log: PeerLog | None = None) -> None:
        self.pki = pki
        self.trust_all = trust_all
        self.max_rejected = max_rejected
        self.max_size = max_size
        self.rejected_count = 0
        self.peer_log = peer_log

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        options = CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.URI
        store: TrustStore | None = None
        empty = False
        if not self.trust_all:
            store = TrustStore([self.pki.trusted], [self.pki.crl])
            try:
                await store.load()
                options |= CertificateValidatorOptions.TRUSTED | CertificateValidatorOptions.REVOKED
            except ValueError:  # cryptography refuses an empty store: nothing is trusted yet
                empty = True
                store = None
        try:
            await CertificateValidator(options, store).validate(cert, app)
            if empty:
                raise ServiceError(StatusCodes.BadCertificateUntrusted)
        except ServiceError as e:
            self.rejected_count += 1
            kept = await asyncio.to_thread(self._keep_rejected, cert)
            code = status(e.code).name
            uris = certificate_uris(cert)
            if e.code == StatusCodes.BadCertificateUriInvalid:
                advice = (
                    f"its ApplicationUri {', '.join(uris) or '(none)'} does not match the ApplicationUri "
                    f"{app.ApplicationUri!r} the client sent in CreateSession; trusting the certificate will "
                    "not fix this: make the client's ApplicationUri and the URI in its certificate the same "
                    "(usually: create the client certificate again with the client's ApplicationUri)"
                )
            elif e.code in (StatusCodes.BadCertificateTimeInvalid, StatusCodes.BadCertificateIssuerTimeInvalid):
                advice = "it is expired or not yet valid; create a new client certificate"
            elif kept is not None:
                advice = f"to trust it, move {kept} to {self.pki.trusted}/"
            else:
                advice = f"to trust it, copy the client's certificate into {self.pki.trusted}/"
            line = f"client certificate {thumbprint(cert)} of {app.ApplicationUri!r} ({code}): {advice}"
            if self.peer_log is not None:
                self.peer_log.refused(_peer_of_current(), line)
            else:
                log.warning("opcua: refused %s", line)
            raise

    def _keep_rejected(self, cert: x509.Certificate) -> Path | None:
        der = cert.public_bytes(Encoding.DER)
        if self.max_rejected <= 0:
            return None
        if len(der) > self.max_size:
            log.info("opcua: not keeping a rejected certificate of %d bytes (max_rejected_certificate_size %d)",
                     len(der), self.max_size)
            return None
        path = self.pki.rejected / _cert_file_name(cert)
        try:
            if not path.exists():
                path.write_bytes(der)
            files = sorted((p for p in self.pki.rejected.iterdir() if p.is_file()),
                           key=lambda p: (p.stat().st_mtime_ns, p.name))
            for old in files[: max(0, len(files) - self.max_rejected)]:
                if old != path:
                    old.unlink(missing_ok=True)
        except OSError as e:
            log.warning("opcua: cannot keep the rejected certificate in %s: %s", path, e)
            return None
        return path


def _peer_of_current() -> Any:
    proc = current_processor()
    return proc.name if proc is not None else "a client"


class PeerLog:
    """One log line per peer address and interval about refused input; the rest is counted."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.refusals = 0
        self._last: dict[str, tuple[float, int]] = {}  # host -> (time of the last line, suppressed since)

    def refused(self, peer: Any, what: str) -> None:
        self.refusals += 1
        host = peer_host(peer)
        now = time.monotonic()
        last = self._last.get(host)
        if last is not None and now - last[0] < self.interval:
            self._last[host] = (last[0], last[1] + 1)
            return
        if len(self._last) > 10_000:  # many addresses: forget the quiet ones
            self._last = {h: v for h, v in self._last.items() if now - v[0] < self.interval}
        more = f" ({last[1]} more refused since the last line)" if last and last[1] else ""
        log.warning("opcua: refused %s: %s%s", host, what, more)
        self._last[host] = (now, 0)


@dataclass
class _Failures:
    times: deque[float]


class UserManager:
    """Username/password logins from the configuration; anonymous sessions only when allowed.

    Passwords are checked by :meth:`authenticate` in a thread (PBKDF2 takes 0.1 s or more and must
    not stall the event loop), at most ``login_concurrency`` at once, against a dummy hash for unknown
    users (the same work: no user enumeration by timing). After a failure the answer waits (doubling
    per failure of that address within the window); past ``login_failures_per_window`` an address is
    refused at once, without hashing, until the window has passed.
    asyncua then asks :meth:`get_user` synchronously, which only looks the checked result up.
    """

    def __init__(self, cfg: OpcUaConfig, peer_log: PeerLog | None = None) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.failed_logins = 0
        self.quick_refusals = 0  # refused without hashing (too many failures of that address)
        self.backoff_delays: list[float] = []  # the waits applied, latest last (bounded)
        self.peer_log = peer_log or PeerLog(cfg.limits.refusal_log_interval)
        self._sem: asyncio.Semaphore | None = None
        self._failures: dict[str, _Failures] = {}
        iterations = max((hash_iterations(u.password_hash) for u in cfg.users.values()), default=10_000)
        self._dummy = hash_password(secrets.token_urlsafe(16), iterations=iterations)

    async def authenticate(self, peer: Any, username: str, password: str | None) -> RoleUser | None:
        host = peer_host(peer)
        lim = self.limits
        now = time.monotonic()
        fails = self._failures.get(host)
        if fails is not None:
            while fails.times and now - fails.times[0] > lim.login_failure_window:
                fails.times.popleft()
            if len(fails.times) >= lim.login_failures_per_window:
                self.failed_logins += 1
                self.quick_refusals += 1
                self.peer_log.refused(peer, f"login of {username!r} refused without a check: "
                                      f"{len(fails.times)} failed logins within {lim.login_failure_window:g} s")
                return None
        if not self.cfg.users:  # no user names are offered: nothing to check, nothing to enumerate
            self.failed_logins += 1
            return None
        user = self.cfg.users.get(username)
        stored = user.password_hash if user is not None else self._dummy
        if self._sem is None:
            self._sem = asyncio.Semaphore(lim.login_concurrency)
        async with self._sem:
            ok = await asyncio.to_thread(verify_password, password or "", stored)
        if ok and user is not None:
            self._failures.pop(host, None)
            return RoleUser(role=UserRole.User, name=username, opc_role=user.role)
        self.failed_logins += 1
        if fails is None:
            if len(self._failures) > 10_000:
                self._failures = {h: f for h, f in self._failures.items()
                                  if f.times and now - f.times[-1] <= lim.login_failure_window}
            fails = self._failures[host] = _Failures(deque())
        fails.times.append(time.monotonic())
        delay = min(lim.login_backoff_base * 2 ** (len(fails.times) - 1), lim.login_backoff_max)
        self.peer_log.refused(peer, f"login refused for user {username!r}")
        self.backoff_delays = [*self.backoff_delays[-99:], delay]
        if delay > 0:
            await asyncio.sleep(delay)
        return None

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:  # anonymous (X509 identity tokens are not offered)
            if self.cfg.allow_anonymous:
                return RoleUser(role=UserRole.Anonymous, name=None, opc_role=self.cfg.anonymous_role)
            return None
        checked = checked_login(username, password)
        if checked is None:
            # not verified beforehand (cannot happen through canbridge's processor): refused, never
            # a password check on the event loop
            log.warning("opcua: login of %r refused: it was not verified before activation", username)
            return None
        if checked.status is not None:
            raise ServiceError(checked.status)
        # Never UserRole.Admin: asyncua lets admins bypass access levels and add nodes.
        return checked.user  # type: ignore[no-any-return]


class Ruleset(SimpleRoleRuleset):
    """Every session that got past login may use the ordinary services; nobody may change the
    address space (AddNodes, DeleteReferences, ...), whatever its name."""

    def __init__(self) -> None:  # SimpleRoleRuleset's role table is not used: check_validity is ours
        self._allowed = frozenset(nodeid(t) for t in USER_TYPES)

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        return action_type_id in self._allowed


def role_of(user: Any) -> Role | None:
    return user.opc_role if isinstance(user, RoleUser) else None
