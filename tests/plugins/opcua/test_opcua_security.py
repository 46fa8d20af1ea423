"""Secure endpoints, the client trust list (rejected/ -> trusted/), and logins."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaStatusCodeError
from canbridge_opcua.config import OpcUaConfig
from canbridge_opcua.service import OpcUaService

from canbridge.testing import FakeBridge
from tests.plugins.opcua.conftest import (
    OPERATOR,
    ClientCert,
    make_client_cert,
    ns_index,
    running,
    small_table,
    status_name,
)
from tests.plugins.opcua.uatypes import nid

Cfg = Callable[..., dict[str, Any]]
SETPOINT = "demo.MotorCommand.SpeedSetpoint"


async def secure_client(
    url: str,
    cert: ClientCert,
    user: tuple[str, str] | None,
    policy: str = "Basic256Sha256",
    mode: str = "SignAndEncrypt",
) -> Client:
    client = Client(url, timeout=10)
    client.application_uri = cert.uri
    if user:
        client.set_user(user[0])
        client.set_password(user[1])
    asyncua_name = policy.replace("_", "")  # asyncua spells them Aes128Sha256RsaOaep
    await client.set_security_string(f"{asyncua_name},{mode},{cert.cert},{cert.key}")
    return client


def trust(cert: ClientCert, pki: Path) -> None:
    (pki / "trusted").mkdir(parents=True, exist_ok=True)
    shutil.copy(cert.cert, pki / "trusted" / cert.cert.name)


async def test_endpoints_offer_only_configured_policies(opcua_config: Cfg, pki_seed: Path) -> None:
    cfg = opcua_config(security_policies=["Basic256Sha256", "Aes256_Sha256_RsaPss"], allow_anonymous=False)
    async with running(cfg, seed=pki_seed) as (_h, _svc, url):
        client = Client(url, timeout=10)
        endpoints = await client.connect_and_get_server_endpoints()
        offered = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode.name) for e in endpoints}
        assert offered == {
            ("Basic256Sha256", "Sign"),
            ("Basic256Sha256", "SignAndEncrypt"),
            ("Aes256_Sha256_RsaPss", "Sign"),
            ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
        }
        for e in endpoints:
            assert e.EndpointUrl == url
            assert [t.TokenType for t in e.UserIdentityTokens] == [ua.UserTokenType.UserName]  # no anonymous
        # no None endpoint: a plain connection is refused
        with pytest.raises(Exception):  # noqa: B017 - asyncua raises different errors per version
            async with Client(url, timeout=5) as c:
                await c.nodes.root.read_browse_name()


SECURE = [
    ("Basic256Sha256", "SignAndEncrypt"),
    ("Basic256Sha256", "Sign"),
    ("Aes128_Sha256_RsaOaep", "Sign"),
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
]


async def test_secure_session_with_username_writes(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, client_cert: ClientCert
) -> None:
    trust(client_cert, pki_dir)
    async with running(opcua_config(), seed=pki_seed) as (h, _svc, url):
        for i, (policy, mode) in enumerate(SECURE):
            client = await secure_client(url, client_cert, OPERATOR, policy, mode)
            async with client:
                idx = await ns_index(client)
                node = client.get_node(nid(SETPOINT, idx))
                await node.write_value(ua.DataValue(ua.Variant(2500 + i, ua.VariantType.UInt16)))
                assert h.bridge.read(SETPOINT).value == 2500 + i, (policy, mode)
        assert not any((pki_dir / "rejected").iterdir())


async def test_secure_session_wrong_password(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, client_cert: ClientCert
) -> None:
    trust(client_cert, pki_dir)
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url):
        client = await secure_client(url, client_cert, (OPERATOR[0], "not-it"))
        with pytest.raises(UaStatusCodeError) as err:
            async with client:
                pass
        assert status_name(err.value) == "BadUserAccessDenied"


async def test_untrusted_certificate_is_rejected_then_approved(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = make_client_cert(tmp_path / "stranger", "stranger")
    async with running(opcua_config(), seed=pki_seed) as (_h, svc, url):
        client = await secure_client(url, stranger, OPERATOR)
        with pytest.raises(UaStatusCodeError) as err:
            async with client:
                pass
        assert status_name(err.value) == "BadCertificateUntrusted"
        rejected = list((pki_dir / "rejected").iterdir())
        assert len(rejected) == 1 and rejected[0].suffix == ".der"
        assert any(f"to trust it, move {rejected[0]} to {pki_dir / 'trusted'}/" in r.getMessage()
                   for r in caplog.records)
        assert rejected[0].read_bytes() == stranger.cert.read_bytes()
        assert svc.validator.rejected_count == 1

        # an administrator approves it: moved into trusted/, effective without a restart
        rejected[0].rename(pki_dir / "trusted" / rejected[0].name)
        client = await secure_client(url, stranger, OPERATOR)
        async with client:
            assert await ns_index(client) > 0


async def test_certificate_with_wrong_uri_is_rejected(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, client_cert: ClientCert, caplog: pytest.LogCaptureFixture
) -> None:
    trust(client_cert, pki_dir)
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url):
        client = await secure_client(url, client_cert, OPERATOR)
        client.application_uri = "urn:someone:else"
        with pytest.raises(UaStatusCodeError) as err:
            async with client:
                pass
        assert status_name(err.value) == "BadCertificateUriInvalid"
    # the log says what is wrong, not "move it to trusted" (it is trusted already)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "canbridge.opcua" and "UriInvalid" in r.getMessage()]
    assert f"its ApplicationUri {client_cert.uri} does not match the ApplicationUri 'urn:someone:else'" in line
    assert "trusting the certificate will not fix this" in line and "move" not in line


async def test_start_names_the_pki_folders(opcua_config: Cfg, pki_seed: Path, pki_dir: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="canbridge.opcua")
    async with running(opcua_config(), seed=pki_seed):
        pass
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("opcua: PKI ")]
    assert f"client certificates in {pki_dir}/trusted/" in line and f"kept in {pki_dir}/rejected/" in line


async def test_none_policy_ignores_client_certificate(
    opcua_config: Cfg, pki_seed: Path, pki_dir: Path, tmp_path: Path
) -> None:
    """With SecurityPolicy None (only when configured) the client's certificate is not checked."""
    stranger = make_client_cert(tmp_path / "stranger", "stranger")
    async with running(opcua_config(), seed=pki_seed) as (_h, _svc, url):
        client = Client(url, timeout=10)
        client.application_uri = stranger.uri
        # node-opcua and others send their certificate in CreateSession even on a None channel
        client.security_policy.host_certificate = stranger.cert.read_bytes()
        client.set_user(OPERATOR[0])
        client.set_password(OPERATOR[1])
        async with client:
            assert await ns_index(client) > 0
        assert not any((pki_dir / "rejected").iterdir())


