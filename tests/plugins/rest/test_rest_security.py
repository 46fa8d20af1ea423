"""Authentication with roles, configuration checks, CORS and TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from canbridge_rest.config import RestConfig, Role, hash_token
from canbridge_rest.plugin import register_northbound
from pydantic import ValidationError

from tests.plugins.rest.conftest import running

SETPOINT = "demo.MotorCommand.SpeedSetpoint"
READ, WRITE, ADMIN = "reader-token-0123456789", "writer-token-0123456789", "admin-token-01234567890"
TOKENS = [
    {"name": "reader", "role": "read", "token_sha256": hash_token(READ)},
    {"name": "writer", "role": "write", "token_sha256": hash_token(WRITE).upper()},
    {"name": "admin", "role": "admin", "token": ADMIN},
]


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_roles() -> None:
    async with running({"tokens": TOKENS}) as api:
        # no token: reads, writes and frames need one; health, readiness and the document do not
        for path in ("/api/v1/signals", f"/api/v1/signals/{SETPOINT}", "/api/v1/buses", "/metrics"):
            status, body, resp = await api.get(path)
            assert status == 401 and body["error"] == "unauthorized", path
            assert resp.headers["WWW-Authenticate"] == "Bearer"
        for path in ("/healthz", "/readyz", "/api/v1/openapi.json", "/"):
            assert (await api.get(path))[0] == 200, path

        # unknown or malformed tokens
        status, body, resp = await api.get("/api/v1/signals", headers=_auth("guess-guess-guess"))
        assert (
            status == 401
            and body["error"] == "invalid_token"
            and "invalid_token" in resp.headers["WWW-Authenticate"]
        )
        status, body, _ = await api.get("/api/v1/signals", headers={"Authorization": f"Basic {READ}"})
        assert status == 401 and "Bearer" in body["detail"]

        frame = {"cansend": "123#00"}
        write = {"value": 7}
        # read role
        assert (await api.get("/api/v1/signals", headers=_auth(READ)))[0] == 200
        assert (await api.get("/metrics", headers=_auth(READ)))[0] == 200
        status, body, _ = await api.put(f"/api/v1/signals/{SETPOINT}", json=write, headers=_auth(READ))
        assert status == 403 and body["error"] == "insufficient_role" and "'reader'" in body["detail"]
        # write role (its hash was configured in upper case)
        status, _, _ = await api.put(f"/api/v1/signals/{SETPOINT}", json=write, headers=_auth(WRITE))
        assert status == 200
        await api.h.next_sent(0x300)
        status, body, _ = await api.post("/api/v1/buses/demo/frames", json=frame, headers=_auth(WRITE))
        assert status == 403 and body["error"] == "insufficient_role"
        with pytest.raises(TimeoutError):
            await api.h.next_sent(0x123, timeout=0.3)
        # admin role (a literal token)
        status, _, _ = await api.post("/api/v1/buses/demo/frames", json=frame, headers=_auth(ADMIN))
        assert status == 200
        assert (await api.h.next_sent(0x123)).data == b"\x00"
        assert (await api.get("/api/v1/signals", headers=_auth(ADMIN)))[0] == 200

        status, doc, _ = await api.get("/api/v1/openapi.json")
        put = doc["paths"]["/api/v1/signals/{name}"]["put"]
        assert put["security"] == [{"bearer": []}] and put["x-canbridge-role"] == "write"


async def test_anonymous_read_only() -> None:
    async with running({"tokens": TOKENS, "anonymous_read": True}) as api:
        assert (await api.get("/api/v1/signals"))[0] == 200
        status, body, _ = await api.put(f"/api/v1/signals/{SETPOINT}", json={"value": 1})
        assert status == 401 and "write role" in body["detail"]
        status, _, _ = await api.post("/api/v1/buses/demo/frames", json={"cansend": "123#00"})
        assert status == 401
        with pytest.raises(TimeoutError):
            await api.h.next_sent(timeout=0.3)
        _, doc, _ = await api.get("/api/v1/openapi.json")
        assert {} in doc["paths"]["/api/v1/signals"]["get"]["security"]
        assert {} not in doc["paths"]["/api/v1/signals/{name}"]["put"]["security"]


def test_default_listens_on_loopback_8080_and_demo_config_is_valid() -> None:
    cfg = RestConfig.model_validate({})
    assert (cfg.host, cfg.port, cfg.anonymous_role()) == ("127.0.0.1", 8080, None)
    plugins: list[Any] = []
    register_northbound(plugins.append)
    (p,) = plugins
    assert p.name == "rest" and p.config_model is RestConfig
    demo = RestConfig.model_validate(p.demo_config)
    assert demo.host == "127.0.0.1" and demo.anonymous_role() is Role.ADMIN


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"host": "0.0.0.0", "anonymous_write": True}, "only allowed on a loopback host"),
        ({"host": "192.168.1.5", "anonymous_admin": True}, "only allowed on a loopback host"),
        ({"tokens": [{"name": "x", "token": "a" * 20, "token_sha256": "0" * 64}]}, "exactly one of"),
        ({"tokens": [{"name": "x"}]}, "exactly one of"),
        ({"tokens": [{"name": "x", "token_sha256": "abc"}]}, "64 hex digits"),
        ({"tokens": [{"name": "x", "token": "short"}]}, "at least 16"),
        (
            {
                "tokens": [
                    {"name": "x", "token": "a" * 20},
                    {"name": "y", "token_sha256": hash_token("a" * 20)},
                ]
            },
            "two tokens are the same",
        ),
        ({"tokens": [{"name": "x", "role": "root", "token": "a" * 20}]}, "'read', 'write' or 'admin'"),
        ({"cors_origins": ["example.com"]}, "https://host"),
        ({"tls": {"cert": "/nonexistent/cert.pem", "key": "/nonexistent/key.pem"}}, "not a readable file"),
        ({"port": 70000}, "less than or equal to 65535"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_configuration_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        RestConfig.model_validate(data)
    assert message in str(e.value)


def test_anonymous_write_on_loopback_is_allowed() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert (
            RestConfig.model_validate({"host": host, "anonymous_write": True}).anonymous_role() is Role.WRITE
        )


async def test_cors_only_for_configured_origins() -> None:
    async with running({"anonymous_read": True, "cors_origins": ["https://scada.example"]}) as api:
        status, _, resp = await api.get("/api/v1/buses", headers={"Origin": "https://scada.example"})
        assert status == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://scada.example"
        status, _, resp = await api.get("/api/v1/buses", headers={"Origin": "https://evil.example"})
        assert status == 200 and "Access-Control-Allow-Origin" not in resp.headers
        pre = {
            "Origin": "https://scada.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with api.session.options(api.u(f"/api/v1/signals/{SETPOINT}"), headers=pre) as r:
            assert r.status == 204
            assert "PUT" in r.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            assert r.headers["Access-Control-Allow-Origin"] == "https://scada.example"
        async with api.session.options(
            api.u(f"/api/v1/signals/{SETPOINT}"), headers={**pre, "Origin": "https://evil.example"}
        ) as r:
            assert r.status == 405 and "Access-Control-Allow-Origin" not in r.headers
    async with running({"anonymous_read": True}) as api:  # no origins configured: no CORS at all
        _, _, resp = await api.get("/api/v1/buses", headers={"Origin": "https://scada.example"})
        assert "Access-Control-Allow-Origin" not in resp.headers


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_p, key_p = tmp / "cert.pem", tmp / "key.pem"
    cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_p.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_p, key_p


async def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with running({"anonymous_read": True, "tls": {"cert": str(cert), "key": str(key)}}) as api:
        assert api.url.startswith("https://127.0.0.1:")
        status, body, _ = await api.get("/api/v1/buses", ssl=client_ctx)
        assert status == 200 and body["buses"][0]["name"] == "demo"
        _, doc, _ = await api.get("/api/v1/openapi.json", ssl=client_ctx)
        assert "https" in doc["servers"][0]["description"]


def test_tls_key_that_does_not_match(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = _self_signed(tmp_path / "a")
    _, other_key = _self_signed(tmp_path / "b")
    with pytest.raises(ValidationError, match="tls: cannot use"):
        RestConfig.model_validate({"tls": {"cert": str(cert), "key": str(other_key)}})
