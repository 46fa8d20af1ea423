"""Fixtures of the OPC UA tests: a bridge with the opcua plugin, logins, and a client certificate."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from canbridge_opcua.config import hash_password
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import DNSName, UniformResourceIdentifier
from cryptography.x509.oid import ExtendedKeyUsageOID

from canbridge import SignalInfo
from canbridge.testing import BridgeHarness, signal_info

OPERATOR = ("op", "op-secret")
READER = ("viewer", "view-secret")
NS = "urn:canbridge"
CLIENT_URI = "urn:canbridge:test:client"


def small_table() -> list[SignalInfo]:
    """A table for tests on a :class:`canbridge.testing.FakeBridge`: every data type, unit and kind of choices."""
    return [
        signal_info("b0.Status.Speed", unit="rpm", minimum=-8000, maximum=8000, comment="Rotor speed."),
        signal_info("b0.Status.Temp", unit="degC", bit_length=8, offset=-40),
        signal_info("b0.Status.Current", unit="A", value_type=float, scale=0.1, minimum=-500, maximum=500),
        signal_info(
            "b0.Status.State", bit_length=4, maximum=3, choices={0: "Off", 1: "Ready", 2: "Running", 3: "Fault"}
        ),
        signal_info("b0.Status.Enabled", value_type=bool),
        signal_info("b0.Status.Gear", bit_length=8, choices={1: "Low", 4: "High"}),
        signal_info("b0.Status.Odd", unit="furlongs", bit_length=32),
        signal_info("b0.Command.Setpoint", frame_id=0x300, unit="rpm", maximum=6000, writable=True, max_write_rate=5.0),
        signal_info(
            "b0.Command.Mode",
            frame_id=0x300,
            bit_length=2,
            maximum=2,
            writable=True,
            choices={0: "Off", 1: "Speed", 2: "Torque"},
        ),
        signal_info("b0.Command.Enable", frame_id=0x300, value_type=bool, writable=True),
    ]


@dataclass(frozen=True)
class ClientCert:
    cert: Path
    key: Path
    uri: str


def make_client_cert(folder: Path, name: str, uri: str = CLIENT_URI) -> ClientCert:
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    cert = generate_self_signed_app_certificate(
        key,
        uri,
        {"commonName": name, "organizationName": "canbridge tests"},
        [UniformResourceIdentifier(uri), DNSName(socket.gethostname())],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    cpath, kpath = folder / f"{name}.der", folder / f"{name}.pem"
    cpath.write_bytes(cert.public_bytes(Encoding.DER))
    kpath.write_bytes(dump_private_key_as_pem(key))
    return ClientCert(cpath, kpath, uri)


@pytest.fixture(scope="session")
def users() -> dict[str, Any]:
    # 10,000 iterations (the minimum accepted) keep the logins fast in tests
    return {
        OPERATOR[0]: {"password_hash": hash_password(OPERATOR[1], iterations=10_000), "role": "operator"},
        READER[0]: {"password_hash": hash_password(READER[1], iterations=10_000), "role": "read"},
    }


@pytest.fixture(scope="session")
def pki_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One server certificate for the whole run: generating an RSA key per test is slow."""
    return tmp_path_factory.mktemp("opcua-pki-seed")


@pytest.fixture
def pki_dir(pki_seed: Path, tmp_path: Path) -> Path:
    """A fresh PKI folder per test (own trust list and rejected/), seeded with the shared server key."""
    d = tmp_path / "pki"
    for sub in ("own", "private"):
        src = pki_seed / sub
        if src.is_dir():
            (d / sub).mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                (d / sub / f.name).write_bytes(f.read_bytes())
    return d


@pytest.fixture(scope="session")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> ClientCert:
    return make_client_cert(tmp_path_factory.mktemp("opcua-client"), "trusted-client")


@pytest.fixture
def opcua_config(users: dict[str, Any], pki_dir: Path) -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "listen": "opc.tcp://127.0.0.1:0",
            "security_policies": ["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"],
            "allow_anonymous": True,
            "anonymous_role": "read",
            "users": users,
            "pki_dir": str(pki_dir),
            "update_interval": 0.02,
        }
        cfg.update(overrides)
        return cfg

    return make


@contextlib.asynccontextmanager
async def running(
    cfg: dict[str, Any], simulate: bool = False, seed: Path | None = None
) -> AsyncIterator[tuple[BridgeHarness, Any, str]]:
    async with BridgeHarness(plugins={"opcua": cfg}, simulate=simulate) as h:
        svc = h.service("opcua")
        if seed is not None:  # keep the generated server key for the next tests
            pki = Path(cfg["pki_dir"])
            for sub in ("own", "private"):
                (seed / sub).mkdir(exist_ok=True)
                for f in (pki / sub).iterdir():
                    if not (seed / sub / f.name).exists():
                        (seed / sub / f.name).write_bytes(f.read_bytes())
        yield h, svc, svc.endpoints()[0]


@contextlib.asynccontextmanager
async def connect(url: str, user: tuple[str, str] | None = None, security: str | None = None) -> AsyncIterator[Client]:
    client = Client(url, timeout=10)
    if user is not None:
        client.set_user(user[0])
        client.set_password(user[1])
    if security is not None:
        await client.set_security_string(security)
    async with client:
        yield client


async def ns_index(client: Client) -> int:
    return int(await client.get_namespace_index(NS))


def status_name(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return ua.StatusCode(code).name if code is not None else type(exc).__name__
