"""Certificates, the client trust list, logins and roles.

Layout of the PKI folder (default ``<state_dir>/opcua/pki``)::

    own/cert.der        the server's application instance certificate (created on first start)
    private/key.pem     its private key (mode 0600)
    trusted/            client certificates (DER or PEM) the server accepts
    rejected/           client certificates that tried to connect and were refused;
                        an administrator approves one by moving it into trusted/
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
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

from canbridge_opcua._config import OpcUaConfig, Role, verify_password
from canbridge_opcua._nodes import nodeid, status

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


class TrustListValidator:
    """Checks client certificates against ``trusted/``; a refused one is copied into ``rejected/``.

    The trust list is read again for every new session, so approving a certificate (moving it from
    rejected/ to trusted/) takes effect without a restart.
    """

    def __init__(self, pki: Pki, trust_all: bool) -> None:
        self.pki = pki
        self.trust_all = trust_all
        self.rejected_count = 0

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
            self._keep_rejected(cert)
            log.warning(
                "opcua: refused client certificate %s of %r (%s); to trust it, move it from %s to %s",
                thumbprint(cert),
                app.ApplicationUri,
                status(e.code).name,
                self.pki.rejected,
                self.pki.trusted,
            )
            raise

    def _keep_rejected(self, cert: x509.Certificate) -> None:
        path = self.pki.rejected / _cert_file_name(cert)
        try:
            if not path.exists():
                path.write_bytes(cert.public_bytes(Encoding.DER))
        except OSError as e:
            log.warning("opcua: cannot keep the rejected certificate in %s: %s", path, e)


class UserManager:
    """Username/password logins from the configuration; anonymous sessions only when allowed."""

    def __init__(self, cfg: OpcUaConfig) -> None:
        self.cfg = cfg
        self.failed_logins = 0

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:  # anonymous (X509 identity tokens are not offered)
            if self.cfg.allow_anonymous:
                return RoleUser(role=UserRole.Anonymous, name=None, opc_role=self.cfg.anonymous_role)
            return None
        user = self.cfg.users.get(username)
        if user is None or password is None or not verify_password(password, user.password_hash):
            self.failed_logins += 1
            log.warning("opcua: login refused for user %r", username)
            return None
        # Never UserRole.Admin: asyncua lets admins bypass access levels and add nodes.
        return RoleUser(role=UserRole.User, name=username, opc_role=user.role)


class Ruleset(SimpleRoleRuleset):  # type: ignore[misc]
    """Every session that got past login may use the ordinary services; nobody may change the
    address space (AddNodes, DeleteReferences, ...), whatever its name."""

    def __init__(self) -> None:  # SimpleRoleRuleset's role table is not used: check_validity is ours
        self._allowed = frozenset(nodeid(t) for t in USER_TYPES)

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        return action_type_id in self._allowed


def role_of(user: Any) -> Role | None:
    return user.opc_role if isinstance(user, RoleUser) else None