async def test_generated_certificate_is_kept(opcua_config: Cfg, tmp_path: Path) -> None:
    pki = tmp_path / "fresh-pki"
    async with running(opcua_config(pki_dir=str(pki))) as (_h, _svc, url):
        cert = (pki / "own" / "cert.der").read_bytes()
        assert (pki / "private" / "key.pem").stat().st_mode & 0o077 == 0
        endpoints = await Client(url, timeout=10).connect_and_get_server_endpoints()
        assert any(e.ServerCertificate == cert for e in endpoints)
        assert (pki / "trusted").is_dir() and (pki / "rejected").is_dir()
    async with running(opcua_config(pki_dir=str(pki))):
        assert (pki / "own" / "cert.der").read_bytes() == cert  # not regenerated on restart


async def test_configured_certificate_is_used(opcua_config: Cfg, pki_seed: Path, tmp_path: Path) -> None:
    async with running(opcua_config(), seed=pki_seed):
        pass  # makes sure the seed holds a certificate
    cert, key = pki_seed / "own" / "cert.der", pki_seed / "private" / "key.pem"
    pki = tmp_path / "other-pki"
    cfg = opcua_config(certificate=str(cert), private_key=str(key), generate_certificate=False, pki_dir=str(pki))
    async with running(cfg) as (_h, _svc, url):
        endpoints = await Client(url, timeout=10).connect_and_get_server_endpoints()
        assert {e.ServerCertificate for e in endpoints if e.SecurityMode != ua.MessageSecurityMode.None_} == {
            cert.read_bytes()
        }
        assert not (pki / "own" / "cert.der").exists()  # nothing generated


async def test_missing_certificate_file_stops_start(opcua_config: Cfg, tmp_path: Path) -> None:
    # against a fake bridge: the harness does not unwind a half-started bridge
    cfg = OpcUaConfig.model_validate(
        opcua_config(certificate=str(tmp_path / "nope.der"), private_key=str(tmp_path / "nope.pem"))
    )
    svc = OpcUaService(FakeBridge(small_table(), state_dir=tmp_path), cfg)
    with pytest.raises(FileNotFoundError, match=r"nope\.der does not exist"):
        await svc.start()
    await svc.stop()
